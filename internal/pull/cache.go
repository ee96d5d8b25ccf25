// Package pull is regcache's pull-through logic: it answers manifest, blob,
// tag-list and referrers requests from the content store, and goes upstream
// only when it must.
//
// The rules, in order of importance:
//   - content addressed by digest is immutable: once stored it is served
//     without asking anyone;
//   - a tag answer is trusted for the tag TTL, then revalidated with a HEAD
//     (free on Docker Hub); a GET is spent only on a digest not yet stored;
//   - when the upstream fails, a cached answer is served stale;
//   - one upstream fetch per uncached blob or manifest, however many clients
//     ask at once, and every client streams from it as bytes arrive.
//
// The package sees upstreams and the store only through the Upstream and
// store.Store interfaces.
package pull

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"

	"github.com/regcache/regcache/internal/metrics"
	"github.com/regcache/regcache/internal/store"
	"github.com/regcache/regcache/internal/upstream"
)

// Upstream is what the cache needs from one configured registry.
// *upstream.Registry implements it.
type Upstream interface {
	Name() string
	HeadManifest(ctx context.Context, repo, ref string, accept []string) (ocispec.Descriptor, error)
	GetManifest(ctx context.Context, repo, ref string, accept []string) (upstream.Manifest, error)
	// GetBlobUnverified opens a blob that the cache verifies as it stores
	// it, reporting the verdict to Blob.Judge.
	GetBlobUnverified(ctx context.Context, repo string, d digest.Digest) (upstream.Blob, error)
	HeadBlob(ctx context.Context, repo string, d digest.Digest) (ocispec.Descriptor, error)
	// ResolveTagAtMirror resolves a tag at the first mirror that has it,
	// for when the origin cannot answer.
	ResolveTagAtMirror(ctx context.Context, repo, tag string, accept []string) (upstream.Manifest, error)
	// GetMirroredManifest fetches a manifest by digest from mirrors only.
	GetMirroredManifest(ctx context.Context, repo string, d digest.Digest, accept []string) (upstream.Manifest, error)
	// BelowReserve reports that the origin's pull budget is at or below the
	// configured reserve.
	BelowReserve() bool
	Do(ctx context.Context, method, repo, suffix string, query url.Values, header http.Header) (*http.Response, error)
}

// Options configures a Cache.
type Options struct {
	Store     store.Store
	Upstreams map[string]Upstream // by registry name
	// TagTTL is how long a tag→digest answer is trusted.
	TagTTL time.Duration
	// TagIndexSize bounds the in-memory index of tag answers (and of
	// repository links); misses read the store.
	TagIndexSize int
	// TagFallback allows resolving a tag at a mirror when the origin cannot
	// answer and the tag is not cached.
	TagFallback bool
	// ListTTL is how long tag lists and referrers answers are reused.
	ListTTL time.Duration
	// FetchTimeout bounds one upstream manifest fetch or revalidation.
	FetchTimeout time.Duration
	// BlobIdleTimeout aborts a blob download that makes no progress.
	BlobIdleTimeout time.Duration
	Logger          *slog.Logger
	Metrics         *metrics.Metrics
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Cache is the pull-through cache. It is safe for concurrent use.
type Cache struct {
	opt  Options
	log  *slog.Logger
	m    *metrics.Metrics
	now  func() time.Time
	flow singleflight.Group

	tags      *lru[hkey, tagRecord]
	manifests *lru[digest.Digest, storedManifest]
	links     *lru[hkey, struct{}] // registry/repo@digest known to belong together
	lists     *lru[string, listEntry]
	blobMu    sync.Mutex
	blobs     map[digest.Digest]*fetch
}

// New returns a Cache.
func New(opt Options) *Cache {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opt.Metrics == nil {
		opt.Metrics = metrics.New()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.TagIndexSize <= 0 {
		opt.TagIndexSize = 100_000
	}
	if opt.FetchTimeout <= 0 {
		opt.FetchTimeout = 30 * time.Second
	}
	if opt.BlobIdleTimeout <= 0 {
		opt.BlobIdleTimeout = 60 * time.Second
	}
	return &Cache{
		opt:       opt,
		log:       opt.Logger,
		m:         opt.Metrics,
		now:       opt.Now,
		tags:      newLRU[hkey, tagRecord](opt.TagIndexSize),
		manifests: newLRU[digest.Digest, storedManifest](20_000),
		links:     newLRU[hkey, struct{}](opt.TagIndexSize),
		lists:     newLRU[string, listEntry](10_000),
		blobs:     map[digest.Digest]*fetch{},
	}
}

// Error is a failure the server turns into an OCI error response. Upstream
// failures are passed through as *upstream.Error instead.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// ErrUnknownRegistry is returned for a registry with no configured upstream.
var ErrUnknownRegistry = errors.New("registry is not configured")

func (c *Cache) upstream(registry string) (Upstream, error) {
	u, ok := c.opt.Upstreams[registry]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownRegistry, registry)
	}
	return u, nil
}

// detach gives an upstream call its own deadline, free of the client's
// context: a client that hangs up must not abort a fetch that other clients
// or the cache depend on.
func (c *Cache) detach(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

func linkKey(registry, repo string, d digest.Digest) string {
	return registry + "/" + repo + "@" + d.String()
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

func linkMetaKey(registry, repo string, d digest.Digest) string {
	return "links/" + registry + "/" + repo + "/_links/" + d.Algorithm().String() + "/" + d.Encoded()
}

// linked reports whether content d is known to belong to registry/repo.
// Content is stored once per digest, but a private repository's blob must
// not be served through another repository's name just because someone knows
// its digest, so the first use in each repository is confirmed upstream.
func (c *Cache) linked(ctx context.Context, registry, repo string, d digest.Digest) bool {
	k := hashKey(registry, repo, string(d), 0)
	if _, ok := c.links.Get(k); ok {
		return true
	}
	if _, err := c.opt.Store.GetMeta(ctx, linkMetaKey(registry, repo, d)); err == nil {
		c.links.Add(k, struct{}{})
		return true
	}
	return false
}

func (c *Cache) link(ctx context.Context, registry, repo string, d digest.Digest) {
	k := hashKey(registry, repo, string(d), 0)
	if _, ok := c.links.Get(k); ok {
		return
	}
	c.links.Add(k, struct{}{})
	if err := c.opt.Store.PutMeta(ctx, linkMetaKey(registry, repo, d), nil); err != nil {
		c.log.Warn("cannot record repository link", "registry", registry, "repo", repo, "digest", d, "err", err)
	}
}
