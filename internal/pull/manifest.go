package pull

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/regcache/regcache/internal/upstream"
)

// Result says how a request was answered, for logs, metrics and headers.
type Result string

const (
	Hit         Result = "hit"         // from the cache, no upstream request
	Revalidated Result = "revalidated" // from the cache after a HEAD confirmed it
	Miss        Result = "miss"        // fetched from upstream
	Stale       Result = "stale"       // from the cache because the upstream failed
)

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

// tagRecord is the cached answer to "which manifest does this tag name, for
// clients accepting these types".
type tagRecord struct {
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"mediaType"`
	Checked   time.Time     `json:"checked"`
}

type storedManifest struct {
	mediaType string
	data      []byte
}

// maxCachedManifest bounds manifests kept in memory; bigger ones are read
// from the store each time.
const maxCachedManifest = 256 << 10

// tagRef names one cached tag answer.
type tagRef struct {
	registry, repo, tag string
	mask                AcceptMask
}

func (t tagRef) index() hkey     { return hashKey(t.registry, t.repo, t.tag, byte(t.mask)) }
func (t tagRef) metaKey() string { return tagMetaKey(t.registry, t.repo, t.tag, t.mask) }

func tagMetaKey(registry, repo, tag string, mask AcceptMask) string {
	// "_tags" cannot be a repository path component (components do not
	// start with "_"), so tag records never collide with nested repos.
	return fmt.Sprintf("tags/%s/%s/_tags/%s/%02x", registry, repo, tag, uint8(mask))
}

func manifestTypeKey(d digest.Digest) string {
	return "manifests/" + d.Algorithm().String() + "/" + d.Encoded()
}

// IsDigest reports whether a manifest reference is a digest rather than a tag.
func IsDigest(ref string) bool { return strings.Contains(ref, ":") }

// Manifest answers a manifest request for a tag or a digest.
func (c *Cache) Manifest(ctx context.Context, registry, repo, ref string, accept AcceptMask) (*Manifest, error) {
	up, err := c.upstream(registry)
	if err != nil {
		return nil, err
	}
	if IsDigest(ref) {
		d, err := digest.Parse(ref)
		if err != nil {
			return nil, &Error{Status: 400, Code: "DIGEST_INVALID", Message: fmt.Sprintf("invalid digest %q", ref)}
		}
		return c.manifestByDigest(ctx, up, registry, repo, d)
	}
	return c.manifestByTag(ctx, up, registry, repo, ref, accept)
}

func (c *Cache) manifestByDigest(ctx context.Context, up Upstream, registry, repo string, d digest.Digest) (*Manifest, error) {
	if sm, ok := c.loadManifest(ctx, d); ok {
		if c.linked(ctx, registry, repo, d) {
			return &Manifest{Digest: d, MediaType: sm.mediaType, Data: sm.data, Result: Hit}, nil
		}
		// Stored for another repository: confirm this one has it too.
		fctx, cancel := c.detach(ctx, c.opt.FetchTimeout)
		defer cancel()
		if _, err := up.HeadManifest(fctx, repo, d.String(), AcceptAll.Values()); err != nil {
			return nil, err
		}
		c.link(ctx, registry, repo, d)
		return &Manifest{Digest: d, MediaType: sm.mediaType, Data: sm.data, Result: Revalidated}, nil
	}
	v, err, shared := c.flow.Do("m:"+linkKey(registry, repo, d), func() (any, error) {
		fctx, cancel := c.detach(ctx, c.opt.FetchTimeout)
		defer cancel()
		return c.fetchManifest(fctx, up, registry, repo, d.String(), d)
	})
	if shared {
		c.m.SharedFetches.WithLabelValues(registry, "manifest").Inc()
	}
	if err != nil {
		return nil, err
	}
	m := *v.(*Manifest)
	return &m, nil
}

// fetchManifest GETs a manifest (by digest when want is set), verifies it and
// stores it. This is the one place that spends a counted pull.
func (c *Cache) fetchManifest(ctx context.Context, up Upstream, registry, repo, ref string, want digest.Digest) (*Manifest, error) {
	um, err := up.GetManifest(ctx, repo, ref, AcceptAll.Values())
	if err != nil {
		return nil, err
	}
	return c.storeFetched(ctx, registry, repo, ref, want, um)
}

// storeFetched verifies a manifest the upstream sent and stores it.
func (c *Cache) storeFetched(ctx context.Context, registry, repo, ref string, want digest.Digest, um upstream.Manifest) (*Manifest, error) {
	c.countFetch(registry, um.Source, "manifest", len(um.Data))
	if um.Source == upstream.SourceOrigin || um.Source == "" {
		c.m.CountedPulls.WithLabelValues(registry).Inc()
	}
	got := digest.FromBytes(um.Data)
	if want != "" && got != want {
		c.m.DigestMismatches.WithLabelValues(registry, "origin").Inc()
		return nil, &upstream.Error{Registry: registry, Op: "GET manifest", Repository: repo, Reference: ref,
			Code: upstream.CodeDigestInvalid, Message: fmt.Sprintf("content hashes to %s", got)}
	}
	if um.Digest != "" && um.Digest != got {
		c.m.DigestMismatches.WithLabelValues(registry, "origin").Inc()
		return nil, &upstream.Error{Registry: registry, Op: "GET manifest", Repository: repo, Reference: ref,
			Code: upstream.CodeDigestInvalid, Message: fmt.Sprintf("Docker-Content-Digest %s but content hashes to %s", um.Digest, got)}
	}
	mt := um.MediaType
	if mt == "" {
		mt = sniffMediaType(um.Data)
	}
	if err := c.storeManifest(ctx, got, mt, um.Data); err != nil {
		return nil, err
	}
	c.link(ctx, registry, repo, got)
	return &Manifest{Digest: got, MediaType: mt, Data: um.Data, Result: Miss, Source: sourceName(um.Source)}, nil
}

func sourceName(s string) string {
	if s == "" {
		return upstream.SourceOrigin
	}
	return s
}

// countFetch records bytes fetched and, for mirrors, the hit.
func (c *Cache) countFetch(registry, source, kind string, n int) {
	source = sourceName(source)
	c.m.UpstreamBytes.WithLabelValues(registry, source, kind).Add(float64(n))
	if source != upstream.SourceOrigin {
		c.m.MirrorHits.WithLabelValues(registry, source, kind).Inc()
	}
}

// sniffMediaType reads the mediaType field for upstreams that send no usable
// Content-Type.
func sniffMediaType(data []byte) string {
	var v struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(data, &v) == nil && v.MediaType != "" {
		return v.MediaType
	}
	return "application/vnd.oci.image.manifest.v1+json"
}

func (c *Cache) storeManifest(ctx context.Context, d digest.Digest, mediaType string, data []byte) error {
	if _, err := c.opt.Store.Stat(ctx, d); err != nil {
		w, err := c.opt.Store.Create(ctx, d, int64(len(data)))
		if err != nil {
			return err
		}
		defer w.Close()
		if _, err := w.Write(data); err != nil {
			return err
		}
		if err := w.Commit(ctx); err != nil {
			return err
		}
	}
	// The type record is written after the bytes: a crash between the two
	// leaves bytes without a type, which reads as "not cached".
	if err := c.opt.Store.PutMeta(ctx, manifestTypeKey(d), []byte(mediaType)); err != nil {
		return err
	}
	if len(data) <= maxCachedManifest {
		c.manifests.Add(d, storedManifest{mediaType: mediaType, data: data})
	}
	return nil
}

func (c *Cache) loadManifest(ctx context.Context, d digest.Digest) (storedManifest, bool) {
	if sm, ok := c.manifests.Get(d); ok {
		return sm, true
	}
	mt, err := c.opt.Store.GetMeta(ctx, manifestTypeKey(d))
	if err != nil {
		return storedManifest{}, false
	}
	f, err := c.opt.Store.Open(ctx, d)
	if err != nil {
		return storedManifest{}, false
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return storedManifest{}, false
	}
	sm := storedManifest{mediaType: string(mt), data: data}
	if len(data) <= maxCachedManifest {
		c.manifests.Add(d, sm)
	}
	return sm, true
}

func (c *Cache) loadTag(ctx context.Context, t tagRef) (tagRecord, bool) {
	k := t.index()
	if r, ok := c.tags.Get(k); ok {
		return r, true
	}
	b, err := c.opt.Store.GetMeta(ctx, t.metaKey())
	if err != nil {
		return tagRecord{}, false
	}
	var r tagRecord
	if json.Unmarshal(b, &r) != nil || r.Digest.Validate() != nil {
		return tagRecord{}, false
	}
	c.tags.Add(k, compact(r))
	return r, true
}

// compact drops what the index need not hold: serving reads the media
// type from the manifest record.
func compact(r tagRecord) tagRecord {
	r.MediaType = ""
	return r
}

func (c *Cache) saveTag(ctx context.Context, t tagRef, r tagRecord) {
	c.tags.Add(t.index(), compact(r))
	b, _ := json.Marshal(r)
	if err := c.opt.Store.PutMeta(ctx, t.metaKey(), b); err != nil {
		c.log.Warn("cannot persist tag record", "registry", t.registry, "repo", t.repo, "tag", t.tag, "err", err)
	}
}

func (c *Cache) manifestByTag(ctx context.Context, up Upstream, registry, repo, tag string, mask AcceptMask) (*Manifest, error) {
	key := tagRef{registry, repo, tag, mask}
	rec, have := c.loadTag(ctx, key)
	if have && c.now().Sub(rec.Checked) < c.opt.TagTTL {
		if sm, ok := c.loadManifest(ctx, rec.Digest); ok {
			return &Manifest{Digest: rec.Digest, MediaType: sm.mediaType, Data: sm.data, Result: Hit}, nil
		}
	}
	v, err, shared := c.flow.Do("t:"+key.metaKey(), func() (any, error) {
		fctx, cancel := c.detach(ctx, c.opt.FetchTimeout)
		defer cancel()
		return c.revalidate(fctx, up, registry, repo, tag, mask, key)
	})
	if shared {
		c.m.SharedFetches.WithLabelValues(registry, "manifest").Inc()
	}
	if err != nil {
		return nil, err
	}
	m := *v.(*Manifest)
	if m.Result == Stale {
		// Counted per answer, not per revalidation: requests that joined
		// one in flight were served stale too.
		c.m.StaleServed.WithLabelValues(registry, staleReason(m.StaleReason)).Inc()
	}
	return &m, nil
}

func staleReason(cause error) string {
	switch {
	case cause == errReserve:
		return "reserve"
	case upstream.IsRateLimited(cause):
		return "rate_limited"
	}
	return "error"
}

// revalidate asks the upstream which digest a tag names now, with a HEAD,
// and GETs the manifest only if that digest is not stored yet. Any failure
// other than "not found" falls back to the cached answer.
func (c *Cache) revalidate(ctx context.Context, up Upstream, registry, repo, tag string, mask AcceptMask, key tagRef) (*Manifest, error) {
	rec, have := c.loadTag(ctx, key)
	var old storedManifest
	if have {
		old, have = c.loadManifest(ctx, rec.Digest)
	}
	stale := func(cause error) (*Manifest, error) {
		if !have {
			return nil, cause
		}
		age := "never checked at the origin (resolved at a mirror)"
		if !rec.Checked.IsZero() {
			age = c.now().Sub(rec.Checked).Round(time.Second).String()
		}
		msg := "serving cached tag: upstream failed"
		if cause == errReserve {
			msg = "serving cached tag: origin pull budget at the reserve and no mirror has the new digest"
		}
		c.log.Warn(msg, "registry", registry, "repo", repo, "tag", tag, "digest", rec.Digest, "age", age, "err", cause)
		return &Manifest{Digest: rec.Digest, MediaType: old.mediaType, Data: old.data, Result: Stale, StaleReason: cause}, nil
	}

	desc, err := up.HeadManifest(ctx, repo, tag, mask.Values())
	if err != nil {
		if upstream.IsNotFound(err) {
			// The upstream's "no such tag" is authoritative; a deleted tag
			// must stop resolving here too.
			c.tags.Remove(key.index())
			_ = c.opt.Store.DeleteMeta(ctx, key.metaKey())
			return nil, err
		}
		if !have {
			return c.tagAtMirror(ctx, up, registry, repo, tag, mask, key, err)
		}
		return stale(err)
	}
	if desc.Digest == "" {
		// Some registries omit the digest on HEAD; only then is a GET by
		// tag the way to learn it.
		m, err := c.fetchManifest(ctx, up, registry, repo, tag, "")
		if err != nil {
			return stale(err)
		}
		c.saveTag(ctx, key, tagRecord{Digest: m.Digest, MediaType: m.MediaType, Checked: c.now()})
		return m, nil
	}
	if have && desc.Digest == rec.Digest {
		c.m.TagRevalidations.WithLabelValues(registry, "unchanged").Inc()
		rec.Checked = c.now()
		c.saveTag(ctx, key, rec)
		return &Manifest{Digest: rec.Digest, MediaType: old.mediaType, Data: old.data, Result: Revalidated}, nil
	}
	if have {
		c.m.TagRevalidations.WithLabelValues(registry, "changed").Inc()
	}
	if sm, ok := c.loadManifest(ctx, desc.Digest); ok {
		c.link(ctx, registry, repo, desc.Digest)
		c.saveTag(ctx, key, tagRecord{Digest: desc.Digest, MediaType: sm.mediaType, Checked: c.now()})
		return &Manifest{Digest: desc.Digest, MediaType: sm.mediaType, Data: sm.data, Result: Revalidated}, nil
	}
	if have && up.BelowReserve() {
		// The tag moved, but the budget is nearly spent: a mirror may have
		// the new manifest for free; otherwise keep the remaining pulls for
		// content nobody has cached, and serve what we have.
		um, err := up.GetMirroredManifest(ctx, repo, desc.Digest, AcceptAll.Values())
		if err != nil {
			return stale(errReserve)
		}
		m, err := c.storeFetched(ctx, registry, repo, desc.Digest.String(), desc.Digest, um)
		if err != nil {
			return stale(errReserve)
		}
		c.saveTag(ctx, key, tagRecord{Digest: m.Digest, MediaType: m.MediaType, Checked: c.now()})
		return m, nil
	}
	m, err := c.fetchManifest(ctx, up, registry, repo, desc.Digest.String(), desc.Digest)
	if err != nil {
		return stale(err)
	}
	c.saveTag(ctx, key, tagRecord{Digest: m.Digest, MediaType: m.MediaType, Checked: c.now()})
	return m, nil
}

// errReserve is the stale reason when the pull budget is below the reserve.
var errReserve = errors.New("origin pull budget is at or below the configured reserve")

// tagAtMirror resolves a tag that is not cached at a mirror, because the
// origin could not answer. The answer is stored with a zero check time, so
// the next request asks the origin again, and it is marked: a mirror's tag
// can lag the origin's.
func (c *Cache) tagAtMirror(ctx context.Context, up Upstream, registry, repo, tag string, mask AcceptMask, key tagRef, originErr error) (*Manifest, error) {
	if !c.opt.TagFallback || upstream.IsNotFound(originErr) {
		return nil, originErr
	}
	um, err := up.ResolveTagAtMirror(ctx, repo, tag, mask.Values())
	if err != nil {
		// The client should hear about the origin's failure, which is the
		// real cause; the mirror was only a fallback.
		c.log.Debug("tag fallback to mirrors failed", "registry", registry, "repo", repo, "tag", tag, "err", err)
		return nil, originErr
	}
	m, err := c.storeFetched(ctx, registry, repo, tag, "", um)
	if err != nil {
		return nil, originErr
	}
	c.m.TagFallbacks.WithLabelValues(registry, m.Source).Inc()
	c.log.Warn("tag resolved at a mirror because the origin failed", "registry", registry, "repo", repo, "tag", tag,
		"mirror", m.Source, "digest", m.Digest, "origin_err", originErr)
	c.saveTag(ctx, key, tagRecord{Digest: m.Digest, MediaType: m.MediaType})
	m.TagFromMirror = true
	return m, nil
}
