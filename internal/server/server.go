// Package server is regcache's HTTP side: it routes OCI distribution API
// requests (host in the path, ?ns=, or the default registry) to the
// pull-through cache and writes the answers, including OCI error JSON.
//
// route.go parses a request once into typed names; manifest.go, blob.go and
// list.go answer each kind; errors.go is the one table from failure kinds
// to OCI errors; middleware.go holds the wrappers every response passes
// through. Handlers know nothing about upstreams or storage; they talk to
// *pull.Cache only.
package server

import (
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/regcache/regcache/internal/clientauth"
	"github.com/regcache/regcache/internal/cluster"
	"github.com/regcache/regcache/internal/metrics"
	"github.com/regcache/regcache/internal/pull"
	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
)

// Server serves the registry API.
type Server struct {
	// sendfile selects the kernel's sendfile for cached blobs instead of a
	// buffered copy.
	sendfile    bool
	sendTimeout time.Duration
	buffers     *copyBuffers
	router      *Router
	cache       *pull.Cache
	log         *slog.Logger
	metrics     *metrics.Metrics
	handler     http.Handler
	peers       PeerAuth
	// auth is nil when clients need no credentials.
	auth      ClientAuth
	tokens    *clientauth.Issuer
	anonymous map[string]bool
	pulls     Pulls
}

// Pulls is told of each image pulled by tag, for the most-pulled list. It
// runs on every manifest request by tag, so it must be cheap and never
// block; repository names never become metric labels.
type Pulls interface {
	Pulled(repo ref.Repo, tag ref.Tag)
}

// Options configures a Server.
type Options struct {
	Router  *Router
	Cache   *pull.Cache
	Logger  *slog.Logger
	Metrics *metrics.Metrics
	// Admin holds extra handlers (status endpoints) mounted under /_regcache/.
	Admin http.Handler
	// Ready answers /readyz: whether this replica can do its job now (its
	// store is writable). nil answers "ok". /healthz is liveness only.
	Ready http.Handler
	// Dashboard answers GET / (the status page); nil leaves / unanswered.
	// Like Admin it needs a login when client logins are on.
	Dashboard http.Handler
	// Pulls, when set, is told of each manifest request by tag answered.
	Pulls Pulls
	// BlobCopy is "buffered" (default) or "sendfile".
	BlobCopy string
	// SendTimeout is the longest a client may take to accept the next
	// piece of a response (nginx's send_timeout); 0 means no limit.
	SendTimeout time.Duration
	// LargeBuffers bounds the 1 MiB copy buffers out at once.
	LargeBuffers int
	// ClientAuth, when set, makes every /v2/ request carry a login (a
	// token from the server's own realm, or Basic credentials), except
	// those for AnonymousRegistries.
	ClientAuth          ClientAuth
	AnonymousRegistries []string
	// Tokens signs the tokens; nil means a key of this process's own,
	// which suits a single server.
	Tokens *clientauth.Issuer
	// MetricsLogin puts /metrics behind the login too (client_auth.metrics).
	MetricsLogin bool
	// Peers, in a cluster, authenticates the other replicas on the peer
	// endpoint; nil turns the endpoint off.
	Peers PeerAuth
}

// New returns a Server.
func New(opt Options) *Server {
	s := &Server{
		sendfile: opt.BlobCopy == "sendfile", sendTimeout: opt.SendTimeout, buffers: newCopyBuffers(opt.LargeBuffers),
		router: opt.Router, cache: opt.Cache, log: opt.Logger, metrics: opt.Metrics, peers: opt.Peers, pulls: opt.Pulls,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.metrics == nil {
		s.metrics = metrics.New()
	}
	if opt.ClientAuth != nil {
		s.auth = opt.ClientAuth
		s.tokens = opt.Tokens
		if s.tokens == nil {
			s.tokens = clientauth.NewIssuer()
		}
		s.anonymous = map[string]bool{}
		for _, name := range opt.AnonymousRegistries {
			s.anonymous[name] = true
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v2/", s.serveV2)
	mux.HandleFunc("/v2", s.serveV2)
	health := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
	})
	ready := opt.Ready
	if ready == nil {
		ready = health
	}
	// Liveness and readiness stay open: probes carry no login.
	mux.Handle("/healthz", health)
	mux.Handle("/readyz", ready)
	var metricsHandler http.Handler = promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{})
	if opt.MetricsLogin {
		metricsHandler = s.requireLogin(metricsHandler)
	}
	mux.Handle("/metrics", metricsHandler)
	if opt.Admin != nil {
		mux.Handle("/_regcache/", s.requireLogin(opt.Admin))
	}
	if opt.Dashboard != nil {
		// "/{$}" is / alone: every other unknown path stays a 404.
		mux.Handle("GET /{$}", s.requireLogin(opt.Dashboard))
	}
	mux.HandleFunc(tokenPath, s.serveToken)
	mux.HandleFunc(cluster.PeerPath, s.servePeer)
	s.handler = noSniff(logRequests(s.log)(s.registryFirst(mux)))
	return s
}

