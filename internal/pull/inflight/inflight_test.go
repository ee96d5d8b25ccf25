package inflight

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// sink is a store writer in memory; readBack makes it an io.ReaderAt.
type sink struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	failAfter int // fail writes once this many bytes are in; 0 = never
	committed bool
	closed    bool
}

func (s *sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failAfter > 0 && s.buf.Len()+len(p) > s.failAfter {
		return 0, errors.New("disk full")
	}
	return s.buf.Write(p)
}

func (s *sink) Commit(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.committed = true
	return nil
}

func (s *sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

func (s *sink) state() (committed, closed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.committed, s.closed
}

// discardSink records, when it is closed, whether readers could already
// have heard that its download failed.
type discardSink struct {
	readBackSink
	g    *Group
	late *atomic.Bool
}

func (s discardSink) Close() error {
	s.g.mu.Lock()
	dl := s.g.m[d1]
	s.g.mu.Unlock()
	if dl != nil {
		dl.mu.Lock()
		if dl.done && dl.err != nil {
			s.late.Store(true)
		}
		dl.mu.Unlock()
	}
	return s.sink.Close()
}

type readBackSink struct{ *sink }

func (s readBackSink) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buf.Bytes()
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	return copy(p, b[off:]), nil
}

// body is an upstream body the test feeds by hand: it ends with the
// verdict the test gives (nil: verified, io.EOF follows).
type body struct {
	pr *io.PipeReader
	pw *io.PipeWriter
}

func newBody() *body {
	pr, pw := io.Pipe()
	return &body{pr, pw}
}

func (b *body) Read(p []byte) (int, error) { return b.pr.Read(p) }
func (b *body) Close() error               { return b.pr.Close() }
func (b *body) send(t *testing.T, p []byte) {
	t.Helper()
	if _, err := b.pw.Write(p); err != nil {
		t.Fatal(err)
	}
}
func (b *body) end(verdict error) {
	if verdict == nil {
		b.pw.Close()
	} else {
		b.pw.CloseWithError(verdict)
	}
}

var d1 = digest.FromString("one")

func opener(b *body, size int64, s Sink, opens *atomic.Int32) OpenFunc {
	return func(context.Context) (Source, error) {
		if opens != nil {
			opens.Add(1)
		}
		return Source{Body: b, Size: size, Sink: s, Label: "origin"}, nil
	}
}

type outcomes struct {
	mu   sync.Mutex
	list []Outcome
	done chan struct{}
}

func newOutcomes() *outcomes { return &outcomes{done: make(chan struct{}, 16)} }

func (o *outcomes) record(_ context.Context, out Outcome) {
	o.mu.Lock()
	o.list = append(o.list, out)
	o.mu.Unlock()
	o.done <- struct{}{}
}

