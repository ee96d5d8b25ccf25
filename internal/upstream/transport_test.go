package upstream

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// firstByteListener records, for every accepted connection, whether it
// opened with a TLS handshake record (0x16) or with anything else.
type firstByteListener struct {
	net.Listener
	tls, plain atomic.Int64
}

func (l *firstByteListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &firstByteConn{Conn: c, l: l}, nil
}

type firstByteConn struct {
	net.Conn
	l    *firstByteListener
	once sync.Once
}

func (c *firstByteConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.once.Do(func() {
			if p[0] == 0x16 {
				c.l.tls.Add(1)
			} else {
				c.l.plain.Add(1)
			}
		})
	}
	return n, err
}

// TestSchemeIsPinned: regcache talks to an upstream only by the scheme its
// URL names. go-containerregistry's ping would also try https against an
// http:// upstream, and http against an https:// upstream on a local name.
func TestSchemeIsPinned(t *testing.T) {
	for _, tc := range []struct {
		name      string
		scheme    string
		auth      string
		wantOK    bool
		wantTLS   int64
		wantPlain bool
	}{
		{"http upstream, anonymous: no TLS handshake", "http", "anon", true, 0, true},
		{"http upstream, bearer: no TLS handshake", "http", "bearer", true, 0, true},
		{"https upstream on 127.0.0.1: never downgraded to http", "https", "bearer", false, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeRegistry(t, tc.auth)
			d := f.putManifest("library/alpine", "3.20", ocispec.MediaTypeImageManifest, []byte(testManifest))
			srv := httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
			l := &firstByteListener{Listener: srv.Listener}
			srv.Listener = l
			srv.Start()
			t.Cleanup(srv.Close)
			host := srv.Listener.Addr().String()

			cfg := Config{URL: tc.scheme + "://" + host}
			if tc.auth != "anon" {
				cfg.Auth = credsFor(f)
			}
			r := newRegistryT(t, cfg, newFakeClock())
			_, err := r.Manifest(context.Background(), repo(t, "library/alpine"), d, AnySource)
			if ok := err == nil; ok != tc.wantOK {
				t.Fatalf("Manifest: err %v, want success %v", err, tc.wantOK)
			}
			if got := l.tls.Load(); got != tc.wantTLS {
				t.Errorf("%d TLS handshakes reached the upstream, want %d", got, tc.wantTLS)
			}
			if got := l.plain.Load() > 0; got != tc.wantPlain {
				t.Errorf("plain-HTTP connections: %v, want %v", got, tc.wantPlain)
			}
		})
	}
}

// TestCheckRedirectAuthorization tests the redirect policy itself: the
// Authorization header, set by regcache for the configured upstream, goes
// only to that upstream's exact scheme, host and port. It must not depend
// on net/http or go-containerregistry happening not to copy the header
// into a redirect: net/http keeps it for another port or a subdomain.
func TestCheckRedirectAuthorization(t *testing.T) {
	tests := []struct {
		name string
		via  []string // via[0] is the request regcache sent
		to   string
		keep bool
	}{
		{"same scheme, host and port", []string{"https://reg.example.com/v2/a/blobs/x"}, "https://reg.example.com/blobs/x?sig=1", true},
		{"default port spelled out", []string{"https://reg.example.com/v2/"}, "https://reg.example.com:443/x", true},
		{"default http port spelled out", []string{"http://127.0.0.1:80/v2/"}, "http://127.0.0.1/x", true},
		{"same IP and port", []string{"http://127.0.0.1:5000/v2/"}, "http://127.0.0.1:5000/x", true},
		{"same IPv6 address and port", []string{"http://[::1]:5000/v2/"}, "http://[::1]:5000/x", true},
		{"back to the upstream after a hop", []string{"https://reg.example.com/v2/", "https://cdn.example.net/x"}, "https://reg.example.com/y", true},

		{"same IP, other port", []string{"http://127.0.0.1:5000/v2/"}, "http://127.0.0.1:5001/x", false},
		{"same IPv6 address, other port", []string{"http://[::1]:5000/v2/"}, "http://[::1]:5001/x", false},
		{"same host, other port", []string{"https://reg.example.com/v2/"}, "https://reg.example.com:8443/x", false},
		{"https to http, same host", []string{"https://reg.example.com/v2/"}, "http://reg.example.com/x", false},
		{"https to http, same host and port", []string{"https://reg.example.com:8443/v2/"}, "http://reg.example.com:8443/x", false},
		{"http to https, same host and port", []string{"http://127.0.0.1:5000/v2/"}, "https://127.0.0.1:5000/x", false},
		{"other host", []string{"https://registry-1.docker.io/v2/"}, "https://production.cloudflare.docker.com/x", false},
		{"subdomain", []string{"https://example.com/v2/"}, "https://cdn.example.com/x", false},
		{"parent domain", []string{"https://reg.example.com/v2/"}, "https://example.com/x", false},
		{"other IP, same port", []string{"http://127.0.0.1:5000/v2/"}, "http://127.0.0.2:5000/x", false},
		{"host name for the same IP", []string{"http://127.0.0.1:5000/v2/"}, "http://localhost:5000/x", false},
		{"second hop to a third host", []string{"https://reg.example.com/v2/", "https://cdn.example.net/x"}, "https://other.example.org/y", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var via []*http.Request
			for _, u := range tc.via {
				via = append(via, httptest.NewRequest(http.MethodGet, u, nil))
			}
			req := httptest.NewRequest(http.MethodGet, tc.to, nil)
			req.Header.Set("Authorization", "Basic c2VjcmV0")
			req.Header.Set("Accept", "application/octet-stream")
			if err := checkRedirect(req, via); err != nil {
				t.Fatalf("checkRedirect: %v", err)
			}
			if got := req.Header.Get("Authorization") != ""; got != tc.keep {
				t.Errorf("%s -> %s: Authorization kept %v, want %v", tc.via[0], tc.to, got, tc.keep)
			}
			if req.Header.Get("Accept") == "" {
				t.Errorf("the other headers must stay: %v", req.Header)
			}
		})
	}
}

