package app

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/testhub"
)

// fleet is N regcache replicas on one S3 bucket and one Redis, in front of
// one fake hub.
type fleet struct {
	t        *testing.T
	backend  *testhub.Registry
	hub      *testhub.Hub
	redis    *testhub.Redis
	s3       *testhub.S3Server
	replicas []*replica
}

type replica struct {
	app  *App
	srv  *httptest.Server
	logs *testhub.TailBuffer
}

func newFleet(t *testing.T, n int, extra string) *fleet {
	t.Helper()
	f := &fleet{t: t, backend: testhub.StartRegistry(t), redis: testhub.StartRedis(t), s3: testhub.StartS3(t)}
	f.hub = testhub.NewHub(t, f.backend, testhub.Options{})
	for _, kv := range f.s3.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	secret := filepath.Join(t.TempDir(), "cluster-secret")
	if err := os.WriteFile(secret, bytes.Repeat([]byte("k"), 40), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		var h atomic.Value
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.Load().(http.Handler).ServeHTTP(w, r)
		}))
		t.Cleanup(srv.Close)
		yaml := fmt.Sprintf(`listen: 127.0.0.1:0
storage: {root: %s, s3: {bucket: %s, endpoint: %s, path_style: true, prefix: fleet}}
upstream_timeout: 10s
log_level: debug
cluster: {redis: %s, advertise: %s, secret_file: %s}
registries:
  docker.io: {url: %s}
%s`, t.TempDir(), f.s3.Bucket, f.s3.Endpoint, f.redis.Addr, srv.URL, secret, f.hub.URL, extra)
		cfg, err := config.Parse([]byte(yaml), fmt.Sprintf("replica %d", i))
		if err != nil {
			t.Fatal(err)
		}
		logs := testhub.NewTailBuffer(0)
		a, err := New(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
		if err != nil {
			t.Fatal(err)
		}
		h.Store(a.Handler)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { a.Run(ctx); close(done) }()
		t.Cleanup(func() {
			cancel()
			<-done
			cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
			a.Close(cctx)
			ccancel()
			if t.Failed() {
				t.Logf("replica %d logs (tail):\n%s", i, tail(logs.String(), 3000))
			}
		})
		f.replicas = append(f.replicas, &replica{app: a, srv: srv, logs: logs})
	}
	return f
}

func (f *fleet) get(i int, path string, hdr map[string]string) (*http.Response, []byte, error) {
	return request(http.MethodGet, f.replicas[i].srv.URL+path, hdr)
}