func (o *outcomes) wait(t *testing.T) Outcome {
	t.Helper()
	select {
	case <-o.done:
	case <-time.After(10 * time.Second):
		t.Fatal("download never ended")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.list[len(o.list)-1]
}

func readAll(t *testing.T, r *Reader) ([]byte, error) {
	t.Helper()
	var out bytes.Buffer
	_, err := r.CopyTo(context.Background(), &out, -1, nil)
	return out.Bytes(), err
}

func TestFanOut(t *testing.T) {
	g := New(Options{Chunk: 8, Window: 32, HoldAll: -1})
	b := newBody()
	s := &sink{}
	var opens atomic.Int32
	outs := newOutcomes()
	data := bytes.Repeat([]byte("0123456789"), 20)

	const readers = 5
	var wg sync.WaitGroup
	results := make([][]byte, readers)
	errs := make([]error, readers)
	joined := make(chan bool, readers)
	for i := range readers {
		r, j, err := g.Join(context.Background(), d1, opener(b, int64(len(data)), readBackSink{s}, &opens), outs.record)
		if err != nil {
			t.Fatal(err)
		}
		joined <- j
		wg.Go(func() { results[i], errs[i] = readAll(t, r); r.Close() })
	}
	for off := 0; off < len(data); off += 7 {
		b.send(t, data[off:min(off+7, len(data))])
	}
	b.end(nil)
	wg.Wait()
	for i := range readers {
		if errs[i] != nil || !bytes.Equal(results[i], data) {
			t.Errorf("reader %d: %v, %d bytes", i, errs[i], len(results[i]))
		}
	}
	if n := opens.Load(); n != 1 {
		t.Errorf("opened %d times, want 1", n)
	}
	close(joined)
	var nJoined int
	for j := range joined {
		if j {
			nJoined++
		}
	}
	if nJoined != readers-1 {
		t.Errorf("%d joined, want %d", nJoined, readers-1)
	}
	o := outs.wait(t)
	if o.Err != nil || o.StoreErr != nil || o.Bytes != int64(len(data)) {
		t.Errorf("outcome %+v", o)
	}
	if committed, _ := s.state(); !committed {
		t.Error("verified download not committed")
	}
	if err := g.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Until the body verifies, the last byte is held back; for a small blob,
// everything is.
func TestHoldBack(t *testing.T) {
	tests := []struct {
		name    string
		holdAll int64
		size    int64
		avail   int64 // after 10 of 10 bytes arrived, before the verdict
	}{
		{"large blob: all but the last byte", -1, 10, 9},
		{"unknown size: all but the last byte", 4, -1, 9},
		{"small blob: nothing", 64, 10, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, b, r, outs := fedReader(t, Options{Chunk: 4, HoldAll: tc.holdAll}, tc.size)
			b.send(t, []byte("0123456789"))
			if got := availAfter(t, g, 10); got != tc.avail {
				t.Fatalf("before the verdict readers may have %d bytes, want %d", got, tc.avail)
			}
			b.end(errors.New("digest mismatch"))
			if _, err := readAll(t, r); err == nil || err.Error() != "digest mismatch" {
				t.Fatalf("after a bad verdict: %v, want the verdict's error", err)
			}
			outs.wait(t)
		})
	}
}

// fedReader starts a download of size bytes that the test feeds through b,
// and joins it with r, which is closed when the test ends.
func fedReader(t *testing.T, opt Options, size int64) (*Group, *body, *Reader, *outcomes) {
	t.Helper()
	g := New(opt)
	b := newBody()
	outs := newOutcomes()
	r, _, err := g.Join(context.Background(), d1, opener(b, size, &sink{}, nil), outs.record)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return g, b, r, outs
}

// overrun is a body that answers its first Read with more bytes than the
// expected size and the error that says so, as the verifying body does.
type overrun struct {
	data []byte
	err  error
	done bool
}

func (o *overrun) Read(p []byte) (int, error) {
	if o.done {
		return 0, o.err
	}
	o.done = true
	return copy(p, o.data), o.err
}
func (o *overrun) Close() error { return nil }

// closeGate is a sink whose Close waits for the test: the download is
// discarded then, and the test looks at what its readers may have.
type closeGate struct {
	readBackSink
	closing, release chan struct{}
}

func (s closeGate) Close() error {
	close(s.closing)
	<-s.release
	return s.sink.Close()
}

// Bytes that arrive with a failure are never released: a body longer than
// its size fails with the byte past the size in hand, and releasing it
// would hand readers a complete body of bad content.
func TestBytesThatCameWithAFailureAreNotReleased(t *testing.T) {
	g := New(Options{Chunk: 64, HoldAll: -1})
	s := closeGate{readBackSink{&sink{}}, make(chan struct{}), make(chan struct{})}
	tooLarge := errors.New("the body is longer than 10 bytes")
	open := func(context.Context) (Source, error) {
		return Source{Body: &overrun{data: []byte("0123456789X"), err: tooLarge}, Size: 10, Sink: s}, nil
	}
	outs := newOutcomes()
	r, _, err := g.Join(context.Background(), d1, open, outs.record)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	<-s.closing
	g.mu.Lock()
	dl := g.m[d1]
	g.mu.Unlock()
	dl.mu.Lock()
	avail := dl.availLocked()
	dl.mu.Unlock()
	close(s.release)
	if avail >= 10 {
		t.Errorf("readers may have %d bytes of a 10-byte blob that failed", avail)
	}
	if got, err := readAll(t, r); err != tooLarge || len(got) >= 10 {
		t.Errorf("the reader got %q, %v; want less than the size and the failure", got, err)
	}
	outs.wait(t)
}

// availAfter waits until the download of d1 has read n bytes and returns
// how many its readers may have.
func availAfter(t *testing.T, g *Group, n int64) int64 {
	t.Helper()
	g.mu.Lock()
	dl := g.m[d1]
	g.mu.Unlock()
	for {
		dl.mu.Lock()
		written, wait := dl.written, dl.notify
		avail := dl.availLocked()
		dl.mu.Unlock()
		if written >= n {
			return avail
		}
		select {
		case <-wait:
		case <-time.After(10 * time.Second):
			t.Fatalf("the download read %d of %d bytes", written, n)
		}
	}
}

func TestFailedDownloadNeverCommitted(t *testing.T) {
	g := New(Options{Chunk: 4})
	b := newBody()
	s := &sink{}
	outs := newOutcomes()
	r, _, err := g.Join(context.Background(), d1, opener(b, 8, readBackSink{s}, nil), outs.record)
	if err != nil {
		t.Fatal(err)
	}
	b.send(t, []byte("01234567"))
	b.end(errors.New("hashes to something else"))
	if _, err := readAll(t, r); err == nil {
		t.Fatal("a failed download read as complete")
	}
	o := outs.wait(t)
	if o.Err == nil {
		t.Error("outcome has no error")
	}
	if err := g.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The sink is discarded when the download ends, not when its last
	// reader goes: nothing half-written outlives the download.
	if committed, closed := s.state(); committed || !closed {
		t.Errorf("sink committed=%v closed=%v after a failed download, want false true", committed, closed)
	}
	r.Close()
	// The next request starts afresh rather than inheriting the error.
	b2 := newBody()
	r2, joined, err := g.Join(context.Background(), d1, opener(b2, 8, &sink{}, nil), outs.record)
	if err != nil || joined {
		t.Fatalf("join after failure: joined=%v err=%v", joined, err)
	}
	b2.send(t, []byte("01234567"))
	b2.end(nil)
	if got, err := readAll(t, r2); err != nil || string(got) != "01234567" {
		t.Fatalf("retry: %q %v", got, err)
	}
	r2.Close()
	outs.wait(t)
}

// A failed download's sink is discarded before any reader hears of the
// failure: a client that saw its pull fail finds no temp file left.
func TestFailureDiscardsBeforeTelling(t *testing.T) {
	g := New(Options{Chunk: 4})
	b := newBody()
	var late atomic.Bool
	ds := discardSink{readBackSink{&sink{}}, g, &late}
	outs := newOutcomes()
	r, _, err := g.Join(context.Background(), d1, opener(b, 8, ds, nil), outs.record)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b.send(t, []byte("0123"))
	b.end(errors.New("cut off"))
	if _, err := readAll(t, r); err == nil {
		t.Fatal("no error")
	}
	outs.wait(t)
	if late.Load() {
		t.Fatal("the sink was discarded after readers could hear of the failure")
	}
}

func TestOpenFailureReturnedToEveryReader(t *testing.T) {
	g := New(Options{})
	boom := errors.New("upstream 404")
	_, _, err := g.Join(context.Background(), d1, func(context.Context) (Source, error) { return Source{}, boom }, nil)
	if !errors.Is(err, boom) {
		t.Fatalf("Join = %v, want %v", err, boom)
	}
	if err := g.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A reader who falls behind the memory window reads the rest back from
// the sink; without a sink that reads back or a spool, it fails.
func TestFallingBehindTheWindow(t *testing.T) {
	data := bytes.Repeat([]byte("abcdefgh"), 16) // 128 bytes, window 16
	tests := []struct {
		name    string
		sink    func(*sink) Sink
		spool   bool
		wantErr error
	}{
		{"sink reads back", func(s *sink) Sink { return readBackSink{s} }, false, nil},
		{"spool file", func(s *sink) Sink { return s }, true, nil},
		{"stream-through with a spool", func(*sink) Sink { return nil }, true, nil},
		{"nothing to read back", func(s *sink) Sink { return s }, false, ErrFellBehind},
		// The sink fills part-way (a full disk): what it holds is read
		// back from it, the rest from a spool.
		{"the sink fills, a spool takes over", func(s *sink) Sink { s.failAfter = 40; return readBackSink{s} }, true, nil},
		{"the sink fills, no spool", func(s *sink) Sink { s.failAfter = 40; return readBackSink{s} }, false, ErrFellBehind},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opt := Options{Chunk: 8, Window: 16, HoldAll: -1}
			if tc.spool {
				opt.SpoolDir = t.TempDir()
			}
			g := New(opt)
			b := newBody()
			outs := newOutcomes()
			first, _, err := g.Join(context.Background(), d1, opener(b, int64(len(data)), tc.sink(&sink{}), nil), outs.record)
			if err != nil {
				t.Fatal(err)
			}
			var firstDone sync.WaitGroup
			firstDone.Go(func() { readAll(t, first); first.Close() })
			b.send(t, data)
			// A late joiner starts at 0, long out of the window.
			late, joined, err := g.Join(context.Background(), d1, nil, outs.record)
			if err != nil || !joined {
				t.Fatalf("late join: %v %v", joined, err)
			}
			b.end(nil)
			got, err := readAll(t, late)
			late.Close()
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("late reader: %v, want %v", err, tc.wantErr)
			}
			if err == nil && !bytes.Equal(got, data) {
				t.Fatalf("late reader got %q", got)
			}
			outs.wait(t)
			firstDone.Wait()
			// Close, not Drain: the spool goes with the download's last
			// reference, just after it left the map.
			if err := g.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			if tc.spool {
				if left, _ := os.ReadDir(opt.SpoolDir); len(left) != 0 {
					t.Errorf("%d spool files left", len(left))
				}
			}
		})
	}
}

