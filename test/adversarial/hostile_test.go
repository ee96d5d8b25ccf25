package adversarial

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

// hostile is an upstream registry run by an attacker, or broken in an
// attacker's ways: a real Distribution registry behind a front that
// answers the requests a test names as the test says, and passes the rest
// on. It records every request it is sent.
type hostile struct {
	URL  string // http://127.0.0.1:port
	Host string
	// Backend is the real registry behind it; tests push images there.
	Backend *testhub.Registry

	proxy *httputil.ReverseProxy

	mu sync.Mutex
	// gate, when set, runs before everything else (authentication); it
	// returns false when it has answered.
	gate  func(w http.ResponseWriter, r *http.Request) bool
	rules []rule
	seen  []string // "METHOD /path?query"
}

type rule struct {
	method, path string // "" matches any method
	fn           http.HandlerFunc
}

// startHostile starts a hostile front of a new real registry on 127.0.0.1.
// Its handlers are stopped with the test: a handler that holds a response
// open forever (a drip, a stall) must watch r.Context().
func startHostile(t *testing.T) *hostile {
	t.Helper()
	backend := testhub.StartRegistry(t)
	bu, err := url.Parse(backend.URL)
	if err != nil {
		t.Fatal(err)
	}
	h := &hostile{Backend: backend, proxy: httputil.NewSingleHostReverseProxy(bu)}
	// Bytes pass through as the registry sent them.
	h.proxy.Transport = &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 32}
	h.proxy.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.Host = ln.Addr().String()
	h.URL = "http://" + h.Host
	ctx, cancel := context.WithCancel(context.Background())
	srv := &http.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0), BaseContext: func(net.Listener) context.Context { return ctx }}
	go srv.Serve(ln)
	t.Cleanup(func() { cancel(); srv.Close() })
	return h
}

// setGate puts gate before every answer (nil removes it).
func (h *hostile) setGate(gate func(w http.ResponseWriter, r *http.Request) bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gate = gate
}

// reset drops every rule: the upstream mends its ways.
func (h *hostile) reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rules = nil
}

// on answers requests for path (exactly, query aside) with fn; method ""
// matches every method. A later rule for the same request wins.
func (h *hostile) on(method, path string, fn http.HandlerFunc) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rules = append([]rule{{method, path, fn}}, h.rules...)
}

func (h *hostile) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.seen = append(h.seen, r.Method+" "+r.URL.RequestURI())
	var fn http.HandlerFunc
	for _, ru := range h.rules {
		if ru.path == r.URL.Path && (ru.method == "" || ru.method == r.Method) {
			fn = ru.fn
			break
		}
	}
	gate := h.gate
	h.mu.Unlock()
	if gate != nil && !gate(w, r) {
		return
	}
	if fn != nil {
		fn(w, r)
		return
	}
	h.proxy.ServeHTTP(w, r)
}

// count is the number of requests seen whose "METHOD /path?query" starts
// with prefix.
func (h *hostile) count(prefix string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, s := range h.seen {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}

// requests lists what the front was sent, for failure messages.
func (h *hostile) requests() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return strings.Join(h.seen, "\n")
}

// ociError answers as a registry does, in OCI error JSON.
func ociError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": message}}})
}

// listener counts every connection made to an address, and answers HTTP
// on it with 200 and a body; a test asserts that regcache never came.
type listener struct {
	Addr    string
	accepts atomic.Int64
}

func listen(t *testing.T, addr string) *listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	l := &listener{Addr: ln.Addr().String()}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "internal secrets")
	}), ErrorLog: log.New(io.Discard, "", 0), ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			l.accepts.Add(1)
		}
	}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return l
}

// ociErrorBody checks that a response is OCI error JSON with the status
// given, and returns its first code.
func ociErrorBody(t *testing.T, what string, resp *http.Response, body []byte, status int) string {
	t.Helper()
	var doc struct {
		Errors []struct{ Code, Message string }
	}
	if resp.StatusCode != status || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") ||
		json.Unmarshal(body, &doc) != nil || len(doc.Errors) == 0 || doc.Errors[0].Code == "" {
		t.Errorf("%s: want %d with OCI error JSON, got %d %q %.300s", what, status, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		return ""
	}
	return doc.Errors[0].Code
}

// within runs f and fails the test if it took longer than d. It is for
// the bounds the attacks are about (a response cut off, a stall ended),
// whose limits are seconds, set far above what the configured timeouts
// need on a loaded machine.
func within(t *testing.T, what string, d time.Duration, f func()) time.Duration {
	t.Helper()
	start := time.Now()
	f()
	took := time.Since(start)
	if took > d {
		t.Errorf("%s took %v, bound %v", what, took.Round(time.Millisecond), d)
	}
	return took
}

// registryConfig is a registries: block naming one upstream, hostile.example.
func registryConfig(upstream string, extra string) string {
	return fmt.Sprintf("registries:\n  hostile.example:\n    url: %s\n%s", upstream, extra)
}

// namesFor is a registries: block that names the same upstream n times,
// r0.example to r<n-1>.example, each with the YAML flow fields extra. An
// attack counts against the source's breaker (and 429s pause it), which
// would keep the next attack from being sent: each gets a name of its own.
func namesFor(upstream string, n int, extra string) string {
	var b strings.Builder
	b.WriteString("registries:\n")
	for i := range n {
		fmt.Fprintf(&b, "  r%d.example: {url: %s%s}\n", i, upstream, extra)
	}
	return b.String()
}
