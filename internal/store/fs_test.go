package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func TestFSReadAtWhileWriting(t *testing.T) {
	ctx := context.Background()
	s, _ := OpenFS(t.TempDir())
	data := bytes.Repeat([]byte("abcdefgh"), 1000)
	w, err := s.Create(ctx, digest.FromBytes(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ra, ok := w.(io.ReaderAt)
	if !ok {
		t.Fatal("the FS writer does not read back: downloads in flight would need a spool file")
	}
	w.Write(data[:4000])
	buf := make([]byte, 100)
	if _, err := ra.ReadAt(buf, 3900); err != nil || !bytes.Equal(buf, data[3900:4000]) {
		t.Fatalf("ReadAt in flight: %v", err)
	}
	w.Write(data[4000:])
	if err := w.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// Readers that tail the download keep reading after the rename.
	if _, err := ra.ReadAt(buf, 7900); err != nil || !bytes.Equal(buf, data[7900:]) {
		t.Fatalf("ReadAt after commit: %v", err)
	}
}

func TestOpenFSDiscardsPartialWrites(t *testing.T) {
	root := t.TempDir()
	s, _ := OpenFS(root)
	w, _ := s.Create(context.Background(), digest.FromString("x"), 1)
	w.Write([]byte("partial"))
	// Simulate kill -9: the writer is never closed.
	if n := countFiles(t, filepath.Join(root, "tmp")); n != 1 {
		t.Fatalf("want 1 temp file, got %d", n)
	}
	if _, err := OpenFS(root); err != nil {
		t.Fatal(err)
	}
	if n := countFiles(t, filepath.Join(root, "tmp")); n != 0 {
		t.Fatalf("restart left %d temp files", n)
	}
}

func countFiles(t *testing.T, dir string) int {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

func TestCollectEvictsLeastRecentlyUsed(t *testing.T) {
	ctx := context.Background()
	s, _ := OpenFS(t.TempDir())
	now := time.Now()
	put := func(content string, used time.Time) digest.Digest {
		d := digest.FromString(content)
		w, _ := s.Create(ctx, d, int64(len(content)))
		w.Write([]byte(content))
		if err := w.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		w.Close()
		p, _ := s.blobPath(d)
		os.Chtimes(p, used, used)
		return d
	}
	kb := func(c byte) string { return string(bytes.Repeat([]byte{c}, 1000)) }
	oldest := put(kb('a'), now.Add(-3*time.Hour))
	old := put(kb('b'), now.Add(-2*time.Hour))
	recent := put(kb('c'), now.Add(-1*time.Hour))
	inUse := put(kb('d'), now.Add(-time.Minute))

	// Under the high mark nothing happens.
	st, err := s.Collect(ctx, 5000, 3000, now)
	if err != nil || st.Evicted != 0 || st.Bytes != 4000 {
		t.Fatalf("under the mark: %+v %v", st, err)
	}
	// Reading a blob makes it recent.
	s.access = accessClock{}
	s.now = func() time.Time { return now }
	c, _ := s.Open(ctx, oldest)
	c.Close()

	st, err = s.Collect(ctx, 3500, 2000, now.Add(30*time.Minute))
	if err != nil || st.Evicted != 2 || st.EvictedBytes != 2000 {
		t.Fatalf("collect: %+v %v", st, err)
	}
	for d, want := range map[digest.Digest]bool{oldest: true, old: false, recent: false, inUse: true} {
		_, err := s.Stat(ctx, d)
		if (err == nil) != want {
			t.Errorf("%s present=%v, want %v", d, err == nil, want)
		}
	}
	// Blobs in use right now are never evicted, even over the mark.
	st, _ = s.Collect(ctx, 0, 0, now.Add(time.Minute))
	if _, err := s.Stat(ctx, inUse); err != nil || st.Evicted != 0 {
		t.Fatalf("a blob in use was evicted: %+v", st)
	}
}

// A size that cannot fit is refused before a byte is written, so the
// caller can stream the content through instead of failing half-way.
func TestFSCreateRefusesWhatCannotFit(t *testing.T) {
	s, _ := OpenFS(t.TempDir())
	free, ok := s.free()
	if !ok {
		t.Fatal("statfs failed on the test directory")
	}
	_, err := s.Create(context.Background(), digest.FromString("big"), free+1)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Create(%d bytes with %d free) = %v, want ErrNoSpace", free+1, free, err)
	}
	if n := countFiles(t, filepath.Join(s.Root(), "tmp")); n != 0 {
		t.Fatalf("%d temp files left", n)
	}
}

// A size that fits is reserved at Create: the disk filling afterwards
// cannot cut the write short.
func TestFSCreateReservesTheSize(t *testing.T) {
	s, _ := OpenFS(t.TempDir())
	const size = 8 << 20
	w, err := s.Create(context.Background(), digest.FromString("reserved"), size)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	fi, err := w.(*fsWriter).f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Sys().(*syscall.Stat_t).Blocks * 512; got < size || fi.Size() != 0 {
		t.Errorf("after Create(%d): %d bytes allocated, size %d; want the blocks reserved and the size left to the writes", size, got, fi.Size())
	}
}

// Collect walks the store only when the running size says it may be over
// the mark, or when the last walk is an hour old; commits and deletes keep
// the running size.
func TestCollectWalksOnlyWhenNeeded(t *testing.T) {
	ctx := context.Background()
	s, _ := OpenFS(t.TempDir())
	now := time.Now()
	put := func(c byte) digest.Digest {
		content := bytes.Repeat([]byte{c}, 1000)
		d := digest.FromBytes(content)
		w, _ := s.Create(ctx, d, int64(len(content)))
		w.Write(content)
		if err := w.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		w.Close()
		p, _ := s.blobPath(d)
		old := now.Add(-2 * time.Hour)
		os.Chtimes(p, old, old)
		return d
	}
	a := put('a')
	put('b')
	put('a') // the same digest again adds nothing

	steps := []struct {
		name       string
		do         func()
		at         time.Duration
		wantWalked bool
		wantBytes  int64
	}{
		{"first collection walks", nil, 0, true, 2000},
		{"under the mark: no walk", nil, time.Minute, false, 2000},
		{"a commit is counted", func() { put('c') }, 2 * time.Minute, false, 3000},
		{"a delete is counted", func() { s.Delete(ctx, a) }, 3 * time.Minute, false, 2000},
		{"over the mark: walk and evict", func() { put('d'); put('e'); put('f') }, 4 * time.Minute, true, 5000},
		{"after eviction, under again", nil, 5 * time.Minute, false, 4000},
		{"an hour after the last walk: walk", nil, 4*time.Minute + rewalkEvery, true, 4000},
	}
	for _, st := range steps {
		if st.do != nil {
			st.do()
		}
		got, err := s.Collect(ctx, 4500, 4000, now.Add(st.at))
		if err != nil {
			t.Fatal(err)
		}
		if got.Walked != st.wantWalked || got.Bytes != st.wantBytes {
			t.Errorf("%s: walked=%v bytes=%d, want walked=%v bytes=%d", st.name, got.Walked, got.Bytes, st.wantWalked, st.wantBytes)
		}
	}
}
