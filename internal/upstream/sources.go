package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/metrics"
	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
)

// MirrorConfig describes one mirror of a registry, such as ECR Public or
// mirror.gcr.io for Docker Hub.
type MirrorConfig struct {
	// Name labels the mirror in Source fields, logs and errors; default
	// the URL's host, plus "/"+RepoPrefix when there is one.
	Name string
	// URL is the mirror's root, e.g. "https://public.ecr.aws". A path is not
	// allowed: put it in RepoPrefix.
	URL string
	// RepoPrefix is prepended to the repository: with "docker/",
	// library/node is asked for as docker/library/node (ECR Public).
	RepoPrefix string
	// Repositories are path.Match patterns ("library/*") naming the
	// repositories the mirror carries; empty means all of them.
	Repositories []string
	// Auth for the mirror; nil = anonymous. The origin's credentials are
	// never sent to a mirror.
	Auth authn.Authenticator
}

func newMirror(mc MirrorConfig, wire http.RoundTripper, logger *slog.Logger, now func() time.Time, maxPause time.Duration, registry string, m *metrics.Metrics) (*endpoint, error) {
	base, reg, err := parseRegistryURL(mc.URL)
	if err != nil {
		return nil, err
	}
	prefix := strings.Trim(mc.RepoPrefix, "/")
	if prefix != "" && !ref.ValidPath(prefix) {
		return nil, fmt.Errorf("invalid repo_prefix %q", mc.RepoPrefix)
	}
	for _, p := range mc.Repositories {
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("invalid repositories pattern %q: %w", p, err)
		}
	}
	name := mc.Name
	if name == "" {
		name = base.Host
		if prefix != "" {
			name += "/" + prefix
		}
	}
	logger = logger.With("mirror", name)
	rt := &loggingTransport{inner: wire, logger: logger, source: name, registry: registry, m: m}
	return &endpoint{
		source:   name,
		name:     name,
		base:     *base,
		scopes:   newScopeCache(reg, mc.Auth, pinScheme(*base, rt), 0),
		red:      redactor{auth: mc.Auth},
		log:      logger,
		breaker:  newBreaker(now),
		maxPause: maxPause,
		mirror:   true,
		bad:      newBadContent(now),
		prefix:   prefix,
		patterns: append([]string(nil), mc.Repositories...),
	}, nil
}

// carries reports whether the mirror is configured to hold repo.
func (e *endpoint) carries(repo string) bool {
	if len(e.patterns) == 0 {
		return true
	}
	for _, p := range e.patterns {
		if ok, _ := path.Match(p, repo); ok {
			return true
		}
	}
	return false
}

// run sends one operation through the endpoint's circuit breaker: refused at
// once while the breaker is open, and its outcome recorded afterwards. An
// operation that hands back a body still to be verified (a blob) takes the
// ticket with it, and settles it when the body ends.
func (e *endpoint) run(ctx context.Context, c call, op func(t *ticket) error) error {
	ok, probe := e.breaker.allow()
	if !ok {
		_, _, until := e.breaker.state()
		return c.notSent(regerr.Unavailable, "circuit open after repeated failures; not asked until "+until.UTC().Format(time.RFC3339),
			max(until.Sub(e.breaker.now()), 0))
	}
	t := &ticket{breaker: e.breaker, probe: probe}
	err := op(t)
	if err == nil && t.deferred {
		return nil
	}
	oc := classify(ctx, err)
	if !e.mirror && regerr.Is(err, regerr.RateLimited) {
		// The origin's 429s are handled by its budget (Retry-After);
		// counting them here too would shut out the free HEADs.
		oc = outcomeNeutral
	}
	var re *regerr.Error
	if errors.As(err, &re) && re.RetryAfter > e.maxPause {
		// The caller passes RetryAfter on to clients: it must say when
		// regcache will ask again, not the upstream's longer wish.
		re.RetryAfter = e.maxPause
	}
	t.finish(oc, regerr.RetryAfter(err), err)
	return err
}

// ticket is one admitted request's claim on its breaker; finish records its
// outcome once (and frees the half-open probe slot if it held it).
type ticket struct {
	breaker  *breaker
	probe    bool
	deferred bool // the outcome is settled later, by a blob body
	once     sync.Once
}

func (t *ticket) finish(oc outcome, retryAfter time.Duration, err error) {
	t.once.Do(func() {
		why := ""
		if oc == outcomeFailure {
			why = failureText(err)
		}
		t.breaker.done(t.probe, oc, retryAfter, why)
	})
}

// failureText describes a failed request for status pages: the client's
// view of the error (which source, what was asked, the status and code,
// regcache's own message), never the upstream's free text or a network
// error's, which can carry addresses or echo credentials.
func failureText(err error) string {
	var re *regerr.Error
	if !errors.As(err, &re) {
		return regerr.KindOf(err).String()
	}
	msg := re.ClientMessage()
	if re.Status == 0 && re.Message == "" {
		// A transport failure: its cause is kept out, so say what kind
		// of failure it was.
		switch re.Kind {
		case regerr.Unavailable:
			msg += ": no answer (connection failed or timed out)"
		default:
			msg += ": " + re.Kind.String()
		}
	}
	return msg
}

