package e2e

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/regcache/regcache/internal/testhub"
)

// Acceptance item 6: regcache is killed with SIGKILL while it streams a
// blob from a slow upstream, and restarted on the same data dir. Nothing
// partial may ever be served or stored, and the next pull completes with
// verified content.
const (
	kill9LayerSize = 16 << 20
	kill9Throttle  = 4 << 20 // bytes/s: a cold download takes ~4s
	kill9After     = 2 << 20 // kill once this much is in flight
)

// kill9Env is a credentialed hub with one big single-layer image, throttled,
// and a regcache in front of it that has not seen the image.
type kill9Env struct {
	w     *world
	img   testhub.Image
	layer digest.Digest
	hub   *testhub.Hub
	rc    *regcache
}

func newKill9Env(t *testing.T) *kill9Env {
	w := newWorld(t)
	reg := testhub.StartRegistry(t)
	img := reg.PushImage(t, "library/postgres", "16", testhub.ImageOptions{LayerSize: kill9LayerSize, Uncompressed: true})
	if len(img.Layers) != 1 {
		t.Fatalf("want a single-layer image, got %d layers", len(img.Layers))
	}
	secret := randomSecret(t)
	hub := testhub.NewHub(t, reg, testhub.Options{Users: map[string]string{"ci-user": secret}})
	rc := startRegcache(t, w, regcacheConfig{upstreamURL: hub.URL, user: "ci-user", password: secret, passwordFile: true})
	hub.SetThrottle(kill9Throttle)
	return &kill9Env{w: w, img: img, layer: img.Layers[0], hub: hub, rc: rc}
}

func (e *kill9Env) blobURL() string {
	return e.rc.url() + "/v2/docker.io/" + e.img.Repo + "/blobs/" + e.layer.String()
}