// stallWriter blocks in its first Write until released, holding the slice
// it was given, and copies it only then: had the chunk under that slice
// been reused meanwhile, the copy would show another part of the blob.
type stallWriter struct {
	stalled chan struct{}
	release chan struct{}
	once    sync.Once
	out     bytes.Buffer
}

func (w *stallWriter) Write(p []byte) (int, error) {
	w.once.Do(func() {
		close(w.stalled)
		<-w.release
	})
	return w.out.Write(p)
}

// Chunks are reused once they leave the window, but never while a reader
// still writes from one.
func TestChunkReusedOnlyOnceUnpinned(t *testing.T) {
	data := make([]byte, 256)
	for i := range data {
		data[i] = byte(i)
	}
	g := New(Options{Chunk: 8, Window: 16, HoldAll: -1})
	b := newBody()
	outs := newOutcomes()
	r, _, err := g.Join(context.Background(), d1, opener(b, int64(len(data)), readBackSink{&sink{}}, nil), outs.record)
	if err != nil {
		t.Fatal(err)
	}
	stalled, release := make(chan struct{}), make(chan struct{})
	w := &stallWriter{stalled: stalled, release: release}
	var copied sync.WaitGroup
	var cerr error
	copied.Go(func() { _, cerr = r.CopyTo(context.Background(), w, -1, nil); r.Close() })
	b.send(t, data[:8])
	<-stalled // pinned: the first chunk, 7 bytes of it
	for off := 8; off < len(data); off += 8 {
		b.send(t, data[off:off+8]) // 30 more chunks through a 2-chunk window
	}
	b.end(nil)
	outs.wait(t)
	close(release)
	copied.Wait()
	if cerr != nil || !bytes.Equal(w.out.Bytes(), data) {
		t.Fatalf("reader: %v, got % x", cerr, w.out.Bytes())
	}
}

