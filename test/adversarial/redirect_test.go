package adversarial

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/testhub"
)

// Attacks through redirects and bad bytes (issue 13, item 7): an upstream
// that sends regcache to an internal address (another service on the
// host, the cloud metadata service) to read it for the attacker, and one
// that serves content that does not match its digest, hoping a client
// keeps what arrived before the check.

// redirectTo answers every request with a 307 to target.
func redirectTo(target string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", target)
		w.WriteHeader(http.StatusTemporaryRedirect)
	}
}

// The upstream is on loopback, so regcache's default would let it redirect
// to loopback (an internal registry's CDN may be internal too);
// allow_private_redirects: false says it must not. Each attack goes to a
// registry of its own (the same hostile front under another name) so that
// one attack opening a breaker does not keep the next from being tried.
func TestRedirectsToPrivateAddressesAreRefused(t *testing.T) {
	t.Parallel()
	h := startHostile(t)
	img := h.Backend.PushImage(t, "team/app", "v1", testhub.ImageOptions{})
	internal := listen(t, "127.0.0.1:0")
	_, internalPort, _ := net.SplitHostPort(internal.Addr)
	metadata := listen(t, net.JoinHostPort(metadataIP, "80"))
	realm := listen(t, "127.0.0.1:0")

	attacks := []struct {
		name, path, target string
		hit                *listener
	}{
		{"blob to another loopback port", "/v2/team/app/blobs/" + img.Layers[0].String(), "http://" + internal.Addr + "/v2/blob", internal},
		{"blob to localhost by name", "/v2/team/app/blobs/" + img.Layers[0].String(), "http://localhost:" + internalPort + "/v2/blob", internal},
		{"blob to the metadata service", "/v2/team/app/blobs/" + img.Config.String(), "http://" + metadataIP + "/latest/meta-data/iam/security-credentials/", metadata},
		{"manifest to another loopback port", "/v2/team/app/manifests/" + img.Digest.String(), "http://" + internal.Addr + "/v2/manifest", internal},
		{"manifest to the metadata service", "/v2/team/app/manifests/" + img.Digest.String(), "http://" + metadataIP + "/computeMetadata/v1/", metadata},
	}
	var regs strings.Builder
	regs.WriteString("registries:\n")
	for i := range attacks {
		fmt.Fprintf(&regs, "  r%d.example: {url: %s, allow_private_redirects: false}\n", i, h.URL)
	}
	// The token realm attack: a repository whose challenge sends the
	// login to an internal address.
	fmt.Fprintf(&regs, "  realm.example: {url: %s, allow_private_redirects: false}\n", h.URL)
	// The control: allowed, the same redirect does reach the listener, so
	// the listeners would have seen the attacks above.
	fmt.Fprintf(&regs, "  allowed.example: {url: %s, allow_private_redirects: true}\n", h.URL)
	rc := startRegcache(t, regs.String()+"log_level: debug\n")
	accept := http.Header{"Accept": {acceptManifests}}

	for i, a := range attacks {
		h.on("GET", a.path, redirectTo(a.target))
		before := h.count("GET " + a.path)
		resp, body := call(t, rc.Client, "GET", fmt.Sprintf("%s/v2/r%d.example%s", rc.URL, i, strings.TrimPrefix(a.path, "/v2")), accept)
		ociErrorBody(t, a.name, resp, body, http.StatusServiceUnavailable)
		if strings.Contains(string(body), "internal secrets") {
			t.Errorf("%s: the internal answer reached the client", a.name)
		}
		if h.count("GET "+a.path) == before {
			t.Errorf("%s: the upstream was never asked, so the redirect was not tried:\n%s", a.name, h.requests())
		}
	}
	if n := internal.accepts.Load() + metadata.accepts.Load(); n != 0 {
		t.Errorf("regcache connected to internal addresses %d times", n)
	}
	if !strings.Contains(rc.wholeLog(), "registries.r0.example.allow_private_redirects") {
		t.Error("the log does not name the config key that would allow the redirect")
	}

	// A challenge whose realm is an internal address.
	h.setGate(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/v2/" || strings.HasPrefix(r.URL.Path, "/v2/secret/") {
			w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+realm.Addr+`/token",service="hostile"`)
			ociError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
			return false
		}
		return true
	})
	resp, body := call(t, rc.Client, "GET", rc.URL+"/v2/realm.example/secret/app/manifests/v1", accept)
	if resp.StatusCode < 400 {
		t.Errorf("a login at an internal realm: %d %s", resp.StatusCode, body)
	}
	if n := realm.accepts.Load(); n != 0 {
		t.Errorf("regcache asked an internal token realm %d times", n)
	}
	h.setGate(nil)

	// The control.
	h.on("GET", "/v2/team/app/blobs/"+img.Layers[0].String(), redirectTo("http://"+internal.Addr+"/v2/blob"))
	send(rc.Client, "GET", rc.URL+"/v2/allowed.example/team/app/blobs/"+img.Layers[0].String(), nil, nil)
	if internal.accepts.Load() == 0 {
		t.Error("control: an allowed redirect did not reach the listener: the attacks above proved nothing")
	}
}

