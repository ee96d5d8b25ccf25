package app

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regcache/regcache/internal/cluster"
	"github.com/regcache/regcache/internal/ratelimit"
	"github.com/regcache/regcache/internal/upstream"
)

// Status is what GET /_regcache/status returns: each upstream's pull budget
// as last seen in its headers, and the health of each of its sources.
type Status struct {
	Registries []RegistryStatus `json:"registries"`
	// Cluster is this replica's view of its cluster; absent alone.
	Cluster *ClusterStatus `json:"cluster,omitempty"`
}

// ClusterStatus says whether this replica coordinates with the others.
type ClusterStatus struct {
	Self        string         `json:"self"`
	Coordinator cluster.Health `json:"coordinator"`
}

// RegistryStatus is one configured registry.
type RegistryStatus struct {
	Name   string           `json:"name"`
	Budget ratelimit.Report `json:"budget"`
	// BudgetUpdatedAt is when an origin's answer last changed the budget;
	// absent before any did.
	BudgetUpdatedAt *time.Time `json:"budget_updated_at,omitempty"`
	// Reserve is the counted pulls kept for true misses (registries.*.reserve).
	Reserve      int  `json:"reserve"`
	BelowReserve bool `json:"below_reserve"`
	// Pauses are the classes of request the origin asked regcache to hold
	// back (Retry-After), and when each pause ends.
	Pauses  []Pause        `json:"pauses"`
	Sources []SourceStatus `json:"sources"`
}

// Pause is one class of origin request held back until a time.
type Pause struct {
	// Class is "counted_pulls" (manifest GETs, after a pull-limit 429),
	// "manifests", "blobs" or "other".
	Class string    `json:"class"`
	Until time.Time `json:"until"`
}

func pauses(b upstream.Budget, now time.Time) []Pause {
	out := []Pause{}
	if b.RetryUntil.After(now) {
		out = append(out, Pause{Class: "counted_pulls", Until: b.RetryUntil})
	}
	for c, until := range b.Paused {
		if until.After(now) {
			out = append(out, Pause{Class: upstream.Class(c).String(), Until: until})
		}
	}
	return out
}

// SourceStatus is one mirror or the origin.
type SourceStatus struct {
	Name      string     `json:"name"`
	URL       string     `json:"url"`
	State     string     `json:"state"`
	Failures  int        `json:"consecutive_failures"`
	OpenUntil *time.Time `json:"open_until,omitempty"`
	// BadDigests counts digests a mirror served wrong bytes for, which it
	// is not asked for again for an hour.
	BadDigests int `json:"bad_digests,omitempty"`
	// LastError is the latest failure that counted against the breaker,
	// in regcache's own words (never the upstream's text), kept after the
	// source recovers.
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
}

// status collects the figures; it makes no upstream request, so the page is
// cheap and cannot spend pulls.
func (a *App) status(now time.Time) Status {
	var st Status
	for _, name := range sortedKeys(a.Upstreams) {
		u := a.Upstreams[name]
		identity := "anonymous"
		if a.identities[name] != "" {
			identity = a.identities[name]
		}
		b := u.Budget()
		rs := RegistryStatus{Name: name, Budget: ratelimit.FromBudget(name, identity, b, now), BelowReserve: u.BelowReserve(), Pauses: pauses(b, now)}
		if rc, ok := a.cfg.Registries[name]; ok {
			rs.Reserve = rc.Reserve
		}
		if !b.UpdatedAt.IsZero() {
			t := b.UpdatedAt
			rs.BudgetUpdatedAt = &t
		}
		for _, s := range u.Sources() {
			ss := SourceStatus{Name: s.Name, URL: s.URL, State: string(s.State), Failures: s.Failures, BadDigests: s.BadDigests}
			if !s.OpenUntil.IsZero() {
				t := s.OpenUntil
				ss.OpenUntil = &t
			}
			if s.LastError != "" {
				t := s.LastErrorAt
				ss.LastError, ss.LastErrorAt = s.LastError, &t
			}
			rs.Sources = append(rs.Sources, ss)
		}
		st.Registries = append(st.Registries, rs)
	}
	if a.coord != nil {
		st.Cluster = &ClusterStatus{Self: a.coord.Self(), Coordinator: a.coord.Health()}
	}
	return st
}