// A sink that fails (a full disk) does not fail the clients: the bytes are
// streamed through, and the outcome says they were not kept.
func TestSinkFailureStreamsThrough(t *testing.T) {
	g := New(Options{Chunk: 4, HoldAll: -1})
	b := newBody()
	s := &sink{failAfter: 6}
	outs := newOutcomes()
	r, _, err := g.Join(context.Background(), d1, opener(b, 12, s, nil), outs.record)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan []byte)
	go func() { got, _ := readAll(t, r); done <- got }()
	b.send(t, []byte("0123456789ab"))
	b.end(nil)
	if got := <-done; string(got) != "0123456789ab" {
		t.Fatalf("client got %q", got)
	}
	r.Close()
	o := outs.wait(t)
	if o.StoreErr == nil || o.Err != nil {
		t.Fatalf("outcome %+v: want a store error and no body error", o)
	}
	if committed, _ := s.state(); committed {
		t.Fatal("a sink that failed was committed")
	}
}

// The client that started a download hanging up does not abort it.
func TestClientCancelKeepsDownload(t *testing.T) {
	g := New(Options{Chunk: 4, HoldAll: -1})
	b := newBody()
	s := &sink{}
	outs := newOutcomes()
	ctx, cancel := context.WithCancel(context.Background())
	r, _, err := g.Join(ctx, d1, opener(b, 8, s, nil), outs.record)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	r.Close()
	b.send(t, []byte("01234567"))
	b.end(nil)
	if o := outs.wait(t); o.Err != nil {
		t.Fatalf("download failed after its client left: %v", o.Err)
	}
	if committed, _ := s.state(); !committed {
		t.Fatal("not committed")
	}
}

