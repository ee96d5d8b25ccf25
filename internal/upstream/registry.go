package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	// Register the hashes go-digest verifies with.
	_ "crypto/sha256"
	_ "crypto/sha512"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regcache/regcache/internal/metrics"
	"github.com/regcache/regcache/internal/ref"
)

// Config describes one upstream registry.
type Config struct {
	Name      string              // registry name as configured, e.g. "docker.io"
	URL       string              // e.g. "https://registry-1.docker.io" or "http://127.0.0.1:5001"
	Auth      authn.Authenticator // nil = anonymous
	Transport http.RoundTripper   // nil = a tuned *http.Transport
	Logger    *slog.Logger        // nil = discard
	Metrics   *metrics.Metrics    // nil = not recorded

	// Mirrors are asked, in order, for content addressed by digest (blobs,
	// manifests by digest) before the origin. They never see Auth.
	Mirrors []MirrorConfig
	// Reserve is the number of counted pulls to keep for true misses; see
	// BelowReserve.
	Reserve int
	// Limits bound what an upstream can make regcache read or wait for.
	Limits Limits
	// AllowPrivateRedirects lets redirects and token realms send regcache
	// to loopback, private and link-local addresses. nil decides by the
	// origin: allowed when the origin itself is at such an address (an
	// internal registry), refused otherwise.
	AllowPrivateRedirects *bool
}

// Limits bound what an upstream can make regcache read or wait for. Zero
// fields take the defaults.
type Limits struct {
	// MaxBlobSize caps a blob whose size no descriptor or Content-Length
	// states (an endless chunked body would fill the disk).
	MaxBlobSize int64
	// MinRate is the slowest blob transfer tolerated, in bytes per second,
	// averaged over RateWindow: an upstream that drips a byte at a time
	// must not hold clients forever.
	MinRate    int64
	RateWindow time.Duration
	// MaxRetryAfter is the longest pause an upstream's Retry-After can
	// impose.
	MaxRetryAfter time.Duration
	// ConnectTimeout bounds a connection's dial and TLS handshake;
	// HeaderTimeout the wait from a request sent to its response headers.
	// A stall before headers thus costs seconds, not a whole fetch.
	ConnectTimeout time.Duration
	HeaderTimeout  time.Duration
}

// Defaults for Limits.
const (
	DefaultMaxBlobSize   = 64 << 30
	DefaultMinRate       = 16 << 10
	DefaultRateWindow    = 30 * time.Second
	DefaultMaxRetryAfter = time.Hour
	DefaultConnect       = 5 * time.Second
	DefaultHeader        = 10 * time.Second
)

func (l Limits) withDefaults() Limits {
	if l.MaxBlobSize <= 0 {
		l.MaxBlobSize = DefaultMaxBlobSize
	}
	if l.MinRate <= 0 {
		l.MinRate = DefaultMinRate
	}
	if l.RateWindow <= 0 {
		l.RateWindow = DefaultRateWindow
	}
	if l.MaxRetryAfter <= 0 {
		l.MaxRetryAfter = DefaultMaxRetryAfter
	}
	if l.ConnectTimeout <= 0 {
		l.ConnectTimeout = DefaultConnect
	}
	if l.HeaderTimeout <= 0 {
		l.HeaderTimeout = DefaultHeader
	}
	return l
}

// SourceOrigin is the Source of content that came from the origin registry.
const SourceOrigin = "origin"

// MaxManifestSize is the most a manifest may be. The distribution spec lets
// registries refuse manifests over 4 MiB; twice that leaves room for large
// indexes while keeping a hostile upstream from filling memory.
const MaxManifestSize = 8 << 20

// MaxListSize is the most a tags list or referrers answer may be. A larger
// one is refused, never truncated into invalid JSON.
const MaxListSize = 16 << 20

