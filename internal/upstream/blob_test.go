package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regcache/regcache/internal/metrics"
	"github.com/regcache/regcache/internal/regerr"
)

// readToEnd reads b until an error, as io.Copy would, then twice more (a
// verifying reader must not turn a failure into io.EOF on a later Read),
// and closes it.
func readToEnd(b *Blob) (data []byte, sawEOF bool, err error) {
	defer b.Close()
	buf := make([]byte, 7)
	for err == nil {
		var n int
		n, err = b.Read(buf)
		data = append(data, buf[:n]...)
	}
	if err == io.EOF {
		return data, true, nil
	}
	for range 2 {
		if _, again := b.Read(buf); errors.Is(again, io.EOF) {
			return data, true, err
		}
	}
	return data, false, err
}

// TestBlobSettlesItself: a mirror's blob settles the mirror's breaker and
// its memory of bad content when the body ends, without the caller's help;
// a body closed before its end says nothing.
func TestBlobSettlesItself(t *testing.T) {
	layer := []byte("real layer")
	d := digest.FromBytes(layer)
	for _, tc := range []struct {
		name         string
		serve        func(http.ResponseWriter)
		readAll      bool
		kind         regerr.Kind
		wantFailures int
		wantBad      int
	}{
		{"matching bytes", func(w http.ResponseWriter) { w.Write(layer) }, true, 0, 0, 0},
		{"wrong bytes", func(w http.ResponseWriter) { w.Write([]byte("fake layer")) }, true, regerr.BadContent, 1, 1},
		{"cut short", func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", fmt.Sprint(len(layer)))
			w.Write(layer[:3])
		}, true, regerr.Unavailable, 1, 0},
		{"closed before the end", func(w http.ResponseWriter) { w.Write([]byte("fake layer")) }, false, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mirror := newFakeRegistry(t, "anon")
			mirror.hook = func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.Contains(r.URL.Path, "/blobs/") {
					return false
				}
				tc.serve(w)
				return true
			}
			origin := newFakeRegistry(t, "anon")
			origin.putBlob(layer)
			m := metrics.New()
			r := newRegistryT(t, Config{URL: origin.srv.URL, Metrics: m, Mirrors: []MirrorConfig{{Name: "m", URL: mirror.srv.URL}}}, newFakeClock())

			b, err := r.Blob(context.Background(), repo(t, "library/node"), d, int64(len(layer)))
			if err != nil {
				t.Fatal(err)
			}
			if b.Source != "m" {
				t.Fatalf("Source = %q, want the mirror", b.Source)
			}
			if tc.readAll {
				_, sawEOF, err := readToEnd(b)
				if tc.kind == 0 && (err != nil || !sawEOF) || tc.kind != 0 && (sawEOF || !regerr.Is(err, tc.kind)) {
					t.Errorf("EOF %v, err %v; want kind %s", sawEOF, err, tc.kind)
				}
			} else {
				if _, err := b.Read(make([]byte, 1)); err != nil {
					t.Fatal(err)
				}
				b.Close()
			}
			if st := r.Sources()[0]; st.Failures != tc.wantFailures || st.BadDigests != tc.wantBad {
				t.Errorf("mirror status %+v, want %d failures and %d bad digests", st, tc.wantFailures, tc.wantBad)
			}
			if got := testutil.ToFloat64(m.DigestMismatches.WithLabelValues("docker.io", "m")); got != float64(tc.wantBad) {
				t.Errorf("digest mismatches = %v, want %d", got, tc.wantBad)
			}
		})
	}
}
