// Package inflight runs the cache's downloads: at most one per digest at a
// time, each read by any number of clients as its bytes arrive.
//
// A download reads a verifying body (one that returns io.EOF only for
// content that matched its digest) and keeps the latest bytes in memory,
// in chunks that readers who keep up write straight to their clients, with
// no copy and no disk read. The bytes also go to a sink (the store's
// writer); readers who fall behind the memory window, or join late, read
// them back from the sink when it can (a local file), or from a spool file
// the download keeps when it cannot, or from the point where it failed (a
// full disk). Until the body has verified, the last byte is held back
// (every byte, for small blobs), so no client ever receives a
// complete-looking body of bad content; after it has, the bytes are
// released first and the sink is committed second, so the durability of
// the cache never delays a client.
//
// The Group owns its downloads: each runs on a context detached from the
// client that started it (a client that hangs up must not abort a download
// others share) but tied to the group's lifetime, and Close waits for them.
package inflight

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/store"
)

// Sink is where a download keeps its bytes: the store's writer. A sink
// that also implements io.ReaderAt serves readers who fall behind.
type Sink interface {
	io.Writer
	Commit(ctx context.Context) error
	Close() error
}

// Source is what a download reads and where it keeps the bytes.
type Source struct {
	// Body must verify as it is read: io.EOF only for good content.
	Body io.ReadCloser
	// Size is the expected size, or -1.
	Size int64
	// Sink keeps the bytes; nil streams them through, uncached.
	Sink Sink
	// Label names where the bytes come from, for the readers.
	Label string
	// Verified, if set, runs once the body has verified and before its
	// last bytes are released: what must be true before any client holds
	// a complete body (the repository link) belongs here.
	Verified func(ctx context.Context)
}

// OpenFunc opens a download's source. It runs in the download's goroutine,
// on the download's context.
type OpenFunc func(ctx context.Context) (Source, error)

// Outcome is how a download ended, as told to its DoneFunc.
type Outcome struct {
	Source Source
	Bytes  int64
	// Err is why the body failed (read error, bad content); nil when it
	// verified.
	Err error
	// StoreErr is why the verified bytes were not kept: the sink failed
	// (a full disk) or there was none. Clients were served regardless.
	StoreErr error
}

// DoneFunc is told how a download ended, after its bytes were released to
// the readers and, if it verified, committed.
type DoneFunc func(ctx context.Context, o Outcome)

// ErrFellBehind is a reader's error when it fell behind the memory window
// of a download whose bytes cannot be read back.
var ErrFellBehind = errors.New("fell behind a download whose bytes are no longer available")

// ErrClosed is Join's error once the group is closing.
var ErrClosed = errors.New("shutting down: no new downloads")

// Options configures a Group.
type Options struct {
	// Window is how many of a download's latest bytes stay in memory for
	// readers who keep up. Default 2 MiB: a reader further behind reads
	// back through a 1 MiB buffer nearly as cheaply, and a larger window
	// costs every download more fresh memory (page faults, cache misses):
	// 4 MiB took 10–15 % more CPU per cold GiB (BENCHMARKS.md).
	Window int64
	// MemoryMax bounds the memory all downloads' windows hold together;
	// past it, each keeps only its newest chunk (readers behind read back).
	// Default 256 MiB.
	MemoryMax int64
	// Chunk is the size of the memory chunks, and of one read. Default 1 MiB.
	Chunk int
	// HoldAll is the size up to which a download releases nothing before
	// it has verified. Default 1 MiB.
	HoldAll int64
	// SpoolDir holds the spool files of downloads whose sink cannot read
	// back; empty means no spool, and readers who fall behind the window of
	// such a download fail with ErrFellBehind.
	SpoolDir string
	Logger   *slog.Logger
}

