package server

import (
	"io"
	"log/slog"
	"net/http"
	"time"
)

// respWriter records what a handler sent. It unwraps to the writer it
// wraps, so http.NewResponseController reaches the real one (flushes,
// write deadlines), and it offers ReadFrom only by asking that writer:
// HTTP/2's has none, and an unchecked assertion there resets the stream.
type respWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *respWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *respWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// ReadFrom keeps sendfile available through the wrapper where the writer
// underneath has it (HTTP/1); elsewhere it is a plain copy.
func (w *respWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(struct{ io.Writer }{w.ResponseWriter}, r)
	}
	w.n += n
	return n, err
}

func (w *respWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// logRequests logs one debug line per request: paths and statuses only,
// never headers, so credentials a client sends (dockerd forwards the
// user's Docker Hub login) stay out of logs.
func logRequests(log *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !log.Enabled(r.Context(), slog.LevelDebug) {
				next.ServeHTTP(w, r)
				return
			}
			start := time.Now()
			rw := &respWriter{ResponseWriter: w}
			defer func() {
				status := rw.status
				if status == 0 {
					status = http.StatusOK
				}
				log.Debug("request", "method", r.Method, "path", r.URL.Path, "query", r.URL.RawQuery, "status", status,
					"bytes", rw.n, "result", w.Header().Get("X-Regcache"), "duration", time.Since(start))
			}()
			next.ServeHTTP(rw, r)
		})
	}
}

// noSniff tells browsers to take every response's Content-Type as given:
// content from upstreams is never rendered as anything else.
func noSniff(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		next.ServeHTTP(w, r)
	})
}

// sendWriter bounds the time between two successful writes to a client,
// as nginx's send_timeout does: a client that stops reading is cut off,
// and the handler (and whatever buffer it holds) is released. Writes are
// split so the bound applies to pieces, not to a whole chunk.
type sendWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

// sendPiece is the most written under one deadline: the size of the copy
// buffers and of the download's memory chunks, so each is one write. A
// client must accept that much per send_timeout (17 KiB/s at the default
// 60 s). Quarter-size pieces cost a single stream a third more CPU per GiB
// (workload 1: 0.42-0.45 against 0.33 s/GiB, BENCHMARKS.md).
const sendPiece = 1 << 20

func newSendWriter(w http.ResponseWriter, timeout time.Duration) *sendWriter {
	return &sendWriter{w: w, rc: http.NewResponseController(w), timeout: timeout}
}

func (s *sendWriter) Write(p []byte) (int, error) {
	var total int
	for len(p) > 0 {
		piece := p[:min(len(p), sendPiece)]
		if s.timeout > 0 {
			// A writer without deadlines (a test recorder) just writes.
			_ = s.rc.SetWriteDeadline(time.Now().Add(s.timeout))
		}
		n, err := s.w.Write(piece)
		total += n
		if err != nil {
			return total, err
		}
		p = p[n:]
	}
	return total, nil
}

// done clears the deadline for what follows on the connection.
func (s *sendWriter) done() {
	if s.timeout > 0 {
		_ = s.rc.SetWriteDeadline(time.Time{})
	}
}
