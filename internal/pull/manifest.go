package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"

	"github.com/regcache/regcache/internal/pull/index"
	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
	"github.com/regcache/regcache/internal/store"
	"github.com/regcache/regcache/internal/upstream"
)

// manifestSource is what resolving and fetching manifests needs from a
// registry.
type manifestSource interface {
	// HeadManifest resolves a tag (or checks a digest) at the origin, free.
	HeadManifest(ctx context.Context, repo ref.Repo, m ref.Manifest, accept []string) (ocispec.Descriptor, error)
	// ManifestByTag is the counted GET at the origin.
	ManifestByTag(ctx context.Context, repo ref.Repo, tag ref.Tag, accept []string) (upstream.Manifest, error)
	// Manifest fetches by digest, verified, from mirrors then the origin.
	Manifest(ctx context.Context, repo ref.Repo, d digest.Digest, from upstream.From) (upstream.Manifest, error)
	// TagAtMirror resolves a tag at a mirror, for when the origin cannot.
	TagAtMirror(ctx context.Context, repo ref.Repo, tag ref.Tag, accept []string) (upstream.Manifest, error)
	// BelowReserve reports that the origin's pull budget is at the reserve.
	BelowReserve() bool
}

// Manifest is a manifest as it is served: the bytes exactly as the upstream
// sent them, and the media type it named.
type Manifest struct {
	Digest    digest.Digest
	MediaType string
	Data      []byte
	Result    Result
	// StaleReason is the upstream error that made the answer stale.
	StaleReason error
	// Source names where fetched bytes came from: "origin" or a mirror.
	// Empty for answers from the cache.
	Source string
	// TagFromMirror is set when the tag itself was resolved at a mirror
	// because the origin could not answer; a mirror's tag may lag.
	TagFromMirror bool
}

// maxCachedManifest bounds manifests kept in memory; bigger ones are read
// from the store each time.
const maxCachedManifest = 256 << 10

// ManifestByDigest answers a manifest request by digest.
func (c *Cache) ManifestByDigest(ctx context.Context, repo ref.Repo, d digest.Digest) (*Manifest, error) {
	src, err := c.source(repo)
	if err != nil {
		return nil, err
	}
	if m, ok := c.loadManifest(ctx, d); ok {
		if c.index.Linked(ctx, repo, d) {
			m.Result = Hit
			return m, nil
		}
		// Stored for another repository: confirm this one has it too.
		fctx, cancel := c.detach(ctx, c.opt.FetchTimeout)
		defer cancel()
		if _, err := src.HeadManifest(fctx, repo, ref.Manifest{Digest: d}, ref.AcceptAll.Values()); err != nil {
			return nil, err
		}
		c.index.Link(ctx, repo, d)
		m.Result = Revalidated
		return m, nil
	}
	v, err, shared := c.flow.Do("m:"+repo.String()+"@"+d.String(), func() (any, error) {
		fctx, cancel := c.detach(ctx, c.opt.FetchTimeout)
		defer cancel()
		return c.fetchManifest(fctx, src, repo, d, upstream.AnySource)
	})
	if shared {
		c.m.SharedFetches.WithLabelValues(repo.Registry(), "manifest").Inc()
	}
	if err != nil {
		return nil, err
	}
	m := *v.(*Manifest)
	return &m, nil
}

