package upstream

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"
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

func newMirror(regName string, mc MirrorConfig, wire http.RoundTripper, logger *slog.Logger, now func() time.Time) (*endpoint, error) {
	base, reg, err := parseRegistryURL(mc.URL)
	if err != nil {
		return nil, err
	}
	prefix := strings.Trim(mc.RepoPrefix, "/")
	if prefix != "" && !validRepo(prefix) {
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
	rt := &loggingTransport{inner: wire, logger: logger, source: name}
	return &endpoint{
		registry: name,
		source:   name,
		base:     *base,
		scopes:   newScopeCache(reg, mc.Auth, pinScheme(*base, rt), 0),
		log:      logger,
		breaker:  newBreaker(now),
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

// repoPath is repo as this endpoint names it.
func (e *endpoint) repoPath(repo string) string {
	if e.prefix == "" {
		return repo
	}
	return e.prefix + "/" + repo
}

// run sends one operation through the endpoint's circuit breaker: refused at
// once while the breaker is open, and its outcome recorded afterwards. An
// operation that hands back a body still to be verified (a mirror's blob)
// defers the verdict to the end of that body through its ticket.
func (e *endpoint) run(ctx context.Context, eb Error, op func(t *ticket) error) error {
	ok, probe := e.breaker.allow()
	if !ok {
		_, _, until := e.breaker.state()
		ce := eb
		ce.Code = CodeUnavailable
		ce.Message = "circuit open after repeated failures; not asked until " + until.UTC().Format(time.RFC3339)
		ce.RetryAfter = max(until.Sub(e.breaker.now()), 0)
		ce.notSent = true
		return &ce
	}
	t := &ticket{breaker: e.breaker, probe: probe}
	err := op(t)
	if err == nil && t.deferred {
		return nil
	}
	oc := classify(ctx, err)
	if !e.mirror && IsRateLimited(err) {
		// The origin's 429s are handled by its budget (Retry-After);
		// counting them here too would shut out the free HEADs.
		oc = outcomeNeutral
	}
	t.finish(oc, retryAfter(err))
	return err
}

// ticket is one admitted request's claim on its breaker; finish records its
// outcome once (and frees the half-open probe slot if it held it).
type ticket struct {
	breaker  *breaker
	probe    bool
	deferred bool
	once     sync.Once
}

func (t *ticket) finish(oc outcome, retryAfter time.Duration) {
	t.once.Do(func() { t.breaker.done(t.probe, oc, retryAfter) })
}

// classify says how a result counts for a breaker.
func classify(ctx context.Context, err error) outcome {
	if err == nil {
		return outcomeSuccess
	}
	if ctx.Err() != nil {
		return outcomeNeutral
	}
	var e *Error
	if !errors.As(err, &e) {
		return outcomeFailure
	}
	switch {
	case e.notSent:
		return outcomeNeutral
	case isDigestInvalid(err):
		return outcomeFailure
	case IsUnavailable(err):
		return outcomeFailure
	case e.StatusCode == 0:
		// Rejected before sending (bad argument): says nothing.
		return outcomeNeutral
	}
	// 404, 401, 403 and other 4xx: the source is up and answering.
	return outcomeSuccess
}

func retryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
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

// fromSources runs fetch against each mirror that carries the repository,
// then the origin, and stops at the first success. Only content addressed
// by digest may come from a mirror: the caller, or fetch itself, verifies
// it. Any mirror failure (404, 429, 5xx, unreachable, wrong digest, auth)
// moves on to the next source; the origin's error is the one returned.
func (r *Registry) fromSources(ctx context.Context, eb Error, fetch func(e *endpoint, eb Error, t *ticket) error) error {
	if err := r.fromMirrors(ctx, eb, fetch); err == nil || ctx.Err() != nil {
		return err
	}
	return r.origin.run(ctx, eb, func(t *ticket) error { return fetch(r.origin, eb, t) })
}

// fromMirrors is fromSources without the origin. It returns the last
// mirror's error, or a not-sent error when no mirror carries the repository.
func (r *Registry) fromMirrors(ctx context.Context, eb Error, fetch func(e *endpoint, eb Error, t *ticket) error) error {
	repo := eb.Repository
	last := error(&Error{Registry: eb.Registry, Op: eb.Op, Repository: repo, Reference: eb.Reference,
		Message: "no mirror carries this repository", notSent: true})
	d := digest.Digest(eb.Reference)
	byDigest := d.Validate() == nil // a tag never validates
	for _, m := range r.mirrorsFor(repo) {
		meb := eb
		meb.Registry = m.registry
		meb.Repository = m.repoPath(repo)
		if byDigest && m.bad.has(d) {
			r.log.DebugContext(ctx, "mirror skipped: it served wrong bytes for this digest within the hour",
				"mirror", m.source, "op", eb.Op, "repository", repo, "digest", d)
			ne := meb
			ne.Message = "this mirror served content with a different digest within the last hour; not asked"
			ne.notSent = true
			last = &ne
			continue
		}
		err := m.run(ctx, meb, func(t *ticket) error { return fetch(m, meb, t) })
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		if byDigest && isDigestInvalid(err) {
			m.bad.add(d)
		}
		level := slog.LevelWarn
		if IsNotFound(err) || isNotSent(err) {
			level = slog.LevelDebug
		}
		r.log.Log(ctx, level, "mirror skipped", "mirror", m.source, "op", eb.Op, "repository", repo, "err", err)
		last = err
	}
	return last
}

// GetMirroredManifest fetches a manifest by digest from the mirrors only,
// never the origin: for when the origin's pull budget must be kept.
func (r *Registry) GetMirroredManifest(ctx context.Context, repo string, d digest.Digest, accept []string) (Manifest, error) {
	eb := r.errBase("GET manifest at mirror", repo, string(d))
	if _, verr := checkManifestArgs(repo, string(d)); verr != nil {
		return Manifest{}, withBase(verr, eb)
	}
	var m Manifest
	err := r.fromMirrors(ctx, eb, func(e *endpoint, eb Error, _ *ticket) error {
		var err error
		m, err = e.getManifest(ctx, eb, d, accept)
		return err
	})
	return m, err
}

func isNotSent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.notSent
}

// isDigestInvalid reports whether err is regcache's own verdict that the
// bytes a source sent do not match the digest asked for (StatusCode 0: not
// an error the source itself answered with).
func isDigestInvalid(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == CodeDigestInvalid && e.StatusCode == 0
}

// ResolveTagAtMirror fetches repo:tag from the first mirror that carries
// repo and has the tag. It is the tag_fallback for when the origin cannot
// answer: a mirror's tag may lag the origin's, so the caller should mark
// the answer as such. The manifest is checked against the mirror's
// Docker-Content-Digest header when one is sent; the origin is never asked.
func (r *Registry) ResolveTagAtMirror(ctx context.Context, repo, tag string, accept []string) (Manifest, error) {
	eb := r.errBase("GET manifest at mirror", repo, tag)
	want, verr := checkManifestArgs(repo, tag)
	if verr != nil {
		return Manifest{}, withBase(verr, eb)
	}
	if want != "" {
		return Manifest{}, withBase(&Error{Code: CodeTagInvalid, Message: "a tag is required, not a digest"}, eb)
	}
	mirrors := r.mirrorsFor(repo)
	if len(mirrors) == 0 {
		e := eb
		e.Message = "no mirror carries this repository"
		e.notSent = true
		return Manifest{}, &e
	}
	var last error
	for _, m := range mirrors {
		meb := eb
		meb.Registry = m.registry
		meb.Repository = m.repoPath(repo)
		var man Manifest
		err := m.run(ctx, meb, func(*ticket) error {
			var err error
			man, err = m.getManifest(ctx, meb, "", accept)
			return err
		})
		if err == nil {
			r.log.WarnContext(ctx, "tag resolved at mirror", "mirror", m.source, "repository", repo, "tag", tag, "digest", man.Digest)
			return man, nil
		}
		if ctx.Err() != nil {
			return Manifest{}, err
		}
		last = err
	}
	return Manifest{}, last
}

// FetchManifest gets a manifest spending as few counted pulls as it can.
// A digest is fetched like GetManifest does (mirrors, then origin). A tag is
// resolved with a HEAD at the origin, which Docker Hub does not count, and
// the digest it names is then fetched from a mirror if one has it. Only when
// the origin sends no digest on HEAD, or no mirror has the content, is the
// counted GET made at the origin. An official image pulled through a healthy
// mirror thus costs no Docker Hub pull.
//
// If the HEAD fails, its error is returned and nothing else is tried: the
// caller decides between stale content and ResolveTagAtMirror.
func (r *Registry) FetchManifest(ctx context.Context, repo, ref string, accept []string) (Manifest, error) {
	if strings.Contains(ref, ":") {
		return r.GetManifest(ctx, repo, ref, accept)
	}
	desc, err := r.HeadManifest(ctx, repo, ref, accept)
	if err != nil {
		return Manifest{}, err
	}
	if desc.Digest == "" {
		return r.GetManifest(ctx, repo, ref, accept)
	}
	return r.GetManifest(ctx, repo, desc.Digest.String(), accept)
}

// BelowReserve reports whether the origin's known remaining pulls are at
// or below Config.Reserve. When it is true the caller should stop spending
// counted pulls on anything a mirror or its cache can answer (serve cached
// tags past their TTL) and keep the rest for true misses. An unknown budget
// (no rate-limit headers, or none for a whole window) is never below.
func (r *Registry) BelowReserve() bool { return r.budget.belowReserve(r.reserve) }

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
}

// Sources reports the mirrors, in order, then the origin.
func (r *Registry) Sources() []SourceStatus {
	var out []SourceStatus
	for _, e := range append(append([]*endpoint(nil), r.mirrors...), r.origin) {
		st, failures, until := e.breaker.state()
		ss := SourceStatus{Name: e.source, URL: e.base.String(), State: st, Failures: failures, OpenUntil: until}
		if e.bad != nil {
			ss.BadDigests = e.bad.size()
		}
		out = append(out, ss)
	}
	return out
}

// verifyingReader hashes a mirror's blob as the caller reads it. At the end
// of the body it gives the breaker its verdict, and turns a mismatch into a
// DIGEST_INVALID read error. Judging the mirror only on its headers would
// let one that serves bad bytes stay closed and be asked on every retry.
type verifyingReader struct {
	ctx  context.Context
	rc   io.ReadCloser
	want digest.Digest
	h    hash.Hash
	eb   Error
	t    *ticket
	bad  *badContent
}

func newVerifyingReader(ctx context.Context, rc io.ReadCloser, want digest.Digest, eb Error, t *ticket, bad *badContent) io.ReadCloser {
	if !want.Algorithm().Available() {
		return rc
	}
	t.deferred = true
	return &verifyingReader{ctx: ctx, rc: rc, want: want, h: want.Algorithm().Hash(), eb: eb, t: t, bad: bad}
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	n, err := v.rc.Read(p)
	v.h.Write(p[:n])
	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		if got := digest.NewDigest(v.want.Algorithm(), v.h); got != v.want {
			judgeMirrorBlob(v.ctx, v.t, v.bad, v.want, ErrContentMismatch)
			return n, digestError(v.eb, fmt.Sprintf("blob hashes to %s", got))
		}
		judgeMirrorBlob(v.ctx, v.t, v.bad, v.want, nil)
	default:
		judgeMirrorBlob(v.ctx, v.t, v.bad, v.want, err)
	}
	return n, err
}

