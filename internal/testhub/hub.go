package testhub

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// Options configures a Hub. The zero value is an anonymous-only origin with
// no rate limit and Bearer token auth.
type Options struct {
	// Users maps username to password; the token realm (Basic credentials on
	// GET /token, or the OAuth2 password grant) and BasicAuth mode accept them.
	Users map[string]string
	// AnonymousLimit is the number of counted pulls per Window for anonymous
	// clients; 0 means no limit and no rate-limit headers at all.
	AnonymousLimit int
	// UserLimit is the same for each authenticated user.
	UserLimit int
	// Window is the rate-limit window, reported as w=<seconds>; default 6h.
	Window time.Duration
	// Service is the token service; default "registry.docker.io".
	Service string
	// Scope, if set, is the fixed scope put in every challenge instead of
	// "repository:<name>:pull", and a token issued for it is good for every
	// repository (ECR Public uses "aws").
	Scope string
	// BasicAuth makes the hub a plain Basic-auth registry: the challenge is
	// `Basic realm=...` and Basic credentials are accepted on /v2/ directly.
	BasicAuth bool
	// NoAuth disables authentication entirely (an open registry); every
	// client counts as anonymous.
	NoAuth bool
	// TokenTTL is expires_in of issued tokens; default 60s.
	TokenTTL time.Duration
	// BlobRedirect answers blob GETs with 307 to a second listener on
	// 127.0.0.2 (the "CDN") that serves the bytes without auth and records any
	// Authorization header it receives.
	BlobRedirect bool
	// RepoPrefix gives the hub the mirror role: it serves "<RepoPrefix><name>"
	// from backend "<name>" (e.g. "docker/" maps docker/library/node to
	// library/node, as ECR Public does). Other names are NAME_UNKNOWN.
	RepoPrefix string
	// CDNHostname, if set, is the host name used in redirect Locations, and
	// the CDN listens on the loopback address it resolves to ("localhost" =
	// 127.0.0.1) instead of 127.0.0.2. go-containerregistry >= 0.22 refuses
	// cross-host redirects to literal loopback/private IPs ("SSRF
	// protection"), but follows them to a host name.
	CDNHostname string
	// FaultRetryAfter is the Retry-After of injected 429s; default 60s.
	FaultRetryAfter time.Duration
}

// Fault is a failure the hub injects into responses.
//
// On repository requests a fault applies after authentication, so a client
// without a token still gets its 401 challenge first. ScopeAll also covers
// the token realm and the /v2/ ping, for the faults that replace a whole
// response (429, 500, Drop, Hang). The body faults (DropMidBody, Corrupt) only
// touch manifest and blob GET bodies; with BlobRedirect they are applied by
// the CDN listener.
type Fault int

const (
	FaultNone Fault = iota
	// Fault429 answers 429 with a TOOMANYREQUESTS body and Retry-After.
	Fault429
	// Fault500 answers 500 with an UNKNOWN error body.
	Fault500
	// FaultDrop closes the connection without any response.
	FaultDrop
	// FaultDropMidBody sends the headers and half of a manifest or blob
	// body, then closes the connection.
	FaultDropMidBody
	// FaultCorrupt flips one byte in the middle of manifest and blob bodies;
	// length and headers are unchanged.
	FaultCorrupt
	// FaultHang is an origin that accepts a connection, reads the request
	// and never answers: nothing is written until Release (which lets the
	// request be answered as if no fault applied), the client gives up, or
	// the test ends (then the connection is closed, still silent).
	FaultHang
)

// wholeResponse are the faults that replace a whole response.
var wholeResponse = []Fault{Fault429, Fault500, FaultDrop, FaultHang}

func (f Fault) String() string {
	switch f {
	case FaultNone:
		return "FaultNone"
	case Fault429:
		return "Fault429"
	case Fault500:
		return "Fault500"
	case FaultDrop:
		return "FaultDrop"
	case FaultDropMidBody:
		return "FaultDropMidBody"
	case FaultCorrupt:
		return "FaultCorrupt"
	case FaultHang:
		return "FaultHang"
	}
	return "Fault(" + strconv.Itoa(int(f)) + ")"
}

