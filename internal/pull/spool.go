package pull

import (
	"io"
	"os"

	"github.com/regcache/regcache/internal/store"
)

// readBackWriter is a store writer that clients of an in-flight download
// can read from.
type readBackWriter interface {
	store.Writer
	io.ReaderAt
}

// readBack returns w itself when it keeps its bytes in a local file (FS);
// otherwise (S3, which streams parts to the bucket) it tees the bytes into a
// temporary file that lives until the writer is closed.
//
// TODO(lead): a stopgap so the S3 backend works with today's pull; the
// reshaped core spools in-flight bytes itself.
func readBack(w store.Writer) (readBackWriter, error) {
	if rw, ok := w.(readBackWriter); ok {
		return rw, nil
	}
	f, err := os.CreateTemp("", "regcache-spool-*")
	if err != nil {
		return nil, err
	}
	return &spooled{Writer: w, spool: f}, nil
}

type spooled struct {
	store.Writer
	spool *os.File
}

// Write goes to the spool first: a reader is told about bytes only after
// Write returns, and then finds them there.
func (s *spooled) Write(p []byte) (int, error) {
	if n, err := s.spool.Write(p); err != nil {
		return n, err
	}
	return s.Writer.Write(p)
}

func (s *spooled) ReadAt(p []byte, off int64) (int, error) { return s.spool.ReadAt(p, off) }

func (s *spooled) Close() error {
	err := s.Writer.Close()
	s.spool.Close()
	os.Remove(s.spool.Name())
	return err
}
