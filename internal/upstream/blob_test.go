package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regcache/regcache/internal/metrics"
	"github.com/regcache/regcache/internal/regerr"
)

// TestBlobVerifier: a Blob returns io.EOF only for the bytes asked for,
// whole; every other ending is a classified error, never io.EOF, and
// counts against the source.
func TestBlobVerifier(t *testing.T) {
	layer := []byte("the layer's real bytes")
	d := digest.FromBytes(layer)
	size := int64(len(layer))
	const maxBlob = 64 << 10
	// chunked writes body without a Content-Length.
	chunked := func(body []byte) func(http.ResponseWriter, *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Write(body)
			w.(http.Flusher).Flush()
		}
	}
	tests := []struct {
		name   string
		serve  func(http.ResponseWriter, *http.Request)
		size   int64 // as the caller states it
		limits Limits
		kind   regerr.Kind // 0: the body verifies
		text   string      // in Error()
		atOpen bool        // refused before any body is read
	}{
		{name: "right bytes", serve: chunked(layer), size: size},
		{name: "right bytes, size unknown", serve: chunked(layer), size: -1},
		{name: "wrong bytes", serve: chunked(bytes.ToUpper(layer)), size: size, kind: regerr.BadContent, text: "hashes to"},
		{name: "wrong bytes, size unknown", serve: chunked(bytes.ToUpper(layer)), size: -1, kind: regerr.BadContent, text: "hashes to"},
		{name: "longer than the stated size", serve: chunked(append(layer, '!')), size: size, kind: regerr.TooLarge},
		{name: "longer than MaxBlobSize", serve: chunked(bytes.Repeat([]byte("x"), maxBlob+1)), size: -1,
			limits: Limits{MaxBlobSize: maxBlob}, kind: regerr.TooLarge},
		{name: "announced over MaxBlobSize", size: -1, limits: Limits{MaxBlobSize: maxBlob}, kind: regerr.TooLarge, atOpen: true,
			serve: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", fmt.Sprint(maxBlob+1))
				w.Write(bytes.Repeat([]byte("x"), maxBlob+1))
			}},
		{name: "announcing another size", size: size, kind: regerr.BadContent, atOpen: true,
			serve: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", fmt.Sprint(size+1))
				w.Write(append(layer, '!'))
			}},
		{name: "short", serve: chunked(layer[:5]), size: size, kind: regerr.BadContent, text: "ended after 5 of"},
		{name: "cut off before its Content-Length", size: size, kind: regerr.Unavailable,
			serve: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", fmt.Sprint(size))
				w.Write(layer[:5])
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeRegistry(t, "anon")
			f.hook = func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.Contains(r.URL.Path, "/blobs/") {
					return false
				}
				tt.serve(w, r)
				return true
			}
			r := newRegistryT(t, Config{URL: f.srv.URL, Limits: tt.limits}, newFakeClock())
			b, err := r.Blob(context.Background(), repo(t, "library/alpine"), d, tt.size)
			if tt.atOpen {
				if !regerr.Is(err, tt.kind) || b != nil {
					t.Fatalf("Blob = %v, %v; want %s before the body", b, err, tt.kind)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				got, sawEOF, err := readToEnd(b)
				switch {
				case tt.kind == 0:
					if err != nil || !sawEOF || !bytes.Equal(got, layer) || b.Size != tt.size {
						t.Fatalf("got %q (size %d), EOF %v, err %v; want the layer", got, b.Size, sawEOF, err)
					}
				case sawEOF:
					t.Fatalf("io.EOF after %q; want %s and never EOF", got, tt.kind)
				case !regerr.Is(err, tt.kind) || !strings.Contains(err.Error(), tt.text):
					t.Fatalf("read error %v; want %s mentioning %q", err, tt.kind, tt.text)
				}
				if tt.size >= 0 && int64(len(got)) > tt.size+1 || int64(len(got)) > maxBlob+1 {
					t.Errorf("read %d bytes; a blob is cut one byte past its limit", len(got))
				}
			}
			origin := r.Sources()[len(r.Sources())-1]
			if want := map[bool]int{true: 0, false: 1}[tt.kind == 0]; origin.Failures != want {
				t.Errorf("origin failures = %d, want %d", origin.Failures, want)
			}
		})
	}
}

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

// TestBlobEndlessBodyCut: an upstream that never ends a chunked body is
// cut at MaxBlobSize; nothing reads it without bound.
func TestBlobEndlessBodyCut(t *testing.T) {
	const maxBlob = 256 << 10
	f := newFakeRegistry(t, "anon")
	f.hook = func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		chunk := bytes.Repeat([]byte("y"), 32<<10)
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				break
			}
		}
		return true
	}
	r := newRegistryT(t, Config{URL: f.srv.URL, Limits: Limits{MaxBlobSize: maxBlob}}, newFakeClock())
	b, err := r.Blob(context.Background(), repo(t, "library/alpine"), digest.FromString("any"), -1)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, b)
	b.Close()
	if !regerr.Is(err, regerr.TooLarge) || n > maxBlob+1 {
		t.Errorf("read %d bytes, err %v; want TooLarge at %d", n, err, maxBlob)
	}
}