// Scope selects which requests a Fault applies to.
type Scope int

const (
	// ScopeAll covers every request, including /token and the /v2/ ping.
	ScopeAll Scope = iota
	// ScopeManifests covers manifest GET and HEAD.
	ScopeManifests
	// ScopeBlobs covers blob GET and HEAD, on the front and the CDN.
	ScopeBlobs
)

// Counts is a snapshot of what the hub has seen.
type Counts struct {
	// ManifestGETs counts pulls as Docker Hub does: manifest GETs answered 200.
	ManifestGETs int
	// ManifestHEADs counts authorized manifest HEADs, whatever their status.
	ManifestHEADs int
	// ManifestGETsByRepo is ManifestGETs by repository name as the client
	// addressed it (with RepoPrefix in the mirror role).
	ManifestGETsByRepo map[string]int
	// RateLimited counts manifest GETs refused because the budget was spent.
	RateLimited int
	// BlobGETs counts authorized blob GETs per digest, redirected ones included.
	BlobGETs map[digest.Digest]int
	// BlobBytes is blob body bytes actually sent, front and CDN.
	BlobBytes int64
	// TokenRequests counts requests to the token realm.
	TokenRequests int
	// Requests counts every request under /v2/ on the front.
	Requests int
	// CDNRequests counts every request to the CDN listener.
	CDNRequests int
	// CDNAuthHeaders counts Authorization headers seen by the CDN (must stay 0).
	CDNAuthHeaders int
	// Faults counts responses replaced or damaged by an injected fault.
	Faults int
	// Hung counts requests FaultHang held (released since or not);
	// Hanging is how many it holds now.
	Hung, Hanging int
}

// Transfer is one completed blob body transfer.
type Transfer struct {
	Digest     digest.Digest
	Start, End time.Time
	Bytes      int64
	// CDN is true when the CDN listener sent the bytes.
	CDN bool
}

// Hub is a fake Docker Hub in front of a real registry.
type Hub struct {
	URL  string // http://127.0.0.1:port
	Host string // 127.0.0.1:port
	// CDNURL and CDNHost are the blob redirect target; empty unless
	// Options.BlobRedirect.
	CDNURL, CDNHost string
	// Realm is the token endpoint, URL + "/token".
	Realm string

	opts      Options
	backend   *url.URL
	transport *http.Transport
	throttle  atomic.Int64
	now       func() time.Time
	// routeRE splits /v2/<name>/<kind>/<rest>; the name is matched lazily
	// so the first kind keyword ends it.
	routeRE *regexp.Regexp
	cdnRE   *regexp.Regexp

	mu         sync.Mutex
	fault      Fault
	faultScope Scope
	faultLeft  int // remaining injections; 0 = unlimited
	delay      time.Duration
	release    chan struct{} // closed by Release, then replaced
	counts     Counts
	transfers  []transferRec
	nextID     uint64
	tokens     map[string]grant
	refresh    map[string]string // refresh token -> username
	buckets    map[string]*bucket
}

