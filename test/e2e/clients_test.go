package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// testImage is an image on the (fake) Docker Hub, named as a Docker Hub user
// names it: repo "library/alpine", tag "latest".
type testImage struct {
	name string // subtest name
	repo string
	tag  string
	want string // the upstream's manifest (or index) digest
}

// bareName is the name a dockerd user types: "alpine", "busybox:1.36".
func (img testImage) bareName() string {
	n := strings.TrimPrefix(img.repo, "library/")
	if img.tag != "latest" {
		n += ":" + img.tag
	}
	return n
}

// pullFunc pulls img with one real client and returns the digest the client
// reports for what it pulled.
type pullFunc func(t *testing.T, img testImage) string

// realClient sets up one real client (and its daemon, if it has one) to pull
// docker.io images through mirror (127.0.0.1:PORT).
type realClient struct {
	name  string
	route route // how this client's requests name docker.io
	setup func(t *testing.T, w *world, mirror string) pullFunc
}

// pullTimeout bounds one client pull; the images are small and a pull takes
// well under a second here. clientBudget bounds all of one client's pulls,
// so a hanging server fails a client within minutes instead of once per
// image (the clients run in parallel).
const (
	pullTimeout  = time.Minute
	clientBudget = 150 * time.Second
)

var digestRE = regexp.MustCompile(`sha256:[0-9a-f]{64}`)

func realClients() []realClient {
	return []realClient{
		{"skopeo", routeHostInPath, setupSkopeo},
		{"crane", routeHostInPath, setupCrane},
		{"regctl", routeHostInPath, setupRegctl},
		{"podman", routeHostInPath, setupPodman},
		{"ctr", routeNSQuery, setupCtr},
		{"dockerd", routeBare, setupDockerd},
	}
}

// skopeo addresses regcache with the registry host in the path, as podman's
// mirror config does. It copies every platform into a dir: layout (a full
// pull; skopeo verifies every blob), then reports the digest of the
// top-level manifest as `skopeo inspect` sees it.
//
// Quirk: skopeo 1.9 rewrites an OCI index it copies (even to dir:), so the
// copy's --digestfile differs from the upstream digest and
// --preserve-digests fails with "Manifest list must be converted"; a
// Docker manifest list is kept as is. Hence inspect, not the copy, reports.
func setupSkopeo(t *testing.T, w *world, mirror string) pullFunc {
	bin := requireBinary(t, "skopeo", "skopeo")
	policy, env := writeContainersConfig(t, w, "skopeo", "")
	return func(t *testing.T, img testImage) string {
		src := "docker://" + mirror + "/docker.io/" + img.repo + ":" + img.tag
		dest := filepath.Join(w.mkdir("skopeo", "out"), img.name)
		w.mustRun(t, pullTimeout, env, bin, "--policy", policy, "copy", "--all",
			"--src-tls-verify=false", src, "dir:"+dest)
		// --no-tags: plain inspect also lists the repository's tags, and
		// skopeo sleeps out a 429's Retry-After on that list.
		out := w.mustRun(t, pullTimeout, env, bin, "--policy", policy, "inspect", "--no-tags",
			"--tls-verify=false", "--format", "{{.Digest}}", src)
		return strings.TrimSpace(out)
	}
}

// crane pulls into an OCI layout; for an index it keeps the whole index.
func setupCrane(t *testing.T, w *world, mirror string) pullFunc {
	bin := requireBinary(t, "crane", "crane (go install github.com/google/go-containerregistry/cmd/crane)")
	env := w.baseEnv()
	return func(t *testing.T, img testImage) string {
		dest := filepath.Join(w.mkdir("crane"), img.name)
		w.mustRun(t, pullTimeout, env, bin, "pull", "--insecure", "--format", "oci",
			mirror+"/docker.io/"+img.repo+":"+img.tag, dest)
		return ociLayoutDigest(t, dest)
	}
}

// regctl copies the image (every platform) into an OCI layout.
func setupRegctl(t *testing.T, w *world, mirror string) pullFunc {
	bin := requireBinary(t, "regctl", "regctl (go install github.com/regclient/regclient/cmd/regctl)")
	env := w.baseEnv()
	return func(t *testing.T, img testImage) string {
		dest := filepath.Join(w.mkdir("regctl"), img.name)
		w.mustRun(t, pullTimeout, env, bin, "--host", "reg="+mirror+",tls=disabled", "image", "copy",
			mirror+"/docker.io/"+img.repo+":"+img.tag, "ocidir://"+dest+":"+img.tag)
		return ociLayoutDigest(t, dest)
	}
}

// podman pulls the plain docker.io name; registries.conf sends it to the
// mirror location 127.0.0.1:PORT/docker.io.
func setupPodman(t *testing.T, w *world, mirror string) pullFunc {
	policy, env := writeContainersConfig(t, w, "podman", mirror)
	return podmanPuller(t, w, policy, env)
}

