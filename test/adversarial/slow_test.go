package adversarial

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

// Attacks by an upstream that sends too slowly or too much (issue 13,
// items 8 and 9): a blob dripped a byte at a time, answers whose headers
// never come, and blob bodies that never end. Each must cost a client a
// bounded wait and regcache a bounded amount of disk.

// drip sends the headers of a blob of size bytes, then one byte every
// interval until the client goes away.
func drip(size int, interval time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(size))
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		rc.Flush()
		for i := 0; i < size; i++ {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(interval):
			}
			if _, err := w.Write([]byte{0}); err != nil {
				return
			}
			rc.Flush()
		}
	}
}

// stall never answers: no status, no headers, until the client goes away.
func stall(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }

func TestSlowUpstreamsCostBoundedTime(t *testing.T) {
	t.Parallel()
	h := startHostile(t)
	dripped := h.Backend.PushImage(t, "team/drip", "v1", testhub.ImageOptions{LayerSize: 2 << 20, Uncompressed: true})
	stalled := h.Backend.PushImage(t, "team/stall", "v1", testhub.ImageOptions{})
	h.Backend.PushImage(t, "team/stall", "v2", testhub.ImageOptions{})
	h.Backend.PushImage(t, "team/healthy", "v1", testhub.ImageOptions{Layers: 2})
	h.on("GET", "/v2/team/drip/blobs/"+dripped.Layers[0].String(), drip(int(dripped.Size), 2*time.Second))
	h.on("GET", "/v2/team/stall/blobs/"+stalled.Layers[0].String(), stall)
	h.on("HEAD", "/v2/team/stall/manifests/v2", stall)
	// min_transfer_rate is averaged over 30 s: the drip is cut after one
	// window. Headers must come within upstream_header_timeout.
	rc := startRegcache(t, registryConfig(h.URL, "")+"min_transfer_rate: 1MiB\nupstream_header_timeout: 2s\n")
	base := rc.URL + "/v2/hostile.example/team/"
	accept := http.Header{"Accept": {acceptManifests}}

	var wg sync.WaitGroup
	wg.Go(func() {
		// The headers come at once, so that the client knows it is being
		// answered; the body is cut after one rate window.
		var resp *http.Response
		var err error
		within(t, "the dripped blob's headers", 10*time.Second, func() {
			resp, err = rc.Client.Get(base + "drip/blobs/" + dripped.Layers[0].String())
		})
		if err != nil {
			t.Errorf("the dripped blob: no headers: %v", err)
			return
		}
		defer resp.Body.Close()
		var got []byte
		took := within(t, "the dripped blob's body", 50*time.Second, func() { got, err = io.ReadAll(resp.Body) })
		if resp.StatusCode != 200 || err == nil {
			t.Errorf("the dripped blob: %d, %d bytes, %v; want a 200 cut short", resp.StatusCode, len(got), err)
		}
		t.Logf("the dripped blob: %d bytes, %v, after %v", len(got), err, took.Round(time.Millisecond))
	})
	wg.Go(func() {
		within(t, "the blob whose headers never come", 15*time.Second, func() {
			resp, body, err := send(rc.Client, "GET", base+"stall/blobs/"+stalled.Layers[0].String(), nil, nil)
			if err != nil {
				t.Errorf("the stalled blob: %v", err)
				return
			}
			ociErrorBody(t, "the stalled blob", resp, body, http.StatusServiceUnavailable)
		})
	})
	wg.Go(func() {
		within(t, "the tag whose HEAD never answers", 15*time.Second, func() {
			resp, body, err := send(rc.Client, "GET", base+"stall/manifests/v2", accept, nil)
			if err != nil {
				t.Errorf("the stalled tag: %v", err)
				return
			}
			ociErrorBody(t, "the stalled tag", resp, body, http.StatusServiceUnavailable)
		})
	})
	// Meanwhile, other content is served as usual.
	time.Sleep(time.Second)
	within(t, "a healthy pull during the attacks", 15*time.Second, func() {
		if err := pull(rc.Client, rc.URL, "hostile.example/team/healthy", "v1", accept); err != nil {
			t.Errorf("a healthy pull during the attacks: %v", err)
		}
	})
	wg.Wait()
	for _, f := range storedFiles(t, rc.Data) {
		if strings.HasPrefix(f, "tmp/") || strings.HasSuffix(f, dripped.Layers[0].Encoded()) || strings.HasSuffix(f, stalled.Layers[0].Encoded()) {
			t.Errorf("left in the store: %s", f)
		}
	}
}

// endless answers with a body that never ends (chunked, no length), or
// claims a length, and counts what it sent; it stops when the client
// goes away.
type endless struct {
	length string // Content-Length to announce, or ""
	sent   atomic.Int64
	ended  chan struct{}
	once   sync.Once
}

func newEndless(length string) *endless { return &endless{length: length, ended: make(chan struct{})} }