// NewHub starts a fake Docker Hub front on 127.0.0.1 that proxies to backend,
// and stops it via t.Cleanup.
func NewHub(t testing.TB, backend *Registry, opts Options) *Hub {
	t.Helper()
	if opts.Window <= 0 {
		opts.Window = 6 * time.Hour
	}
	if opts.Service == "" {
		opts.Service = "registry.docker.io"
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = 60 * time.Second
	}
	if opts.FaultRetryAfter <= 0 {
		opts.FaultRetryAfter = 60 * time.Second
	}
	bu, err := url.Parse(backend.URL)
	if err != nil {
		t.Fatalf("testhub: backend URL: %v", err)
	}
	h := &Hub{
		opts:    opts,
		backend: bu,
		// No proxy and no transparent gzip: bytes must pass through as the
		// registry sent them.
		transport: &http.Transport{
			Proxy:               nil,
			DisableCompression:  true,
			MaxIdleConnsPerHost: 64,
		},
		now:     time.Now,
		routeRE: regexp.MustCompile(`^/v2/(.+?)/(manifests|blobs|tags|referrers)/(.*)$`),
		cdnRE:   regexp.MustCompile(`^/registry-v2/(.+)/blobs/([^/]+)/data$`),
		tokens:  map[string]grant{},
		refresh: map[string]string{},
		buckets: map[string]*bucket{},
		counts:  Counts{ManifestGETsByRepo: map[string]int{}, BlobGETs: map[digest.Digest]int{}},
		release: make(chan struct{}),
	}

	// Handlers may be sleeping (delay, throttle); cancelling the base context
	// on cleanup lets them return instead of holding the test open.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	errLog := log.New(io.Discard, "", 0)

	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testhub: listen: %v", err)
	}
	t.Cleanup(func() { _ = front.Close() })
	h.Host = front.Addr().String()
	h.URL = "http://" + h.Host
	h.Realm = h.URL + "/token"
	fsrv := &http.Server{Handler: http.HandlerFunc(h.serveFront), ErrorLog: errLog, BaseContext: func(net.Listener) context.Context { return ctx }}

	var csrv *http.Server
	if opts.BlobRedirect {
		ip := "127.0.0.2"
		if opts.CDNHostname != "" {
			if ip, err = loopbackIP(ctx, opts.CDNHostname); err != nil {
				t.Fatalf("testhub: CDNHostname: %v", err)
			}
		}
		cdn, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatalf("testhub: listen on %s for the CDN: %v", ip, err)
		}
		h.CDNHost = cdn.Addr().String()
		if opts.CDNHostname != "" {
			_, port, _ := net.SplitHostPort(h.CDNHost)
			h.CDNHost = net.JoinHostPort(opts.CDNHostname, port)
		}
		h.CDNURL = "http://" + h.CDNHost
		csrv = &http.Server{Handler: http.HandlerFunc(h.serveCDN), ErrorLog: errLog, BaseContext: func(net.Listener) context.Context { return ctx }}
		go func() { _ = csrv.Serve(cdn) }()
	}
	// Only now: handlers read the CDN fields set above.
	go func() { _ = fsrv.Serve(front) }()

	t.Cleanup(func() {
		cancel()
		_ = fsrv.Close()
		if csrv != nil {
			_ = csrv.Close()
		}
		h.transport.CloseIdleConnections()
	})
	return h
}

// loopbackIP resolves host to an IPv4 loopback address; tests must never
// listen anywhere else.
func loopbackIP(ctx context.Context, host string) (string, error) {
	addrs, err := net.DefaultResolver.LookupHost(ctx, host)
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if ip := net.ParseIP(a); ip != nil && ip.To4() != nil && ip.IsLoopback() {
			return ip.String(), nil
		}
	}
	return "", fmt.Errorf("%s resolves to %v, no IPv4 loopback address", host, addrs)
}

// SetFault injects f into every request (ScopeAll) until changed.
func (h *Hub) SetFault(f Fault) { h.SetFaultN(f, ScopeAll, 0) }

// SetFaultFor injects f into requests in scope until changed.
func (h *Hub) SetFaultFor(f Fault, scope Scope) { h.SetFaultN(f, scope, 0) }

// SetFaultN injects f into the next n requests in scope, then reverts to
// FaultNone; n <= 0 means until changed. It makes retry tests deterministic.
func (h *Hub) SetFaultN(f Fault, scope Scope, n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fault, h.faultScope, h.faultLeft = f, scope, max(n, 0)
}

// Release lets every request FaultHang holds now be answered, as if no
// fault applied; requests that arrive later still hang while the fault is
// set. A hanging origin that recovers is SetFault(FaultNone), then Release.
func (h *Hub) Release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	close(h.release)
	h.release = make(chan struct{})
}

// SetDelay delays every /v2/ response by d (a slow origin): the request is
// read, then nothing is written for d. It applies to requests that arrive
// after the call.
func (h *Hub) SetDelay(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.delay = d
}

