package app

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/testhub"
)

// stack is one regcache in front of one fake hub in front of a real registry.
type stack struct {
	t       testing.TB
	backend *testhub.Registry
	hub     *testhub.Hub
	app     *App
	srv     *httptest.Server
	logs    *testhub.TailBuffer
	secret  string
}

type stackOptions struct {
	tagTTL string
	hub    testhub.Options
	// user configures regcache with credentials for this hub user.
	user string
	// storage replaces the storage block (YAML flow style); "{{root}}" in
	// it becomes a fresh directory.
	storage string
	// extra is appended to the config; "{{hub}}" in it becomes the hub's
	// URL. It starts inside the docker.io registry entry, so it can add
	// registries (at two spaces) or top-level keys (at none).
	extra string
}

func newStack(t *testing.T, opt stackOptions) *stack {
	t.Helper()
	backend := testhub.StartRegistry(t)
	s := &stack{t: t, backend: backend, logs: testhub.NewTailBuffer(0)}
	if opt.user != "" {
		s.secret = "pw-" + randomHex(t)
		if opt.hub.Users == nil {
			opt.hub.Users = map[string]string{}
		}
		opt.hub.Users[opt.user] = s.secret
	}
	s.hub = testhub.NewHub(t, backend, opt.hub)
	if opt.tagTTL == "" {
		opt.tagTTL = "5m"
	}
	if opt.storage == "" {
		opt.storage = "{root: {{root}}}"
	}
	yaml := fmt.Sprintf("listen: 127.0.0.1:0\nstorage: %s\ntag_ttl: %s\nupstream_timeout: 10s\nlog_level: debug\nregistries:\n  docker.io:\n    url: %s\n",
		strings.ReplaceAll(opt.storage, "{{root}}", t.TempDir()), opt.tagTTL, s.hub.URL)
	if opt.user != "" {
		env := "RC_TEST_SECRET_" + strings.ToUpper(randomHex(t))
		t.Setenv(env, s.secret)
		yaml += fmt.Sprintf("    auth: {username: %s, password_env: %s}\n", opt.user, env)
	}
	yaml += strings.ReplaceAll(opt.extra, "{{hub}}", s.hub.URL)
	cfg, err := config.Parse([]byte(yaml), "test config")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s.app, err = New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	s.srv = httptest.NewServer(s.app.Handler)
	t.Cleanup(s.srv.Close)
	t.Cleanup(func() {
		if s.secret != "" && strings.Contains(s.logs.String(), s.secret) {
			t.Errorf("the upstream password appears in regcache's logs")
		}
		if t.Failed() {
			t.Logf("regcache logs (tail):\n%s", tail(s.logs.String(), 4000))
		}
	})
	return s
}

// get performs a request against regcache.
func (s *stack) do(method, path string, hdr map[string]string) (*http.Response, []byte) {
	s.t.Helper()
	req, _ := http.NewRequest(method, s.srv.URL+path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, nil
	}
	return resp, body
}

var acceptAll = strings.Join([]string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}, ", ")

// pull fetches a tag the way a client does: manifest by tag, then config
// and layers by digest, verifying every digest. It returns the manifest
// digest or an error describing the first failure.
func (s *stack) pull(name, tag string) (digest.Digest, error) {
	resp, body, err := s.tryDo("GET", "/v2/"+name+"/manifests/"+tag, map[string]string{"Accept": acceptAll})
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("manifest: %d %s", resp.StatusCode, body)
	}
	d := digest.FromBytes(body)
	if h := resp.Header.Get("Docker-Content-Digest"); h != d.String() {
		return "", fmt.Errorf("Docker-Content-Digest %s, body hashes to %s", h, d)
	}
	var m struct {
		Config struct{ Digest digest.Digest }   `json:"config"`
		Layers []struct{ Digest digest.Digest } `json:"layers"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return "", err
	}
	blobs := []digest.Digest{m.Config.Digest}
	for _, l := range m.Layers {
		blobs = append(blobs, l.Digest)
	}
	for _, b := range blobs {
		if b == "" {
			continue
		}
		if err := s.fetchBlob(name, b); err != nil {
			return "", err
		}
	}
	return d, nil
}

func (s *stack) tryDo(method, path string, hdr map[string]string) (*http.Response, []byte, error) {
	return request(method, s.srv.URL+path, hdr)
}

// request makes one request with headers and reads the whole answer.
func request(method, url string, hdr map[string]string) (*http.Response, []byte, error) {
	req, _ := http.NewRequest(method, url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func (s *stack) fetchBlob(name string, d digest.Digest) error {
	resp, err := http.Get(s.srv.URL + "/v2/" + name + "/blobs/" + d.String())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("blob %s: %d %s", d, resp.StatusCode, b)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != d {
		return fmt.Errorf("blob %s: received content hashes to %s", d, got)
	}
	return nil
}

// ociError decodes an OCI error body and returns its first code.
func ociError(t *testing.T, body []byte) (code, message string) {
	t.Helper()
	var e struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
		t.Fatalf("not OCI error JSON: %q", body)
	}
	return e.Errors[0].Code, e.Errors[0].Message
}

func randomHex(t *testing.T) string {
	b := make([]byte, 8)
	f, err := os.Open("/dev/urandom")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	io.ReadFull(f, b)
	return hex.EncodeToString(b)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
