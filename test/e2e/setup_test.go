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
		{"docker-hosts-toml", routeNSQuery, setupDockerHostsTOMLFromSetup},
		{"containerd", routeNSQuery, setupCtrFromSetup},
		{"podman", routeHostInPath, setupPodmanFromSetup},
	}
}

// TestSetupConfigsPullThroughRegcache: the files `regcache setup
// docker|containerd|podman --write` installs make the real dockerd
// (registry-mirrors), ctr (hosts.toml) and podman (a registries.conf.d
// drop-in) pull Docker Hub names through a running regcache, with nothing
// else telling them where it is. docker --hosts-toml writes Docker Engine
// 29's /etc/docker/certs.d/<registry>/hosts.toml; the dockerd here (20.10)
// has no containerd image store and ignores it, so ctr, which reads the
// same format, proves those files. Each writes twice, and the second run
// must change no byte.
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

// setupDockerHostsTOMLFromSetup installs Docker Engine 29's certs.d tree
// and gives it to ctr as its hosts dir.
func setupDockerHostsTOMLFromSetup(t *testing.T, w *world, mirror string) pullFunc {
	dir := w.mkdir("setup-docker-hosts-toml", "certs.d")
	writeSetupTwice(t, w, dir, "docker", "--hosts-toml", "--server", "http://"+mirror, "--path", dir)
	return ctrPuller(t, w, startContainerd(t, w, "containerd-docker-hosts"), dir)
}

// setupPodmanFromSetup installs the registries.conf.d drop-in next to the
// harness's own registries.conf, which stays as it is. podman 4.3 has no
// CONTAINERS_REGISTRIES_CONF_DIR, so the drop-in goes to the other
// directory podman reads drop-ins from, $HOME/.config/containers/
// registries.conf.d, rather than /etc/containers/registries.conf.d.
func setupPodmanFromSetup(t *testing.T, w *world, mirror string) pullFunc {
	policy, env := writeContainersConfig(t, w, "podman", "")
	dir := podmanDropInDir(w)
	writeSetupTwice(t, w, dir, "podman", "--server", "http://"+mirror, "--path", filepath.Join(dir, "50-regcache.conf"))
	return podmanPuller(t, w, policy, env)
}

// podmanDropInDir is the per-user registries.conf.d of the world's HOME.
func podmanDropInDir(w *world) string {
	return w.mkdir("home", ".config", "containers", "registries.conf.d")
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
