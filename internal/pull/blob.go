package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/store"
	"github.com/regcache/regcache/internal/upstream"
)

// Blob is a blob ready to be served: either committed content (Content set;
// seekable, so Range and sendfile work) or a stream from a download in flight
// (Stream set).
type Blob struct {
	Digest  digest.Digest
	Size    int64 // -1 when the upstream did not say
	Content store.Content
	Stream  *StreamReader
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
func (c *Cache) Blob(ctx context.Context, registry, repo string, d digest.Digest) (*Blob, error) {
	up, err := c.upstream(registry)
	if err != nil {
		return nil, err
	}
	if content, err := c.opt.Store.Open(ctx, d); err == nil {
		return c.storedBlob(ctx, up, registry, repo, d, content)
	}
	f, joined := c.startFetch(up, registry, repo, d)
	if f == nil {
		// Committed between our Open and startFetch.
		content, err := c.opt.Store.Open(ctx, d)
		if err != nil {
			return nil, err
		}
		return c.storedBlob(ctx, up, registry, repo, d, content)
	}
	if joined {
		c.m.SharedFetches.WithLabelValues(registry, "blob").Inc()
		// Someone else's download proves the content exists upstream, but
		// not that it belongs to this repository.
		if _, err := c.ensureLinked(ctx, up, registry, repo, d); err != nil {
			f.release()
			return nil, err
		}
	}
	select {
	case <-f.ready:
	case <-ctx.Done():
		f.release()
		return nil, ctx.Err()
	}
	if err := f.failedEarly(); err != nil {
		f.release()
		return nil, err
	}
	return &Blob{Digest: d, Size: f.size, Stream: &StreamReader{f: f, ctx: ctx}, Result: Miss, Source: f.source}, nil
}

// Drain waits until no blob download is in flight, so every blob a client
// was served is committed: for a clean shutdown, and for tests.
func (c *Cache) Drain(ctx context.Context) error {
	for {
		c.blobMu.Lock()
		n := len(c.blobs)
		c.blobMu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d blob downloads still in flight: %w", n, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// StatBlob answers a blob HEAD without downloading anything.
func (c *Cache) StatBlob(ctx context.Context, registry, repo string, d digest.Digest) (int64, Result, error) {
	up, err := c.upstream(registry)
	if err != nil {
		return 0, "", err
	}
	if size, err := c.opt.Store.Stat(ctx, d); err == nil && c.linked(ctx, registry, repo, d) {
		return size, Hit, nil
	}
	fctx, cancel := c.detach(ctx, c.opt.FetchTimeout)
	defer cancel()
	desc, err := up.HeadBlob(fctx, repo, d)
	if err != nil {
		return 0, "", err
	}
	if _, err := c.opt.Store.Stat(ctx, d); err == nil {
		c.link(ctx, registry, repo, d)
	}
	return desc.Size, Revalidated, nil
}

// storedBlob serves committed content once it is known to belong to repo.
func (c *Cache) storedBlob(ctx context.Context, up Upstream, registry, repo string, d digest.Digest, content store.Content) (*Blob, error) {
	res, err := c.ensureLinked(ctx, up, registry, repo, d)
	if err != nil {
		content.Close()
		return nil, err
	}
	return &Blob{Digest: d, Size: content.Size(), Content: content, Result: res}, nil
}

// ensureLinked confirms upstream, once per repository, that blob d belongs
// to repo: Hit when already known, Revalidated after a HEAD.
func (c *Cache) ensureLinked(ctx context.Context, up Upstream, registry, repo string, d digest.Digest) (Result, error) {
	if c.linked(ctx, registry, repo, d) {
		return Hit, nil
	}
	if err := c.confirmBlob(ctx, up, registry, repo, d); err != nil {
		return "", err
	}
	return Revalidated, nil
}

func (c *Cache) confirmBlob(ctx context.Context, up Upstream, registry, repo string, d digest.Digest) error {
	fctx, cancel := c.detach(ctx, c.opt.FetchTimeout)
	defer cancel()
	if _, err := up.HeadBlob(fctx, repo, d); err != nil {
		return err
	}
	c.link(ctx, registry, repo, d)
	return nil
}

// fetch is one upstream download of a blob, shared by every client that asks
// for the digest while it runs. Bytes go to a store Writer; readers tail the
// writer with ReadAt.
type fetch struct {
	d      digest.Digest
	size   int64
	source string // set before ready is closed

	ready chan struct{} // closed when size is known or the fetch failed early

	mu      sync.Mutex
	notify  chan struct{} // closed and replaced on every progress step
	done    bool          // no more bytes will come
	err     error         // why the fetch failed; nil after a verified commit
	writer  store.Writer
	closed  bool // writer closed: discarded on failure, or released by all
	refs    int  // readers plus the download goroutine
	written int64
}

func (f *fetch) progress(n int64, done bool, err error) {
	f.mu.Lock()
	f.written += n
	if done {
		f.done, f.err = true, err
	}
	close(f.notify)
	f.notify = make(chan struct{})
	f.mu.Unlock()
}

// fail ends a failed download. Its bytes are discarded before any reader
// hears of the failure, so a client that has seen it fail finds no temp
// file left, and Drain means no download is holding one.
func (f *fetch) fail(err error) {
	f.closeWriter()
	f.progress(0, true, err)
}

func (f *fetch) closeWriter() {
	f.mu.Lock()
	w, closed := f.writer, f.closed
	f.closed = true
	f.mu.Unlock()
	if w != nil && !closed {
		w.Close()
	}
}

// state returns how many bytes a reader may take and whether the download
// is over. The last byte is held back until the digest is verified, so a
// client never receives a complete-looking body of bad content.
func (f *fetch) state() (avail int64, done bool, err error, wait <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	avail = f.written
	if !f.done || f.err != nil {
		avail--
	}
	return avail, f.done, f.err, f.notify
}

// failedEarly returns the error of a fetch that never got a response body.
func (f *fetch) failedEarly() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.writer == nil {
		return f.err
	}
	return nil
}

func (f *fetch) release() {
	f.mu.Lock()
	f.refs--
	last := f.refs == 0
	f.mu.Unlock()
	if last {
		f.closeWriter()
	}
}

// startFetch returns the download in flight for d, starting it if there is
// none. joined reports whether it was already running; nil means the blob
// was committed meanwhile.
func (c *Cache) startFetch(up Upstream, registry, repo string, d digest.Digest) (f *fetch, joined bool) {
	c.blobMu.Lock()
	defer c.blobMu.Unlock()
	if f, ok := c.blobs[d]; ok {
		f.mu.Lock()
		failed := f.done && f.err != nil
		if !failed {
			f.refs++
		}
		f.mu.Unlock()
		if !failed {
			return f, true
		}
		// A failed download lingers until its goroutine unwinds; a new
		// request must not inherit its error.
	}
	if _, err := c.opt.Store.Stat(context.Background(), d); err == nil {
		return nil, false
	}
	f = &fetch{d: d, size: -1, ready: make(chan struct{}), notify: make(chan struct{}), refs: 2}
	c.blobs[d] = f
	go c.download(up, registry, repo, f)
	return f, false
}

func (c *Cache) download(up Upstream, registry, repo string, f *fetch) {
	defer f.release()
	defer func() {
		c.blobMu.Lock()
		if c.blobs[f.d] == f {
			delete(c.blobs, f.d)
		}
		c.blobMu.Unlock()
	}()
	readyOnce := sync.OnceFunc(func() { close(f.ready) })
	defer readyOnce()

	// The download belongs to the cache, not to the client that started it:
	// it runs until done or idle for too long.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	idle := time.AfterFunc(c.opt.BlobIdleTimeout, cancel)
	defer idle.Stop()

	start := time.Now()
	blob, err := up.GetBlobUnverified(ctx, repo, f.d)
	if err != nil {
		f.progress(0, true, err)
		return
	}
	defer blob.Body.Close()
	w, err := c.opt.Store.Create(ctx, f.d, blob.Size)
	if err != nil {
		f.progress(0, true, fmt.Errorf("cache store: %w", err))
		return
	}
	f.mu.Lock()
	f.writer, f.size, f.source = w, blob.Size, sourceName(blob.Source)
	f.mu.Unlock()
	if f.source != upstream.SourceOrigin {
		c.m.MirrorHits.WithLabelValues(registry, f.source, "blob").Inc()
	}
	fetched := c.m.UpstreamBytes.WithLabelValues(registry, f.source, "blob")
	readyOnce()

	buf := make([]byte, 1<<20)
	var total int64
	for {
		n, rerr := blob.Body.Read(buf)
		if n > 0 {
			idle.Reset(c.opt.BlobIdleTimeout)
			if _, werr := w.Write(buf[:n]); werr != nil {
				f.fail(fmt.Errorf("cache store: %w", werr))
				return
			}
			total += int64(n)
			fetched.Add(float64(n))
			f.progress(int64(n), false, nil)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			blob.Judge(rerr)
			f.fail(&upstream.Error{Registry: registry, Op: "GET blob", Repository: repo, Reference: f.d.String(), Err: rerr})
			c.log.Warn("blob download failed", "registry", registry, "repo", repo, "digest", f.d, "bytes", total, "err", rerr)
			return
		}
	}
	// Verify first and release the held-back bytes to the clients; making
	// the blob durable (fsync, rename) is the cache's business and need not
	// delay them. Nothing is visible in the store before Commit returns.
	if err := w.Verify(ctx); err != nil {
		if errors.Is(err, store.ErrDigestMismatch) {
			blob.Judge(upstream.ErrContentMismatch)
			c.m.DigestMismatches.WithLabelValues(registry, f.source).Inc()
			err = &upstream.Error{Registry: registry, Op: "GET blob", Repository: repo, Reference: f.d.String(),
				Code: upstream.CodeDigestInvalid, Message: "content does not match its digest; discarded"}
		}
		c.log.Warn("blob rejected", "registry", registry, "repo", repo, "digest", f.d, "err", err)
		f.fail(err)
		return
	}
	blob.Judge(nil)
	// The upstream served these verified bytes for this repository: that
	// is the link, whether or not the blob is stored.
	c.link(ctx, registry, repo, f.d)
	f.progress(0, true, nil)
	if err := w.Commit(ctx); err != nil {
		c.log.Warn("verified blob could not be stored", "registry", registry, "repo", repo, "digest", f.d, "err", err)
		return
	}
	c.log.Info("blob cached", "registry", registry, "repo", repo, "digest", f.d, "bytes", total, "source", f.source,
		"seconds", time.Since(start).Seconds())
}

// StreamReader reads a blob from a download in flight, waiting for bytes as
// they arrive. It returns an error, never a clean EOF, if the download fails
// or the content does not verify.
type StreamReader struct {
	f      *fetch
	ctx    context.Context
	off    int64
	closed bool
}

// Seek positions the reader before the first Read, for Range requests.
func (r *StreamReader) SeekStart(off int64) { r.off = off }

func (r *StreamReader) Read(p []byte) (int, error) {
	for {
		avail, done, err, wait := r.f.state()
		if err != nil {
			// The download failed and its bytes are gone.
			return 0, err
		}
		if r.off < avail {
			n := int64(len(p))
			if n > avail-r.off {
				n = avail - r.off
			}
			m, rerr := r.f.writer.ReadAt(p[:n], r.off)
			r.off += int64(m)
			if m > 0 {
				return m, nil
			}
			// A failing download closes the file before it says why:
			// wait for the reason.
			if rerr != nil && done {
				return 0, rerr
			}
		}
		if done {
			return 0, io.EOF
		}
		select {
		case <-wait:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

// Close detaches the reader; the download goes on for others and the cache.
func (r *StreamReader) Close() error {
	if !r.closed {
		r.closed = true
		r.f.release()
	}
	return nil
}
