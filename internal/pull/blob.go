package pull

import (
	"context"
	"errors"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regcache/regcache/internal/cluster"
	"github.com/regcache/regcache/internal/pull/inflight"
	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
	"github.com/regcache/regcache/internal/store"
	"github.com/regcache/regcache/internal/upstream"
)

// blobSource is what serving blobs needs from a registry.
type blobSource interface {
	// Blob opens a blob from the best source, as a reader that verifies
	// as it is read.
	Blob(ctx context.Context, repo ref.Repo, d digest.Digest, size int64) (*upstream.Blob, error)
	// StatBlob confirms a source has the blob, without downloading it.
	StatBlob(ctx context.Context, repo ref.Repo, d digest.Digest) (ocispec.Descriptor, error)
}

// Blob is a blob ready to be served: either committed content (Content set;
// seekable, so Range and sendfile work) or a stream from a download in flight
// (Stream set).
type Blob struct {
	Digest  digest.Digest
	Size    int64 // -1 when the upstream did not say
	Content store.Content
	Stream  *inflight.Reader
	Result  Result
	// Source is where a streamed blob is coming from: origin or a mirror.
	Source string
}

// Close releases the blob.
func (b *Blob) Close() error {
	if b.Content != nil {
		return b.Content.Close()
	}
	if b.Stream != nil {
		return b.Stream.Close()
	}
	return nil
}

// Blob answers a blob GET. A cached blob is returned as Content; otherwise
// the caller joins (or starts) the single upstream download of that digest
// and streams from it.
func (c *Cache) Blob(ctx context.Context, repo ref.Repo, d digest.Digest) (*Blob, error) {
	src, err := c.source(repo)
	if err != nil {
		return nil, err
	}
	if b, err := c.storedBlob(ctx, src, repo, d); b != nil || err != nil {
		return b, err
	}
	// The lease, when this replica holds the fleet's one download, is
	// released when the download ends.
	release := func() {}
	open := func(dctx context.Context) (inflight.Source, error) {
		var s inflight.Source
		var err error
		s, release, err = c.openDownload(dctx, src, repo, d)
		return s, err
	}
	r, joined, err := c.downloads.Join(ctx, d, open, func(dctx context.Context, o inflight.Outcome) {
		defer release()
		c.downloaded(dctx, repo, d, o)
	})
	if errors.Is(err, errStored) {
		// Committed by another download between our look and the Join.
		b, err := c.storedBlob(ctx, src, repo, d)
		if b == nil && err == nil {
			err = &regerr.Error{Kind: regerr.Storage, Op: "open blob", Message: "stored blob vanished"}
		}
		return b, err
	}
	if err != nil {
		return nil, err
	}
	if joined {
		c.m.SharedFetches.WithLabelValues(repo.Registry(), "blob").Inc()
		// Someone else's download proves the content exists upstream, but
		// not that it belongs to this repository.
		if _, err := c.ensureLinked(ctx, src, repo, d); err != nil {
			r.Close()
			return nil, err
		}
	}
	return &Blob{Digest: d, Size: r.Size(), Stream: r, Result: Miss, Source: r.Label()}, nil
}

// errStored is an open function's answer when the blob is already stored.
var errStored = errors.New("already stored")

// openDownload runs in the download's goroutine: it opens the upstream's
// verifying body and the store's writer. In a cluster, one replica
// downloads each blob: the others stream it from that one (verified here
// too). When the holder cannot serve them (it died), one of them takes the
// download over and the rest stream from it in turn.
func (c *Cache) openDownload(ctx context.Context, src blobSource, repo ref.Repo, d digest.Digest) (s inflight.Source, release func(), err error) {
	release = func() {}
	if _, err := c.opt.Store.Stat(ctx, d); err == nil {
		return inflight.Source{}, release, errStored
	}
	if c.opt.Fleet != nil {
		cl, err := c.opt.Fleet.Claim(ctx, "blob:"+d.String(), blobLease)
		for tries := 0; err == nil && !cl.Held && tries < maxTakeOvers; tries++ {
			s, perr := c.fromPeer(ctx, src, repo, d, cl.Holder)
			if perr == nil || errors.Is(perr, errStored) || regerr.Is(perr, regerr.NotFound) {
				return s, release, perr
			}
			c.log.Warn("cannot stream a blob from the replica downloading it; taking the download over", "peer", cl.Holder, "digest", d, "err", perr)
			cl, err = cl.TakeOver(ctx, blobLease)
		}
		// Without a coordinator, or after holders that kept failing, the
		// download is done here, de-duplicated locally.
		if err == nil && cl.Held {
			release = cl.Release
			// The previous holder may have committed it and let go between
			// our look and our claim.
			if _, err := c.opt.Store.Stat(ctx, d); err == nil {
				release()
				return inflight.Source{}, func() {}, errStored
			}
		}
	}
	s, err = c.fromUpstream(ctx, src, repo, d)
	if err != nil {
		release()
		return s, func() {}, err
	}
	return s, release, nil
}

// maxTakeOvers bounds the holders a replica tries to stream a blob from
// (each one that fails, it tries to replace) before it downloads the blob
// itself, leased or not.
const maxTakeOvers = 3

