package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/app"
	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/testhub"
)

// regcache warm fills the cache: the platforms asked for, every manifest and
// blob, so that pulls then succeed with the hub down.
func TestWarm(t *testing.T) {
	backend := testhub.StartRegistry(t)
	idx := backend.PushIndex(t, "library/alpine", "3.20", []string{"linux/amd64", "linux/arm64"}, true)
	single := backend.PushImage(t, "library/busybox", "1.36", testhub.ImageOptions{Layers: 2})
	hub := testhub.NewHub(t, backend, testhub.Options{})
	a, srv := startApp(t, "listen: 127.0.0.1:0\nstorage: {root: "+t.TempDir()+"}\nregistries:\n  docker.io: {url: "+hub.URL+"}\n")
	t.Setenv("DOCKER_CONFIG", t.TempDir())

	warmCmd := func(args ...string) (string, error) {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(append([]string{"warm", "--server", srv.URL}, args...))
		err := root.ExecuteContext(context.Background())
		return out.String(), err
	}
	stored := func(d digest.Digest) bool {
		// Clients get verified bytes before the cache's fsync and rename.
		if err := a.Cache.Drain(context.Background()); err != nil {
			t.Fatal(err)
		}
		_, err := a.Store.Stat(context.Background(), d)
		return err == nil
	}
	arm, amd := idx.Children["linux/arm64"], idx.Children["linux/amd64"]

	out, err := warmCmd("--platform", "linux/arm64", "alpine:3.20")
	if err != nil {
		t.Fatalf("warm: %v\n%s", err, out)
	}
	if !strings.Contains(out, "ok    alpine:3.20  "+idx.Digest.String()+"  2 manifests, 1 layer, 2 blobs") {
		t.Errorf("output does not report the index and the arm64 image:\n%s", out)
	}
	if !stored(arm.Layers[0]) || !stored(arm.Config) || stored(amd.Layers[0]) {
		t.Errorf("after warming linux/arm64: arm64 layer %v, config %v; amd64 layer %v (want true, true, false)",
			stored(arm.Layers[0]), stored(arm.Config), stored(amd.Layers[0]))
	}

	// Several images from stdin, every platform; comments and repeats are
	// dropped.
	root := newRootCmd()
	var buf bytes.Buffer
	root.SetOut(&buf)
	root.SetIn(strings.NewReader("# nightly\nbusybox:1.36\n\nalpine:3.20\nbusybox:1.36\n"))
	root.SetArgs([]string{"warm", "--server", srv.URL, "--platform", "all", "-f", "-"})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("warm -f -: %v\n%s", err, buf.String())
	}
	if !strings.Contains(buf.String(), "2 of 2 images warmed") {
		t.Errorf("duplicates or comments were not dropped:\n%s", buf.String())
	}
	for _, d := range append([]digest.Digest{amd.Layers[0], amd.Config, single.Config}, single.Layers...) {
		if !stored(d) {
			t.Errorf("blob %s not cached after warming every platform", d)
		}
	}

	// The hub goes down: everything warmed is still served.
	hub.SetFault(testhub.FaultDrop)
	before := hub.Counts().Requests
	out, err = warmCmd("--platform", "all", "alpine:3.20", "busybox:1.36")
	if err != nil {
		t.Fatalf("warm from the cache with the hub down: %v\n%s", err, out)
	}
	if n := hub.Counts().Requests - before; n != 0 {
		t.Errorf("a warm of cached images sent %d requests to the hub", n)
	}

	// A name that does not exist fails, and says so; the exit is non-zero.
	hub.SetFault(testhub.FaultNone)
	out, err = warmCmd("nosuch/image:1")
	if err == nil || !strings.Contains(out, "FAIL  nosuch/image:1") {
		t.Errorf("a missing image: err %v\n%s", err, out)
	}
}

