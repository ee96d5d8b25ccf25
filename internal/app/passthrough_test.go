package app

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/testhub"
)

// The referrers API is fetched whole once per tags_list_ttl, and the
// artifactType filter is applied by regcache, so distinct filters cost no
// upstream request and no cache entry of their own. The real registry used
// elsewhere (distribution v3.1.2) does not implement the API, so this
// upstream is a small fake that does.
func TestReferrersFilteredLocally(t *testing.T) {
	const dg = "sha256:4b0bbc8bd9bf4a6a8a1f2e4f26a81f8d3c8d4f7a57b3d2bdbbe09d4d2a2c0b1e"
	index := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":10,"artifactType":"application/vnd.example.sbom"},` +
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":10,"artifactType":"application/vnd.example.signature"}]}`
	var hits atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/":
			w.WriteHeader(200)
		case "/v2/org/app/referrers/" + dg:
			hits.Add(1)
			if r.URL.RawQuery != "" {
				t.Errorf("query passed upstream: %q; the whole list should be fetched once", r.URL.RawQuery)
			}
			w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
			fmt.Fprint(w, index)
		default:
			http.NotFound(w, r)
		}
	}))
	defer up.Close()
	cfg, err := config.Parse([]byte(fmt.Sprintf("storage: {root: %s}\nregistries:\n  registry.example.com:\n    url: %s\n", t.TempDir(), up.URL)), "test")
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler)
	defer srv.Close()
	tests := []struct {
		query, filtered string
		want, notWant   string
	}{
		{"?artifactType=application/vnd.example.sbom", "artifactType", "vnd.example.sbom", "vnd.example.signature"},
		{"?artifactType=application/vnd.example.signature", "artifactType", "vnd.example.signature", "vnd.example.sbom"},
		{"", "", "vnd.example.signature", ""},
		{"?artifactType=application/vnd.example.sbom", "artifactType", "vnd.example.sbom", "vnd.example.signature"},
	}
	for _, tc := range tests {
		resp, err := http.Get(srv.URL + "/v2/registry.example.com/org/app/referrers/" + dg + tc.query)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/vnd.oci.image.index.v1+json" ||
			!strings.Contains(string(b), tc.want) || (tc.notWant != "" && strings.Contains(string(b), tc.notWant)) {
			t.Fatalf("referrers%s: %d %q %q", tc.query, resp.StatusCode, resp.Header.Get("Content-Type"), b)
		}
		if got := resp.Header.Get("OCI-Filters-Applied"); got != tc.filtered {
			t.Errorf("referrers%s: OCI-Filters-Applied %q, want %q", tc.query, got, tc.filtered)
		}
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("upstream asked %d times; the answer should be reused for tags_list_ttl", n)
	}
}

// A real registry without the referrers API answers 404, and so does
// regcache, so clients fall back to the referrers tag schema.
func TestReferrersUnsupportedUpstream(t *testing.T) {
	s := newStack(t, stackOptions{})
	img := s.backend.PushImage(t, "library/alpine", "3.19", testhub.ImageOptions{})
	resp, body := s.do("GET", "/v2/library/alpine/referrers/"+img.Digest.String(), nil)
	if resp.StatusCode != 404 {
		t.Fatalf("got %d %s", resp.StatusCode, body)
	}
	ociError(t, body)
}

// containerd's ?ns= is echoed as OCI-Namespace.
func TestNamespaceEcho(t *testing.T) {
	s := newStack(t, stackOptions{})
	s.backend.PushImage(t, "library/alpine", "3.19", testhub.ImageOptions{})
	resp, _ := s.do("HEAD", "/v2/library/alpine/manifests/3.19?ns=docker.io", map[string]string{"Accept": acceptAll})
	if resp.StatusCode != 200 || resp.Header.Get("OCI-Namespace") != "docker.io" {
		t.Fatalf("got %d, OCI-Namespace %q", resp.StatusCode, resp.Header.Get("OCI-Namespace"))
	}
}