// waitMidway waits until the blob download is under way but unfinished:
// regcache has streamed part of it to a client (clientBytes), or (if it
// does not stream) holds part of it in its tmp area. ended reports whether
// the client's download is already over.
func (e *kill9Env) waitMidway(t *testing.T, clientBytes func() int64, ended func() bool) {
	t.Helper()
	err := waitFor(t.Context(), 30*time.Second, e.rc.proc, func() error {
		if ended() {
			return errors.New("the download ended before regcache could be killed")
		}
		if n, m := clientBytes(), tmpBytes(e.rc.dataDir); n < kill9After && m < kill9After {
			return fmt.Errorf("only %d bytes at the client, %d in tmp", n, m)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("waiting for the download to be mid-way: %v", err)
	}
	if done := completedTransfers(e.hub, e.layer); done != 0 {
		t.Fatalf("upstream already finished the blob %d times; the kill would not be mid-download", done)
	}
	t.Logf("kill -9 with %d of %d bytes at the client, %d in regcache's tmp", clientBytes(), kill9LayerSize, tmpBytes(e.rc.dataDir))
}

// checkCachedIntact waits for the blob to be in regcache's store, complete
// and verified, and checks every other stored blob too.
func (e *kill9Env) checkCachedIntact(t *testing.T) {
	t.Helper()
	err := waitFor(t.Context(), 10*time.Second, e.rc.proc, func() error {
		if checkStoreBlobs(t, e.rc.dataDir)[e.layer.String()] != kill9LayerSize {
			return errors.New("blob not in the store")
		}
		return nil
	})
	if err != nil {
		t.Errorf("after a complete pull: %v", err)
	}
}

// TestKill9MidBlobDownload: a plain HTTP client downloads the blob; after
// the kill and restart, crane pulls the image (verifying every digest) and
// the blob is served whole.
func TestKill9MidBlobDownload(t *testing.T) {
	e := newKill9Env(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var received atomic.Int64
	clientDone := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.blobURL(), nil)
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
	var ended atomic.Bool
	e.waitMidway(t, received.Load, func() bool {
		select {
		case err := <-clientDone:
			ended.Store(true)
			clientDone <- err // keep it for below
		default:
		}
		return ended.Load()
	})
	e.rc.kill9()

	// The cut-off client must see an error, never a clean end of a short body.
	select {
	case err := <-clientDone:
		if err == nil {
			t.Errorf("client read %d of %d bytes and then a clean EOF: a partial blob looked complete", received.Load(), kill9LayerSize)
		}
	case <-time.After(10 * time.Second):
		t.Error("client still reading 10s after regcache was killed")
	}
	cancel()
	if stored := checkStoreBlobs(t, e.rc.dataDir); stored[e.layer.String()] != 0 {
		t.Errorf("the killed download's blob %s is in the store", e.layer)
	}

	e.rc.start(t)
	checkStoreBlobs(t, e.rc.dataDir)
	// A HEAD must not describe the half-downloaded blob either.
	if err := headMatches(t.Context(), e.blobURL(), e.layer, kill9LayerSize); err != nil {
		t.Error(err)
	}

	// The next pull, still from the slow upstream, completes and every byte
	// is verified: crane checks each blob against its digest.
	dest := e.w.mkdir("crane-after-restart")
	crane := requireBinary(t, "crane", "crane")
	e.w.mustRun(t, 2*time.Minute, e.w.baseEnv(), crane, "pull", "--insecure", "--format", "oci",
		e.rc.host()+"/docker.io/"+e.img.Repo+":"+e.img.Tag, dest)
	if got := ociLayoutDigest(t, dest); got != e.img.Digest.String() {
		t.Errorf("pull after restart: digest %s, upstream %s", got, e.img.Digest)
	}

	// Served from the cache now: the full body, verified independently.
	e.hub.SetThrottle(0)
	if err := fetchAndVerify(t.Context(), e.blobURL(), e.layer, kill9LayerSize); err != nil {
		t.Error(err)
	}
	e.checkCachedIntact(t)
}

// TestKill9DockerPullResumes: dockerd is pulling `postgres:16` through
// regcache when regcache is killed and restarted. dockerd retries the layer
// (resuming with a Range request); the same `docker pull` must complete
// with the upstream digest, which dockerd verifies over the whole layer.
func TestKill9DockerPullResumes(t *testing.T) {
	e := newKill9Env(t)
	rec := startRecorder(t, e.w, "dockerd", e.rc.host())
	docker, env := startDockerd(t, e.w, rec.host)

	type result struct {
		out string
		err error
	}
	pulled := make(chan result, 1)
	go func() {
		out, err := e.w.run(t.Context(), 3*time.Minute, env, docker, "pull", "postgres:16")
		pulled <- result{out, err}
	}()
	var res *result
	e.waitMidway(t, func() int64 { return 0 }, func() bool {
		if res == nil {
			select {
			case r := <-pulled:
				res = &r
			default:
			}
		}
		return res != nil
	})
	e.rc.kill9()
	if stored := checkStoreBlobs(t, e.rc.dataDir); stored[e.layer.String()] != 0 {
		t.Errorf("the killed download's blob %s is in the store", e.layer)
	}
	e.rc.start(t)

	r := <-pulled
	if r.err != nil {
		t.Fatalf("docker pull did not survive a regcache restart: %v\n%s", r.err, tailLines(r.out, 30))
	}
	if !strings.Contains(r.out, "Digest: "+e.img.Digest.String()) {
		t.Errorf("docker pull after restart: want Digest: %s in\n%s", e.img.Digest, r.out)
	}
	var ranged []string
	for _, req := range rec.requests() {
		if req.Range != "" {
			ranged = append(ranged, req.String())
		}
	}
	t.Logf("dockerd's ranged requests: %q", ranged)
	e.hub.SetThrottle(0)
	e.checkCachedIntact(t)
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

// headMatches checks that a HEAD on a blob, if it succeeds, describes the
// whole blob: its full size and, when given, its digest.
func headMatches(ctx context.Context, url string, d digest.Digest, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil // not found is honest; only a wrong 200 is a failure
	}
	if resp.ContentLength != size {
		return fmt.Errorf("HEAD %s: Content-Length %d, the blob has %d bytes", url, resp.ContentLength, size)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != d.String() {
		return fmt.Errorf("HEAD %s: Docker-Content-Digest %s, want %s", url, got, d)
	}
	return nil
}

// fetchAndVerify GETs a blob and checks its length and digest.
func fetchAndVerify(ctx context.Context, url string, d digest.Digest, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return fetchAndVerifyTo(ctx, url, d, size, io.Discard)
}

// fetchAndVerifyTo is fetchAndVerify that also writes the body, as it
// streams, to progress.
func fetchAndVerifyTo(ctx context.Context, url string, d digest.Digest, size int64, progress io.Writer) error {
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
	n, err := io.Copy(io.MultiWriter(h, progress), resp.Body)
	if err != nil {
		return fmt.Errorf("GET %s: after %d bytes: %w", url, n, err)
	}
	if got := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)); n != size || got != d {
		return fmt.Errorf("GET %s: served %d bytes with digest %s, want %d bytes %s", url, n, got, size, d)
	}
	return nil
}