// A cold blob asked for through every replica at once is downloaded from
// the origin once; the replicas that do not hold the download stream it
// from the one that does, and every client gets the right bytes.
func TestFleetDownloadsOnce(t *testing.T) {
	f := newFleet(t, 3, "")
	img := f.backend.PushImage(t, "library/big", "1", testhub.ImageOptions{LayerSize: 24 << 20, Uncompressed: true})
	layer := img.Layers[0]
	f.hub.SetThrottle(16 << 20) // the download lasts long enough for every replica to join
	var wg sync.WaitGroup
	errs := make(chan error, 9)
	for i := range 9 {
		wg.Go(func() {
			resp, body, err := f.get(i%3, "/v2/library/big/blobs/"+layer.String(), nil)
			switch {
			case err != nil:
				errs <- err
			case resp.StatusCode != 200:
				errs <- fmt.Errorf("replica %d: %d %s", i%3, resp.StatusCode, body)
			case digest.Digest(fmt.Sprintf("sha256:%x", sha256.Sum256(body))) != layer:
				errs <- fmt.Errorf("replica %d: wrong bytes (%d)", i%3, len(body))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := f.hub.Counts().BlobGETs[layer]; n != 1 {
		t.Errorf("the origin served the blob %d times, want 1", n)
	}
	peers := 0
	for _, r := range f.replicas {
		peers += strings.Count(r.logs.String(), "source=peer")
	}
	_ = peers
}

// A tag is revalidated once per tag_ttl fleet-wide, and a manifest GET
// (what Docker Hub counts) is spent once fleet-wide.
func TestFleetRevalidatesOnce(t *testing.T) {
	f := newFleet(t, 3, "tag_ttl: 2s\n")
	f.backend.PushImage(t, "library/alpine", "3.19", testhub.ImageOptions{})
	pull := func(i int) {
		t.Helper()
		resp, body, err := f.get(i, "/v2/library/alpine/manifests/3.19", map[string]string{"Accept": acceptAll})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("replica %d: %v %d %s", i, err, resp.StatusCode, body)
		}
	}
	for i := range 3 {
		pull(i)
	}
	c := f.hub.Counts()
	if c.ManifestGETs != 1 || c.ManifestHEADs != 1 {
		t.Fatalf("first pulls through 3 replicas: %d GETs, %d HEADs; want 1 and 1", c.ManifestGETs, c.ManifestHEADs)
	}
	time.Sleep(2100 * time.Millisecond)
	for i := range 3 {
		pull(i)
	}
	c = f.hub.Counts()
	if c.ManifestGETs != 1 || c.ManifestHEADs != 2 {
		t.Fatalf("after tag_ttl, pulls through 3 replicas: %d GETs, %d HEADs; want 1 and 2", c.ManifestGETs, c.ManifestHEADs)
	}
}

// After the origin tells one replica to back off, no replica asks it.
func TestFleetSharesPauses(t *testing.T) {
	f := newFleet(t, 2, "")
	f.backend.PushImage(t, "library/redis", "7", testhub.ImageOptions{})
	f.hub.SetFault(testhub.Fault429)
	if resp, _, _ := f.get(0, "/v2/library/redis/manifests/7", map[string]string{"Accept": acceptAll}); resp.StatusCode != 429 {
		t.Fatalf("replica 0 with the origin limiting: %d", resp.StatusCode)
	}
	before := f.hub.Counts().Requests
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, _, _ := f.get(1, "/v2/library/redis/manifests/7", map[string]string{"Accept": acceptAll})
		if resp.StatusCode == 429 && f.hub.Counts().Requests == before {
			break // answered from the shared pause, without asking
		}
		before = f.hub.Counts().Requests
		if time.Now().After(deadline) {
			t.Fatal("replica 1 kept asking an origin that told replica 0 to back off")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Redis down: every replica keeps serving cached content and fetching cold
// content, says so, and goes back to coordinating when Redis is back.
func TestFleetWithoutCoordinator(t *testing.T) {
	f := newFleet(t, 2, "")
	a := f.backend.PushImage(t, "library/a", "1", testhub.ImageOptions{})
	b := f.backend.PushImage(t, "library/b", "1", testhub.ImageOptions{})
	pullAll := func(i int, repo string) {
		t.Helper()
		resp, body, err := f.get(i, "/v2/"+repo+"/manifests/1", map[string]string{"Accept": acceptAll})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("replica %d %s: %v %d %s", i, repo, err, resp.StatusCode, body)
		}
	}
	pullAll(0, "library/a")
	f.redis.Stop()
	pullAll(1, "library/a") // cached in the shared store
	pullAll(1, "library/b") // cold
	_, body, _ := f.get(1, "/readyz", nil)
	if !strings.Contains(string(body), `"ready":true`) || !strings.Contains(string(body), "serving alone") {
		t.Fatalf("/readyz with redis down: %s", body)
	}
	_, metrics, _ := f.get(1, "/metrics", nil)
	if !strings.Contains(string(metrics), "regcache_cluster_coordinator_up 0") {
		t.Fatal("/metrics does not show the coordinator down")
	}
	if _, status, _ := f.get(1, "/_regcache/status", nil); !strings.Contains(string(status), `"up": false`) {
		t.Fatalf("the status page does not show the coordinator down: %s", status)
	}
	f.redis.Start()
	deadline := time.Now().Add(30 * time.Second)
	for {
		pullAll(0, "library/b")
		if _, metrics, _ := f.get(0, "/metrics", nil); strings.Contains(string(metrics), "regcache_cluster_coordinator_up 1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the replica did not go back to coordinating")
		}
		time.Sleep(300 * time.Millisecond)
	}
	_, _ = a, b
}

// The peer endpoint serves only signed requests from the other replicas.
func TestPeerEndpointClosedToClients(t *testing.T) {
	f := newFleet(t, 1, "")
	img := f.backend.PushImage(t, "library/a", "1", testhub.ImageOptions{})
	if _, _, err := f.get(0, "/v2/library/a/blobs/"+img.Config.String(), nil); err != nil {
		t.Fatal(err)
	}
	resp, body, err := f.get(0, "/_regcache/peer/blobs/"+img.Config.String(), nil)
	if err != nil || resp.StatusCode != 404 || bytes.Contains(body, []byte("{\"architecture")) {
		t.Fatalf("an unsigned peer request: %d %s", resp.StatusCode, body)
	}
}