func TestCheckRedirectStopsAfterTen(t *testing.T) {
	via := make([]*http.Request, maxRedirects)
	for i := range via {
		via[i] = httptest.NewRequest(http.MethodGet, "http://127.0.0.1:5000/v2/", nil)
	}
	if err := checkRedirect(httptest.NewRequest(http.MethodGet, "http://127.0.0.1:5000/x", nil), via); err == nil {
		t.Fatal("an eleventh redirect was followed")
	}
}

// TestRedirectPolicyWithHTTPClient follows real redirects with net/http and
// the policy, from an upstream that was sent credentials to a server on the
// same IP and another port (where net/http itself would forward them), and
// to another path on the upstream itself (where they must still go).
func TestRedirectPolicyWithHTTPClient(t *testing.T) {
	const auth = "Basic dXNlcjpzM2NyZXQ="
	var mu sync.Mutex
	seen := map[string][]string{} // server -> Authorization headers it received
	record := func(name string, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		seen[name] = append(seen[name], r.Header.Get("Authorization"))
	}
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		record("target", r)
		io.WriteString(w, "blob")
	}))
	t.Cleanup(target.Close)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		record("upstream "+r.URL.Path, r)
		switch r.URL.Path {
		case "/v2/a/blobs/cdn":
			http.Redirect(w, r, target.URL+"/data", http.StatusTemporaryRedirect)
		case "/v2/a/blobs/local":
			http.Redirect(w, r, "/storage/data", http.StatusTemporaryRedirect)
		default:
			io.WriteString(w, "blob")
		}
	}))
	t.Cleanup(upstream.Close)
	if uh, th := upstream.Listener.Addr().(*net.TCPAddr), target.Listener.Addr().(*net.TCPAddr); !uh.IP.Equal(th.IP) || uh.Port == th.Port {
		t.Fatalf("want the same IP and two ports: %s and %s", uh, th)
	}

	client := &http.Client{CheckRedirect: checkRedirect}
	for _, path := range []string{"/v2/a/blobs/cdn", "/v2/a/blobs/local"} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, upstream.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", auth)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "blob" {
			t.Fatalf("GET %s: %d %q", path, resp.StatusCode, body)
		}
	}

	mu.Lock()
	defer mu.Unlock()
	want := map[string][]string{
		"upstream /v2/a/blobs/cdn":   {auth},
		"target":                     {""},
		"upstream /v2/a/blobs/local": {auth},
		"upstream /storage/data":     {auth},
	}
	for name, w := range want {
		if got := seen[name]; !slices.Equal(got, w) {
			t.Errorf("%s received Authorization %q, want %q", name, got, w)
		}
	}
}