var noise = func() []byte { b := make([]byte, 64<<10); rand.Read(b); return b }()

func (e *endless) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer e.once.Do(func() { close(e.ended) })
	w.Header().Set("Content-Type", "application/octet-stream")
	if e.length != "" {
		w.Header().Set("Content-Length", e.length)
	}
	w.WriteHeader(http.StatusOK)
	for r.Context().Err() == nil {
		n, err := w.Write(noise)
		e.sent.Add(int64(n))
		if err != nil {
			return
		}
	}
}

// dirBytes is the size of the files under dir.
func dirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// A blob body that never ends is cut at the size the manifest states, or
// at max_blob_size when nothing states one; one that announces more than
// either is refused before its body. The store never holds more than the
// cap, nothing is committed, and the upstream connection is closed.
func TestEndlessBlobsAreCut(t *testing.T) {
	t.Parallel()
	h := startHostile(t)
	known := h.Backend.PushImage(t, "team/known", "v1", testhub.ImageOptions{LayerSize: 3 << 20, Uncompressed: true})
	unknown := h.Backend.PushImage(t, "team/unknown", "v1", testhub.ImageOptions{})
	announced := h.Backend.PushImage(t, "team/announced", "v1", testhub.ImageOptions{})
	wrong := h.Backend.PushImage(t, "team/wrong", "v1", testhub.ImageOptions{LayerSize: 3 << 20, Uncompressed: true})
	const maxBlob = 8 << 20
	rc := startRegcache(t, namesFor(h.URL, 4, "")+"max_blob_size: 8MiB\n")
	accept := http.Header{"Accept": {acceptManifests}}

	cases := []struct {
		name     string
		repo     string
		manifest bool // the client asks for the manifest first, so its sizes are known
		blob     string
		body     *endless
		limit    int64 // the most the store may hold, and the client receive
		status   int   // an error before the body, or 200 and a cut
	}{
		{"chunked, size from the manifest", "known", true, known.Layers[0].String(), newEndless(""), known.Size, 200},
		{"chunked, no size known", "unknown", false, unknown.Layers[0].String(), newEndless(""), maxBlob, 200},
		{"announcing more than max_blob_size", "announced", false, announced.Layers[0].String(), newEndless(strconv.Itoa(maxBlob + 1)), 0, http.StatusBadGateway},
		{"announcing another size than the manifest's", "wrong", true, wrong.Layers[0].String(), newEndless(strconv.Itoa(int(wrong.Size) + 1)), 0, http.StatusBadGateway},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base := fmt.Sprintf("%s/v2/r%d.example/team/", rc.URL, i)
			h.on("GET", "/v2/team/"+tc.repo+"/blobs/"+tc.blob, tc.body.ServeHTTP)
			if tc.manifest {
				if resp, body := call(t, rc.Client, "GET", base+tc.repo+"/manifests/v1", accept); resp.StatusCode != 200 {
					t.Fatalf("manifest: %d %s", resp.StatusCode, body)
				}
			}
			ctx, stop := context.WithCancel(context.Background())
			var most atomic.Int64
			sampled := make(chan struct{})
			go func() {
				defer close(sampled)
				for ctx.Err() == nil {
					if n := dirBytes(rc.Data + "/tmp"); n > most.Load() {
						most.Store(n)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}()
			var resp *http.Response
			var got []byte
			var err error
			within(t, "the answer", 30*time.Second, func() {
				resp, got, err = send(rc.Client, "GET", base+tc.repo+"/blobs/"+tc.blob, nil, nil)
			})
			stop()
			<-sampled
			switch {
			case resp == nil:
				t.Errorf("no answer: %v", err)
			case tc.status != 200:
				ociErrorBody(t, tc.name, resp, got, tc.status)
			case resp.StatusCode != 200 || err == nil:
				t.Errorf("want a 200 cut short, got %d, %d bytes, %v", resp.StatusCode, len(got), err)
			case int64(len(got)) > tc.limit:
				t.Errorf("the client got %d bytes, the cap is %d", len(got), tc.limit)
			}
			if most.Load() > tc.limit {
				t.Errorf("the store held %d bytes of the download, the cap is %d", most.Load(), tc.limit)
			}
			select {
			case <-tc.body.ended:
			case <-time.After(15 * time.Second):
				t.Errorf("regcache kept reading the endless body: %d bytes sent so far", tc.body.sent.Load())
			}
			for _, f := range storedFiles(t, rc.Data) {
				if strings.Contains(f, strings.TrimPrefix(tc.blob, "sha256:")) || strings.HasPrefix(f, "tmp/") {
					t.Errorf("left in the store: %s", f)
				}
			}
			t.Logf("%d bytes to the client (%v); the upstream sent %d; the store held %d at most", len(got), err, tc.body.sent.Load(), most.Load())
		})
	}
}
