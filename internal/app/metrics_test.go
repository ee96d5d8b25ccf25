package app

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/regcache/regcache/internal/testhub"
)

// TestResponsesCountedBeforeTheirBodyEnds: a client that has received a
// whole response finds it in /metrics. The end of a large body reaches the
// client while the handler is still in its last Write, so the request and
// its bytes must be counted before they are written. Every Write of each
// body checks what the metrics already say.
func TestResponsesCountedBeforeTheirBodyEnds(t *testing.T) {
	s := newStack(t, stackOptions{})
	img := s.backend.PushImage(t, "library/meter", "1", testhub.ImageOptions{LayerSize: 3 << 20, Uncompressed: true})
	layer := "/v2/library/meter/blobs/" + img.Layers[0].String()
	// In order: the first blob GET streams from the download, the later
	// ones are served from the store.
	tests := []struct {
		name, path string
		hdr        map[string]string
		kind       string
		result     string // X-Regcache
	}{
		{"manifest", "/v2/library/meter/manifests/1", map[string]string{"Accept": acceptAll}, "manifest", "miss"},
		{"blob streamed from its download", layer, nil, "blob", "miss"},
		{"blob from the store", layer, nil, "blob", "hit"},
		{"range of a blob from the store", layer, map[string]string{"Range": "bytes=1000-"}, "blob", "hit"},
		{"tags list", "/v2/library/meter/tags/list", nil, "tags", "miss"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.app.Cache.Drain(context.Background()); err != nil {
				t.Fatal(err)
			}
			reqs0, bytes0 := s.counted(t, tc.kind)
			w := &checkingWriter{ResponseWriter: httptest.NewRecorder()}
			w.check = func(n int) {
				if t.Failed() {
					return // once is enough
				}
				reqs, bytes := s.counted(t, tc.kind)
				if reqs != reqs0+1 {
					t.Errorf("writing the body with requests_total{kind=%q} at %v, want %v", tc.kind, reqs, reqs0+1)
				}
				if sent := w.written + int64(n); bytes-bytes0 < float64(sent) {
					t.Errorf("writing bytes up to %d with served_bytes_total{kind=%q} up by %v", sent, tc.kind, bytes-bytes0)
				}
			}
			req := httptest.NewRequest(http.MethodGet, tc.path, nil)
			for k, v := range tc.hdr {
				req.Header.Set(k, v)
			}
			s.app.Handler.ServeHTTP(w, req)
			if got := w.Header().Get("X-Regcache"); got != tc.result {
				t.Errorf("X-Regcache %q, want %q (the case is not the one intended)", got, tc.result)
			}
			if w.written == 0 {
				t.Fatalf("no body written (status %d)", w.ResponseWriter.(*httptest.ResponseRecorder).Code)
			}
		})
	}
}

// counted sums requests_total and served_bytes_total for kind.
func (s *stack) counted(t *testing.T, kind string) (reqs, bytes float64) {
	t.Helper()
	families, err := s.app.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			match := false
			for _, l := range m.GetLabel() {
				match = match || (l.GetName() == "kind" && l.GetValue() == kind)
			}
			if !match {
				continue
			}
			switch f.GetName() {
			case "regcache_requests_total":
				reqs += m.GetCounter().GetValue()
			case "regcache_served_bytes_total":
				bytes += m.GetCounter().GetValue()
			}
		}
	}
	return reqs, bytes
}

// checkingWriter calls check before each Write of the body.
type checkingWriter struct {
	http.ResponseWriter
	check   func(n int)
	written int64
}

func (w *checkingWriter) Write(p []byte) (int, error) {
	w.check(len(p))
	n, err := w.ResponseWriter.Write(p)
	w.written += int64(n)
	return n, err
}

// ReadFrom sends what http.ServeContent copies through Write, so that it is
// checked too.
func (w *checkingWriter) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{w}, r)
}
