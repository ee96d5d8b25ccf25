package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Daemons started for clients that need one. Each gets its own root, state
// and sockets (the sockets under a short /tmp/e2e-* dir), so nothing
// collides with a system daemon or with another test's. dockerd 20.10 would use a system
// containerd if /run/containerd/containerd.sock exists (and supervise its
// own otherwise), so it is always given its own containerd explicitly.

// startDockerd starts dockerd with registry-mirrors pointing at mirror (a
// mirror at the domain root, as Docker Hub users configure it) and returns
// the docker CLI and the environment to run it with.
func startDockerd(t *testing.T, w *world, mirror string) (docker string, env []string) {
	t.Helper()
	cfg := dockerdBaseConfig(w)
	cfg["registry-mirrors"] = []string{"http://" + mirror}
	// No insecure-registries entry: a mirror given with http:// is used
	// over plain HTTP by dockerd 20.10 without one.
	cfgPath := filepath.Join(w.mkdir("dockerd"), "daemon.json")
	writeJSON(t, cfgPath, cfg)
	return startDockerdWithConfig(t, w, cfgPath)
}

// dockerdBaseConfig is the daemon.json every test's dockerd needs, without
// any registry setting.
func dockerdBaseConfig(w *world) map[string]any {
	return map[string]any{
		"debug": true,
		// dockerd 20.10 otherwise writes /etc/docker/key.json on the host.
		"deprecated-key-path": filepath.Join(w.mkdir("dockerd"), "key.json"),
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// startDockerdWithConfig starts dockerd with cfgPath as its only daemon.json
// and returns the docker CLI and the environment to run it with.
func startDockerdWithConfig(t *testing.T, w *world, cfgPath string) (docker string, env []string) {
	t.Helper()
	dockerd := requireBinary(t, "dockerd", "docker.io (Debian) or docker-ce")
	docker = requireBinary(t, "docker", "docker.io (Debian) or docker-ce-cli")
	dir := w.mkdir("dockerd")
	run := shortDir(t, "dockerd")
	sock := filepath.Join(run, "docker.sock")
	containerdSock := startContainerd(t, w, "dockerd-containerd")
	p := startProc(t, "dockerd", w.logFile("dockerd"), w.baseEnv(),
		dockerd,
		"--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-masq=false",
		"--storage-driver=vfs",
		"--data-root", w.mkdir("dockerd", "data"),
		"--exec-root", filepath.Join(run, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"),
		"-H", "unix://"+sock,
		"--config-file", cfgPath,
		"--containerd", containerdSock,
	)
	t.Cleanup(func() { p.stop(20 * time.Second) })
	env = w.baseEnv("DOCKER_HOST=unix://" + sock)
	err := waitFor(t.Context(), 60*time.Second, p, func() error {
		_, err := w.run(t.Context(), 10*time.Second, env, docker, "version", "--format", "{{.Server.Version}}")
		return err
	})
	if err != nil {
		t.Fatalf("dockerd did not start: %v", err)
	}
	return docker, env
}

// shortDir returns a new directory with a short path, removed when t ends.
// Unix socket paths are limited to about 104 bytes, and t.TempDir() paths
// embed the (sub)test name, so sockets and runtime state live here.
func shortDir(t *testing.T, name string) string {
	t.Helper()
	base := "/tmp"
	if fi, err := os.Stat(base); err != nil || !fi.IsDir() {
		base = os.TempDir()
	}
	d, err := os.MkdirTemp(base, "e2e-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// startContainerd starts a standalone containerd for ctr and returns its
// socket. CRI and snapshotters that need special kernels are disabled; the
// native snapshotter works on any filesystem.
func startContainerd(t *testing.T, w *world, name string) string {
	t.Helper()
	containerd := requireBinary(t, "containerd", "containerd")
	dir := w.mkdir(name)
	run := shortDir(t, "ctrd")
	sock := filepath.Join(run, "containerd.sock")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = %q
  level = "debug"
`, w.mkdir(name, "root"), filepath.Join(run, "state"), sock, sock+".ttrpc", filepath.Join(run, "debug.sock"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, name, w.logFile(name), w.baseEnv(), containerd, "--config", cfgPath)
	t.Cleanup(func() { p.stop(20 * time.Second) })
	ctr := requireBinary(t, "ctr", "containerd")
	err := waitFor(t.Context(), 30*time.Second, p, func() error {
		_, err := w.run(t.Context(), 10*time.Second, w.baseEnv(), ctr, "--address", sock, "version")
		return err
	})
	if err != nil {
		t.Fatalf("containerd did not start: %v", err)
	}
	return sock
}

// writeContainersConfig writes the containers-common files podman (and
// skopeo) read, so the host's registries.conf, storage.conf and policy.json
// never influence a test. mirror == "" gives a registries.conf without
// mirrors. It returns the policy path and the environment.
func writeContainersConfig(t *testing.T, w *world, name, mirror string) (policy string, env []string) {
	t.Helper()
	dir := w.mkdir(name, "etc")
	policy = filepath.Join(dir, "policy.json")
	files := map[string]string{
		"policy.json": `{"default":[{"type":"insecureAcceptAnything"}]}`,
		"storage.conf": fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n",
			w.mkdir(name, "graphroot"), w.mkdir(name, "runroot")),
		"containers.conf": fmt.Sprintf("[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = %q\ntmp_dir = %q\n",
			filepath.Join(w.mkdir(name, "run"), "events.log"), w.mkdir(name, "tmp")),
		"registries.conf": "unqualified-search-registries = []\n",
	}
	if mirror != "" {
		// The prefix is replaced by the mirror location, so the mirror
		// receives /v2/docker.io/library/<name>/...
		files["registries.conf"] += fmt.Sprintf(`
[[registry]]
prefix = "docker.io"
location = "docker.io"

[[registry.mirror]]
location = "%s/docker.io"
insecure = true
`, mirror)
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env = w.baseEnv(
		"CONTAINERS_REGISTRIES_CONF="+filepath.Join(dir, "registries.conf"),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(dir, "storage.conf"),
		"CONTAINERS_CONF="+filepath.Join(dir, "containers.conf"),
	)
	return policy, env
}

// writeHostsDir writes a containerd certs.d tree that sends docker.io pulls
// to mirror (which then receives ?ns=docker.io).
func writeHostsDir(t *testing.T, w *world, mirror string) string {
	t.Helper()
	dir := w.mkdir("containerd-certs.d")
	hosts := fmt.Sprintf(`server = "https://registry-1.docker.io"

[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, mirror)
	if err := os.WriteFile(filepath.Join(w.mkdir("containerd-certs.d", "docker.io"), "hosts.toml"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// field returns the whitespace-separated field i of the first line of out
// whose first field is key.
func field(out, key string, i int) string {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > i && f[0] == key {
			return f[i]
		}
	}
	return ""
}