// registryFirst sends registry API requests straight to serveV2, ahead of
// mux: with the dashboard's method and {$} patterns, the mux's lookup
// allocates on every request. Paths the mux would clean and redirect (//
// or dot segments) still go through it.
func (s *Server) registryFirst(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if strings.HasPrefix(p, "/v2/") && !strings.Contains(p, "//") && !strings.Contains(p, "/.") && r.Method != http.MethodConnect {
			s.serveV2(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

func (s *Server) serveV2(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	var query url.Values
	if r.URL.RawQuery != "" {
		// Most requests have none, and an empty Values is still a map.
		query = r.URL.Query()
	}
	rt, perr := s.router.Parse(r.URL.Path, query)
	// Before any other answer: a stranger learns nothing, not even which
	// registries are configured.
	if aerr := s.authorize(w, r, rt, perr == nil); aerr != nil {
		// Not s.fail: every login starts with this challenge, which is
		// no failure; authorize logs the attempts worth logging.
		writeError(w, aerr, rt.Kind)
		return
	}
	if perr != nil {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			perr = regerr.New(regerr.Unsupported, "regcache is a read-only cache: only GET and HEAD are supported")
		}
		s.fail(w, r, rt, perr)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		s.fail(w, r, rt, regerr.New(regerr.Unsupported, "regcache is a read-only cache: %s is not supported", r.Method))
		return
	}
	if rt.NS != "" {
		w.Header().Set("OCI-Namespace", rt.NS)
	}
	var res pull.Result
	switch rt.Kind {
	case KindBase:
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		if r.Method == http.MethodGet {
			io.WriteString(w, "{}")
		}
		return
	case KindManifest:
		res = s.serveManifest(w, r, rt)
	case KindBlob:
		res = s.serveBlob(w, r, rt)
	case KindTags, KindReferrers:
		res = s.serveList(w, r, rt)
	}
	s.metrics.RequestSeconds.WithLabelValues(string(rt.Kind), latencyLabel(res)).Observe(time.Since(start).Seconds())
}

// latencyLabel is the latency histogram's result label. Unlike the request
// counter it keeps revalidated answers apart from hits: they waited for the
// origin's HEAD, and a slow origin must show as such, not as slow hits.
func latencyLabel(res pull.Result) string {
	if res == "" {
		return "error"
	}
	return string(res)
}

// resultLabel folds results into the request metric's labels: a
// revalidated answer was served from the cache.
func resultLabel(res pull.Result) string {
	switch res {
	case "":
		return "error"
	case pull.Revalidated:
		return string(pull.Hit)
	}
	return string(res)
}

// fail answers a request with err; it returns the empty Result that stands
// for a failure in metrics.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, rt Route, err error) pull.Result {
	if !rt.Repo.IsZero() {
		s.metrics.Requests.WithLabelValues(rt.Repo.Registry(), string(rt.Kind), "error").Inc()
	}
	o := writeError(w, err, rt.Kind)
	lvl := slog.LevelInfo
	if o.Status >= 500 {
		lvl = slog.LevelWarn
	}
	s.log.Log(r.Context(), lvl, "request failed", "method", r.Method, "path", r.URL.Path,
		"status", o.Status, "code", o.Code, "err", err)
	return ""
}

func setResult(h http.Header, res pull.Result) {
	h.Set("X-Regcache", string(res))
	if res == pull.Stale {
		h.Set("Warning", `110 regcache "Response is Stale"`)
	}
}

// setHeaders sets header keys, which must be canonical, to values, with
// one allocation for all the values where each Set makes its own: a
// manifest hit sets five, and allocations are most of what it costs beyond
// its system calls. Each value slice is capped, so an Add copies it rather
// than write over its neighbour.
func setHeaders(h http.Header, kv ...string) {
	vals := make([]string, len(kv)/2)
	for i := range vals {
		vals[i] = kv[2*i+1]
		h[kv[2*i]] = vals[i : i+1 : i+1]
	}
}