// Close waits for downloads in flight; at its deadline it cancels them.
func TestCloseOwnsDownloads(t *testing.T) {
	g := New(Options{Chunk: 4})
	b := newBody()
	outs := newOutcomes()
	var bodyCtx context.Context
	r, _, err := g.Join(context.Background(), d1, func(ctx context.Context) (Source, error) {
		bodyCtx = ctx
		go func() { <-ctx.Done(); b.end(ctx.Err()) }()
		return Source{Body: b, Size: -1}, nil
	}, outs.record)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := g.Close(ctx); err == nil {
		t.Fatal("Close returned nil with a download that never ends")
	}
	if bodyCtx.Err() == nil {
		t.Fatal("the download's context outlived Close")
	}
	if o := outs.wait(t); o.Err == nil {
		t.Fatal("a cancelled download reported success")
	}
	if _, _, err := g.Join(context.Background(), d1, nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Join after Close = %v", err)
	}
}

func TestReaderSeekAndLimit(t *testing.T) {
	g := New(Options{Chunk: 4, HoldAll: -1})
	b := newBody()
	outs := newOutcomes()
	r, _, err := g.Join(context.Background(), d1, opener(b, 10, &sink{}, nil), outs.record)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Seek(3, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	b.send(t, []byte("0123456789"))
	b.end(nil)
	var out bytes.Buffer
	if n, err := r.CopyTo(context.Background(), &out, 4, nil); err != nil || n != 4 || out.String() != "3456" {
		t.Fatalf("CopyTo(limit 4) = %d, %v, %q", n, err, out.String())
	}
	if rest, err := io.ReadAll(r); err != nil || string(rest) != "789" {
		t.Fatalf("Read the rest = %q, %v", rest, err)
	}
	if end, err := r.Seek(0, io.SeekEnd); err != nil || end != 10 {
		t.Fatalf("Seek end = %d, %v", end, err)
	}
	outs.wait(t)
}

// The memory all downloads hold is bounded: past MemoryMax each keeps only
// its newest chunk, and what a download held is given back when it ends.
func TestMemoryBounded(t *testing.T) {
	g := New(Options{Chunk: 1024, Window: 8 * 1024, MemoryMax: 16 * 1024, HoldAll: -1})
	const downloads = 8
	var bodies []*body
	var readers []*Reader
	outs := newOutcomes()
	for i := range downloads {
		b := newBody()
		d := digest.FromString(fmt.Sprint("blob", i))
		r, _, err := g.Join(context.Background(), d, opener(b, 20*1024, readBackSink{&sink{}}, nil), outs.record)
		if err != nil {
			t.Fatal(err)
		}
		bodies, readers = append(bodies, b), append(readers, r)
	}
	for _, b := range bodies {
		b.send(t, bytes.Repeat([]byte("x"), 20*1024))
	}
	// Each download holds at most its newest chunk past the bound, plus
	// the one it is filling: the total stays near MemoryMax, not 8 windows.
	if m := g.Memory(); m > 16*1024+2*downloads*1024 {
		t.Fatalf("downloads hold %d bytes, bound %d", m, 16*1024)
	}
	for i, b := range bodies {
		b.end(nil)
		got, err := readAll(t, readers[i])
		if err != nil || len(got) != 20*1024 {
			t.Fatalf("reader %d: %d bytes, %v", i, len(got), err)
		}
		readers[i].Close()
		outs.wait(t)
	}
	// Close, not Drain: Drain returns once the downloads left the map,
	// which each does just before it lets go of its chunks.
	if err := g.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if m := g.Memory(); m != 0 {
		t.Fatalf("%d bytes held after every download ended", m)
	}
}

// A download whose last reference is gone has let go of its chunks and its
// sink: nobody may join it, or they would fail at once. Lookup must say it
// is not in flight (the caller then finds the blob in the store), and Join
// must start afresh.
func TestReleasedDownloadIsNotJoined(t *testing.T) {
	g := New(Options{})
	dl := newDownload(g, d1)
	defer func() {
		// The fake download has no goroutine to take it out of the map.
		g.mu.Lock()
		if g.m[d1] == dl {
			delete(g.m, d1)
		}
		g.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g.Close(ctx)
	}()
	dl.refs, dl.done, dl.started, dl.size = 0, true, true, 3
	close(dl.ready)
	g.m[d1] = dl

	if r, ok, err := g.Lookup(context.Background(), d1); ok || err != nil {
		if ok {
			r.Close()
		}
		t.Fatalf("Lookup joined a released download (err %v)", err)
	}
	b := newBody()
	r, joined, err := g.Join(context.Background(), d1, opener(b, 3, nil, nil), func(context.Context, Outcome) {})
	if err != nil || joined {
		t.Fatalf("Join: joined %v, err %v; want a new download", joined, err)
	}
	defer r.Close()
	go func() { b.send(t, []byte("new")); b.end(nil) }()
	if got, err := readAll(t, r); err != nil || string(got) != "new" {
		t.Fatalf("read %q, %v", got, err)
	}
}

// Whoever finds a download in flight, at any moment up to its removal,
// reads all of it: a second replica's request (Lookup) races the end of
// every download here.
func TestLookupRacingTheEndReadsAll(t *testing.T) {
	content := []byte("a small blob, held back whole until it verifies")
	for i := 0; i < 300; i++ {
		g := New(Options{})
		b := newBody()
		s := readBackSink{&sink{}}
		r, _, err := g.Join(context.Background(), d1, opener(b, int64(len(content)), s, nil), func(context.Context, Outcome) {})
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				lr, ok, err := g.Lookup(context.Background(), d1)
				if err != nil {
					t.Error(err)
					return
				}
				if !ok {
					continue
				}
				got, err := readAll(t, lr)
				lr.Close()
				if err != nil || !bytes.Equal(got, content) {
					t.Errorf("iteration %d: a reader that found the download read %q, %v", i, got, err)
					return
				}
			}
		})
		b.send(t, content)
		b.end(nil)
		if got, err := readAll(t, r); err != nil || !bytes.Equal(got, content) {
			t.Fatalf("first reader: %q, %v", got, err)
		}
		r.Close()
		if err := g.Drain(context.Background()); err != nil {
			t.Fatal(err)
		}
		close(stop)
		wg.Wait()
		g.Close(context.Background())
		if t.Failed() {
			return
		}
	}
}

