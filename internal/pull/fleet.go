package pull

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/cluster"
	"github.com/regcache/regcache/internal/pull/index"
	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
	"github.com/regcache/regcache/internal/store"
	"github.com/regcache/regcache/internal/upstream"
)

// Fleet is what the cache needs from the other replicas of a cluster
// (cluster.Coordinator implements it): leases, so one replica does each
// upstream job; shared tag answers, so a tag is revalidated once per
// tag_ttl fleet-wide; and the blobs the others are downloading. Every call
// may fail (the coordinator is down): the cache then does the job itself.
type Fleet interface {
	Self() string
	// Claim takes the job name for ttl (renewed until released): held, or
	// naming the replica that holds it.
	Claim(ctx context.Context, name string, ttl time.Duration) (cluster.Claim, error)
	HolderOf(ctx context.Context, name string) (string, error)
	Get(ctx context.Context, key string) ([]byte, bool, error)
	Set(ctx context.Context, key string, value []byte, ttl time.Duration) error
	Delete(ctx context.Context, key string) error
	OpenPeer(ctx context.Context, holder string, d digest.Digest) (io.ReadCloser, int64, error)
}

// Leases, and how long a waiting replica looks for another's result. A
// blob's lease is renewed while its download runs; one that lapses (the
// holder died) lets the next request start the download elsewhere.
const (
	blobLease    = 15 * time.Second
	fleetPoll    = 50 * time.Millisecond
	sharedTagTTL = 7 * 24 * time.Hour
)

// sharedStore reports whether every replica reads the same store (an
// object store), so a blob another replica commits need not be written
// here too.
func (c *Cache) sharedStore() bool {
	s, ok := c.opt.Store.(interface{ Shared() bool })
	return ok && s.Shared()
}

// peerSource opens blob d from the replica that holds its download.
func (c *Cache) peerSource(ctx context.Context, holder string, d digest.Digest) (body io.ReadCloser, size int64, err error) {
	return c.opt.Fleet.OpenPeer(ctx, holder, d)
}

// PeerBlob answers another replica's request for blob d: from a download
// in flight here, or from the store; never by fetching it.
func (c *Cache) PeerBlob(ctx context.Context, d digest.Digest) (*Blob, error) {
	if r, ok, err := c.downloads.Lookup(ctx, d); err != nil {
		return nil, err
	} else if ok {
		return &Blob{Digest: d, Size: r.Size(), Stream: r, Result: Miss, Source: r.Label()}, nil
	}
	content, err := c.opt.Store.Open(ctx, d)
	if errors.Is(err, store.ErrNotFound) {
		return nil, &regerr.Error{Kind: regerr.NotFound, Message: "not downloading or storing this blob"}
	}
	if err != nil {
		return nil, c.storeError("open blob", err)
	}
	return &Blob{Digest: d, Size: content.Size(), Content: content, Result: Hit}, nil
}

// shareTag publishes a tag answer to the other replicas.
func (c *Cache) shareTag(ctx context.Context, k index.TagKey, r index.Tag) {
	if c.opt.Fleet == nil {
		return
	}
	b, _ := json.Marshal(r)
	_ = c.opt.Fleet.Set(ctx, "tag:"+k.String(), b, sharedTagTTL)
}

// sharedTag reads another replica's answer for k.
func (c *Cache) sharedTag(ctx context.Context, k index.TagKey) (index.Tag, bool) {
	if c.opt.Fleet == nil {
		return index.Tag{}, false
	}
	b, ok, err := c.opt.Fleet.Get(ctx, "tag:"+k.String())
	if err != nil || !ok {
		return index.Tag{}, false
	}
	var r index.Tag
	if json.Unmarshal(b, &r) != nil || r.Digest.Validate() != nil {
		return index.Tag{}, false
	}
	return r, true
}

// fleetFresh answers a tag from another replica's recent revalidation, if
// there is one, so this replica spends no upstream request on it.
func (c *Cache) fleetFresh(ctx context.Context, k index.TagKey) (*Manifest, bool) {
	r, ok := c.sharedTag(ctx, k)
	if !ok || r.Checked.IsZero() || c.now().Sub(r.Checked) >= c.opt.TagTTL {
		return nil, false
	}
	m, ok := c.loadManifest(ctx, r.Digest)
	if !ok {
		return nil, false
	}
	c.index.SetTag(ctx, k, r)
	c.index.Link(ctx, k.Repo, r.Digest)
	m.Result = Hit
	return m, true
}

// awaitFleet waits while another replica holds the job name, for done to
// report a result; it returns false when the holder let go (or lapsed)
// without one, or ctx ended, and the caller does the job itself.
func (c *Cache) awaitFleet(ctx context.Context, name string, done func() bool) bool {
	t := time.NewTicker(fleetPoll)
	defer t.Stop()
	for {
		if done() {
			return true
		}
		holder, err := c.opt.Fleet.HolderOf(ctx, name)
		if err != nil || holder == "" || holder == c.opt.Fleet.Self() {
			return done()
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// setTag records a tag answer here and for the other replicas.
func (c *Cache) setTag(ctx context.Context, k index.TagKey, r index.Tag) {
	c.index.SetTag(ctx, k, r)
	c.shareTag(ctx, k, r)
}

// deleteTag forgets a tag here and for the other replicas.
func (c *Cache) deleteTag(ctx context.Context, k index.TagKey) {
	c.index.DeleteTag(ctx, k)
	if c.opt.Fleet != nil {
		_ = c.opt.Fleet.Delete(ctx, "tag:"+k.String())
	}
}

// fetchManifest fetches manifest d once fleet-wide and keeps it, linked to
// repo: the replica holding its lease spends the (possibly counted) GET and
// lets go only once the manifest is stored; the others wait for it and
// load it from the shared store. If the holder lets go without storing
// it, the caller fetches it.
func (c *Cache) fetchManifest(ctx context.Context, src manifestSource, repo ref.Repo, d digest.Digest, from upstream.From) (*Manifest, error) {
	if c.opt.Fleet != nil {
		var m *Manifest
		release, done := c.fleetJob(ctx, "manifest:"+d.String(), func() bool { var ok bool; m, ok = c.loadManifest(ctx, d); return ok })
		if done {
			return c.storedElsewhere(ctx, repo, m), nil
		}
		defer release()
	}
	um, err := src.Manifest(ctx, repo, d, from)
	if err != nil {
		return nil, err
	}
	return c.keepManifest(ctx, repo, um), nil
}

// storedElsewhere answers with a manifest another replica fetched.
func (c *Cache) storedElsewhere(ctx context.Context, repo ref.Repo, m *Manifest) *Manifest {
	c.index.Link(ctx, repo, m.Digest)
	m.Result = Miss
	return m
}

// fleetJob claims the job name fleet-wide for one FetchTimeout. done is
// true when another replica held it and result now reports its outcome;
// otherwise this replica does the job and calls release when finished (the
// coordinator may be down: then no one else is asked, and release does
// nothing).
func (c *Cache) fleetJob(ctx context.Context, name string, result func() bool) (release func(), done bool) {
	cl, err := c.opt.Fleet.Claim(ctx, name, c.opt.FetchTimeout)
	release = cl.Release
	switch {
	case err != nil:
		return release, false
	case cl.Held:
		// The previous holder may have finished and let go between the
		// caller's look and this claim: its result stands, and doing the
		// job again would cost a second download or counted GET.
		if result() {
			release()
			return nil, true
		}
		return release, false
	}
	if c.awaitFleet(ctx, name, result) {
		return nil, true
	}
	return func() {}, false
}
