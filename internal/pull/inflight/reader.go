package inflight

import (
	"context"
	"errors"
	"io"
)

// Reader reads one download from an offset, waiting for bytes as they
// arrive. It returns an error, never a clean EOF, if the download fails or
// its content does not verify. It is not safe for concurrent use.
type Reader struct {
	dl     *download
	off    int64
	closed bool
}

// Size is the download's expected size, or -1.
func (r *Reader) Size() int64 { return r.dl.size }

// Label names where the download's bytes come from.
func (r *Reader) Label() string { return r.dl.label }

// Stored reports whether the download's bytes are being kept (as far as
// was known when it started), rather than streamed through uncached.
func (r *Reader) Stored() bool { return r.dl.stored }

// Seek sets the offset of the next Read, for Range requests; io.SeekEnd
// needs a known size.
func (r *Reader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		if r.dl.size < 0 {
			return 0, errors.New("inflight: seek from the end of a download of unknown size")
		}
		offset += r.dl.size
	}
	if offset < 0 {
		return 0, errors.New("inflight: negative offset")
	}
	r.off = offset
	return offset, nil
}

// piece is what a reader may read next: a slice of a memory chunk, which
// it pins until it calls done, or a length to read back from the
// download's sink or spool.
type piece struct {
	mem  []byte
	c    *chunk
	back io.ReaderAt
	n    int
}

// done unpins the piece's chunk.
func (p piece) done(dl *download) {
	if p.c != nil {
		dl.unpin(p.c)
	}
}

// next returns the bytes at the reader's offset that may be read now, at
// most max. It waits for bytes as long as ctx allows.
func (r *Reader) next(ctx context.Context, max int) (piece, error) {
	dl := r.dl
	for {
		dl.mu.Lock()
		if err := dl.failedLocked(); err != nil {
			dl.mu.Unlock()
			return piece{}, err
		}
		avail := dl.availLocked()
		if r.off < avail {
			n := int(min(int64(max), avail-r.off))
			if r.off >= dl.memStart {
				// Find the chunk that holds r.off.
				pos := dl.memStart
				for _, c := range dl.chunks {
					if r.off < pos+int64(len(c.b)) {
						i := r.off - pos
						c.pins++
						mem := c.b[i:min(int64(len(c.b)), i+int64(n))]
						dl.mu.Unlock()
						return piece{mem: mem, c: c, n: len(mem)}, nil
					}
					pos += int64(len(c.b))
				}
				dl.mu.Unlock()
				return piece{}, ErrFellBehind // cannot happen: the window holds avail
			}
			if dl.back != nil && r.off < dl.backLen {
				p := piece{back: dl.back, n: int(min(int64(n), dl.backLen-r.off, dl.memStart-r.off))}
				dl.mu.Unlock()
				return p, nil
			}
			dl.mu.Unlock()
			return piece{}, ErrFellBehind
		}
		done, derr, wait := dl.done, dl.err, dl.notify
		dl.mu.Unlock()
		if done {
			if derr != nil {
				return piece{}, derr
			}
			return piece{}, io.EOF
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return piece{}, ctx.Err()
		}
	}
}

// Settle waits until this reader may read its first bytes, or the
// download ends, or ctx ends. It returns the download's error if the
// download has failed by then, else nil. A server settles before its
// status line: a small blob is held back whole until it verifies, so one
// that fails gets an error status instead of a 200 that must then be cut
// short.
func (r *Reader) Settle(ctx context.Context) error {
	dl := r.dl
	for {
		dl.mu.Lock()
		if err := dl.failedLocked(); err != nil {
			dl.mu.Unlock()
			return err
		}
		if dl.done || r.off < dl.availLocked() {
			dl.mu.Unlock()
			return nil
		}
		wait := dl.notify
		dl.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil
		}
	}
}

// Read copies the next bytes into p.
func (r *Reader) Read(p []byte) (int, error) {
	return r.ReadContext(context.Background(), p)
}

// ReadContext is Read that stops waiting when ctx ends.
func (r *Reader) ReadContext(ctx context.Context, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	pc, err := r.next(ctx, len(p))
	if err != nil {
		return 0, err
	}
	var n int
	if pc.c != nil {
		n = copy(p, pc.mem)
		pc.done(r.dl)
	} else {
		n, err = pc.back.ReadAt(p[:pc.n], r.off)
		if n > 0 {
			err = nil
		}
	}
	r.off += int64(n)
	return n, err
}

// CopyTo writes the download from the reader's offset to w until the end,
// or limit bytes when limit >= 0. Bytes in memory go to w straight from
// the download's chunks; only bytes read back from the sink or spool pass
// through a buffer, which CopyTo asks buffer for the first time it needs
// one (with buffer nil, it allocates readBackBuffer bytes). A reader that
// fell behind reads back until it catches up with the window, so a larger
// buffer spares it system calls: the server lends its 1 MiB copy buffers.
// It returns io.ErrUnexpectedEOF when the download ended before limit
// bytes.
func (r *Reader) CopyTo(ctx context.Context, w io.Writer, limit int64, buffer func() []byte) (int64, error) {
	var total int64
	var buf []byte
	for limit < 0 || total < limit {
		max := 1 << 30
		if limit >= 0 {
			max = int(min(int64(max), limit-total))
		}
		pc, err := r.next(ctx, max)
		if err == io.EOF {
			if limit >= 0 {
				return total, io.ErrUnexpectedEOF
			}
			return total, nil
		}
		if err != nil {
			return total, err
		}
		mem := pc.mem
		if pc.c == nil {
			if buf == nil && buffer != nil {
				buf = buffer()
			}
			if len(buf) == 0 {
				buf = make([]byte, readBackBuffer)
			}
			n, err := pc.back.ReadAt(buf[:min(pc.n, len(buf))], r.off)
			if n == 0 {
				if err == nil {
					err = io.ErrNoProgress
				}
				return total, err
			}
			mem = buf[:n]
		}
		m, werr := w.Write(mem)
		pc.done(r.dl)
		r.off += int64(m)
		total += int64(m)
		if werr != nil {
			return total, werr
		}
	}
	return total, nil
}

// readBackBuffer is the buffer of a reader that reads back from the file:
// small, since a client that stops reading holds it until its send timeout
// cuts it off, and every connection may be such a reader.
const readBackBuffer = 64 << 10

// Close detaches the reader; the download goes on for others and the cache.
func (r *Reader) Close() error {
	if !r.closed {
		r.closed = true
		r.dl.release()
	}
	return nil
}