// ManifestByTag answers a manifest request by tag, for clients accepting
// the types in k.Mask.
//
// Within tag_ttl the index answers. Past it, the origin is asked (one
// revalidation per tag at a time, however many clients), but a client with
// a cached answer waits for it at most revalidate_wait: then it gets the
// cached answer, marked stale, and the revalidation finishes in the
// background, so the next pull sees what it found; with
// stale_while_revalidate it gets the cached answer at once. Past
// tag_ttl+max_stale (when set) a cached answer is never served: the pull
// waits for the tag to be resolved as a cold one is.
func (c *Cache) ManifestByTag(ctx context.Context, k index.TagKey) (*Manifest, error) {
	src, err := c.source(k.Repo)
	if err != nil {
		return nil, err
	}
	rec, have := c.index.Tag(ctx, k)
	age := c.now().Sub(rec.Checked)
	var cached *Manifest
	if have {
		cached, have = c.loadManifest(ctx, rec.Digest)
	}
	if have && age < c.opt.TagTTL {
		cached.Result = Hit
		return cached, nil
	}
	ch := c.flow.DoChan("t:"+k.String(), func() (any, error) {
		// The revalidation may outlive this client (revalidate_wait): it
		// is the cache's work, and Close waits for it.
		if !c.enter() {
			return nil, errClosing
		}
		defer c.leave()
		fctx, cancel := c.detach(ctx, c.opt.FetchTimeout)
		defer cancel()
		return c.revalidate(fctx, src, k)
	})
	stale := func(reason error) *Manifest {
		c.log.Debug("serving the cached tag while it is revalidated", "tag", k.String(), "digest", rec.Digest, "reason", reason)
		return &Manifest{Digest: cached.Digest, MediaType: cached.MediaType, Data: cached.Data, Result: Stale, StaleReason: reason}
	}
	var res singleflight.Result
	mayServe := have && !c.tooStale(rec)
	switch {
	case mayServe && c.opt.StaleWhileRevalidate:
		// At once, whatever the origin: the revalidation just started goes
		// on without this client.
		res.Val = stale(errRevalidating)
	case mayServe && c.opt.RevalidateWait > 0:
		t := time.NewTimer(c.opt.RevalidateWait)
		defer t.Stop()
		select {
		case res = <-ch:
		case <-t.C:
			// The origin is slow: answer from the cache; the revalidation
			// goes on without this client.
			res.Val = stale(errSlowOrigin)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	default:
		select {
		case res = <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if res.Shared {
		c.m.SharedFetches.WithLabelValues(k.Repo.Registry(), "manifest").Inc()
	}
	if res.Err != nil {
		return nil, res.Err
	}
	m := *res.Val.(*Manifest)
	if m.Result == Stale {
		// Counted per answer, not per revalidation: requests that joined
		// one in flight were served stale too.
		c.m.StaleServed.WithLabelValues(k.Repo.Registry(), staleReason(m.StaleReason)).Inc()
	}
	return &m, nil
}

// tooStale reports whether a cached answer is past tag_ttl+max_stale, and
// must no longer be served without the origin's word.
func (c *Cache) tooStale(rec index.Tag) bool {
	return c.opt.MaxStale > 0 && c.now().Sub(rec.Checked) > c.opt.TagTTL+c.opt.MaxStale
}

func staleReason(cause error) string {
	switch {
	case errors.Is(cause, errReserve):
		return "reserve"
	case errors.Is(cause, errSlowOrigin):
		return "slow_origin"
	case errors.Is(cause, errRevalidating):
		return "revalidating"
	case regerr.Is(cause, regerr.RateLimited):
		return "rate_limited"
	}
	return "error"
}

// errReserve is the stale reason when the pull budget is below the reserve.
var errReserve = errors.New("origin pull budget is at or below the configured reserve")

// errRevalidating is the stale reason with stale_while_revalidate.
var errRevalidating = errors.New("served from the cache while it is revalidated (stale_while_revalidate)")

// errSlowOrigin is the stale reason when the origin did not answer a
// revalidation within revalidate_wait.
var errSlowOrigin = errors.New("the origin did not answer within revalidate_wait; revalidating in the background")

// revalidate asks the origin which digest a tag names now and fetches it if
// it is not stored. Any failure other than "not found" falls back to the
// cached answer; with none cached, and tag_fallback on, the mirrors are
// asked too, as soon as the origin fails or is slower than hedge_delay.
func (c *Cache) revalidate(ctx context.Context, src manifestSource, k index.TagKey) (*Manifest, error) {
	if c.opt.Fleet != nil {
		// Once per tag_ttl fleet-wide: another replica may have just
		// revalidated it, or be doing so now.
		if m, ok := c.fleetFresh(ctx, k); ok {
			return m, nil
		}
		var m *Manifest
		release, done := c.fleetJob(ctx, "tag:"+k.String(), func() bool { var ok bool; m, ok = c.fleetFresh(ctx, k); return ok })
		if done {
			return m, nil
		}
		defer release()
	}
	rec, have := c.index.Tag(ctx, k)
	var old *Manifest
	if have {
		old, have = c.loadManifest(ctx, rec.Digest)
	}
	if !have || c.tooStale(rec) {
		// Nothing cached, or nothing that may be served any more (past
		// max_stale; a tag a mirror resolved is always past it): resolve
		// the tag as for a cold pull, at the origin, hedged to the mirrors.
		return c.resolve(ctx, src, k)
	}
	m, err := c.askOrigin(ctx, src, k, rec, old)
	switch {
	case err == nil:
		return m, nil
	case regerr.Is(err, regerr.NotFound):
		return nil, err
	case c.tooStale(rec):
		// It went past max_stale while the origin was being asked.
		c.log.Warn("cached tag is past max_stale and the origin failed", "tag", k.String(), "digest", rec.Digest, "err", err)
		return nil, err
	}
	age := "never checked at the origin (resolved at a mirror)"
	if !rec.Checked.IsZero() {
		age = c.now().Sub(rec.Checked).Round(time.Second).String()
	}
	msg := "serving cached tag: upstream failed"
	if errors.Is(err, errReserve) {
		msg = "serving cached tag: origin pull budget at the reserve and no mirror has the new digest"
	}
	c.log.Warn(msg, "tag", k.String(), "digest", rec.Digest, "age", age, "err", err)
	old.Result, old.StaleReason = Stale, err
	return old, nil
}

// askOrigin resolves a tag at the origin with a HEAD, which Docker Hub does
// not count, and fetches the manifest it names only when that is not
// stored (from a mirror if one has it). rec and old are the cached answer,
// if any. The answer is recorded as checked now.
func (c *Cache) askOrigin(ctx context.Context, src manifestSource, k index.TagKey, rec index.Tag, old *Manifest) (*Manifest, error) {
	fresh := func(m *Manifest) (*Manifest, error) {
		c.setTag(ctx, k, index.Tag{Digest: m.Digest, MediaType: m.MediaType, Checked: c.now()})
		return m, nil
	}
	desc, err := src.HeadManifest(ctx, k.Repo, ref.Manifest{Tag: k.Tag}, k.Mask.Values())
	switch {
	case regerr.Is(err, regerr.NotFound):
		// The origin's "no such tag" is authoritative; a deleted tag must
		// stop resolving here too.
		c.deleteTag(ctx, k)
		return nil, err
	case err != nil:
		return nil, err
	case desc.Digest == "":
		// Some registries omit the digest on HEAD; only then is a GET by
		// tag the way to learn it.
		um, err := src.ManifestByTag(ctx, k.Repo, k.Tag, k.Mask.Values())
		if err != nil {
			return nil, err
		}
		return fresh(c.keepManifest(ctx, k.Repo, um))
	case old != nil && desc.Digest == rec.Digest:
		c.m.TagRevalidations.WithLabelValues(k.Repo.Registry(), "unchanged").Inc()
		m := *old
		m.Result = Revalidated
		return fresh(&m)
	}
	if old != nil {
		c.m.TagRevalidations.WithLabelValues(k.Repo.Registry(), "changed").Inc()
	}
	if m, ok := c.loadManifest(ctx, desc.Digest); ok {
		c.index.Link(ctx, k.Repo, desc.Digest)
		m.Result = Revalidated
		return fresh(m)
	}
	from := upstream.AnySource
	if old != nil && src.BelowReserve() {
		// The tag moved, but the budget is nearly spent: a mirror may have
		// the new manifest for free; otherwise keep the remaining pulls for
		// content nobody has cached, and serve what we have.
		from = upstream.MirrorsOnly
	}
	m, err := c.fetchManifest(ctx, src, k.Repo, desc.Digest, from)
	if err != nil {
		if from == upstream.MirrorsOnly {
			return nil, errReserve
		}
		return nil, err
	}
	return fresh(m)
}

// resolve answers a tag nothing is cached for. The origin is asked; with
// tag_fallback on, the mirrors that carry the repository are asked too,
// when the origin fails or has not answered within hedge_delay (a hanging
// Docker Hub), and the first answer wins. The origin's answer, when it
// comes after a mirror's, corrects the tag for the next pull.
func (c *Cache) resolve(ctx context.Context, src manifestSource, k index.TagKey) (*Manifest, error) {
	if !c.opt.TagFallback {
		return c.askOrigin(ctx, src, k, index.Tag{}, nil)
	}
	type answer struct {
		m      *Manifest
		err    error
		mirror bool
	}
	answers := make(chan answer, 2)
	// The origin's answer is wanted even after a mirror's won, so it runs
	// on its own context, as the cache's work.
	if !c.enter() {
		return nil, errClosing
	}
	go func() {
		defer c.leave()
		octx, cancel := c.detach(ctx, c.opt.FetchTimeout)
		defer cancel()
		m, err := c.askOrigin(octx, src, k, index.Tag{}, nil)
		answers <- answer{m, err, false}
	}()
	hedge := time.NewTimer(c.opt.HedgeDelay)
	defer hedge.Stop()
	var originErr, mirrorErr error
	asked, pending := false, 1
	askMirrors := func() {
		if !asked {
			asked, pending = true, pending+1
			// On this revalidation's context: once an answer has won,
			// the mirror's is not wanted.
			go func() {
				m, err := c.tagAtMirror(ctx, src, k)
				answers <- answer{m, err, true}
			}()
		}
	}
	for pending > 0 {
		select {
		case a := <-answers:
			pending--
			switch {
			case a.err == nil:
				if a.mirror {
					c.log.Warn("tag resolved at a mirror", "tag", k.String(), "mirror", a.m.Source, "digest", a.m.Digest,
						"origin_err", originErr, "origin_pending", pending > 0)
				}
				return a.m, nil
			case a.mirror:
				mirrorErr = a.err
			case regerr.Is(a.err, regerr.NotFound):
				// The origin says there is no such tag: a mirror's
				// copy must not resurrect it.
				return nil, a.err
			default:
				originErr = a.err
				askMirrors()
			}
		case <-hedge.C:
			askMirrors()
		}
	}
	c.log.Debug("tag fallback to mirrors failed", "tag", k.String(), "err", mirrorErr)
	// The client should hear about the origin's failure, which is the real
	// cause; the mirrors were only a fallback.
	return nil, originErr
}

// tagAtMirror resolves a tag at a mirror. The answer is stored with a zero
// check time, so the next request asks the origin again, and it is marked:
// a mirror's tag can lag the origin's.
func (c *Cache) tagAtMirror(ctx context.Context, src manifestSource, k index.TagKey) (*Manifest, error) {
	um, err := src.TagAtMirror(ctx, k.Repo, k.Tag, k.Mask.Values())
	if err != nil {
		return nil, err
	}
	m := c.keepManifest(ctx, k.Repo, um)
	c.m.TagFallbacks.WithLabelValues(k.Repo.Registry(), m.Source).Inc()
	if _, ok := c.index.Tag(ctx, k); !ok {
		// The origin's answer, if it came first, stays.
		c.setTag(ctx, k, index.Tag{Digest: m.Digest, MediaType: m.MediaType})
	}
	m.TagFromMirror = true
	return m, nil
}

// keepManifest stores a verified manifest from upstream and links it to
// repo. A store that fails does not fail the request: the manifest is kept
// in memory and served.
func (c *Cache) keepManifest(ctx context.Context, repo ref.Repo, um upstream.Manifest) *Manifest {
	d := um.Digest
	if err := c.storeManifest(ctx, d, um.MediaType, um.Data); err != nil {
		c.m.Uncached.WithLabelValues(repo.Registry(), "manifest", "store_failed").Inc()
		c.log.Warn("manifest served but not stored", "repo", repo.String(), "digest", d, "err", err)
	}
	c.index.Link(ctx, repo, d)
	return &Manifest{Digest: d, MediaType: um.MediaType, Data: um.Data, Result: Miss, Source: um.Source}
}

func (c *Cache) storeManifest(ctx context.Context, d digest.Digest, mediaType string, data []byte) error {
	c.noteSizes(data)
	if len(data) <= maxCachedManifest {
		c.manifests.Add(d, data)
	}
	if _, err := c.opt.Store.Stat(ctx, d); err != nil {
		w, err := c.opt.Store.Create(ctx, d, int64(len(data)))
		if err != nil {
			return c.storeError("store manifest", err)
		}
		defer w.Close()
		if _, err := w.Write(data); err != nil {
			return c.storeError("store manifest", err)
		}
		if err := w.Commit(ctx); err != nil {
			return c.storeError("store manifest", err)
		}
	}
	// The type record is written after the bytes: a crash between the two
	// leaves bytes without a type, which reads as "not cached".
	if err := c.index.SetMediaType(ctx, d, mediaType); err != nil {
		return c.storeError("store manifest type", err)
	}
	return nil
}

// loadManifest returns stored manifest d, with no Result set.
func (c *Cache) loadManifest(ctx context.Context, d digest.Digest) (*Manifest, bool) {
	mt, ok := c.index.MediaType(ctx, d)
	if !ok {
		return nil, false
	}
	if data, ok := c.manifests.Get(d); ok {
		return &Manifest{Digest: d, MediaType: mt, Data: data}, true
	}
	f, err := c.opt.Store.Open(ctx, d)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			c.index.ForgetMediaType(d) // evicted
		} else {
			c.log.Warn("cannot read a stored manifest", "digest", d, "err", err)
		}
		return nil, false
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, upstream.MaxManifestSize+1))
	if err != nil || len(data) > upstream.MaxManifestSize {
		c.log.Warn("cannot read a stored manifest", "digest", d, "err", fmt.Errorf("%d bytes: %v", len(data), err))
		return nil, false
	}
	c.noteSizes(data)
	if len(data) <= maxCachedManifest {
		c.manifests.Add(d, data)
	}
	return &Manifest{Digest: d, MediaType: mt, Data: data}, true
}
