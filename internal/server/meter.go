package server

import (
	"io"
	"net/http"
	"strconv"

	"github.com/regcache/regcache/internal/pull"
)

// meter counts a response in the metrics before its bytes go out: a client
// that has received every byte must find the request and its bytes in
// /metrics (the end of a large body reaches it while the handler is still
// in its last Write). The request is counted when the header is sent, and
// its bytes by the Content-Length announced then, or by each write when
// none is. Like respWriter it unwraps, and offers ReadFrom only by asking
// the writer underneath.
type meter struct {
	http.ResponseWriter
	s *Server
	// Only what the labels need, not the Route: a manifest hit allocates
	// a meter, and a Route would make it three times the size.
	registry string
	kind     Kind
	method   string
	res      pull.Result
	counted  bool
	perWrite bool
}

func (s *Server) meter(w http.ResponseWriter, r *http.Request, rt Route, res pull.Result) *meter {
	return &meter{ResponseWriter: w, s: s, registry: rt.Repo.Registry(), kind: rt.Kind, method: r.Method, res: res}
}

func (m *meter) WriteHeader(code int) {
	if !m.counted {
		m.counted = true
		m.s.metrics.Requests.WithLabelValues(m.registry, string(m.kind), resultLabel(m.res)).Inc()
		if m.kind == KindManifest && m.method == http.MethodGet && code == http.StatusOK {
			// What the origin would have counted as a pull.
			m.s.metrics.ClientManifestGETs.WithLabelValues(m.registry).Inc()
		}
		if m.method != http.MethodHead && (code == http.StatusOK || code == http.StatusPartialContent) {
			if n, err := strconv.ParseInt(m.Header().Get("Content-Length"), 10, 64); err == nil {
				m.served(n)
			} else {
				m.perWrite = true
			}
		}
	}
	m.ResponseWriter.WriteHeader(code)
}

func (m *meter) served(n int64) {
	if n > 0 {
		m.s.metrics.BytesServed.WithLabelValues(m.registry, string(m.kind)).Add(float64(n))
	}
}

func (m *meter) Write(p []byte) (int, error) {
	if !m.counted {
		m.WriteHeader(http.StatusOK)
	}
	if m.perWrite {
		m.served(int64(len(p)))
	}
	return m.ResponseWriter.Write(p)
}

func (m *meter) ReadFrom(r io.Reader) (int64, error) {
	if !m.counted {
		m.WriteHeader(http.StatusOK)
	}
	if rf, ok := m.ResponseWriter.(io.ReaderFrom); ok && !m.perWrite {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{m}, r)
}

func (m *meter) Unwrap() http.ResponseWriter { return m.ResponseWriter }

// done counts a response that sent no header at all (none is possible
// once a handler returns, but counting twice is not).
func (m *meter) done() {
	if !m.counted {
		m.WriteHeader(http.StatusOK)
	}
}