// SetThrottle limits blob bodies to bytesPerSec per transfer; 0 turns it off.
// It takes effect on transfers already running.
func (h *Hub) SetThrottle(bytesPerSec int64) { h.throttle.Store(max(bytesPerSec, 0)) }

// Counts returns a snapshot of the counters.
func (h *Hub) Counts() Counts {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.counts
	c.ManifestGETsByRepo = make(map[string]int, len(h.counts.ManifestGETsByRepo))
	for k, v := range h.counts.ManifestGETsByRepo {
		c.ManifestGETsByRepo[k] = v
	}
	c.BlobGETs = make(map[digest.Digest]int, len(h.counts.BlobGETs))
	for k, v := range h.counts.BlobGETs {
		c.BlobGETs[k] = v
	}
	return c
}

// ResetCounts zeroes the counters and forgets recorded transfers.
func (h *Hub) ResetCounts() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.counts = Counts{ManifestGETsByRepo: map[string]int{}, BlobGETs: map[digest.Digest]int{}, Hanging: h.counts.Hanging}
	h.transfers = nil
}

// Transfers returns the completed blob body transfers in completion order.
func (h *Hub) Transfers() []Transfer {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]Transfer, len(h.transfers))
	for i, r := range h.transfers {
		out[i] = r.Transfer
	}
	return out
}

func (h *Hub) count(f func(c *Counts)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f(&h.counts)
}

// takeFault returns the fault to inject into a request in scope s, if any,
// consuming one use of a SetFaultN budget.
func (h *Hub) takeFault(s Scope, only ...Fault) Fault {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fault == FaultNone || (h.faultScope != ScopeAll && h.faultScope != s) {
		return FaultNone
	}
	if len(only) > 0 {
		ok := false
		for _, f := range only {
			ok = ok || f == h.fault
		}
		if !ok {
			return FaultNone
		}
	}
	f := h.fault
	if h.faultLeft > 0 {
		h.faultLeft--
		if h.faultLeft == 0 {
			h.fault = FaultNone
		}
	}
	h.counts.Faults++
	return f
}

func (h *Hub) serveFront(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if r.URL.Path == "/token" {
		h.serveToken(w, r)
		return
	}
	if r.URL.Path != "/v2" && !strings.HasPrefix(r.URL.Path, "/v2/") {
		writeError(w, http.StatusNotFound, "NOT_FOUND", "not found")
		return
	}
	h.mu.Lock()
	h.counts.Requests++
	delay := h.delay
	h.mu.Unlock()
	if delay > 0 && !sleepCtx(r.Context(), delay) {
		return
	}

	if r.URL.Path == "/v2/" || r.URL.Path == "/v2" {
		if h.injectStatusFault(w, r, h.takeFault(ScopeAll, wholeResponse...)) {
			return
		}
		if _, ok := h.authorize(r, ""); !ok {
			h.challenge(w, r, "")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, "{}")
		return
	}

	m := h.routeRE.FindStringSubmatch(r.URL.Path)
	if m == nil {
		writeError(w, http.StatusNotFound, "UNSUPPORTED", "the fake hub does not serve "+r.URL.Path)
		return
	}
	repo, kind, rest := m[1], m[2], m[3]
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "the fake hub is read-only")
		return
	}
	identity, ok := h.authorize(r, repo)
	if !ok {
		h.challenge(w, r, repo)
		return
	}
	backendRepo, ok := strings.CutPrefix(repo, h.opts.RepoPrefix)
	if !ok || backendRepo == "" {
		writeError(w, http.StatusNotFound, "NAME_UNKNOWN", "repository name not known to registry")
		return
	}
	backendPath := "/v2/" + backendRepo + "/" + kind + "/" + rest

	switch kind {
	case "manifests":
		h.serveManifest(w, r, identity, repo, backendPath)
	case "blobs":
		h.serveBlob(w, r, backendRepo, rest, backendPath)
	default:
		if h.injectStatusFault(w, r, h.takeFault(ScopeAll, wholeResponse...)) {
			return
		}
		h.forward(w, r, backendPath, bodyPlan{}, nil)
	}
}

