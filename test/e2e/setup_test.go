package e2e

import (
	"encoding/json"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

// setupEngines are the container engines that `regcache setup <name>
// --write` configures. Each setup runs the command against the mirror
// (127.0.0.1:PORT, plain http) and starts the engine with the files it
// wrote as its only registry configuration.
func setupEngines() []realClient {
	return []realClient{
		{"docker", routeBare, setupDockerFromSetup},
		{"containerd", routeNSQuery, setupCtrFromSetup},
		{"podman", routeHostInPath, setupPodmanFromSetup},
	}
}

// TestSetupConfigsPullThroughRegcache is acceptance item 3 of the CI tools
// issue: the files `regcache setup docker|containerd|podman --write`
// installs make the real dockerd, ctr and podman pull Docker Hub names
// through a running regcache, with nothing else telling them where it is.
// Each writes twice, and the second run must change no byte (acceptance 4).
func TestSetupConfigsPullThroughRegcache(t *testing.T) {
	w := newWorld(t)
	images, _, rc := startHubAndRegcache(t, w, testhub.Options{}, "")
	pullWithClients(t, w, setupEngines(), rc.host(), true, images)
}

// setupDockerFromSetup merges the mirror into a daemon.json that already
// holds the harness's own keys, and starts dockerd with that file.
func setupDockerFromSetup(t *testing.T, w *world, mirror string) pullFunc {
	server := "http://" + mirror
	dir := w.mkdir("setup-docker")
	path := filepath.Join(dir, "daemon.json")
	base := dockerdBaseConfig(w)
	writeJSON(t, path, base)
	before := readFile(t, path)
	writeSetupTwice(t, w, dir, "docker", "--server", server, "--path", path)

	if got := readFile(t, path+".bak"); got != before {
		t.Errorf("daemon.json.bak = %q, want the original %q", got, before)
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(readFile(t, path)), &cfg); err != nil {
		t.Fatalf("written daemon.json: %v", err)
	}
	for k, v := range map[string]any{
		"registry-mirrors":    []any{server},
		"insecure-registries": []any{mirror},
	} {
		if !reflect.DeepEqual(cfg[k], v) {
			t.Errorf("daemon.json %q = %v, want %v", k, cfg[k], v)
		}
	}
	for k, v := range base {
		if !reflect.DeepEqual(cfg[k], v) {
			t.Errorf("daemon.json lost %q: %v, was %v", k, cfg[k], v)
		}
	}
	docker, env := startDockerdWithConfig(t, w, path)
	return dockerPuller(w, docker, env)
}

// setupCtrFromSetup installs certs.d under a root prefix and gives that
// certs.d to ctr as its hosts dir.
func setupCtrFromSetup(t *testing.T, w *world, mirror string) pullFunc {
	root := w.mkdir("setup-containerd")
	writeSetupTwice(t, w, root, "containerd", "--server", "http://"+mirror, "--root", root)
	certsD := filepath.Join(root, "etc", "containerd", "certs.d")
	if _, err := os.Stat(filepath.Join(certsD, "docker.io", "hosts.toml")); err != nil {
		t.Fatal(err)
	}
	return ctrPuller(t, w, startContainerd(t, w, "containerd"), certsD)
}

// setupPodmanFromSetup installs registries.conf under a root prefix and
// points podman at it, in place of the harness's registries.conf.
func setupPodmanFromSetup(t *testing.T, w *world, mirror string) pullFunc {
	root := w.mkdir("setup-podman")
	writeSetupTwice(t, w, root, "podman", "--server", "http://"+mirror, "--root", root)
	conf := filepath.Join(root, "etc", "containers", "registries.conf")
	policy, env := writeContainersConfig(t, w, "podman", "")
	// The last value of a duplicated variable wins (os/exec).
	env = append(env, "CONTAINERS_REGISTRIES_CONF="+conf)
	return podmanPuller(t, w, policy, env)
}

// writeSetupTwice runs `regcache setup <target> --write args...` twice and
// fails unless the second run reports every file unchanged and leaves every
// file under dir byte-identical.
func writeSetupTwice(t *testing.T, w *world, dir, target string, args ...string) {
	t.Helper()
	recordBuildInputs()
	if regcacheBuild.err != nil {
		t.Fatal(regcacheBuild.err)
	}
	argv := append([]string{regcacheBuild.bin, "setup", target, "--write"}, args...)
	w.mustRun(t, time.Minute, w.baseEnv(), argv...)
	first := readTree(t, dir)
	if len(first) == 0 {
		t.Fatalf("regcache setup %s --write wrote nothing under %s", target, dir)
	}
	for _, p := range slices.Sorted(maps.Keys(first)) {
		t.Logf("regcache setup %s wrote %s:\n%s", target, p, first[p])
	}
	out := w.mustRun(t, time.Minute, w.baseEnv(), argv...)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(line, "unchanged ") && !strings.HasPrefix(line, "# ") {
			t.Errorf("second regcache setup %s --write: %q, want only unchanged files", target, line)
		}
	}
	second := readTree(t, dir)
	if !maps.Equal(first, second) {
		t.Errorf("second regcache setup %s --write changed files under %s:\nfirst:  %v\nsecond: %v",
			target, dir, slices.Sorted(maps.Keys(first)), slices.Sorted(maps.Keys(second)))
		for p, b := range second {
			if first[p] != b {
				t.Errorf("%s:\nfirst:\n%s\nsecond:\n%s", p, first[p], b)
			}
		}
	}
}

// readTree returns the content of every regular file under dir, by path.
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		files[p] = readFile(t, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestSetupCAFileConfigsPullOverTLS: for a regcache that serves HTTPS with
// a private CA, the files `regcache setup containerd|podman --ca-file
// --write` installs are all that ctr and podman need to verify it and pull
// through it.
func TestSetupCAFileConfigsPullOverTLS(t *testing.T) {
	w := newWorld(t)
	cert := testhub.SelfSignedCert(t, w.mkdir("tls"))
	images, _, rc := startHubAndRegcacheWith(t, w, testhub.Options{}, regcacheConfig{cert: &cert})
	server := "https://" + rc.host()

	engines := []struct {
		name  string
		setup func(t *testing.T) pullFunc
	}{
		{"containerd", func(t *testing.T) pullFunc {
			root := w.mkdir("setup-ca-containerd")
			writeSetupTwice(t, w, root, "containerd", "--server", server, "--ca-file", cert.CertFile, "--root", root)
			return ctrPuller(t, w, startContainerd(t, w, "containerd-ca"), filepath.Join(root, "etc", "containerd", "certs.d"))
		}},
		{"podman", func(t *testing.T) pullFunc {
			root := w.mkdir("setup-ca-podman")
			writeSetupTwice(t, w, root, "podman", "--server", server, "--ca-file", cert.CertFile, "--root", root)
			policy, env := writeContainersConfig(t, w, "podman-ca", "")
			env = append(env, "CONTAINERS_REGISTRIES_CONF="+filepath.Join(root, "etc", "containers", "registries.conf"))
			// podman as root reads /etc/containers/certs.d; the installed
			// tree is under root, so it is named explicitly.
			certDir := filepath.Join(root, "etc", "containers", "certs.d", rc.host())
			return podmanPuller(t, w, policy, env, "--cert-dir", certDir)
		}},
	}
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			t.Parallel()
			pull := e.setup(t)
			for _, img := range images {
				if got := pull(t, img); got != img.want {
					t.Errorf("%s pulled docker.io/%s:%s with digest %q, upstream has %s", e.name, img.repo, img.tag, got, img.want)
				}
			}
		})
	}
}
