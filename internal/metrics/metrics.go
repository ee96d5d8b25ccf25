// Package metrics defines regcache's Prometheus metrics. One Metrics value is
// created per server and passed to the packages that record into it; there
// is no global registry.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics holds every collector regcache exports. Label values are registry
// names, kinds and results, never repository names (unbounded) or anything
// that could carry a credential.
type Metrics struct {
	Registry *prometheus.Registry

	// Requests counts client requests by registry, kind (manifest, blob,
	// tags, referrers) and result (hit, miss, stale, error).
	Requests *prometheus.CounterVec
	// RequestSeconds is the latency of /v2/ requests by kind and result:
	// cache hits apart from answers that waited on an upstream
	// (revalidated, miss, stale) and failures.
	RequestSeconds *prometheus.HistogramVec
	// BytesServed counts body bytes sent to clients, by registry.
	BytesServed *prometheus.CounterVec
	// UpstreamBytes counts blob and manifest bytes fetched, by registry and
	// source (origin or a mirror's host).
	UpstreamBytes *prometheus.CounterVec
	// UpstreamRequests counts requests sent upstream by registry, source,
	// method, kind and HTTP status ("error" when no response).
	UpstreamRequests *prometheus.CounterVec
	// CountedPulls counts manifest GETs sent to an origin: the requests that
	// Docker Hub counts against the pull limit.
	CountedPulls *prometheus.CounterVec
	// ClientManifestGETs counts manifest GETs answered to clients with
	// 200: what the origin would have counted as pulls had the clients
	// gone to it directly. Less CountedPulls, it is the pulls the cache
	// saved.
	ClientManifestGETs *prometheus.CounterVec
	// StaleServed counts cached tags served because the upstream failed.
	StaleServed *prometheus.CounterVec
	// SharedFetches counts requests that joined an upstream fetch already
	// in flight instead of starting their own.
	SharedFetches *prometheus.CounterVec
	// TagRevalidations counts tag checks by outcome (unchanged, changed).
	TagRevalidations *prometheus.CounterVec
	// MirrorHits counts content served by a mirror instead of the origin.
	MirrorHits *prometheus.CounterVec
	// TagFallbacks counts tags resolved at a mirror because the origin
	// could not answer.
	TagFallbacks *prometheus.CounterVec
	// StoreBytes is the size of the blob store at the last collection.
	StoreBytes prometheus.Gauge
	// EvictedBytes counts bytes removed to stay under storage.max_size.
	EvictedBytes prometheus.Counter
	// DigestMismatches counts upstream content rejected by verification.
	DigestMismatches *prometheus.CounterVec
	// Uncached counts content served to clients but not kept, by registry,
	// kind and reason (no_space, store_failed).
	Uncached *prometheus.CounterVec
	// BlobRedirects counts cached blob requests answered with a redirect
	// to the object store (storage.s3.redirect), by registry and method:
	// their bytes are not in BytesServed.
	BlobRedirects *prometheus.CounterVec
	// ClientAuthFailures counts requests refused for want of valid client
	// credentials, by reason: missing, invalid (a wrong login, counted
	// where it is offered: a token request or Basic credentials), or
	// throttled (a login not checked after too many failures). The /v2/
	// challenge that starts every login is not counted.
	ClientAuthFailures *prometheus.CounterVec
	// ClientAuthChecks counts client password checks run (bcrypt); logins
	// answered from memory or throttled run none.
	ClientAuthChecks prometheus.Counter
}

// New creates the collectors and registers them, with Go and process
// collectors, on a fresh registry.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcache_requests_total", Help: "Client requests by registry, kind and result (hit, miss, stale, error).",
		}, []string{"registry", "kind", "result"}),
		RequestSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "regcache_request_duration_seconds", Help: "Time to answer /v2/ requests (headers and body), by kind and result (hit, revalidated, miss, stale, error).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"kind", "result"}),
		BytesServed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcache_served_bytes_total", Help: "Body bytes sent to clients.",
		}, []string{"registry", "kind"}),
		UpstreamBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcache_upstream_fetched_bytes_total", Help: "Bytes fetched from upstream sources.",
		}, []string{"registry", "source", "kind"}),
		UpstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcache_upstream_requests_total", Help: "Requests sent upstream.",
		}, []string{"registry", "source", "method", "kind", "status"}),
		CountedPulls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcache_upstream_counted_pulls_total", Help: "Manifest GETs sent to an origin registry (what Docker Hub counts as pulls).",
		}, []string{"registry"}),
		ClientManifestGETs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcache_client_manifest_gets_total", Help: "Manifest GETs answered to clients with 200: the pulls the origin would have counted without the cache.",
		}, []string{"registry"}),
		StaleServed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcache_stale_served_total", Help: "Cached tags served past their TTL because the upstream failed or was limited.",
		}, []string{"registry", "reason"}),
		SharedFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcache_shared_fetches_total", Help: "Requests that joined an upstream fetch already in flight.",
		}, []string{"registry", "kind"}),
		TagRevalidations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcache_tag_revalidations_total", Help: "Expired tags checked upstream, by outcome.",
		}, []string{"registry", "outcome"}),
		MirrorHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcache_mirror_hits_total", Help: "Manifests and blobs fetched from a mirror instead of the origin.",
		}, []string{"registry", "mirror", "kind"}),
		TagFallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcache_tag_fallbacks_total", Help: "Tags resolved at a mirror because the origin could not answer (a mirror's tag may lag).",
		}, []string{"registry", "mirror"}),
		StoreBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regcache_store_bytes", Help: "Bytes in the blob store at the last size check (set only when storage.max_size is).",
		}),
		EvictedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regcache_evicted_bytes_total", Help: "Bytes evicted to keep the store under storage.max_size.",
		}),
		DigestMismatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcache_digest_mismatches_total", Help: "Upstream content rejected because it did not match its digest.",
		}, []string{"registry", "source"}),
		Uncached: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcache_uncached_total", Help: "Content served to clients but not stored, by reason (no_space, store_failed).",
		}, []string{"registry", "kind", "reason"}),
		BlobRedirects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcache_blob_redirects_total", Help: "Cached blob requests redirected to the object store (storage.s3.redirect); the client fetches the bytes there.",
		}, []string{"registry", "method"}),
		ClientAuthFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regcache_client_auth_failures_total", Help: "Client requests refused for want of valid credentials, by reason (missing, invalid, throttled).",
		}, []string{"reason"}),
		ClientAuthChecks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regcache_client_auth_password_checks_total", Help: "Client password checks run (bcrypt); remembered and throttled logins run none.",
		}),
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.Requests, m.RequestSeconds, m.BytesServed, m.UpstreamBytes, m.UpstreamRequests, m.CountedPulls, m.ClientManifestGETs,
		m.StaleServed, m.SharedFetches, m.TagRevalidations, m.DigestMismatches, m.MirrorHits, m.TagFallbacks,
		m.StoreBytes, m.EvictedBytes, m.Uncached, m.BlobRedirects, m.ClientAuthFailures, m.ClientAuthChecks,
	)
	return m
}
