// Package pull is regcache's pull-through policy: it answers manifest, blob,
// tag-list and referrers requests from the content store, and goes upstream
// only when it must. It is the thin layer that decides; its parts remember
// (index: tags, repository links, manifest types) and fetch (inflight: one
// download per digest, streamed to every client as it arrives).
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
// The files: manifest.go (tags and manifests), blob.go (blobs), redirect.go
// (blobs the client fetches from the store itself), list.go (tags lists and
// referrers). Each declares the narrow interface it needs
// from an upstream, next to where it uses it.
package pull

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	lru2 "github.com/hashicorp/golang-lru/v2"
	"github.com/hashicorp/golang-lru/v2/expirable"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"

	"github.com/regcache/regcache/internal/metrics"
	"github.com/regcache/regcache/internal/pull/index"
	"github.com/regcache/regcache/internal/pull/inflight"
	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
	"github.com/regcache/regcache/internal/store"
)

// Source is one configured registry as the cache uses it;
// *upstream.Registry implements it.
type Source interface {
	manifestSource
	blobSource
	listSource
}

// Options configures a Cache.
type Options struct {
	Store   store.Store
	Sources map[string]Source // by registry name
	// TagTTL is how long a tag→digest answer is trusted.
	TagTTL time.Duration
	// TagIndexSize bounds the in-memory index of tag answers (and of
	// repository links); misses read the store.
	TagIndexSize int
	// TagFallback allows resolving a tag at a mirror when the origin cannot
	// answer and the tag is not cached.
	TagFallback bool
	// ListTTL is how long tag lists and referrers answers are reused;
	// ListCacheBytes bounds what they hold in memory.
	ListTTL        time.Duration
	ListCacheBytes int64
	// FetchTimeout bounds one upstream manifest fetch, revalidation or
	// list.
	FetchTimeout time.Duration
	// RevalidateWait is the longest a client with a cached answer waits
	// for the origin to revalidate a tag past TagTTL; 0 waits for the
	// answer (bounded by FetchTimeout).
	RevalidateWait time.Duration
	// StaleWhileRevalidate answers past TagTTL at once from the cache,
	// marked stale, and always revalidates in the background.
	StaleWhileRevalidate bool
	// MaxStale bounds how far past TagTTL a cached answer may be served
	// without the origin's word (slow or failing); 0 is no bound.
	MaxStale time.Duration
	// HedgeDelay is how long a tag nothing is cached for waits for the
	// origin before the mirrors are asked too (with TagFallback).
	HedgeDelay time.Duration
	// RedirectExpiry is how long a URL handed out by BlobRedirect is
	// valid (storage.s3.redirect_expiry); default 20 minutes.
	RedirectExpiry time.Duration
	// SpoolDir holds the spool files of downloads whose store cannot read
	// back (an object store); default a directory under os.TempDir.
	SpoolDir string
	// OnNoSpace is called when the store ran out of space, so its owner
	// can evict now rather than at the next collection.
	OnNoSpace func()
	// Fleet coordinates this cache with the other replicas of a cluster;
	// nil for a single regcache.
	Fleet   Fleet
	Logger  *slog.Logger
	Metrics *metrics.Metrics
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Cache is the pull-through cache. It is safe for concurrent use. Close
// ends it: downloads in flight are finished (or given up at the deadline).
type Cache struct {
	opt       Options
	log       *slog.Logger
	m         *metrics.Metrics
	now       func() time.Time
	flow      singleflight.Group
	index     *index.Index
	downloads *inflight.Group
	manifests *expirable.LRU[digest.Digest, []byte] // small manifests' bytes
	sizes     *lru2.Cache[digest.Digest, int64]     // blob sizes stated by stored manifests
	lists     *listCache

	// bg is the background work the cache owns (revalidations that
	// outlive their client); Close waits for it.
	bgMu    sync.Mutex
	bg      sync.WaitGroup
	closing bool
}

// New returns a Cache.
func New(opt Options) *Cache {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Metrics == nil {
		opt.Metrics = metrics.New()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.FetchTimeout <= 0 {
		opt.FetchTimeout = 30 * time.Second
	}
	if opt.HedgeDelay <= 0 {
		opt.HedgeDelay = opt.FetchTimeout
	}
	if opt.RedirectExpiry <= 0 {
		opt.RedirectExpiry = 20 * time.Minute
	}
	if opt.OnNoSpace == nil {
		opt.OnNoSpace = func() {}
	}
	if opt.SpoolDir == "" {
		opt.SpoolDir = filepath.Join(os.TempDir(), "regcache-spool")
	}
	if err := os.MkdirAll(opt.SpoolDir, 0o700); err != nil {
		opt.Logger.Warn("no spool directory: clients who fall behind a download from an object store will fail", "dir", opt.SpoolDir, "err", err)
		opt.SpoolDir = ""
	}
	// A manifest is served from memory at most manifestMemoryTTL after it
	// was last read from the store, so one evicted there (max_size, or
	// another replica's collection, which spares content used within its
	// grace of 15 minutes) is not served on from memory.
	manifests := expirable.NewLRU[digest.Digest, []byte](20_000, nil, manifestMemoryTTL)
	sizes, _ := lru2.New[digest.Digest, int64](200_000)
	return &Cache{
		opt:       opt,
		log:       opt.Logger,
		m:         opt.Metrics,
		now:       opt.Now,
		index:     index.New(index.Options{Meta: opt.Store, Entries: opt.TagIndexSize, Logger: opt.Logger}),
		downloads: inflight.New(inflight.Options{SpoolDir: opt.SpoolDir, Logger: opt.Logger}),
		manifests: manifests,
		sizes:     sizes,
		lists:     newListCache(opt.ListCacheBytes, opt.ListTTL+listStaleFor),
	}
}

// Close finishes the downloads and revalidations in flight, so every blob a
// client was served is committed, or gives up on them when ctx ends.
func (c *Cache) Close(ctx context.Context) error {
	c.bgMu.Lock()
	c.closing = true
	c.bgMu.Unlock()
	err := c.downloads.Close(ctx)
	done := make(chan struct{})
	go func() { c.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		// Each is bounded by FetchTimeout; they end on their own.
		err = errors.Join(err, fmt.Errorf("revalidations still in flight: %w", ctx.Err()))
	}
	return err
}

// enter registers background work; false once the cache is closing.
func (c *Cache) enter() bool {
	c.bgMu.Lock()
	defer c.bgMu.Unlock()
	if c.closing {
		return false
	}
	c.bg.Add(1)
	return true
}

func (c *Cache) leave() { c.bg.Done() }

// errClosing answers requests that arrive while the cache shuts down.
var errClosing = &regerr.Error{Kind: regerr.Unavailable, Message: "regcache is shutting down"}

// Downloads reports the downloads in flight and the memory their windows
// hold, for metrics.
func (c *Cache) Downloads() (n int, memory int64) {
	return c.downloads.InFlight(), c.downloads.Memory()
}

// Drain waits until no download is in flight (tests, and clean shutdowns).
func (c *Cache) Drain(ctx context.Context) error { return c.downloads.Drain(ctx) }

// manifestMemoryTTL is how long a manifest's bytes are served from memory
// without being read from the store again: shorter than the store's
// in-use grace (15 minutes), within which nothing read is evicted.
const manifestMemoryTTL = 10 * time.Minute

// Result says how a request was answered, for logs, metrics and headers.
type Result string

const (
	Hit         Result = "hit"         // from the cache, no upstream request
	Revalidated Result = "revalidated" // from the cache after a HEAD confirmed it
	Miss        Result = "miss"        // fetched from upstream
	Stale       Result = "stale"       // from the cache because the upstream failed
)

func (c *Cache) source(repo ref.Repo) (Source, error) {
	s, ok := c.opt.Sources[repo.Registry()]
	if !ok {
		return nil, &regerr.Error{Kind: regerr.NameUnknown, Registry: repo.Registry(), Message: "registry is not configured"}
	}
	return s, nil
}

// detach gives an upstream call its own deadline, free of the client's
// context: a client that hangs up must not abort a fetch that other clients
// or the cache depend on.
func (c *Cache) detach(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// storeError classifies a store failure other than "not found".
func (c *Cache) storeError(op string, err error) error {
	if errors.Is(err, store.ErrNoSpace) {
		c.opt.OnNoSpace()
	}
	return &regerr.Error{Kind: regerr.Storage, Op: op, Message: "the cache's store failed", Err: err}
}

// noteSizes remembers the sizes a manifest states for the blobs it names,
// so their downloads can be cut at that size.
func (c *Cache) noteSizes(data []byte) {
	var doc struct {
		Config ocispec.Descriptor   `json:"config"`
		Layers []ocispec.Descriptor `json:"layers"`
	}
	if json.Unmarshal(data, &doc) != nil {
		return
	}
	for _, d := range append(doc.Layers, doc.Config) {
		if d.Digest.Validate() == nil && d.Size > 0 {
			c.sizes.Add(d.Digest, d.Size)
		}
	}
}