// sizeRecorder keeps what is written and the size of each write.
type sizeRecorder struct {
	out   bytes.Buffer
	sizes []int
}

func (w *sizeRecorder) Write(p []byte) (int, error) {
	w.sizes = append(w.sizes, len(p))
	return w.out.Write(p)
}

// A reader that reads back asks for its buffer once, and reads back
// through all of it; one that stays in the window never asks.
func TestCopyToBorrowsItsReadBackBuffer(t *testing.T) {
	data := bytes.Repeat([]byte("abcdefgh"), 16) // 128 bytes
	const lent = 24
	tests := []struct {
		name      string
		window    int64
		wantCalls int
	}{
		{"behind the window, reads back", 16, 1},
		{"all in the window", 256, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := New(Options{Chunk: 8, Window: tc.window, HoldAll: -1})
			b := newBody()
			outs := newOutcomes()
			first, _, err := g.Join(context.Background(), d1, opener(b, int64(len(data)), readBackSink{&sink{}}, nil), outs.record)
			if err != nil {
				t.Fatal(err)
			}
			var firstDone sync.WaitGroup
			firstDone.Go(func() { readAll(t, first); first.Close() })
			b.send(t, data)
			late, _, err := g.Join(context.Background(), d1, nil, outs.record)
			if err != nil {
				t.Fatal(err)
			}
			b.end(nil)
			var calls int
			w := &sizeRecorder{}
			_, err = late.CopyTo(context.Background(), w, -1, func() []byte { calls++; return make([]byte, lent) })
			late.Close()
			if err != nil || !bytes.Equal(w.out.Bytes(), data) {
				t.Fatalf("late reader: %v, %q", err, w.out.Bytes())
			}
			if calls != tc.wantCalls {
				t.Errorf("buffer asked for %d times, want %d", calls, tc.wantCalls)
			}
			if tc.wantCalls > 0 && w.sizes[0] != lent {
				// 112 bytes are out of the window: the first read back
				// fills the lent buffer.
				t.Errorf("first write %d bytes, want %d (writes %v)", w.sizes[0], lent, w.sizes)
			}
			outs.wait(t)
			firstDone.Wait()
		})
	}
}