// judgeMirrorBlob records how reading a mirror's blob ended: matching bytes
// are a success, wrong bytes a failure remembered for the digest, a body
// cut short a failure, and a cancelled read nothing.
func judgeMirrorBlob(ctx context.Context, t *ticket, bad *badContent, d digest.Digest, err error) {
	switch {
	case err == nil:
		t.finish(outcomeSuccess, 0)
	case errors.Is(err, ErrContentMismatch):
		t.finish(outcomeFailure, 0)
		bad.add(d)
	case ctx.Err() != nil || errors.Is(err, context.Canceled):
		t.finish(outcomeNeutral, 0)
	default:
		t.finish(outcomeFailure, 0)
	}
}

// judgedBody is a mirror's blob body whose verdict the caller gives
// (Blob.Judge); closing it first says nothing about the mirror.
type judgedBody struct {
	io.ReadCloser
	t *ticket
}

func (b *judgedBody) Close() error {
	b.t.finish(outcomeNeutral, 0)
	return b.ReadCloser.Close()
}

// Close frees the breaker's probe slot if the body was not read to the end;
// that says nothing about the mirror.
func (v *verifyingReader) Close() error {
	v.t.finish(outcomeNeutral, 0)
	return v.rc.Close()
}

// ProbeBudget refreshes Budget the way Docker documents it: a HEAD of a
// manifest, which is not counted but carries the ratelimit headers, after a
// token for that repository. For Docker Hub use "ratelimitpreview/test" and
// "latest". A registry that sends no headers leaves Budget().Known false:
// no limit applies.
func (r *Registry) ProbeBudget(ctx context.Context, repo, ref string) (Budget, error) {
	if _, err := r.HeadManifest(ctx, repo, ref, nil); err != nil && !IsNotFound(err) && !IsRateLimited(err) {
		return r.Budget(), err
	}
	return r.Budget(), nil
}