// Group runs downloads. It is safe for concurrent use.
type Group struct {
	opt  Options
	ctx  context.Context // every download's lifetime
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu     sync.Mutex
	m      map[digest.Digest]*download
	closed bool
	idle   chan struct{} // closed while no download runs

	mem  atomic.Int64 // bytes held in all downloads' chunks
	free sync.Pool    // *chunk: chunks no window holds and no reader pins
}

// chunk is one piece of a download's memory window. A reader pins the
// chunk it writes from, so that a chunk the window drops meanwhile goes back
// to the pool only once nobody reads it: reused chunks spare every download
// a fresh allocation per MiB, with its zeroing, page faults and garbage.
type chunk struct {
	b       []byte // the filled part; cap is the group's chunk size
	pins    int    // guarded by the download's mu
	dropped bool   // no window holds it; the last unpin frees it
}

func (g *Group) getChunk() *chunk {
	if c, ok := g.free.Get().(*chunk); ok {
		c.b, c.pins, c.dropped = c.b[:0], 0, false
		return c
	}
	return &chunk{b: make([]byte, 0, g.opt.Chunk)}
}

// Memory is the bytes all downloads hold in memory now.
func (g *Group) Memory() int64 { return g.mem.Load() }

// New returns a Group.
func New(opt Options) *Group {
	if opt.Window <= 0 {
		opt.Window = 2 << 20
	}
	if opt.MemoryMax <= 0 {
		opt.MemoryMax = 256 << 20
	}
	if opt.Chunk <= 0 {
		opt.Chunk = 1 << 20
	}
	if opt.HoldAll < 0 {
		opt.HoldAll = 0
	} else if opt.HoldAll == 0 {
		opt.HoldAll = 1 << 20
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, stop := context.WithCancel(context.Background())
	idle := make(chan struct{})
	close(idle)
	return &Group{opt: opt, ctx: ctx, stop: stop, m: map[digest.Digest]*download{}, idle: idle}
}

// Join returns a reader of the download of d in flight, starting one with
// open when there is none (or the one there is has failed). joined reports
// that the download was already running. Join waits until the download
// knows its size, or failed before its first byte (that error is
// returned).
func (g *Group) Join(ctx context.Context, d digest.Digest, open OpenFunc, done DoneFunc) (r *Reader, joined bool, err error) {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil, false, ErrClosed
	}
	dl, ok := g.m[d]
	if ok && dl.join() {
		joined = true
	} else {
		// A failed download lingers until its goroutine unwinds; a new
		// request must not inherit its error.
		dl = newDownload(g, d)
		g.m[d] = dl
		if len(g.m) == 1 {
			g.idle = make(chan struct{})
		}
		g.wg.Add(1)
		dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		stop := context.AfterFunc(g.ctx, cancel)
		go func() {
			defer g.wg.Done()
			defer stop()
			defer cancel()
			// Out of the map first, then the download's own reference:
			// the other way round, a reader could find it released (its
			// chunks and sink let go) and fail at once, where after
			// removal it finds the committed blob in the store.
			defer dl.release()
			defer g.remove(dl)
			dl.run(dctx, open, done)
		}()
	}
	g.mu.Unlock()

	select {
	case <-dl.ready:
	case <-ctx.Done():
		dl.release()
		return nil, joined, ctx.Err()
	}
	if err := dl.earlyErr(); err != nil {
		dl.release()
		return nil, joined, err
	}
	return &Reader{dl: dl}, joined, nil
}

// Lookup returns a reader of the download of d if one is in flight (and
// has not failed), never starting one: for other replicas, which must not
// be able to make this one fetch anything.
func (g *Group) Lookup(ctx context.Context, d digest.Digest) (*Reader, bool, error) {
	g.mu.Lock()
	dl, ok := g.m[d]
	if ok && !dl.join() {
		ok = false
	}
	g.mu.Unlock()
	if !ok {
		return nil, false, nil
	}
	select {
	case <-dl.ready:
	case <-ctx.Done():
		dl.release()
		return nil, false, ctx.Err()
	}
	if err := dl.earlyErr(); err != nil {
		dl.release()
		return nil, false, nil
	}
	return &Reader{dl: dl}, true, nil
}

