package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
)

// FS stores content under a root directory:
//
//	blobs/<alg>/<first two hex>/<hex>   committed content, never rewritten
//	meta/<key>                          metadata records
//	tmp/                                in-flight writes, emptied at open
//
// Writes go to tmp/ and, once the caller has verified them, are fsynced and
// renamed into place, so a kill at any moment leaves either no file or a
// complete, verified one.
type FS struct {
	root   string
	access accessClock
	now    func() time.Time
	usage  usage
}

// OpenFS prepares root and discards any in-flight writes left by a previous
// process that died.
func OpenFS(root string) (*FS, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("storage.root %s: %w", root, err)
	}
	for _, d := range []string{"blobs", "meta", "tmp"} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o755); err != nil {
			return nil, fmt.Errorf("storage.root %s: %w", root, err)
		}
	}
	// Leftovers are partial downloads of a crashed process: never valid.
	tmp := filepath.Join(abs, "tmp")
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return nil, fmt.Errorf("storage.root %s: %w", root, err)
	}
	for _, e := range entries {
		_ = os.RemoveAll(filepath.Join(tmp, e.Name()))
	}
	return &FS{root: abs, now: time.Now}, nil
}

// Root returns the absolute storage directory.
func (s *FS) Root() string { return s.root }

func (s *FS) blobPath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("invalid digest %q: %w", d, err)
	}
	return filepath.Join(s.root, filepath.FromSlash(BlobPath(d))), nil
}

// Stat implements Store.
func (s *FS) Stat(_ context.Context, d digest.Digest) (int64, error) {
	p, err := s.blobPath(d)
	if err != nil {
		return 0, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, ErrNotFound
		}
		return 0, err
	}
	return fi.Size(), nil
}

// Open implements Store.
func (s *FS) Open(_ context.Context, d digest.Digest) (Content, error) {
	p, err := s.blobPath(d)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	s.access.touch(p, s.now())
	return &File{File: f, size: fi.Size()}, nil
}

// File is committed content on disk. It embeds *os.File so that io.Copy to
// a TCP connection can use sendfile.
type File struct {
	*os.File
	size int64
}

// Size implements Content.
func (f *File) Size() int64 { return f.size }

// Delete implements Store.
func (s *FS) Delete(_ context.Context, d digest.Digest) error {
	p, err := s.blobPath(d)
	if err != nil {
		return err
	}
	fi, statErr := os.Stat(p)
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	if statErr == nil {
		s.usage.add(-fi.Size())
	}
	return nil
}

// Create implements Store. A size that cannot fit in the free space of the
// file system is refused at once (ErrNoSpace), before a byte is fetched;
// one that fits is reserved, so that the disk filling meanwhile (other
// downloads, other programs) cannot cut the write short after the content
// began to reach clients.
func (s *FS) Create(_ context.Context, d digest.Digest, size int64) (Writer, error) {
	final, err := s.blobPath(d)
	if err != nil {
		return nil, err
	}
	if size > 0 {
		if free, ok := s.free(); ok && free < size+minFree {
			return nil, fmt.Errorf("%w: %d bytes needed, %d free under %s", ErrNoSpace, size, free, s.root)
		}
	}
	f, err := s.tempFile()
	if err != nil {
		return nil, noSpace(err)
	}
	if size > 0 {
		// A file system without fallocate is written as it comes.
		err := syscall.Fallocate(int(f.Fd()), fallocKeepSize, 0, size)
		if err != nil && !errors.Is(err, syscall.EOPNOTSUPP) && !errors.Is(err, syscall.ENOSYS) {
			f.Close()
			os.Remove(f.Name())
			return nil, noSpace(err)
		}
	}
	return &fsWriter{f: f, final: final, size: size, usage: &s.usage}, nil
}

// fallocKeepSize is FALLOC_FL_KEEP_SIZE: reserve the blocks, leave the
// file's size to the writes.
const fallocKeepSize = 0x1

// minFree is kept free on the file system besides what content needs, for
// metadata records and the writes of other downloads.
const minFree = 64 << 20

// free returns the bytes available to regcache on the store's file system.
func (s *FS) free() (int64, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.root, &st); err != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}

// noSpace marks a full file system with ErrNoSpace.
func noSpace(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %v", ErrNoSpace, err)
	}
	return err
}

func (s *FS) tempFile() (*os.File, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	return os.OpenFile(filepath.Join(s.root, "tmp", hex.EncodeToString(b[:])), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
}

type fsWriter struct {
	f     *os.File
	final string
	size  int64

	usage     *usage
	mu        sync.Mutex // serialises Write/Commit/Close
	written   int64
	committed bool
	closed    bool
}

func (w *fsWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.committed {
		return 0, errors.New("store: write after commit or close")
	}
	n, err := WritePieces(w.f, p)
	w.written += int64(n)
	return n, noSpace(err)
}

// ReadAt reads from the temp file; pread on the same descriptor is safe while
// another goroutine appends.
func (w *fsWriter) ReadAt(p []byte, off int64) (int, error) { return w.f.ReadAt(p, off) }

func (w *fsWriter) Commit(_ context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.committed {
		return errors.New("store: commit after commit or close")
	}
	if w.size >= 0 && w.written != w.size {
		return fmt.Errorf("%w: %d bytes written, %d expected", ErrSizeMismatch, w.written, w.size)
	}
	if err := w.f.Sync(); err != nil {
		return noSpace(err)
	}
	dir := filepath.Dir(w.final)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return noSpace(err)
	}
	_, existed := os.Lstat(w.final)
	if err := os.Rename(w.f.Name(), w.final); err != nil {
		return err
	}
	w.committed = true
	if existed != nil {
		// Another writer may have published the same digest meanwhile;
		// then this counts it twice, until the next walk corrects it.
		w.usage.add(w.written)
	}
	return syncDir(dir)
}

func (w *fsWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	err := w.f.Close()
	if !w.committed {
		_ = os.Remove(w.f.Name())
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// metaPath maps a key of slash-separated segments to a file.
func (s *FS) metaPath(key string) (string, error) {
	if err := checkMetaKey(key); err != nil {
		return "", err
	}
	return filepath.Join(s.root, "meta", filepath.FromSlash(key)), nil
}

// GetMeta implements Store.
func (s *FS) GetMeta(_ context.Context, key string) ([]byte, error) {
	p, err := s.metaPath(key)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	return b, nil
}

// PutMeta implements Store. Records are small and rewritten often (tag
// revalidation), so they are renamed into place but not fsynced: losing the
// latest revalidation time in a crash only costs one more HEAD.
func (s *FS) PutMeta(_ context.Context, key string, value []byte) error {
	p, err := s.metaPath(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := s.tempFile()
	if err != nil {
		return err
	}
	if _, err := f.Write(value); err != nil {
		f.Close()
		os.Remove(f.Name())
		return noSpace(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), p); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}

// DeleteMeta implements Store.
func (s *FS) DeleteMeta(_ context.Context, key string) error {
	p, err := s.metaPath(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
