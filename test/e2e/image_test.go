package e2e

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/regcache/regcache/internal/imagebuild"
	"github.com/regcache/regcache/internal/testhub"
)

// TestImage is `make image` end to end, inside the private network
// namespace, so it also proves the build needs no network: tools/mkimage
// cross-compiles regcache for linux/amd64 and linux/arm64, writes the
// two-platform OCI index as a layout and pushes it to a real registry;
// podman pulls it from there and runs it (non-root, read-only root, the
// store on a volume), and crane pulls an image from the fake Docker Hub
// through the running container and gets the upstream's digest.
func TestImage(t *testing.T) {
	recordBuildInputs()
	w := newWorld(t)
	podman := requireBinary(t, "podman", "podman")
	crane := requireBinary(t, "crane", "crane (go install github.com/google/go-containerregistry/cmd/crane)")
	requireBinary(t, "runc", "runc")

	target := testhub.StartRegistry(t)
	ref := target.Host + "/regcache:e2e"
	dir := buildImage(t, w, ref)
	indexDigest := checkImageLayout(t, dir)
	if got := strings.TrimSpace(w.mustRun(t, time.Minute, w.baseEnv(), crane, "digest", "--insecure", ref)); got != indexDigest {
		t.Fatalf("the registry has %s as %s, the layout %s", got, ref, indexDigest)
	}

	// A credentialed fake Docker Hub for the container to cache.
	upstream := testhub.StartRegistry(t)
	images := seedImages(t, upstream)
	secret := randomSecret(t)
	w.addSecret("ci-user", secret)
	hub := testhub.NewHub(t, upstream, testhub.Options{Users: map[string]string{"ci-user": secret}})

	_, env := writeContainersConfig(t, w, "podman-image", "")
	env = append(env, hubPasswordEnv+"="+secret)
	p := func(timeout time.Duration, args ...string) string {
		t.Helper()
		return w.mustRun(t, timeout, env, append([]string{podman}, args...)...)
	}
	p(2*time.Minute, "pull", "--tls-verify=false", ref)
	if out := p(time.Minute, "image", "inspect", "--format", "{{.Os}}/{{.Architecture}} {{.Config.User}}", ref); strings.TrimSpace(out) != "linux/amd64 65532:65532" {
		t.Errorf("podman pulled %q for this host, want linux/amd64 run as 65532:65532", strings.TrimSpace(out))
	}

	port := freePort(t)
	etc := w.mkdir("image-etc")
	cfg := fmt.Sprintf(`listen: "127.0.0.1:%d"
storage: {root: %s}
log_level: debug
log_format: json
registries:
  docker.io:
    url: %s
    auth: {username: ci-user, password_env: %s}
`, port, imagebuild.StoreDir, strconv.Quote(hub.URL), hubPasswordEnv)
	if err := os.WriteFile(filepath.Join(etc, "regcache.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	store := w.mkdir("image-store")
	if err := os.Chown(store, imagebuild.UID, imagebuild.UID); err != nil {
		t.Fatal(err)
	}
	runArgs := append(podmanRunArgs(t),
		"--read-only",
		"-v", etc+":/etc/regcache:ro",
		"-v", store+":"+imagebuild.StoreDir,
		// The name alone: podman copies the value from its own
		// environment, so the password is in no command line or log.
		"-e", hubPasswordEnv)

	// The image's entrypoint is regcache: `version` tells the stamp, and
	// `serve --check-config` accepts the mounted config.
	if out := p(time.Minute, append(append([]string{"run", "--rm"}, runArgs...), ref, "version")...); !strings.HasPrefix(out, "regcache ") || !strings.Contains(out, "linux/amd64") {
		t.Errorf("regcache version in the image: %q", out)
	}
	if out := p(time.Minute, append(append([]string{"run", "--rm"}, runArgs...), ref, "serve", "--check-config")...); !strings.Contains(out, "config OK") {
		t.Errorf("serve --check-config in the image: %q", out)
	}

	id := strings.TrimSpace(p(time.Minute, append(append([]string{"run", "-d"}, runArgs...), ref)...))
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		// SIGTERM, as Kubernetes and ECS send it: a clean exit is 0.
		out, err := w.run(t.Context(), time.Minute, env, podman, "stop", "-t", "30", id)
		if err != nil {
			t.Errorf("podman stop: %v\n%s", err, out)
		}
		logs, _ := w.run(t.Context(), time.Minute, env, podman, "logs", id)
		_ = os.WriteFile(w.logFile("regcache-container"), []byte(logs), 0o644)
		code, _ := w.run(t.Context(), time.Minute, env, podman, "inspect", "--format", "{{.State.ExitCode}}", id)
		if strings.TrimSpace(code) != "0" {
			t.Errorf("the container exited %s after SIGTERM, want 0", strings.TrimSpace(code))
		}
		_, _ = w.run(t.Context(), time.Minute, env, podman, "rm", "-f", id)
	}
	t.Cleanup(stop)
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := waitFor(t.Context(), time.Minute, nil, func() error {
		code, err := httpGetStatus(t.Context(), http.DefaultClient, url+"/v2/")
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("GET /v2/: %d", code)
		}
		return err
	}); err != nil {
		out, _ := w.run(t.Context(), time.Minute, env, podman, "logs", id)
		t.Fatalf("regcache in the container did not come up: %v\n%s", err, tailLines(out, 30))
	}

	for _, img := range images {
		dest := filepath.Join(w.mkdir("image-pulls"), img.name)
		w.mustRun(t, pullTimeout, w.baseEnv(), crane, "pull", "--insecure", "--format", "oci",
			fmt.Sprintf("127.0.0.1:%d/docker.io/%s:%s", port, img.repo, img.tag), dest)
		if got := ociLayoutDigest(t, dest); got != img.want {
			t.Errorf("crane pulled docker.io/%s:%s through the container with digest %s, upstream has %s", img.repo, img.tag, got, img.want)
		}
	}
	stop()
	// The content is on the volume, written by the image's user.
	var blobs int
	_ = filepath.WalkDir(filepath.Join(store, "blobs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			blobs++
			if fi, err := d.Info(); err == nil && fi.Sys().(*syscall.Stat_t).Uid != imagebuild.UID {
				t.Errorf("%s is owned by uid %d, want %d", p, fi.Sys().(*syscall.Stat_t).Uid, imagebuild.UID)
			}
		}
		return nil
	})
	if blobs == 0 {
		t.Errorf("no blob in the store volume %s after the pulls", store)
	}
}