func (g *Group) remove(dl *download) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m[dl.d] == dl {
		delete(g.m, dl.d)
		if len(g.m) == 0 {
			close(g.idle)
		}
	}
}

// InFlight is the number of downloads running.
func (g *Group) InFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.m)
}

// Drain waits until no download is in flight, so every blob a client was
// served is committed, or ctx ends.
func (g *Group) Drain(ctx context.Context) error {
	for {
		g.mu.Lock()
		idle, n := g.idle, len(g.m)
		g.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-idle:
		case <-ctx.Done():
			return fmt.Errorf("%d downloads still in flight: %w", g.InFlight(), ctx.Err())
		}
	}
}

// Close refuses new downloads and waits for those in flight to finish, or
// until ctx ends; then it cancels the rest and waits for them to unwind.
func (g *Group) Close(ctx context.Context) error {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	err := g.Drain(ctx)
	g.stop()
	g.wg.Wait()
	return err
}

// download is one download and its shared state.
type download struct {
	g     *Group
	d     digest.Digest
	ready chan struct{} // closed when the size is known or the download failed early

	mu       sync.Mutex
	notify   chan struct{} // closed and replaced on every step
	refs     int           // readers plus the download goroutine
	size     int64         // -1 unknown
	label    string
	stored   bool     // the bytes go to a sink (else they stream through)
	started  bool     // the source opened: readers may read
	chunks   []*chunk // the memory window, oldest first
	memStart int64    // offset of chunks[0][0]
	written  int64    // bytes read from the body
	back     io.ReaderAt
	backLen  int64 // bytes back holds
	done     bool
	err      error // why the download failed; nil after it verified
	cleanup  func()
}

func newDownload(g *Group, d digest.Digest) *download {
	return &download{g: g, d: d, ready: make(chan struct{}), notify: make(chan struct{}), refs: 2, size: -1}
}

// join adds a reader, unless the download has failed or has been released
// (no reference left: its bytes are gone from memory and its sink).
func (dl *download) join() bool {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	if (dl.done && dl.err != nil) || dl.refs == 0 {
		return false
	}
	dl.refs++
	return true
}

func (dl *download) earlyErr() error {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	if !dl.started {
		return dl.err
	}
	return nil
}

// release drops a reference; the last one frees what readers needed.
func (dl *download) release() {
	dl.mu.Lock()
	dl.refs--
	last := dl.refs == 0
	cleanup := dl.cleanup
	if last {
		for _, c := range dl.chunks {
			dl.g.mem.Add(-int64(cap(c.b)))
			dl.dropLocked(c)
		}
		dl.chunks, dl.back, dl.cleanup = nil, nil, nil
	}
	dl.mu.Unlock()
	if last && cleanup != nil {
		cleanup()
	}
}

// broadcastLocked wakes every waiting reader.
func (dl *download) broadcastLocked() {
	close(dl.notify)
	dl.notify = make(chan struct{})
}