func TestWarmOptionErrors(t *testing.T) {
	t.Setenv(passwordEnv, "")
	os.Unsetenv(passwordEnv)
	junk := filepath.Join(t.TempDir(), "junk.pem")
	os.WriteFile(junk, []byte("hello"), 0o600)
	for _, tc := range []struct {
		server, ca, user string
		platforms        []string
		want             string
	}{
		{"ftp://x", "", "", nil, "--server"},
		{"http://x/path", "", "", nil, "--server"},
		{"https://x", "/nonexistent.pem", "", nil, "--ca-file"},
		{"https://x", junk, "", nil, "no PEM certificate"},
		{"https://x", "", "ci", nil, "$" + passwordEnv},
		{"https://x", "", "", []string{"linux/"}, "--platform"},
	} {
		_, err := warmOptions(tc.server, tc.ca, tc.user, tc.platforms, 4)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want it to mention %q", tc, err, tc.want)
		}
	}
	opt, err := warmOptions("cache:5000", "", "", []string{"linux/amd64", "all"}, 4)
	if err != nil || !opt.Insecure || opt.Server != "cache:5000" || opt.Platforms != nil {
		t.Errorf("cache:5000 --platform all: %+v, %v", opt, err)
	}
	// The login goes to the server only.
	kc := staticKeychain{host: "cache:5000", auth: &authn.Basic{Username: "u", Password: "p"}}
	for host, want := range map[string]bool{"cache:5000": true, "registry-1.docker.io": false} {
		reg, _ := name.NewRegistry(host)
		a, _ := kc.Resolve(reg)
		if got := a != authn.Anonymous; got != want {
			t.Errorf("credentials for %s: %v, want %v", host, got, want)
		}
	}
}

// startApp serves a regcache built from yaml on an httptest server.
func startApp(t *testing.T, yaml string) (*app.App, *httptest.Server) {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), "test")
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler)
	t.Cleanup(srv.Close)
	return a, srv
}

// --json prints one document with every image, in the order given, and
// --concurrency warms several at once; a failure is in the document and in
// the exit status.
func TestWarmJSON(t *testing.T) {
	backend := testhub.StartRegistry(t)
	a1 := backend.PushImage(t, "library/alpine", "3.20", testhub.ImageOptions{Layers: 2})
	b1 := backend.PushImage(t, "library/busybox", "1.36", testhub.ImageOptions{Layers: 3})
	hub := testhub.NewHub(t, backend, testhub.Options{})
	_, srv := startApp(t, "listen: 127.0.0.1:0\nstorage: {root: "+t.TempDir()+"}\nregistries:\n  docker.io: {url: "+hub.URL+"}\n")
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	out, err := runCmd(t, "", "warm", "--server", srv.URL, "--concurrency", "2", "--json", "busybox:1.36", "nosuch/image:1", "alpine:3.20")
	if err == nil {
		t.Error("warm with a missing image exited 0")
	}
	var rep warmReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json output is not one JSON document: %v\n%s", err, out)
	}
	if rep.Warmed != 2 || rep.Failed != 1 || len(rep.Images) != 3 {
		t.Fatalf("report %+v", rep)
	}
	for i, want := range []struct {
		ref    string
		digest string
		layers int
	}{{"busybox:1.36", b1.Digest.String(), 3}, {"nosuch/image:1", "", 0}, {"alpine:3.20", a1.Digest.String(), 2}} {
		got := rep.Images[i]
		if got.Ref != want.ref || got.Digest != want.digest || got.Layers != want.layers || (want.digest == "") != (got.Error != "") {
			t.Errorf("images[%d] = %+v, want %s %s with %d layers", i, got, want.ref, want.digest, want.layers)
		}
	}
	if _, err := runCmd(t, "", "warm", "--server", srv.URL, "--concurrency", "0", "alpine:3.20"); err == nil || !strings.Contains(err.Error(), "--concurrency") {
		t.Errorf("--concurrency 0: %v", err)
	}
}

// The platform defaults to linux/<arch> whatever the host OS, as docker
// pull does on Linux, macOS and Windows.
func TestWarmDefaultPlatform(t *testing.T) {
	f := newWarmCmd().Flags().Lookup("platform")
	if want := "[linux/" + runtime.GOARCH + "]"; f.DefValue != want {
		t.Errorf("--platform defaults to %s, want %s", f.DefValue, want)
	}
}