// faultsFor lists the faults that can apply to r: a HEAD has no body to
// damage, and must not use up a SetFaultN budget meant for GETs.
func (h *Hub) faultsFor(r *http.Request) []Fault {
	if r.Method == http.MethodHead {
		return wholeResponse
	}
	return nil
}

func (h *Hub) serveManifest(w http.ResponseWriter, r *http.Request, identity, repo, backendPath string) {
	get := r.Method == http.MethodGet
	if !get {
		h.count(func(c *Counts) { c.ManifestHEADs++ })
	}
	f := h.takeFault(ScopeManifests, h.faultsFor(r)...)
	if h.injectStatusFault(w, r, f) {
		return
	}
	plan := bodyPlan{corrupt: f == FaultCorrupt, dropMid: f == FaultDropMidBody}
	src := h.source(r, identity)

	if !get {
		h.forward(w, r, backendPath, plan, func(_ int, hdr http.Header) {
			h.setLimitHeaders(hdr, src, h.peek(identity))
		})
		return
	}
	res, ok := h.reserve(identity)
	if !ok {
		h.count(func(c *Counts) { c.RateLimited++ })
		h.setLimitHeaders(w.Header(), src, res)
		w.Header().Set("Retry-After", strconv.Itoa(res.retryAfterSeconds()))
		writeError(w, http.StatusTooManyRequests, "TOOMANYREQUESTS",
			"You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limits")
		return
	}
	h.forward(w, r, backendPath, plan, func(status int, hdr http.Header) {
		if status != http.StatusOK {
			res = h.refund(identity, res)
		} else {
			h.count(func(c *Counts) {
				c.ManifestGETs++
				c.ManifestGETsByRepo[repo]++
			})
		}
		h.setLimitHeaders(hdr, src, res)
	})
}

func (h *Hub) serveBlob(w http.ResponseWriter, r *http.Request, backendRepo, rest, backendPath string) {
	d, err := digest.Parse(rest)
	if err != nil {
		writeError(w, http.StatusBadRequest, "DIGEST_INVALID", "invalid digest "+rest)
		return
	}
	get := r.Method == http.MethodGet
	if get {
		h.count(func(c *Counts) { c.BlobGETs[d]++ })
	}
	if h.opts.BlobRedirect && get {
		if h.injectStatusFault(w, r, h.takeFault(ScopeBlobs, wholeResponse...)) {
			return
		}
		// Only redirect what exists, so errors keep the registry's body.
		if h.backendHas(r.Context(), backendPath) {
			w.Header().Set("Location", h.CDNURL+"/registry-v2/"+backendRepo+"/blobs/"+d.String()+"/data")
			w.WriteHeader(http.StatusTemporaryRedirect)
			return
		}
		h.forward(w, r, backendPath, bodyPlan{}, nil)
		return
	}
	f := h.takeFault(ScopeBlobs, h.faultsFor(r)...)
	if h.injectStatusFault(w, r, f) {
		return
	}
	h.forward(w, r, backendPath, bodyPlan{blob: true, digest: d, corrupt: f == FaultCorrupt, dropMid: f == FaultDropMidBody}, nil)
}

// serveCDN serves blob bytes for redirected GETs; like a real CDN it wants
// no credentials, and any it receives are counted as a leak.
func (h *Hub) serveCDN(w http.ResponseWriter, r *http.Request) {
	h.count(func(c *Counts) {
		c.CDNRequests++
		if r.Header.Get("Authorization") != "" {
			c.CDNAuthHeaders++
		}
	})
	m := h.cdnRE.FindStringSubmatch(r.URL.Path)
	if m == nil || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	d, err := digest.Parse(m[2])
	if err != nil {
		http.Error(w, "bad digest", http.StatusBadRequest)
		return
	}
	var f Fault
	if r.Method == http.MethodGet {
		f = h.takeFault(ScopeBlobs, FaultDropMidBody, FaultCorrupt)
	}
	plan := bodyPlan{blob: true, cdn: true, digest: d, corrupt: f == FaultCorrupt, dropMid: f == FaultDropMidBody}
	h.forward(w, r, "/v2/"+m[1]+"/blobs/"+d.String(), plan, func(_ int, hdr http.Header) {
		// The CDN is not a registry; it does not speak the API headers.
		hdr.Del("Docker-Distribution-API-Version")
	})
}

