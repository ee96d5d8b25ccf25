package store

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// pieceRecorder records the size of every write and can fail or write short
// at a given call.
type pieceRecorder struct {
	buf    bytes.Buffer
	sizes  []int
	failAt int // 1-based call that fails; 0 never
	short  bool
}

func (w *pieceRecorder) Write(p []byte) (int, error) {
	w.sizes = append(w.sizes, len(p))
	if len(w.sizes) == w.failAt {
		if w.short {
			w.buf.Write(p[:len(p)/2])
			return len(p) / 2, nil
		}
		return 0, errors.New("disk full")
	}
	return w.buf.Write(p)
}

func TestWritePieces(t *testing.T) {
	const k = 1 << 10
	for _, tc := range []struct {
		name      string
		size      int
		failAt    int
		short     bool
		wantSizes []int
		wantN     int
		wantErr   string
	}{
		{name: "empty", size: 0, wantSizes: nil},
		{name: "small", size: 1, wantSizes: []int{1}, wantN: 1},
		{name: "one piece", size: 256 * k, wantSizes: []int{256 * k}, wantN: 256 * k},
		{name: "one byte over", size: 256*k + 1, wantSizes: []int{256 * k, 1}, wantN: 256*k + 1},
		{name: "a MiB and a bit", size: 1024*k + 3, wantSizes: []int{256 * k, 256 * k, 256 * k, 256 * k, 3}, wantN: 1024*k + 3},
		{name: "error stops", size: 768 * k, failAt: 2, wantSizes: []int{256 * k, 256 * k}, wantN: 256 * k, wantErr: "disk full"},
		{name: "short write stops", size: 768 * k, failAt: 2, short: true, wantSizes: []int{256 * k, 256 * k}, wantN: 384 * k, wantErr: io.ErrShortWrite.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := bytes.Repeat([]byte{7, 1, 3}, tc.size/3+1)[:tc.size]
			w := &pieceRecorder{failAt: tc.failAt, short: tc.short}
			n, err := WritePieces(w, p)
			if n != tc.wantN || (err == nil) != (tc.wantErr == "") || (err != nil && err.Error() != tc.wantErr) {
				t.Fatalf("WritePieces = %d, %v; want %d, %q", n, err, tc.wantN, tc.wantErr)
			}
			if len(w.sizes) != len(tc.wantSizes) {
				t.Fatalf("writes %v, want %v", w.sizes, tc.wantSizes)
			}
			for i := range w.sizes {
				if w.sizes[i] != tc.wantSizes[i] {
					t.Fatalf("writes %v, want %v", w.sizes, tc.wantSizes)
				}
			}
			if !bytes.Equal(w.buf.Bytes(), p[:n]) {
				t.Fatal("written bytes differ from the first n of p")
			}
		})
	}
}