// TestBlobTooSlow: a source that drips bytes is cut once a whole window
// passes below Limits.MinRate. The outcome is asserted, not the time.
func TestBlobTooSlow(t *testing.T) {
	layer := bytes.Repeat([]byte("z"), 200)
	d := digest.FromBytes(layer)
	f := newFakeRegistry(t, "anon")
	f.hook = func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(layer)))
		for _, c := range layer {
			w.Write([]byte{c})
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return true
			case <-time.After(100 * time.Millisecond):
			}
		}
		return true
	}
	r := newRegistryT(t, Config{URL: f.srv.URL, Limits: Limits{MinRate: 1 << 20, RateWindow: 200 * time.Millisecond}}, newFakeClock())
	b, err := r.Blob(context.Background(), repo(t, "library/alpine"), d, int64(len(layer)))
	if err != nil {
		t.Fatal(err)
	}
	got, sawEOF, err := readToEnd(b)
	if sawEOF || !regerr.Is(err, regerr.Unavailable) || !strings.Contains(err.Error(), "minimum rate") {
		t.Fatalf("after %d bytes: EOF %v, err %v; want Unavailable for the minimum rate", len(got), sawEOF, err)
	}
	if st := r.Sources()[0]; st.Failures != 1 {
		t.Errorf("a source too slow is a failure: %+v", st)
	}
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

// TestBlobClosedEarlyIsNeutral: closing a body before its end leaves the
// breaker as it was. It neither adds a failure nor clears the ones before,
// and a half-open probe closed early frees the probe's slot for the next
// request instead of holding the source shut.
func TestBlobClosedEarlyIsNeutral(t *testing.T) {
	layer := []byte("real layer")
	d := digest.FromBytes(layer)
	mirror := newFakeRegistry(t, "anon")
	mirror.putBlob(layer)
	failing := true
	mirror.hook = func(w http.ResponseWriter, r *http.Request) bool {
		mirror.mu.Lock()
		defer mirror.mu.Unlock()
		if failing && strings.Contains(r.URL.Path, "/blobs/") {
			w.WriteHeader(http.StatusBadGateway)
			return true
		}
		return false
	}
	setFailing := func(v bool) {
		mirror.mu.Lock()
		failing = v
		mirror.mu.Unlock()
	}
	origin := newFakeRegistry(t, "anon")
	origin.putBlob(layer)
	clock := newFakeClock()
	r := newRegistryT(t, Config{URL: origin.srv.URL, Mirrors: []MirrorConfig{{Name: "m", URL: mirror.srv.URL}}}, clock)
	ctx := context.Background()
	node := repo(t, "library/node")
	open := func() *Blob {
		t.Helper()
		b, err := r.Blob(ctx, node, d, int64(len(layer)))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	abandon := func(b *Blob) {
		t.Helper()
		if _, err := b.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}

	// Two failures, then a mirror body abandoned: still two.
	for range breakerThreshold - 1 {
		if _, err := readBlob(open()); err != nil {
			t.Fatal(err)
		}
	}
	setFailing(false)
	b := open()
	if b.Source != "m" {
		t.Fatalf("Source = %q, want the mirror", b.Source)
	}
	abandon(b)
	if st := r.Sources()[0]; st.State != BreakerClosed || st.Failures != breakerThreshold-1 {
		t.Errorf("after an early close: %+v, want closed with %d failures", st, breakerThreshold-1)
	}

	// Open the breaker, let the backoff pass: the probe is abandoned, and
	// the next request may probe again.
	setFailing(true)
	readBlob(open())
	if st := r.Sources()[0]; st.State != BreakerOpen {
		t.Fatalf("breaker %+v, want open", st)
	}
	setFailing(false)
	clock.Advance(breakerMaxBackoff)
	b = open()
	if b.Source != "m" {
		t.Fatalf("the probe went to %q, want the mirror", b.Source)
	}
	abandon(b)
	if st := r.Sources()[0]; st.State != BreakerHalfOpen {
		t.Errorf("after an abandoned probe: %+v, want still half-open", st)
	}
	b = open()
	if b.Source != "m" {
		t.Errorf("after an abandoned probe the mirror was not asked again (source %q)", b.Source)
	}
	if _, err := readBlob(b); err != nil {
		t.Fatal(err)
	}
	if st := r.Sources()[0]; st.State != BreakerClosed {
		t.Errorf("after a good probe: %+v, want closed", st)
	}
}