func (a *App) adminHandler(dash http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /_regcache/{$}", dash)
	mux.HandleFunc("GET /_regcache/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(a.status(time.Now()))
	})
	return mux
}

// upstreamCollector exports budgets and breaker states at scrape time, read
// from the upstream clients, so they are never stale and cost nothing
// between scrapes.
type upstreamCollector struct {
	ups                        map[string]*upstream.Registry
	limit, remaining, belowRes *prometheus.Desc
	sourceUp, sourceFailures   *prometheus.Desc
	sourceState, pausedUntil   *prometheus.Desc
}

func newUpstreamCollector(ups map[string]*upstream.Registry) *upstreamCollector {
	return &upstreamCollector{
		ups:            ups,
		limit:          prometheus.NewDesc("regcache_upstream_ratelimit_limit", "Pull limit per window, from the origin's ratelimit-limit header.", []string{"registry"}, nil),
		remaining:      prometheus.NewDesc("regcache_upstream_ratelimit_remaining", "Pulls left in the window, from the origin's ratelimit-remaining header.", []string{"registry"}, nil),
		belowRes:       prometheus.NewDesc("regcache_upstream_below_reserve", "1 while the origin's remaining pulls are at or below the configured reserve.", []string{"registry"}, nil),
		sourceUp:       prometheus.NewDesc("regcache_source_available", "1 when a source's circuit breaker lets requests through (closed or half-open), 0 when it is open.", []string{"registry", "source"}, nil),
		sourceState:    prometheus.NewDesc("regcache_source_breaker_state", "1 for the state a source's circuit breaker is in (closed, open, half-open), 0 for the others.", []string{"registry", "source", "state"}, nil),
		pausedUntil:    prometheus.NewDesc("regcache_upstream_paused_until_seconds", "Unix time until which the origin asked regcache to hold back a class of requests (Retry-After); absent when not paused.", []string{"registry", "class"}, nil),
		sourceFailures: prometheus.NewDesc("regcache_source_consecutive_failures", "Consecutive failures of a source (mirror or origin).", []string{"registry", "source"}, nil),
	}
}

func (c *upstreamCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.limit, c.remaining, c.belowRes, c.sourceUp, c.sourceFailures, c.sourceState, c.pausedUntil} {
		ch <- d
	}
}

func (c *upstreamCollector) Collect(ch chan<- prometheus.Metric) {
	for name, u := range c.ups {
		b := u.Budget()
		if b.Known {
			ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(b.Limit), name)
			ch <- prometheus.MustNewConstMetric(c.remaining, prometheus.GaugeValue, float64(b.Remaining), name)
		}
		below := 0.0
		if u.BelowReserve() {
			below = 1
		}
		ch <- prometheus.MustNewConstMetric(c.belowRes, prometheus.GaugeValue, below, name)
		for _, p := range pauses(b, time.Now()) {
			ch <- prometheus.MustNewConstMetric(c.pausedUntil, prometheus.GaugeValue, float64(p.Until.Unix()), name, p.Class)
		}
		for _, s := range u.Sources() {
			up := 1.0
			if s.State == upstream.BreakerOpen {
				up = 0
			}
			ch <- prometheus.MustNewConstMetric(c.sourceUp, prometheus.GaugeValue, up, name, s.Name)
			ch <- prometheus.MustNewConstMetric(c.sourceFailures, prometheus.GaugeValue, float64(s.Failures), name, s.Name)
			for _, st := range []upstream.BreakerState{upstream.BreakerClosed, upstream.BreakerOpen, upstream.BreakerHalfOpen} {
				v := 0.0
				if s.State == st {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(c.sourceState, prometheus.GaugeValue, v, name, s.Name, string(st))
			}
		}
	}
}
