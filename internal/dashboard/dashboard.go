// Package dashboard is regcache's status page: one HTML page, rendered on
// the server with html/template from files embedded in the binary, that
// reads without JavaScript (a few lines of it refresh the figures in place;
// without it a meta refresh reloads the page).
//
// It shows what an operator asks first: how much of each origin's pull
// budget is left, how many counted pulls the cache saved, how much it
// answers from its store, whether each mirror and origin is healthy, and
// which images are pulled most. It owns no counter: the figures are read
// at each request from a Data (budgets, breakers, the most-pulled list) and
// from the Prometheus registry, so the page and /metrics always agree.
//
// The page never shows a secret: its inputs carry none (upstream URLs are
// scheme://host, errors are regcache's own words), and whoever mounts it
// puts it behind the client login when there is one.
package dashboard

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"html/template"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Data is where the page's non-metric figures come from, asked at each
// request. It must be cheap and make no upstream request: the page must
// never spend a pull.
type Data interface {
	// Snapshot describes each configured registry as of now, and the n
	// images pulled most.
	Snapshot(now time.Time, n int) Snapshot
}

// Snapshot is the state the page shows besides the metrics.
type Snapshot struct {
	Registries []Registry
	MostPulled []Pulled
}

// Registry is one configured registry: its origin's pull budget and the
// health of its sources.
type Registry struct {
	Name string
	// Identity is who the budget is counted for: a user name,
	// "docker-config" or "anonymous".
	Identity string
	Budget   Budget
	// Pauses are the classes of request the origin asked regcache to
	// hold back, each until a time.
	Pauses []Pause
	// Sources are the mirrors, in the order they are asked, then the
	// origin. Their names are the "source" label of the metrics.
	Sources []Source
}

// Budget is what the origin last said about its pull rate limit.
type Budget struct {
	// Limited is set when the origin reported a limit; without it the
	// other figures mean nothing.
	Limited          bool
	Limit, Remaining int
	// Window is the limit's window; 0 when the origin did not say.
	Window time.Duration
	// UpdatedAt is when an answer last changed the figures.
	UpdatedAt time.Time
	// Reserve is the counted pulls kept for true misses; BelowReserve is
	// set while the remaining budget is at or below it.
	Reserve      int
	BelowReserve bool
}

// Pause is one class of origin request held back until a time: after a
// pull-limit 429, "counted_pulls"; after a bare 429 or a 503 with
// Retry-After, "manifests", "blobs" or "other".
type Pause struct {
	Class string
	Until time.Time
}

// Source is the health of one mirror or origin.
type Source struct {
	// Name is "origin" or the mirror's name.
	Name string
	// URL is scheme://host; it never carries credentials.
	URL string
	// State is the circuit breaker's: "closed", "open" or "half-open".
	State     string
	Failures  int
	OpenUntil time.Time
	// BadDigests counts digests a mirror served wrong bytes for.
	BadDigests int
	// LastError is the latest failure in regcache's own words, never the
	// upstream's text; LastErrorAt when it happened.
	LastError   string
	LastErrorAt time.Time
}

// Pulled is one of the most pulled images, counted per manifest request by
// tag since the server started.
type Pulled struct {
	Registry, Repository, Tag string
	// Count may be too high by at most Overcount (a bounded counter).
	Count, Overcount uint64
}

// Options configures the page.
type Options struct {
	Data Data
	// Metrics is the registry /metrics serves.
	Metrics prometheus.Gatherer
	// Version names the build in the page's header.
	Version string
	// Refresh is how often the page refreshes itself; default 10s.
	Refresh time.Duration
	// MostPulled is how many images the most-pulled list shows; default 10.
	MostPulled int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

//go:embed assets
var assets embed.FS

// Handler serves the page.
type Handler struct {
	opt  Options
	tmpl *template.Template
	css  template.CSS
	js   template.JS
	// csp allows exactly the page's own style and script, by hash.
	csp string
}

// New returns the page's handler.
func New(opt Options) *Handler {
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Refresh <= 0 {
		opt.Refresh = 10 * time.Second
	}
	if opt.MostPulled <= 0 {
		opt.MostPulled = 10
	}
	css, _ := assets.ReadFile("assets/dashboard.css")
	js, _ := assets.ReadFile("assets/refresh.js")
	return &Handler{
		opt:  opt,
		tmpl: template.Must(template.New("page.html").ParseFS(assets, "assets/page.html")),
		css:  template.CSS(css),
		js:   template.JS(js),
		csp: "default-src 'none'; style-src '" + hash(css) + "'; script-src '" + hash(js) + "'; " +
			"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
	}
}

func hash(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}

// ServeHTTP renders the page.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := h.opt.Now()
	snap := h.opt.Data.Snapshot(now, h.opt.MostPulled)
	var m metricSet
	var gatherErr error
	if h.opt.Metrics != nil {
		m, gatherErr = gather(h.opt.Metrics)
	}
	p := build(snap, m, now)
	p.Version, p.RefreshSeconds = h.opt.Version, int(h.opt.Refresh/time.Second)
	p.CSS, p.JS = h.css, h.js
	if gatherErr != nil {
		p.Notice = "Some metrics could not be read; their figures may be missing."
	}
	var buf bytes.Buffer
	if err := h.tmpl.Execute(&buf, p); err != nil {
		http.Error(w, "the status page could not be rendered", http.StatusInternalServerError)
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Content-Security-Policy", h.csp)
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("X-Frame-Options", "DENY")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(buf.Bytes()))
}