// Settle answers as soon as the reader may read, or the download ended:
// with the download's error if it failed.
func TestSettle(t *testing.T) {
	bad := errors.New("digest mismatch")
	tests := []struct {
		name    string
		holdAll int64
		size    int64
		send    int   // bytes sent before Settle
		verdict error // sent after them, unless keep
		keep    bool  // the download goes on: Settle must not wait for it
		want    error
	}{
		{"small blob that verifies", 64, 10, 10, nil, false, nil},
		{"small blob that does not", 64, 10, 10, bad, false, bad},
		{"small blob cut short", 64, 10, 4, bad, false, bad},
		{"large blob: its first bytes", -1, 10, 5, nil, true, nil},
		{"large blob that fails before its second byte", -1, 10, 1, bad, false, bad},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, b, r, outs := fedReader(t, Options{Chunk: 4, HoldAll: tc.holdAll}, tc.size)
			b.send(t, []byte("0123456789")[:tc.send])
			if !tc.keep {
				b.end(tc.verdict)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := r.Settle(ctx); err != tc.want {
				t.Fatalf("Settle = %v, want %v", err, tc.want)
			}
			if ctx.Err() != nil {
				t.Fatal("Settle waited until its context ended")
			}
			if tc.keep {
				b.end(nil)
			}
			outs.wait(t)
		})
	}
	// Nothing arrives: Settle gives up when its context ends, with no
	// error, and the download goes on.
	_, b, r, outs := fedReader(t, Options{}, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := r.Settle(ctx); err != nil || ctx.Err() == nil {
		t.Fatalf("Settle with nothing sent = %v (context %v), want nil once the context ended", err, ctx.Err())
	}
	b.end(nil)
	outs.wait(t)
}