// podmanPuller pulls docker.io names with podman, configured by env, with
// extra arguments for podman pull.
func podmanPuller(t *testing.T, w *world, policy string, env []string, extra ...string) pullFunc {
	bin := requireBinary(t, "podman", "podman")
	return func(t *testing.T, img testImage) string {
		ref := "docker.io/" + img.repo + ":" + img.tag
		args := append([]string{bin, "pull", "--signature-policy", policy}, extra...)
		w.mustRun(t, pullTimeout, env, append(args, ref)...)
		out := w.mustRun(t, time.Minute, env, bin, "image", "inspect", "--format", "{{json .RepoDigests}}", ref)
		// For an index podman records both the index digest and the
		// platform manifest's; report the one that matches if any.
		var repoDigests []string
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &repoDigests); err != nil {
			t.Fatalf("podman image inspect: %v: %q", err, out)
		}
		return pickDigest(repoDigests, img.want)
	}
}

// ctr pulls (and unpacks, for the host platform) through hosts.toml, which
// makes containerd send ?ns=docker.io to the mirror.
func setupCtr(t *testing.T, w *world, mirror string) pullFunc {
	sock := startContainerd(t, w, "containerd")
	return ctrPuller(t, w, sock, writeHostsDir(t, w, mirror))
}

// ctrPuller pulls docker.io names with ctr from the containerd at sock,
// with hostsDir as its only registry configuration.
func ctrPuller(t *testing.T, w *world, sock, hostsDir string) pullFunc {
	ctr := requireBinary(t, "ctr", "containerd")
	env := w.baseEnv()
	return func(t *testing.T, img testImage) string {
		ref := "docker.io/" + img.repo + ":" + img.tag
		w.mustRun(t, pullTimeout, env, ctr, "--address", sock, "-n", "e2e", "images", "pull",
			"--snapshotter", "native", "--hosts-dir", hostsDir, ref)
		out := w.mustRun(t, time.Minute, env, ctr, "--address", sock, "-n", "e2e", "images", "ls")
		// Columns: REF TYPE DIGEST SIZE PLATFORMS LABELS
		return field(out, ref, 2)
	}
}

// dockerd pulls the bare name ("alpine") through registry-mirrors, so the
// mirror receives /v2/library/alpine/... with no registry host anywhere.
func setupDockerd(t *testing.T, w *world, mirror string) pullFunc {
	docker, env := startDockerd(t, w, mirror)
	return dockerPuller(w, docker, env)
}

// dockerPuller pulls bare Docker Hub names with the docker CLI, from the
// dockerd that env points at.
func dockerPuller(w *world, docker string, env []string) pullFunc {
	return func(t *testing.T, img testImage) string {
		out := w.mustRun(t, pullTimeout, env, docker, "pull", img.bareName())
		var reported string
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "Digest: ") {
				reported = strings.TrimSpace(strings.TrimPrefix(line, "Digest: "))
			}
		}
		out = w.mustRun(t, time.Minute, env, docker, "image", "inspect", "--format", "{{json .RepoDigests}}", img.bareName())
		var repoDigests []string
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &repoDigests); err != nil {
			t.Fatalf("docker image inspect: %v: %q", err, out)
		}
		if recorded := pickDigest(repoDigests, reported); recorded != reported {
			t.Errorf("docker pull printed Digest: %s, but RepoDigests are %v", reported, repoDigests)
		}
		return reported
	}
}

// pickDigest returns want if one of refs (name@digest) has it, else the
// first digest found, so a mismatch shows what the client did record.
func pickDigest(refs []string, want string) string {
	var ds []string
	for _, r := range refs {
		ds = append(ds, digestRE.FindString(r))
	}
	if slices.Contains(ds, want) {
		return want
	}
	if len(ds) > 0 {
		return strings.Join(ds, ",")
	}
	return ""
}

// ociLayoutDigest returns the digest of the single manifest or index that
// an OCI layout's index.json points to, after checking that the blob stored
// under it really has that digest.
func ociLayoutDigest(t *testing.T, dir string) string {
	t.Helper()
	var idx struct {
		Manifests []struct {
			Digest string `json:"digest"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(dir, "index.json"))), &idx); err != nil {
		t.Fatalf("%s/index.json: %v", dir, err)
	}
	if len(idx.Manifests) != 1 {
		t.Fatalf("%s/index.json: want 1 manifest, got %d", dir, len(idx.Manifests))
	}
	d := idx.Manifests[0].Digest
	if got := sha256File(t, filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(d, "sha256:"))); got != d {
		t.Errorf("%s: blob for %s has digest %s", dir, d, got)
	}
	return d
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func sha256File(t *testing.T, p string) string {
	t.Helper()
	return fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(readFile(t, p))))
}