func (dl *download) run(ctx context.Context, open OpenFunc, done DoneFunc) {
	readyOnce := sync.OnceFunc(func() { close(dl.ready) })
	defer readyOnce()
	src, err := open(ctx)
	if err != nil {
		dl.finish(err)
		return
	}
	defer src.Body.Close()
	out := Outcome{Source: src}
	if src.Sink == nil {
		out.StoreErr = errors.New("not stored")
	}
	k := dl.keep(src.Sink)
	dl.mu.Lock()
	dl.size, dl.label, dl.back, dl.started = src.Size, src.Label, k.back, true
	dl.stored = src.Sink != nil
	dl.cleanup = k.close
	dl.mu.Unlock()
	readyOnce()

	var cur *chunk
	for {
		if cur == nil || len(cur.b) == cap(cur.b) {
			cur = dl.g.getChunk()
			dl.g.mem.Add(int64(cap(cur.b)))
			dl.mu.Lock()
			dl.chunks = append(dl.chunks, cur)
			dl.trimLocked()
			dl.mu.Unlock()
		}
		// Only this goroutine writes past len(cur.b), and readers read
		// only below it, so the read needs no lock.
		n, rerr := src.Body.Read(cur.b[len(cur.b):cap(cur.b)])
		if rerr != nil && rerr != io.EOF {
			// Bytes that came with the failure are not released: the
			// verifying body returns the byte past the expected size with
			// its TooLarge error, and with it readers would have had a
			// whole, complete-looking body.
			n = 0
		}
		if n > 0 {
			backOK := k.write(cur.b[len(cur.b):len(cur.b)+n], &out)
			dl.mu.Lock()
			cur.b = cur.b[:len(cur.b)+n]
			dl.written += int64(n)
			if backOK {
				dl.backLen = dl.written
			}
			dl.broadcastLocked()
			dl.mu.Unlock()
			out.Bytes += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			out.Err = rerr
			// Discard first, then tell the readers: a client that has seen
			// the failure finds nothing half-written left.
			k.abandon()
			dl.finish(rerr)
			done(ctx, out)
			return
		}
	}
	// Verified: release the held-back bytes first, then make them durable.
	if src.Verified != nil {
		src.Verified(ctx)
	}
	dl.finish(nil)
	if err := k.commit(ctx); err != nil {
		out.StoreErr = err
	}
	done(ctx, out)
}

// keeper writes a download's bytes to its sink and, when the sink cannot
// be read back, to a spool file that readers who fall behind read instead.
type keeper struct {
	dl       *download
	orig     Sink // the source's sink
	sink     Sink // nil once it failed, or when there is none
	spool    *os.File
	back     io.ReaderAt
	backOK   bool  // back has every byte so far
	sinkBack bool  // the sink is back: close it only when readers are done
	kept     int64 // bytes given to write so far
}

func (dl *download) keep(s Sink) *keeper {
	k := &keeper{dl: dl, orig: s, sink: s}
	if ra, ok := s.(io.ReaderAt); ok {
		k.back, k.backOK, k.sinkBack = ra, true, true
		return k
	}
	if dir := dl.g.opt.SpoolDir; dir != "" {
		f, err := os.CreateTemp(dir, "spool-")
		if err == nil {
			k.spool, k.back, k.backOK = f, f, true
			return k
		}
		dl.g.opt.Logger.Warn("cannot spool a download; readers who fall behind will fail", "digest", dl.d, "err", err)
	}
	return k
}

// write keeps p; it reports whether back still has every byte.
func (k *keeper) write(p []byte, out *Outcome) bool {
	defer func() { k.kept += int64(len(p)) }()
	if k.sink != nil {
		if _, err := k.sink.Write(p); err != nil {
			out.StoreErr = err
			if k.sinkBack {
				k.backOK = k.spill()
			} else {
				k.sink.Close()
			}
			k.sink = nil
		}
	}
	if k.spool != nil && k.backOK {
		if _, err := store.WritePieces(k.spool, p); err != nil {
			k.backOK = false
		}
	}
	return k.backOK
}

// spill goes on keeping the bytes for readers who fall behind when the sink
// they read back from fails (its disk is full): the sink still serves what
// it holds, and what follows goes to a spool file, often on another file
// system. Without it, every such reader would fail, and its client get a
// transfer cut short.
func (k *keeper) spill() bool {
	dir := k.dl.g.opt.SpoolDir
	if dir == "" {
		return false
	}
	f, err := os.CreateTemp(dir, "spool-")
	if err != nil {
		k.dl.g.opt.Logger.Warn("the store failed and a download cannot be spooled; readers who fall behind will fail", "digest", k.dl.d, "err", err)
		return false
	}
	k.spool = f
	k.back = splitBack{head: k.back, boundary: k.kept, tail: f}
	k.dl.mu.Lock()
	k.dl.back = k.back
	k.dl.mu.Unlock()
	return true
}