// defaultManifestAccept is sent when the caller names no media types. Without
// an Accept header some registries fall back to (or convert to) Docker
// schema 1, which would change digests.
var defaultManifestAccept = []string{
	ocispec.MediaTypeImageIndex,
	ocispec.MediaTypeImageManifest,
	ref.MediaTypeDockerManifestList,
	ref.MediaTypeDockerManifest,
}

// Registry is a client for one upstream registry and its mirrors. It is
// safe for concurrent use.
type Registry struct {
	name    string
	log     *slog.Logger
	m       *metrics.Metrics
	limits  Limits
	origin  *endpoint
	mirrors []*endpoint
	budget  *budgetTracker
	reserve int
	now     func() time.Time
}

// Manifest is a manifest exactly as a source sent it, verified: its bytes
// hash to Digest, and MediaType is a manifest type.
type Manifest struct {
	ocispec.Descriptor
	Data   []byte
	Source string // SourceOrigin, or the mirror that answered
}

// New builds a client for cfg. It does no network I/O, so regcache starts
// even when every upstream is down; the first request pings and authenticates.
func New(cfg Config) (*Registry, error) {
	return newRegistry(cfg, time.Now)
}

// newRegistry is New with a clock, which tests replace to drive breakers and
// Retry-After without sleeping.
func newRegistry(cfg Config, now func() time.Time) (*Registry, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	base, reg, err := parseRegistryURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %w", cfg.Name, err)
	}
	regName := cfg.Name
	if regName == "" {
		regName = base.Host
	}
	logger = logger.With("registry", regName)
	if cfg.Reserve < 0 {
		return nil, fmt.Errorf("upstream %q: reserve must not be negative", regName)
	}
	limits := cfg.Limits.withDefaults()

	wire := cfg.Transport
	if wire == nil {
		allow := privateHost(base.Host)
		if cfg.AllowPrivateRedirects != nil {
			allow = *cfg.AllowPrivateRedirects
		}
		hosts := []string{canonicalHost(base.Scheme, base.Host)}
		for _, mc := range cfg.Mirrors {
			if u, err := url.Parse(mc.URL); err == nil {
				hosts = append(hosts, canonicalHost(u.Scheme, u.Host))
			}
		}
		hosts = append(hosts, proxyHosts()...)
		wire = newBaseTransport(newDialGuard(regName, allow, limits.ConnectTimeout, hosts...), limits)
	}
	budget := newBudgetTracker(base.Host, now, limits.MaxRetryAfter)
	var rt http.RoundTripper = &loggingTransport{inner: wire, logger: logger, source: SourceOrigin, registry: regName, m: cfg.Metrics}
	rt = &rateLimitTransport{inner: rt, tracker: budget}

	r := &Registry{
		name:    regName,
		log:     logger,
		m:       cfg.Metrics,
		limits:  limits,
		budget:  budget,
		reserve: cfg.Reserve,
		now:     now,
		origin: &endpoint{
			source:   SourceOrigin,
			name:     regName,
			base:     *base,
			scopes:   newScopeCache(reg, cfg.Auth, pinScheme(*base, rt), 0),
			red:      redactor{auth: cfg.Auth},
			log:      logger,
			breaker:  newBreaker(now),
			maxPause: limits.MaxRetryAfter,
			budget:   budget,
		},
	}
	seen := map[string]bool{SourceOrigin: true}
	for i, mc := range cfg.Mirrors {
		m, err := newMirror(mc, wire, logger, now, limits.MaxRetryAfter, regName, cfg.Metrics)
		if err != nil {
			return nil, fmt.Errorf("upstream %q: mirrors[%d]: %w", regName, i, err)
		}
		if seen[m.source] {
			return nil, fmt.Errorf("upstream %q: mirrors[%d]: duplicate mirror name %q", regName, i, m.source)
		}
		seen[m.source] = true
		r.mirrors = append(r.mirrors, m)
	}
	return r, nil
}