func (h *Hub) backendHas(ctx context.Context, path string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, h.backend.JoinPath(path).String(), nil)
	if err != nil {
		return false
	}
	resp, err := h.transport.RoundTrip(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// injectStatusFault answers the request itself for the faults that replace a
// response entirely and reports whether it did. A released hang did not:
// the request goes on as if no fault applied.
func (h *Hub) injectStatusFault(w http.ResponseWriter, r *http.Request, f Fault) bool {
	switch f {
	case FaultHang:
		if h.hang(r) {
			return false
		}
		// Still silent: the client gave up or the test ended.
		dropConn(w)
		return true
	case Fault429:
		w.Header().Set("Retry-After", strconv.Itoa(int(h.opts.FaultRetryAfter/time.Second)))
		writeError(w, http.StatusTooManyRequests, "TOOMANYREQUESTS",
			"You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limits")
		return true
	case Fault500:
		writeError(w, http.StatusInternalServerError, "UNKNOWN", "internal server error (injected by testhub)")
		return true
	case FaultDrop:
		dropConn(w)
		return true
	}
	return false
}

// hang holds a request until Release (true) or until the client goes or
// the test ends (false), writing nothing.
func (h *Hub) hang(r *http.Request) bool {
	h.mu.Lock()
	h.counts.Hung++
	h.counts.Hanging++
	release := h.release
	h.mu.Unlock()
	defer h.count(func(c *Counts) { c.Hanging-- })
	select {
	case <-release:
		return true
	case <-r.Context().Done():
		return false
	}
}

// dropConn closes the client connection without writing anything.
func dropConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}

type bodyPlan struct {
	blob    bool
	cdn     bool
	digest  digest.Digest
	corrupt bool
	dropMid bool
}

// delHopHeaders removes connection-level headers, which are never forwarded.
func delHopHeaders(hdr http.Header) {
	for _, k := range []string{"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"} {
		hdr.Del(k)
	}
}

// forward proxies r to the backend path, streaming the body. decorate, if
// set, sees the backend status and may edit the headers before they are sent.
func (h *Hub) forward(w http.ResponseWriter, r *http.Request, path string, plan bodyPlan, decorate func(status int, hdr http.Header)) {
	u := h.backend.JoinPath(path)
	u.RawQuery = r.URL.RawQuery
	req, err := http.NewRequestWithContext(r.Context(), r.Method, u.String(), nil)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "UNKNOWN", err.Error())
		return
	}
	for k, vs := range r.Header {
		req.Header[k] = append([]string(nil), vs...)
	}
	delHopHeaders(req.Header)
	// The backend is open; the client's credentials are for the hub only.
	req.Header.Del("Authorization")
	req.Header.Del("Cookie")

	start := h.now()
	resp, err := h.transport.RoundTrip(req)
	if err != nil {
		if r.Context().Err() != nil {
			return
		}
		writeError(w, http.StatusBadGateway, "UNKNOWN", "backend: "+err.Error())
		return
	}
	defer resp.Body.Close()

	hdr := w.Header()
	for k, vs := range resp.Header {
		hdr[k] = append([]string(nil), vs...)
	}
	delHopHeaders(hdr)
	if h.opts.RepoPrefix != "" {
		if link := hdr.Get("Link"); link != "" {
			hdr.Set("Link", strings.Replace(link, "</v2/", "</v2/"+h.opts.RepoPrefix, 1))
		}
	}
	if decorate != nil {
		decorate(resp.StatusCode, hdr)
	}
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead {
		return
	}
	ok := resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent
	if !ok || (!plan.blob && !plan.corrupt && !plan.dropMid) {
		_, _ = io.Copy(w, resp.Body)
		return
	}
	h.copyBody(r.Context(), w, resp, plan, start)
}