// podmanRunArgs are the flags a container needs to run in this sandbox:
// runc (crun refuses the hybrid cgroup v1/v2 layout here) with cgroupfs,
// the host's network (the test's private namespace: only loopback), and
// resource limits within this process's hard limits (podman's defaults for
// root are above them, and setrlimit fails).
func podmanRunArgs(t *testing.T) []string {
	t.Helper()
	var nofile syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &nofile); err != nil {
		t.Fatal(err)
	}
	n := min(nofile.Max, 65536)
	return []string{"--runtime", "runc", "--network", "host",
		"--ulimit", fmt.Sprintf("nofile=%d:%d", n, n), "--ulimit", "nproc=4096:4096"}
}

// buildImage runs `make image`'s command, tools/mkimage, from the module
// root, and pushes the result to ref. The Go build cache is the user's, so
// only what changed is compiled.
func buildImage(t *testing.T, w *world, ref string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(w.dir, "image")
	cmd := []string{"sh", "-c", `cd "$0" && exec go run ./tools/mkimage -out "$1" -bin-dir "$2" -push "$3"`,
		root, out, filepath.Join(w.dir, "image-build"), ref}
	env := append(os.Environ(), "GOFLAGS=-mod=readonly -buildvcs=false", "GOPROXY=off")
	start := time.Now()
	w.mustRun(t, 15*time.Minute, env, cmd...)
	t.Logf("image built and pushed in %s", time.Since(start).Round(time.Millisecond))
	return out
}

// checkImageLayout reads the layout as a consumer would and checks what
// the image promises: an OCI index of linux/amd64 and linux/arm64, each a
// static binary of its architecture, run as 65532 with the store volume,
// the port, the labels, and one shared base layer with the CA bundle. It
// returns the index's digest.
func checkImageLayout(t *testing.T, dir string) string {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	topManifest, err := top.IndexManifest()
	if err != nil || len(topManifest.Manifests) != 1 {
		t.Fatalf("layout index.json: %v, %+v", err, topManifest)
	}
	idx, err := top.ImageIndex(topManifest.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if im.MediaType != "application/vnd.oci.image.index.v1+json" || len(im.Manifests) != 2 {
		t.Fatalf("want an OCI index of two images, got %s with %d", im.MediaType, len(im.Manifests))
	}
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	var bases []v1.Hash
	for _, desc := range im.Manifests {
		plat := desc.Platform
		if plat == nil || plat.OS != "linux" || machines[plat.Architecture] == elf.EM_NONE {
			t.Errorf("index entry %s has platform %v", desc.Digest, plat)
			continue
		}
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		c := cf.Config
		if c.User != "65532:65532" || c.Entrypoint[0] != imagebuild.BinaryPath || len(c.Cmd) != 1 || c.Cmd[0] != "serve" || cf.Architecture != plat.Architecture {
			t.Errorf("%s: config %+v", plat, c)
		}
		if _, ok := c.Volumes[imagebuild.StoreDir]; !ok {
			t.Errorf("%s: no volume %s", plat, imagebuild.StoreDir)
		}
		if _, ok := c.ExposedPorts["5000/tcp"]; !ok {
			t.Errorf("%s: port 5000/tcp not exposed", plat)
		}
		for _, l := range []string{"version", "revision", "source", "created"} {
			if c.Labels["org.opencontainers.image."+l] == "" {
				t.Errorf("%s: label org.opencontainers.image.%s missing", plat, l)
			}
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 2 {
			t.Fatalf("%s: %d layers (%v), want base and binary", plat, len(layers), err)
		}
		base, _ := layers[0].Digest()
		bases = append(bases, base)
		files := layerFiles(t, layers[0])
		for _, f := range []string{"etc/passwd", "etc/group", "etc/ssl/certs/ca-certificates.crt", "etc/regcache/regcache.yaml"} {
			if files[f] == nil {
				t.Errorf("%s: base layer has no %s", plat, f)
			}
		}
		if !bytes.Contains(files["etc/passwd"], []byte(":65532:65532:")) {
			t.Errorf("%s: /etc/passwd has no user 65532", plat)
		}
		bin := layerFiles(t, layers[1])["usr/bin/regcache"]
		f, err := elf.NewFile(bytes.NewReader(bin))
		if err != nil {
			t.Fatalf("%s: /usr/bin/regcache is not an ELF binary: %v", plat, err)
		}
		if f.Machine != machines[plat.Architecture] {
			t.Errorf("%s: the binary is for %s", plat, f.Machine)
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				t.Errorf("%s: the binary is dynamically linked (has an interpreter); want CGO_ENABLED=0", plat)
			}
		}
	}
	if len(bases) == 2 && bases[0] != bases[1] {
		t.Errorf("the base layers differ between platforms (%s, %s); they should be one blob", bases[0], bases[1])
	}
	return topManifest.Manifests[0].Digest.String()
}

// layerFiles returns the regular files of a layer by path.
func layerFiles(t *testing.T, l v1.Layer) map[string][]byte {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = b
		}
	}
}