// fromPeer streams blob d from the replica holding its download.
func (c *Cache) fromPeer(ctx context.Context, src blobSource, repo ref.Repo, d digest.Digest, holder string) (inflight.Source, error) {
	// That replica's download proves the blob exists upstream, not that it
	// belongs to this repository.
	if _, err := c.ensureLinked(ctx, src, repo, d); err != nil {
		return inflight.Source{}, err
	}
	body, size, err := c.peerSource(ctx, holder, d)
	if errors.Is(err, cluster.ErrPeerNotFound) {
		if _, serr := c.opt.Store.Stat(ctx, d); serr == nil {
			return inflight.Source{}, errStored // it finished meanwhile
		}
	}
	if err != nil {
		return inflight.Source{}, err
	}
	s := inflight.Source{Body: body, Size: size, Label: "peer"}
	if !c.sharedStore() {
		// Each replica keeps its own copy when stores are not shared.
		if w, err := c.opt.Store.Create(ctx, d, size); err == nil {
			s.Sink = w
		}
	}
	return s, nil
}

// fromUpstream opens the upstream's verifying body and the store's writer.
func (c *Cache) fromUpstream(ctx context.Context, src blobSource, repo ref.Repo, d digest.Digest) (inflight.Source, error) {
	size := int64(-1)
	if n, ok := c.sizes.Get(d); ok {
		size = n
	}
	b, err := src.Blob(ctx, repo, d, size)
	if err != nil {
		return inflight.Source{}, err
	}
	s := inflight.Source{Body: b, Size: b.Size, Label: b.Source, Verified: func(ctx context.Context) {
		// The upstream served these verified bytes for this repository:
		// that is the link, whether or not the blob is stored.
		c.index.Link(ctx, repo, d)
	}}
	w, err := c.opt.Store.Create(ctx, d, b.Size)
	if err != nil {
		// Decided before a byte is sent: stream through, uncached.
		c.m.Uncached.WithLabelValues(repo.Registry(), "blob", uncachedReason(err)).Inc()
		c.log.Warn("blob streamed through uncached: the store cannot take it", "repo", repo.String(), "digest", d, "err", err)
		if errors.Is(err, store.ErrNoSpace) {
			c.opt.OnNoSpace()
		}
		return s, nil
	}
	s.Sink = w
	return s, nil
}

func uncachedReason(err error) string {
	if errors.Is(err, store.ErrNoSpace) {
		return "no_space"
	}
	return "store_failed"
}

// downloaded runs when a download ended: its bytes were released to the
// readers and, if they verified, committed.
func (c *Cache) downloaded(ctx context.Context, repo ref.Repo, d digest.Digest, o inflight.Outcome) {
	if o.Err != nil {
		c.log.Warn("blob download failed", "repo", repo.String(), "digest", d, "source", o.Source.Label, "bytes", o.Bytes, "err", o.Err)
		return
	}
	if o.Source.Sink == nil {
		return // counted and logged when it was decided
	}
	if o.StoreErr != nil {
		c.m.Uncached.WithLabelValues(repo.Registry(), "blob", uncachedReason(o.StoreErr)).Inc()
		if errors.Is(o.StoreErr, store.ErrNoSpace) {
			c.opt.OnNoSpace()
		}
		c.log.Warn("verified blob served but not stored", "repo", repo.String(), "digest", d, "err", o.StoreErr)
		return
	}
	c.log.Info("blob cached", "repo", repo.String(), "digest", d, "bytes", o.Bytes, "source", o.Source.Label)
}

// storedBlob returns committed content once it is known to belong to repo,
// or nil, nil when it is not stored.
func (c *Cache) storedBlob(ctx context.Context, src blobSource, repo ref.Repo, d digest.Digest) (*Blob, error) {
	content, err := c.opt.Store.Open(ctx, d)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, c.storeError("open blob", err)
	}
	res, err := c.ensureLinked(ctx, src, repo, d)
	if err != nil {
		content.Close()
		return nil, err
	}
	return &Blob{Digest: d, Size: content.Size(), Content: content, Result: res}, nil
}

// StatBlob answers a blob HEAD without downloading anything.
func (c *Cache) StatBlob(ctx context.Context, repo ref.Repo, d digest.Digest) (int64, Result, error) {
	src, err := c.source(repo)
	if err != nil {
		return 0, "", err
	}
	size, serr := c.opt.Store.Stat(ctx, d)
	if serr == nil && c.index.Linked(ctx, repo, d) {
		return size, Hit, nil
	}
	if serr != nil && !errors.Is(serr, store.ErrNotFound) {
		return 0, "", c.storeError("stat blob", serr)
	}
	fctx, cancel := c.detach(ctx, c.opt.FetchTimeout)
	defer cancel()
	desc, err := src.StatBlob(fctx, repo, d)
	if err != nil {
		return 0, "", err
	}
	if serr == nil {
		c.index.Link(ctx, repo, d)
	}
	return desc.Size, Revalidated, nil
}

// ensureLinked confirms upstream, once per repository, that blob d belongs
// to repo: Hit when already known, Revalidated after a HEAD.
func (c *Cache) ensureLinked(ctx context.Context, src blobSource, repo ref.Repo, d digest.Digest) (Result, error) {
	if c.index.Linked(ctx, repo, d) {
		return Hit, nil
	}
	fctx, cancel := c.detach(ctx, c.opt.FetchTimeout)
	defer cancel()
	if _, err := src.StatBlob(fctx, repo, d); err != nil {
		return "", err
	}
	c.index.Link(ctx, repo, d)
	return Revalidated, nil
}
