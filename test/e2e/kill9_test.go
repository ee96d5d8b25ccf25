package e2e

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/regcache/regcache/internal/testhub"
)

// TestKill9MidBlobDownload is acceptance item 6: regcache is killed with
// SIGKILL while it is streaming a blob from a slow upstream, and restarted
// on the same data dir. Nothing partial may ever be served or stored, and
// the next pull completes with verified content.
func TestKill9MidBlobDownload(t *testing.T) {
	const (
		layerSize = 16 << 20
		throttle  = 4 << 20 // bytes/s: the cold download takes ~4s
		killAfter = 2 << 20 // kill once this much is in flight
	)
	w := newWorld(t)
	reg := testhub.StartRegistry(t)
	img := reg.PushImage(t, "library/postgres", "16", testhub.ImageOptions{LayerSize: layerSize, Uncompressed: true})
	secret := randomSecret(t)
	hub := testhub.NewHub(t, reg, testhub.Options{Users: map[string]string{"ci-user": secret}})
	rc := startRegcache(t, w, regcacheConfig{upstreamURL: hub.URL, user: "ci-user", password: secret, passwordFile: true})

	var layer digest.Digest
	for _, l := range img.Layers {
		layer = l // the only layer: the big one
	}
	blobURL := func() string { return rc.url() + "/v2/docker.io/" + img.Repo + "/blobs/" + layer.String() }
	hub.SetThrottle(throttle)

	// A client starts the cold download through regcache.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var received atomic.Int64
	clientDone := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, blobURL(), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			clientDone <- err
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			clientDone <- fmt.Errorf("GET blob: %s", resp.Status)
			return
		}
		_, err = io.Copy(countingWriter{&received}, resp.Body)
		clientDone <- err
	}()

	// Mid-way means: regcache has streamed part of it to the client, or
	// (if it does not stream) has part of it in its tmp area.
	err := waitFor(ctx, 30*time.Second, rc.proc, func() error {
		select {
		case err := <-clientDone:
			return fmt.Errorf("download ended before the kill (err=%v, %d bytes)", err, received.Load())
		default:
		}
		if n, m := received.Load(), tmpBytes(rc.dataDir); n < killAfter && m < killAfter {
			return fmt.Errorf("only %d bytes at the client, %d in tmp", n, m)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("waiting for the download to be mid-way: %v", err)
	}
	if done := completedTransfers(hub, layer); done != 0 {
		t.Fatalf("upstream already finished the blob %d times; the kill would not be mid-download", done)
	}
	t.Logf("kill -9 with %d of %d bytes at the client, %d in regcache's tmp", received.Load(), layerSize, tmpBytes(rc.dataDir))
	rc.kill9()

	// The cut-off client must see an error, never a clean end of a short body.
	select {
	case err := <-clientDone:
		if err == nil {
			t.Errorf("client read %d of %d bytes and then a clean EOF: a partial blob looked complete", received.Load(), layerSize)
		}
	case <-time.After(10 * time.Second):
		t.Error("client still reading 10s after regcache was killed")
	}
	cancel()
	if stored := checkStoreBlobs(t, rc.dataDir); stored[layer.String()] != 0 {
		t.Errorf("the killed download's blob %s is in the store", layer)
	}

	rc.start(t)
	checkStoreBlobs(t, rc.dataDir)

	// The next pull, still from the slow upstream, completes and every byte
	// is verified: crane checks each blob against its digest.
	dest := w.mkdir("crane-after-restart")
	crane := requireBinary(t, "crane", "crane")
	w.mustRun(t, 2*time.Minute, w.baseEnv(), crane, "pull", "--insecure", "--format", "oci",
		rc.host()+"/docker.io/"+img.Repo+":"+img.Tag, dest)
	if got := ociLayoutDigest(t, dest); got != img.Digest.String() {
		t.Errorf("pull after restart: digest %s, upstream %s", got, img.Digest)
	}

	// Served from the cache now: the full body, verified independently.
	hub.SetThrottle(0)
	if err := fetchAndVerify(t.Context(), blobURL(), layer, layerSize); err != nil {
		t.Error(err)
	}
	// The cache must end up holding the blob, correctly.
	err = waitFor(t.Context(), 10*time.Second, rc.proc, func() error {
		if checkStoreBlobs(t, rc.dataDir)[layer.String()] != layerSize {
			return errors.New("blob not in the store")
		}
		return nil
	})
	if err != nil {
		t.Errorf("after a complete pull: %v", err)
	}
}

type countingWriter struct{ n *atomic.Int64 }

func (c countingWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	return len(p), nil
}

// completedTransfers counts finished upstream transfers of d.
func completedTransfers(hub *testhub.Hub, d digest.Digest) int {
	n := 0
	for _, tr := range hub.Transfers() {
		if tr.Digest == d {
			n++
		}
	}
	return n
}

// fetchAndVerify GETs a blob and checks its length and digest.
func fetchAndVerify(ctx context.Context, url string, d digest.Digest, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return fmt.Errorf("GET %s: after %d bytes: %w", url, n, err)
	}
	if got := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)); n != size || got != d {
		return fmt.Errorf("GET %s: served %d bytes with digest %s, want %d bytes %s", url, n, got, size, d)
	}
	return nil
}