// parseRegistryURL checks a registry URL: http or https, a host, no path
// (the API lives at /v2/ on the root) and no user info (credentials belong in
// Auth, where they never reach a log line).
func parseRegistryURL(raw string) (*url.URL, name.Registry, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// Do not echo raw: it might hold a password.
		return nil, name.Registry{}, errors.New("invalid registry URL")
	}
	if u.User != nil {
		return nil, name.Registry{}, errors.New("registry URL must not contain credentials; use auth")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, name.Registry{}, fmt.Errorf("registry URL scheme must be http or https, not %q", u.Scheme)
	}
	if u.Host == "" {
		return nil, name.Registry{}, errors.New("registry URL has no host")
	}
	if strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, name.Registry{}, errors.New("registry URL must be scheme://host[:port] with no path or query")
	}
	var opts []name.Option
	if u.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(u.Host, opts...)
	if err != nil {
		return nil, name.Registry{}, fmt.Errorf("registry URL host: %w", err)
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, reg, nil
}

// Name is the registry name from Config.
func (r *Registry) Name() string { return r.name }

// Budget is what the origin last said about its pull rate limit.
func (r *Registry) Budget() Budget { return r.budget.get() }

// OnBudgetChange registers fn to hear of every change the origin's answers
// make to the budget, for sharing it with other replicas. Call it before
// the first request.
func (r *Registry) OnBudgetChange(fn func(Budget)) {
	r.budget.mu.Lock()
	r.budget.onChange = fn
	r.budget.mu.Unlock()
}

// MergeBudget applies what another replica learnt about the origin: its
// newer counts, and its pauses, so no replica asks an origin that told
// another to back off.
func (r *Registry) MergeBudget(b Budget) { r.budget.merge(b) }

// BelowReserve reports whether the origin's known remaining pulls are at
// or below Config.Reserve. When it is true the caller should stop spending
// counted pulls on anything a mirror or its cache can answer (serve cached
// tags past their TTL) and keep the rest for true misses. An unknown budget
// (no rate-limit headers, or none for a whole window) is never below.
func (r *Registry) BelowReserve() bool { return r.budget.belowReserve(r.reserve) }

// HeadManifest asks the origin for a manifest's descriptor without
// downloading it. Docker Hub does not count HEAD as a pull, which is why this
// never falls back to a GET. Digest is empty when the upstream did not send
// Docker-Content-Digest; Size is -1 when it sent no Content-Length.
func (r *Registry) HeadManifest(ctx context.Context, repo ref.Repo, m ref.Manifest, accept []string) (ocispec.Descriptor, error) {
	c := r.origin.call("HEAD manifest", repo, m.String())
	var desc ocispec.Descriptor
	err := r.origin.run(ctx, c, func(*ticket) error {
		var err error
		desc, err = r.origin.headManifest(ctx, c, m.Digest, accept)
		return err
	})
	return desc, err
}

// ManifestByTag GETs a manifest by tag at the origin, at most
// MaxManifestSize bytes, and returns it byte for byte. Docker Hub counts it
// as a pull; it is sent once per call (plus the token refresh ggcr does
// after a 401, which is not counted). A Docker-Content-Digest header must
// match the body.
func (r *Registry) ManifestByTag(ctx context.Context, repo ref.Repo, tag ref.Tag, accept []string) (Manifest, error) {
	c := r.origin.call("GET manifest", repo, tag.String())
	var m Manifest
	err := r.origin.run(ctx, c, func(*ticket) error {
		var err error
		m, err = r.origin.getManifest(ctx, c, "", accept)
		return err
	})
	if err == nil {
		r.countManifest(m)
	}
	return m, err
}

// From says which sources may serve content by digest.
type From uint8

const (
	// AnySource asks the mirrors that carry the repository, in order,
	// then the origin.
	AnySource From = iota
	// MirrorsOnly never asks the origin: for when its pull budget must be
	// kept.
	MirrorsOnly
)