// splitBack reads a download's bytes before boundary from head (the sink)
// and the rest from tail (a spool that starts at boundary).
type splitBack struct {
	head     io.ReaderAt
	boundary int64
	tail     io.ReaderAt
}

func (b splitBack) ReadAt(p []byte, off int64) (int, error) {
	if off < b.boundary {
		return b.head.ReadAt(p[:min(int64(len(p)), b.boundary-off)], off)
	}
	return b.tail.ReadAt(p, off-b.boundary)
}

// commit publishes verified bytes.
func (k *keeper) commit(ctx context.Context) error {
	if k.sink == nil {
		return nil
	}
	err := k.sink.Commit(ctx)
	if !k.sinkBack {
		k.sink.Close()
	}
	return err
}

// abandon drops the bytes of a download that failed, at once: its readers
// get its error and read nothing more, so a sink that was also their back
// need not wait for them.
func (k *keeper) abandon() {
	k.dl.mu.Lock()
	k.dl.back = nil
	k.dl.mu.Unlock()
	if k.orig != nil {
		k.orig.Close()
	}
	k.sinkBack = false
}

// close releases what readers read back from, once the last is done. A
// sink that is also back was kept open for them; uncommitted, closing it
// discards its bytes.
func (k *keeper) close() {
	if k.sinkBack {
		k.orig.Close()
	}
	if k.spool != nil {
		k.spool.Close()
		os.Remove(k.spool.Name())
	}
}

// trimLocked drops the oldest chunks beyond the memory window (a single
// chunk while all downloads together are over MemoryMax); the newest chunk
// always stays, since it holds the held-back byte.
func (dl *download) trimLocked() {
	window := dl.g.opt.Window
	if dl.g.mem.Load() > dl.g.opt.MemoryMax {
		window = 0
	}
	var inMem int64
	for _, c := range dl.chunks {
		inMem += int64(cap(c.b))
	}
	for len(dl.chunks) > 1 && inMem > window {
		inMem -= int64(cap(dl.chunks[0].b))
		dl.dropOldestLocked()
	}
}

// dropOldestLocked frees the oldest chunk from the window.
func (dl *download) dropOldestLocked() {
	c := dl.chunks[0]
	dl.g.mem.Add(-int64(cap(c.b)))
	dl.chunks[0] = nil
	dl.chunks = dl.chunks[1:]
	dl.memStart += int64(len(c.b))
	dl.dropLocked(c)
}

// dropLocked hands a chunk that left the window back to the pool, now if
// no reader pins it, else when the last one unpins it.
func (dl *download) dropLocked(c *chunk) {
	if c.pins > 0 {
		c.dropped = true
		return
	}
	dl.g.free.Put(c)
}

// unpin ends a reader's use of a chunk that next returned.
func (dl *download) unpin(c *chunk) {
	dl.mu.Lock()
	c.pins--
	if c.pins == 0 && c.dropped {
		c.dropped = false
		dl.g.free.Put(c)
	}
	dl.mu.Unlock()
}

func (dl *download) finish(err error) {
	dl.mu.Lock()
	dl.done, dl.err = true, err
	dl.broadcastLocked()
	dl.mu.Unlock()
}

// failedLocked is why the download failed, or nil while it runs or after
// it verified.
func (dl *download) failedLocked() error {
	if dl.done {
		return dl.err
	}
	return nil
}

// availLocked is how many bytes readers may have: everything once the
// body verified; before that all but the last byte, or nothing for a
// small blob.
func (dl *download) availLocked() int64 {
	if dl.done && dl.err == nil {
		return dl.written
	}
	if dl.size >= 0 && dl.size <= dl.g.opt.HoldAll {
		return 0
	}
	if dl.size >= 0 {
		// Never the whole of the expected size, however much arrived.
		return max(min(dl.written, dl.size)-1, 0)
	}
	return max(dl.written-1, 0)
}