// fetch reads a blob straight from the real registry.
func (h *hostile) fetch(t *testing.T, repo string, d digest.Digest) []byte {
	t.Helper()
	resp, b, err := send(http.DefaultClient, "GET", h.Backend.URL+"/v2/"+repo+"/blobs/"+d.String(), nil, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("fetching %s from the registry: %v", d, err)
	}
	return b
}

// serveBytes answers with body as the content of digest d: the right
// length and headers, whatever the bytes.
func serveBytes(d digest.Digest, body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Header().Set("Docker-Content-Digest", d.String())
		if r.Method == http.MethodGet {
			w.Write(body)
		}
	}
}

// Content that does not match its digest never reaches a client whole:
// nothing at all of a small blob or of a manifest (held back until
// verified), at most all but the last byte of a large blob, whose
// transfer is then aborted. Nothing of it is kept.
func TestBadContentIsHeldBack(t *testing.T) {
	t.Parallel()
	h := startHostile(t)
	small := h.Backend.PushImage(t, "team/small", "v1", testhub.ImageOptions{LayerSize: 512 << 10, Uncompressed: true})
	large := h.Backend.PushImage(t, "team/large", "v1", testhub.ImageOptions{LayerSize: 4 << 20, Uncompressed: true})
	// Each case has a registry name of its own: wrong bytes count
	// against the source's breaker, and a breaker that opened would keep
	// the next case from being tried.
	var regs strings.Builder
	regs.WriteString("registries:\n")
	for _, name := range []string{"c0", "c1", "c2", "c3", "c4", "mended"} {
		fmt.Fprintf(&regs, "  %s.example: {url: %s}\n", name, h.URL)
	}
	rc := startRegcache(t, regs.String())

	tamper := func(b []byte, at int) []byte {
		out := append([]byte(nil), b...)
		out[at] ^= 0xff
		return out
	}
	smallBlob := h.fetch(t, "team/small", small.Layers[0])
	largeBlob := h.fetch(t, "team/large", large.Layers[0])
	cases := []struct {
		name     string
		repo     string
		d        digest.Digest
		body     []byte
		maxBytes int // the most the client may receive
	}{
		{"small blob, first byte wrong", "team/small", small.Layers[0], tamper(smallBlob, 0), 0},
		{"small config, last byte wrong", "team/small", small.Config, tamper(h.fetch(t, "team/small", small.Config), 0), 0},
		{"large blob, last byte wrong", "team/large", large.Layers[0], tamper(largeBlob, len(largeBlob)-1), len(largeBlob) - 1},
		{"large blob, first byte wrong", "team/large", large.Layers[0], tamper(largeBlob, 0), len(largeBlob) - 1},
	}
	for i, tc := range cases {
		path := "/v2/" + tc.repo + "/blobs/" + tc.d.String()
		h.on("GET", path, serveBytes(tc.d, tc.body))
		before := h.count("GET " + path)
		resp, got, err := send(rc.Client, "GET", fmt.Sprintf("%s/v2/c%d.example%s", rc.URL, i, strings.TrimPrefix(path, "/v2")), nil, nil)
		switch {
		case resp == nil:
			// Cut before the header: the client got nothing.
		case resp.StatusCode == 200 && err == nil:
			t.Errorf("%s: a complete 200 of %d bytes", tc.name, len(got))
		case resp.StatusCode == 200 && len(got) > tc.maxBytes:
			t.Errorf("%s: the client got %d bytes, at most %d allowed", tc.name, len(got), tc.maxBytes)
		case resp.StatusCode != 200:
			ociErrorBody(t, tc.name, resp, got, http.StatusBadGateway)
		}
		if h.count("GET "+path) == before {
			t.Errorf("%s: the upstream was not asked", tc.name)
		}
	}

	// A manifest by digest with wrong bytes: an error, none of its bytes.
	mpath := "/v2/team/small/manifests/" + small.Digest.String()
	bad := tamper(small.Manifest, len(small.Manifest)/2)
	h.on("GET", mpath, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", small.MediaType)
		w.Write(bad)
	})
	resp, body := call(t, rc.Client, "GET", rc.URL+"/v2/c4.example"+strings.TrimPrefix(mpath, "/v2"), http.Header{"Accept": {acceptManifests}})
	ociErrorBody(t, "a manifest with wrong bytes", resp, body, http.StatusBadGateway)

	// Nothing was kept: the store holds no blob, and no partial file (a
	// failed download is discarded before its readers hear of it). Then
	// the upstream mends its ways, and the content is served as usual.
	if files := storedFiles(t, rc.Data); len(files) != 0 {
		t.Errorf("bad content left files in the store: %v", files)
	}
	h.reset()
	if err := pull(rc.Client, rc.URL, "mended.example/team/large", "v1", http.Header{"Accept": {acceptManifests}}); err != nil {
		t.Errorf("the pull after the upstream mended: %v", err)
	}
}

// storedFiles lists the blobs and partial downloads under a store's root.
func storedFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	for _, dir := range []string{"blobs", "tmp"} {
		filepath.WalkDir(filepath.Join(root, dir), func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				out = append(out, strings.TrimPrefix(p, root+"/"))
			}
			return nil
		})
	}
	return out
}
