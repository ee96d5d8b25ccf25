// Package index is the pull-through cache's memory of names: which manifest
// each tag names (per Accept mask, with when it was last checked at the
// origin), which content each repository is known to hold, and the media
// type each stored manifest is served with. Hot entries live in bounded
// in-memory LRUs; every entry is also a metadata record in the store (at the
// keys store/paths.go lays out), so the index survives restarts and is
// shared by replicas on one store.
//
// It knows nothing about upstreams: the cache's policy decides what to
// record, and the index only remembers it.
package index

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/store"
)

// Meta is the part of a store the index uses.
type Meta interface {
	GetMeta(ctx context.Context, key string) ([]byte, error)
	PutMeta(ctx context.Context, key string, value []byte) error
	DeleteMeta(ctx context.Context, key string) error
}

// TagKey names one cached tag answer: a tag in a repository, for clients
// accepting the manifest types in Mask.
type TagKey struct {
	Repo ref.Repo
	Tag  ref.Tag
	Mask ref.AcceptMask
}

func (k TagKey) hash() hkey {
	return hashKey(k.Repo.Registry(), k.Repo.Path(), k.Tag.String(), byte(k.Mask))
}
func (k TagKey) meta() string {
	return store.TagKey(k.Repo, k.Tag, uint8(k.Mask))
}

// String is registry/repo:tag, for logs and singleflight keys.
func (k TagKey) String() string {
	return fmt.Sprintf("%s:%s#%02x", k.Repo, k.Tag, uint8(k.Mask))
}

// Tag is a cached tag answer.
type Tag struct {
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"mediaType"`
	// Checked is when the origin last confirmed the answer; zero for an
	// answer resolved at a mirror, which the next request checks.
	Checked time.Time `json:"checked"`
}

// Options configures an Index.
type Options struct {
	Meta Meta
	// Entries bounds the tag and link LRUs each; misses read the store.
	Entries int
	Logger  *slog.Logger
}

// Index is safe for concurrent use.
type Index struct {
	meta  Meta
	log   *slog.Logger
	tags  *lru[hkey, Tag]
	links *lru[hkey, struct{}]
	types *lru[digest.Digest, string]
}

// New returns an Index.
func New(opt Options) *Index {
	if opt.Entries <= 0 {
		opt.Entries = 100_000
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	return &Index{
		meta:  opt.Meta,
		log:   opt.Logger,
		tags:  newLRU[hkey, Tag](opt.Entries),
		links: newLRU[hkey, struct{}](opt.Entries),
		types: newLRU[digest.Digest, string](min(opt.Entries, 20_000)),
	}
}

// Tag returns the cached answer for k.
func (x *Index) Tag(ctx context.Context, k TagKey) (Tag, bool) {
	h := k.hash()
	if r, ok := x.tags.Get(h); ok {
		return r, true
	}
	b, err := x.meta.GetMeta(ctx, k.meta())
	if err != nil {
		x.warnUnlessMissing(err, "cannot read tag record", "tag", k.String())
		return Tag{}, false
	}
	var r Tag
	if json.Unmarshal(b, &r) != nil || r.Digest.Validate() != nil {
		return Tag{}, false
	}
	x.tags.Add(h, r)
	return r, true
}

// SetTag records the answer for k.
func (x *Index) SetTag(ctx context.Context, k TagKey, r Tag) {
	x.tags.Add(k.hash(), r)
	b, _ := json.Marshal(r)
	if err := x.meta.PutMeta(ctx, k.meta(), b); err != nil {
		x.log.Warn("cannot persist tag record", "tag", k.String(), "err", err)
	}
}

// DeleteTag forgets the answer for k: the origin says the tag is gone.
func (x *Index) DeleteTag(ctx context.Context, k TagKey) {
	x.tags.Remove(k.hash())
	if err := x.meta.DeleteMeta(ctx, k.meta()); err != nil {
		x.log.Warn("cannot delete tag record", "tag", k.String(), "err", err)
	}
}

// Linked reports whether repo is known to hold content d. Content is stored
// once per digest, but a private repository's blob must not be served
// through another repository's name just because someone knows its digest.
func (x *Index) Linked(ctx context.Context, repo ref.Repo, d digest.Digest) bool {
	h := hashKey(repo.Registry(), repo.Path(), string(d), 0)
	if _, ok := x.links.Get(h); ok {
		return true
	}
	if _, err := x.meta.GetMeta(ctx, store.LinkKey(repo, d)); err != nil {
		x.warnUnlessMissing(err, "cannot read repository link", "repo", repo.String(), "digest", d)
		return false
	}
	x.links.Add(h, struct{}{})
	return true
}

// Link records that repo holds content d.
func (x *Index) Link(ctx context.Context, repo ref.Repo, d digest.Digest) {
	h := hashKey(repo.Registry(), repo.Path(), string(d), 0)
	if _, ok := x.links.Get(h); ok {
		return
	}
	x.links.Add(h, struct{}{})
	if err := x.meta.PutMeta(ctx, store.LinkKey(repo, d), nil); err != nil {
		x.log.Warn("cannot record repository link", "repo", repo.String(), "digest", d, "err", err)
	}
}

// MediaType returns the media type manifest d is served with; false when
// the manifest is not (completely) stored.
func (x *Index) MediaType(ctx context.Context, d digest.Digest) (string, bool) {
	if mt, ok := x.types.Get(d); ok {
		return mt, true
	}
	b, err := x.meta.GetMeta(ctx, store.ManifestTypeKey(d))
	if err != nil {
		x.warnUnlessMissing(err, "cannot read manifest type", "digest", d)
		return "", false
	}
	x.types.Add(d, string(b))
	return string(b), true
}

// SetMediaType records the media type of stored manifest d. The caller
// writes it after the manifest's bytes: a crash between the two leaves
// bytes without a type, which reads as "not cached". It is remembered in
// memory even when the store fails.
func (x *Index) SetMediaType(ctx context.Context, d digest.Digest, mediaType string) error {
	x.types.Add(d, mediaType)
	return x.meta.PutMeta(ctx, store.ManifestTypeKey(d), []byte(mediaType))
}

// ForgetMediaType drops d from memory, after its bytes turned out to be
// gone from the store (evicted).
func (x *Index) ForgetMediaType(d digest.Digest) { x.types.Remove(d) }

func (x *Index) warnUnlessMissing(err error, msg string, args ...any) {
	if !errors.Is(err, store.ErrNotFound) {
		x.log.Warn(msg, append(args, "err", err)...)
	}
}

// hkey identifies an index entry by a hash of its parts, so the in-memory
// indexes hold 16 bytes per key and a lookup allocates nothing. At 128 bits
// a collision is not a practical concern.
type hkey [16]byte

func hashKey(a, b, c string, m byte) hkey {
	var buf [512]byte
	p := append(buf[:0], a...)
	p = append(p, 0)
	p = append(p, b...)
	p = append(p, 0)
	p = append(p, c...)
	p = append(p, 0, m)
	sum := sha256.Sum256(p)
	var k hkey
	copy(k[:], sum[:16])
	return k
}