// copyBody streams a manifest or blob body, applying throttling and body
// faults, and accounts blob bytes and transfers.
//
// Accounting happens before the bytes are written: a client that has read a
// whole body must already see it in Counts and Transfers, or tests that
// check right after a pull would be flaky.
func (h *Hub) copyBody(ctx context.Context, w http.ResponseWriter, resp *http.Response, plan bodyPlan, start time.Time) {
	size := resp.ContentLength
	flipAt, stopAt := int64(-1), int64(-1)
	if plan.corrupt {
		flipAt = max(size/2, 0)
	}
	if plan.dropMid {
		stopAt = max(size/2, 0)
	}
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	var sent int64
	recorded := uint64(0)
	var pace pacer
	for {
		if stopAt >= 0 && sent >= stopAt {
			_ = rc.Flush()
			panic(http.ErrAbortHandler)
		}
		chunk := buf
		bps := int64(0)
		if plan.blob {
			bps = h.throttle.Load()
		}
		if bps > 0 {
			// Small chunks keep the pace smooth at low rates.
			chunk = buf[:min(max(bps/20, 1), int64(len(buf)))]
		}
		if stopAt >= 0 && int64(len(chunk)) > stopAt-sent {
			chunk = chunk[:stopAt-sent]
		}
		n, rerr := resp.Body.Read(chunk)
		if n > 0 {
			if flipAt >= sent && flipAt < sent+int64(n) {
				chunk[flipAt-sent] ^= 0xff
			}
			if plan.blob {
				h.count(func(c *Counts) { c.BlobBytes += int64(n) })
				if stopAt < 0 && size >= 0 && sent+int64(n) >= size {
					recorded = h.recordTransfer(plan, start, sent+int64(n))
				}
			}
			wn, werr := w.Write(chunk[:n])
			sent += int64(wn)
			if werr != nil {
				if plan.blob {
					h.unaccount(int64(n-wn), recorded)
				}
				return
			}
			if bps > 0 {
				_ = rc.Flush()
				// Pace against a fixed origin so timer overshoot does not
				// accumulate; a new rate starts a new origin.
				if bps != pace.bps {
					pace = pacer{bps: bps, start: time.Now()}
				}
				pace.bytes += int64(n)
				due := pace.start.Add(time.Duration(float64(pace.bytes) / float64(bps) * float64(time.Second)))
				if !sleepCtx(ctx, time.Until(due)) {
					return
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// The registry failed mid-body: make sure the client sees a
			// broken transfer rather than a short clean one.
			h.unaccount(0, recorded)
			panic(http.ErrAbortHandler)
		}
	}
	// Without a Content-Length the client only sees the end of the body
	// after the handler returns, so recording now is still in time.
	if plan.blob && recorded == 0 {
		h.recordTransfer(plan, start, sent)
	}
}

type pacer struct {
	bps   int64
	start time.Time
	bytes int64
}

type transferRec struct {
	Transfer
	id uint64
}

func (h *Hub) recordTransfer(plan bodyPlan, start time.Time, n int64) uint64 {
	end := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nextID++
	h.transfers = append(h.transfers, transferRec{Transfer{Digest: plan.digest, Start: start, End: end, Bytes: n, CDN: plan.cdn}, h.nextID})
	return h.nextID
}

// unaccount takes back bytes that never left and a transfer that did not
// complete after all.
func (h *Hub) unaccount(bytes int64, transfer uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.counts.BlobBytes -= bytes
	if transfer == 0 {
		return
	}
	for i, r := range h.transfers {
		if r.id == transfer {
			h.transfers = append(h.transfers[:i], h.transfers[i+1:]...)
			return
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	body, _ := json.Marshal(struct {
		Errors []apiError `json:"errors"`
	}{[]apiError{{Code: code, Message: msg}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// String describes the hub for test logs.
func (h *Hub) String() string {
	return fmt.Sprintf("testhub %s (service %s, backend %s)", h.URL, h.opts.Service, h.backend.Host)
}