// classify says how a result counts for a breaker.
func classify(ctx context.Context, err error) outcome {
	switch {
	case err == nil:
		return outcomeSuccess
	case isNotSent(err), errors.Is(context.Cause(ctx), context.Canceled):
		// Nothing was asked, or the caller gave up: says nothing. A
		// deadline that passed is the source being too slow, which
		// counts: a hanging origin must open its breaker.
		return outcomeNeutral
	}
	switch regerr.KindOf(err) {
	case regerr.Unavailable, regerr.RateLimited, regerr.BadContent, regerr.TooLarge:
		return outcomeFailure
	case regerr.Internal:
		return outcomeNeutral
	}
	// 404, 401, 403 and other 4xx: the source is up and answering.
	return outcomeSuccess
}

// mirrorsFor lists the mirrors configured to carry repo, in order.
func (r *Registry) mirrorsFor(repo string) []*endpoint {
	var out []*endpoint
	for _, m := range r.mirrors {
		if m.carries(repo) {
			out = append(out, m)
		}
	}
	return out
}

// fetchFunc fetches from one endpoint; c names the call as that endpoint
// sees it.
type fetchFunc func(e *endpoint, c call, t *ticket) error

// fromSources runs fetch against each mirror that carries the repository,
// then the origin, and stops at the first success. Only content addressed
// by digest may come from a mirror, and fetch verifies it. Any mirror
// failure (404, 429, 5xx, unreachable, wrong digest, auth) moves on to the
// next source; the origin's error is the one returned.
func (r *Registry) fromSources(ctx context.Context, op string, repo ref.Repo, d digest.Digest, fetch fetchFunc) error {
	if err := r.fromMirrors(ctx, op, repo, ref.Manifest{Digest: d}, fetch); err == nil || ctx.Err() != nil {
		return err
	}
	c := r.origin.call(op, repo, d.String())
	return r.origin.run(ctx, c, func(t *ticket) error { return fetch(r.origin, c, t) })
}

// fromMirrors is fromSources without the origin, for content by digest or,
// as a fallback, a tag. It returns the last mirror's error, or a not-sent
// one when no mirror carries the repository.
func (r *Registry) fromMirrors(ctx context.Context, op string, repo ref.Repo, mr ref.Manifest, fetch fetchFunc) error {
	d := mr.Digest
	last := error(r.origin.call(op, repo, mr.String()).notSent(regerr.NotFound, "no mirror carries this repository", 0))
	for _, m := range r.mirrorsFor(repo.Path()) {
		c := m.call(op, repo, mr.String())
		if d != "" && m.bad.has(d) {
			r.log.DebugContext(ctx, "mirror skipped: it served wrong bytes for this digest within the hour",
				"mirror", m.source, "op", op, "repository", repo.Path(), "digest", d)
			last = c.notSent(regerr.BadContent, "this mirror served content with a different digest within the last hour; not asked", 0)
			continue
		}
		err := m.run(ctx, c, func(t *ticket) error { return fetch(m, c, t) })
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		if d != "" && regerr.Is(err, regerr.BadContent) && !isNotSent(err) {
			m.bad.add(d)
			r.countMismatch(m.source)
		}
		level := slog.LevelWarn
		if regerr.Is(err, regerr.NotFound) || isNotSent(err) {
			level = slog.LevelDebug
		}
		r.log.Log(ctx, level, "mirror skipped", "mirror", m.source, "op", op, "repository", repo.Path(), "err", err)
		last = err
	}
	return last
}

func (r *Registry) countMismatch(source string) {
	if r.m != nil {
		r.m.DigestMismatches.WithLabelValues(r.name, source).Inc()
	}
}

// SourceStatus is the health of one source, for status pages and metrics.
type SourceStatus struct {
	Name      string       // SourceOrigin or the mirror's name
	URL       string       // scheme://host
	State     BreakerState // closed, open or half-open
	Failures  int          // consecutive failures
	OpenUntil time.Time    // when an open breaker lets a probe through
	// BadDigests counts the digests this mirror served wrong bytes for
	// and is not asked for again yet (within the hour).
	BadDigests int
	// LastError is the latest failure that counted against the breaker,
	// in regcache's own words (never the upstream's text), and
	// LastErrorAt when it happened; empty if there was none.
	LastError   string
	LastErrorAt time.Time
}

// Sources reports the mirrors, in order, then the origin.
func (r *Registry) Sources() []SourceStatus {
	var out []SourceStatus
	for _, e := range append(append([]*endpoint(nil), r.mirrors...), r.origin) {
		st, failures, until := e.breaker.state()
		ss := SourceStatus{Name: e.source, URL: e.base.String(), State: st, Failures: failures, OpenUntil: until}
		ss.LastError, ss.LastErrorAt = e.breaker.lastError()
		if e.bad != nil {
			ss.BadDigests = e.bad.size()
		}
		out = append(out, ss)
	}
	return out
}