// Manifest fetches a manifest by digest from the first source that answers
// with bytes that hash to d.
func (r *Registry) Manifest(ctx context.Context, repo ref.Repo, d digest.Digest, from From) (Manifest, error) {
	var m Manifest
	fetch := func(e *endpoint, c call, _ *ticket) error {
		var err error
		m, err = e.getManifest(ctx, c, d, nil)
		return err
	}
	var err error
	if from == MirrorsOnly {
		err = r.fromMirrors(ctx, "GET manifest at mirror", repo, ref.Manifest{Digest: d}, fetch)
	} else {
		err = r.fromSources(ctx, "GET manifest", repo, d, fetch)
	}
	if err == nil {
		r.countManifest(m)
	}
	return m, err
}

// TagAtMirror fetches repo:tag from the first mirror that carries repo and
// has the tag. It is the fallback for when the origin cannot answer: a
// mirror's tag may lag the origin's, so the caller should mark the answer
// as such. The origin is never asked.
func (r *Registry) TagAtMirror(ctx context.Context, repo ref.Repo, tag ref.Tag, accept []string) (Manifest, error) {
	var m Manifest
	err := r.fromMirrors(ctx, "GET manifest at mirror", repo, ref.Manifest{Tag: tag}, func(e *endpoint, c call, _ *ticket) error {
		var err error
		m, err = e.getManifest(ctx, c, "", accept)
		return err
	})
	if err == nil {
		r.log.WarnContext(ctx, "tag resolved at mirror", "mirror", m.Source, "repository", repo.Path(), "tag", tag.String(), "digest", m.Digest)
		r.countManifest(m)
	}
	return m, err
}

func (r *Registry) countManifest(m Manifest) {
	if r.m == nil {
		return
	}
	r.m.UpstreamBytes.WithLabelValues(r.name, m.Source, "manifest").Add(float64(len(m.Data)))
	if m.Source == SourceOrigin {
		// What Docker Hub counts as a pull: a manifest GET it answered.
		r.m.CountedPulls.WithLabelValues(r.name).Inc()
	} else {
		r.m.MirrorHits.WithLabelValues(r.name, m.Source, "manifest").Inc()
	}
}

// StatBlob returns a blob's descriptor without downloading it, asking
// mirrors first like Blob.
func (r *Registry) StatBlob(ctx context.Context, repo ref.Repo, d digest.Digest) (ocispec.Descriptor, error) {
	var desc ocispec.Descriptor
	err := r.fromSources(ctx, "HEAD blob", repo, d, func(e *endpoint, c call, _ *ticket) error {
		var err error
		desc, err = e.headBlob(ctx, c, d)
		return err
	})
	return desc, err
}

// ListKind is which list a List call fetches.
type ListKind uint8

const (
	Tags ListKind = iota
	Referrers
)

// ListRequest names a tags list (with the client's n and last) or the
// referrers of a digest (with an artifactType filter).
type ListRequest struct {
	Kind   ListKind
	Digest digest.Digest // Referrers only
	Query  url.Values    // only n, last (Tags) and artifactType (Referrers) are sent
}

// List is a tags list or referrers answer, read whole.
type List struct {
	Body        []byte
	ContentType string // application/json, or an OCI index for referrers
	Link        string // the upstream's pagination Link header, if any
}

// List fetches a tags list or referrers answer from the origin, at most
// MaxListSize bytes; a larger one is an error, never a truncated body.
func (r *Registry) List(ctx context.Context, repo ref.Repo, req ListRequest) (List, error) {
	path, op, keys := "tags/list", "GET tags", []string{"n", "last"}
	h := http.Header{}
	if req.Kind == Referrers {
		path, op, keys = "referrers/"+req.Digest.String(), "GET referrers", []string{"artifactType"}
		h.Set("Accept", ocispec.MediaTypeImageIndex)
	}
	q := url.Values{}
	for _, k := range keys {
		if v := req.Query.Get(k); v != "" {
			q.Set(k, v)
		}
	}
	c := r.origin.call(op, repo, req.Digest.String())
	var l List
	err := r.origin.run(ctx, c, func(*ticket) error {
		var err error
		l, err = r.origin.getList(ctx, c, path, q, h, req.Kind)
		return err
	})
	return l, err
}
