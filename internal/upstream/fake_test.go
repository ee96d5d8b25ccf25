package upstream

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
)

// fakeRegistry is a minimal OCI registry for tests: manifests and blobs in
// memory, anonymous, Basic or Bearer auth (token endpoint on the same
// host:port, because ggcr refuses loopback realms on other hosts), and a
// request counter per "METHOD path".
type fakeRegistry struct {
	srv  *httptest.Server
	auth string // "anon", "basic" or "bearer"
	user string
	pass string

	mu          sync.Mutex
	manifests   map[string]fakeManifest // "repo:ref" or "repo@digest"
	blobs       map[digest.Digest][]byte
	counts      map[string]int
	tokens      map[string]bool
	tokenCount  int
	pingCount   int
	nextToken   int
	blobBaseURL string // when set, blob GETs redirect here with 307
	// hook, when set, may answer a request itself (return true).
	hook func(w http.ResponseWriter, r *http.Request) bool
	// extra headers on every manifest response.
	manifestHeader http.Header
}

type fakeManifest struct {
	mediaType string
	data      []byte
	// header overrides the Docker-Content-Digest header ("-" = omit).
	header string
}

func newFakeRegistry(t *testing.T, auth string) *fakeRegistry {
	t.Helper()
	f := &fakeRegistry{
		auth:      auth,
		user:      "alice",
		pass:      "s3cret-Pa55",
		manifests: map[string]fakeManifest{},
		blobs:     map[digest.Digest][]byte{},
		counts:    map[string]int{},
		tokens:    map[string]bool{},
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeRegistry) host() string { return strings.TrimPrefix(f.srv.URL, "http://") }

// putManifest stores data under repo:tag and repo@digest and returns its digest.
func (f *fakeRegistry) putManifest(repo, tag, mediaType string, data []byte) digest.Digest {
	d := digest.FromBytes(data)
	f.mu.Lock()
	defer f.mu.Unlock()
	m := fakeManifest{mediaType: mediaType, data: data}
	if tag != "" {
		f.manifests[repo+":"+tag] = m
	}
	f.manifests[repo+"@"+d.String()] = m
	return d
}

func (f *fakeRegistry) putBlob(data []byte) digest.Digest {
	d := digest.FromBytes(data)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blobs[d] = data
	return d
}

func (f *fakeRegistry) count(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[key]
}

// requests is a copy of the counts of authorised requests by "METHOD path".
func (f *fakeRegistry) requests() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.counts)
}

func (f *fakeRegistry) stats() (pings, tokens int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pingCount, f.tokenCount
}

func (f *fakeRegistry) expireTokens() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens = map[string]bool{}
}

func ociError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}

func (f *fakeRegistry) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	hook := f.hook
	f.mu.Unlock()
	if r.URL.Path == "/token" {
		f.serveToken(w, r)
		return
	}
	if hook != nil && hook(w, r) {
		return
	}
	repo, kind, ref := splitV2(r.URL.Path)
	if r.URL.Path == "/v2/" {
		f.mu.Lock()
		f.pingCount++
		f.mu.Unlock()
	}
	if !f.authorized(w, r, repo) {
		return
	}
	f.mu.Lock()
	f.counts[r.Method+" "+r.URL.Path]++
	f.mu.Unlock()
	switch kind {
	case "":
		if r.URL.Path == "/v2/" {
			w.WriteHeader(http.StatusOK)
			return
		}
		http.NotFound(w, r)
	case "manifests":
		f.serveManifest(w, r, repo, ref)
	case "blobs":
		f.serveBlob(w, r, ref)
	case "tags":
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"name":%q,"tags":["a","b"]}`, repo)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeRegistry) serveManifest(w http.ResponseWriter, r *http.Request, repo, ref string) {
	sep := ":"
	if strings.Contains(ref, ":") {
		sep = "@"
	}
	f.mu.Lock()
	m, ok := f.manifests[repo+sep+ref]
	for k, v := range f.manifestHeader {
		w.Header()[k] = v
	}
	f.mu.Unlock()
	if !ok {
		ociError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest unknown")
		return
	}
	w.Header().Set("Content-Type", m.mediaType)
	switch m.header {
	case "":
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(m.data).String())
	case "-":
	default:
		w.Header().Set("Docker-Content-Digest", m.header)
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(m.data)))
	if r.Method == http.MethodGet {
		w.Write(m.data)
	}
}

func (f *fakeRegistry) serveBlob(w http.ResponseWriter, r *http.Request, ref string) {
	f.mu.Lock()
	data, ok := f.blobs[digest.Digest(ref)]
	redirect := f.blobBaseURL
	f.mu.Unlock()
	if !ok {
		if r.Method == http.MethodHead {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		ociError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown")
		return
	}
	if redirect != "" {
		http.Redirect(w, r, redirect+"/cdn/"+ref, http.StatusTemporaryRedirect)
		return
	}
	w.Header().Set("Docker-Content-Digest", ref)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", fmt.Sprint(len(data)))
	if r.Method == http.MethodGet {
		w.Write(data)
	}
}

// authorized enforces the fake's auth mode and writes the challenge if the
// request does not pass.
func (f *fakeRegistry) authorized(w http.ResponseWriter, r *http.Request, repo string) bool {
	switch f.auth {
	case "basic":
		if u, p, ok := r.BasicAuth(); ok && u == f.user && p == f.pass {
			return true
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="fake"`)
	case "bearer":
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		f.mu.Lock()
		valid := ok && f.tokens[tok]
		f.mu.Unlock()
		if valid {
			return true
		}
		ch := fmt.Sprintf(`Bearer realm="http://%s/token",service="fake"`, r.Host)
		if repo != "" {
			ch += fmt.Sprintf(`,scope="repository:%s:pull"`, repo)
		}
		w.Header().Set("WWW-Authenticate", ch)
	default:
		return true
	}
	ociError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
	return false
}

func (f *fakeRegistry) serveToken(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokenCount++
	if u, p, ok := r.BasicAuth(); ok && (u != f.user || p != f.pass) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"details":"incorrect username or password"}`)
		return
	}
	f.nextToken++
	tok := fmt.Sprintf("tok-%d", f.nextToken)
	f.tokens[tok] = true
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"token":%q,"expires_in":300}`, tok)
}

// splitV2 splits /v2/<repo>/<kind>/<ref> (kind: manifests, blobs, tags).
func splitV2(p string) (repo, kind, ref string) {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return "", "", ""
	}
	for _, k := range []string{"/manifests/", "/blobs/", "/tags/"} {
		if i := strings.LastIndex(rest, k); i >= 0 {
			return rest[:i], strings.Trim(k, "/"), rest[i+len(k):]
		}
	}
	return "", "", ""
}

// listenOn starts handler on addr (e.g. "127.0.0.2:0"): another loopback
// address, so a redirect there changes the host, not only the port. Linux
// routes all of 127.0.0.0/8 to lo.
func listenOn(t *testing.T, addr string, h http.Handler) *httptest.Server {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("cannot listen on %s: %v", addr, err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}
