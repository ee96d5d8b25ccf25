package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/crypto/bcrypt"

	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/testhub"
)

// regcache serve with tls and client_auth: HTTPS (HTTP/2 offered), a Bearer
// challenge on /v2/ whose realm is the same https host, and a pull by
// go-containerregistry with a login (through the token flow).
func TestServeTLSWithClientAuth(t *testing.T) {
	backend := testhub.StartRegistry(t)
	img := backend.PushImage(t, "team/app", "v1", testhub.ImageOptions{})
	dir := t.TempDir()
	cert := testhub.SelfSignedCert(t, dir)
	hash, err := bcrypt.GenerateFromPassword([]byte("ci-password"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("ci:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, err := testhub.FreeAddr("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(fmt.Appendf(nil, `listen: %s
storage: {root: %s}
registries:
  private.example: {url: %s}
client_auth: {htpasswd: %s}
tls: {certificate: %s, key: %s}
`, addr, filepath.Join(dir, "data"), backend.URL, htpasswd, cert.CertFile, cert.KeyFile), "test")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	logs := testhub.NewTailBuffer(0)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, func() (*config.Config, error) { return cfg, nil }, logs) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})

	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: cert.Pool}, ForceAttemptHTTP2: true}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var resp *http.Response
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err = client.Get("https://" + addr + "/v2/")
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if want := `Bearer realm="https://` + addr + `/_regcache/token",service="regcache"`; resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != want {
		t.Errorf("GET /v2/ without a login: %d %q, want 401 with %s", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), want)
	}
	if resp.ProtoMajor != 2 {
		t.Errorf("served %s, want HTTP/2 offered over TLS", resp.Proto)
	}

	ref, err := name.ParseReference(addr + "/private.example/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		auth   authn.Authenticator
		wantOK bool
	}{
		{"anonymous", authn.Anonymous, false},
		{"wrong password", &authn.Basic{Username: "ci", Password: "nope"}, false},
		{"login", &authn.Basic{Username: "ci", Password: "ci-password"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			desc, err := remote.Get(ref, remote.WithAuth(tc.auth), remote.WithTransport(tr), remote.WithContext(t.Context()))
			if (err == nil) != tc.wantOK {
				t.Fatalf("pull: err %v, want success %v", err, tc.wantOK)
			}
			if err != nil {
				if !strings.Contains(err.Error(), "UNAUTHORIZED") {
					t.Errorf("refusal %v does not say UNAUTHORIZED", err)
				}
				return
			}
			if desc.Digest.String() != img.Digest.String() {
				t.Errorf("pulled %s, want %s", desc.Digest, img.Digest)
			}
			im, err := desc.Image()
			if err != nil {
				t.Fatal(err)
			}
			layers, err := im.Layers()
			if err != nil || len(layers) == 0 {
				t.Fatalf("layers: %v", err)
			}
			rc, err := layers[0].Compressed()
			if err != nil {
				t.Fatal(err)
			}
			rc.Close()
		})
	}
	// regcache warm logs in with --username and $REGCACHE_PASSWORD and
	// trusts --ca-file.
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	t.Setenv(passwordEnv, "ci-password")
	root := newRootCmd()
	var out strings.Builder
	root.SetOut(&out)
	root.SetArgs([]string{"warm", "--server", "https://" + addr, "--ca-file", cert.CertFile, "--username", "ci", "private.example/team/app:v1"})
	if err := root.ExecuteContext(t.Context()); err != nil || !strings.Contains(out.String(), "1 of 1 images warmed") {
		t.Errorf("warm over TLS with a login: %v\n%s", err, out.String())
	}
	if strings.Contains(logs.String(), "ci-password") {
		t.Error("the client password appears in the logs")
	}
}
