package app

import (
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/testhub"
)

// mirrorStack is regcache with an origin hub and an ECR Public–style mirror
// hub, both in front of the same real registry.
type mirrorStack struct {
	*stack
	mirror *testhub.Hub
}

type mirrorOptions struct {
	tagTTL      string
	tagFallback string
	reserve     int
	origin      testhub.Options
	// originURL, if set, replaces the origin hub's URL in the config (an
	// address nothing listens on: an origin refusing connections).
	originURL string
	// extra is appended to the config: top-level keys.
	extra string
}

func newMirrorStack(t testing.TB, opt mirrorOptions) *mirrorStack {
	t.Helper()
	backend := testhub.StartRegistry(t)
	s := &stack{t: t, backend: backend, logs: testhub.NewTailBuffer(0)}
	s.hub = testhub.NewHub(t, backend, opt.origin)
	mirror := testhub.NewHub(t, backend, testhub.Options{RepoPrefix: "docker/", Service: "public.ecr.aws", Scope: "aws"})
	if opt.tagTTL == "" {
		opt.tagTTL = "5m"
	}
	if opt.tagFallback == "" {
		opt.tagFallback = "mirrors"
	}
	if opt.originURL == "" {
		opt.originURL = s.hub.URL
	}
	yaml := fmt.Sprintf(`listen: 127.0.0.1:0
storage: {root: %s}
tag_ttl: %s
tag_fallback: %s
upstream_timeout: 10s
log_level: debug
registries:
  docker.io:
    url: %s
    reserve: %d
    mirrors:
      - url: %s
        repo_prefix: docker/
        repositories: ["library/*"]
`, t.TempDir(), opt.tagTTL, opt.tagFallback, opt.originURL, opt.reserve, mirror.URL) + opt.extra
	cfg, err := config.Parse([]byte(yaml), "test config")
	if err != nil {
		t.Fatal(err)
	}
	s.app, err = New(cfg, slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	s.srv = httptest.NewServer(s.app.Handler)
	t.Cleanup(s.srv.Close)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("regcache logs (tail):\n%s", tail(s.logs.String(), 6000))
		}
	})
	return &mirrorStack{stack: s, mirror: mirror}
}

// An official image pulled through a healthy mirror costs no counted pull
// at the origin, cold cache included; a non-official one costs exactly one.
func TestMirrorsDoTheCountedWork(t *testing.T) {
	s := newMirrorStack(t, mirrorOptions{origin: testhub.Options{AnonymousLimit: 10}})
	official := s.backend.PushIndex(t, "library/node", "21", []string{"linux/amd64", "linux/arm64"}, true)
	user := s.backend.PushImage(t, "someone/tool", "1", testhub.ImageOptions{})
	s.hub.ResetCounts()

	if _, err := s.pull("node", "21"); err != nil {
		t.Fatal(err)
	}
	arm := official.Children["linux/arm64"]
	if d, err := s.pull("library/node", arm.Digest.String()); err != nil || d != arm.Digest {
		t.Fatalf("child: %v", err)
	}
	if d, err := s.pull("someone/tool", "1"); err != nil || d != user.Digest {
		t.Fatalf("non-official: %v", err)
	}
	origin := s.hub.Counts()
	if got := origin.ManifestGETsByRepo["library/node"]; got != 0 {
		t.Errorf("official image cost %d counted origin pulls, want 0", got)
	}
	if got := origin.ManifestGETsByRepo["someone/tool"]; got != 1 {
		t.Errorf("non-official image cost %d counted pulls, want 1", got)
	}
	for _, l := range arm.Layers {
		if origin.BlobGETs[l] != 0 {
			t.Errorf("official layer %s fetched from the origin", l)
		}
	}
	if m := s.mirror.Counts(); m.ManifestGETsByRepo["docker/library/node"] < 2 {
		t.Errorf("mirror served %d manifests, want the index and the child", m.ManifestGETsByRepo["docker/library/node"])
	}
	if got := testutil.ToFloat64(s.app.Metrics.CountedPulls.WithLabelValues("docker.io")); got != 1 {
		t.Errorf("counted pulls metric %v, want 1", got)
	}
	if hits := testutil.CollectAndCount(s.app.Metrics.MirrorHits); hits == 0 {
		t.Errorf("no mirror hits recorded")
	}
}

// Acceptance 2 of the mirror issue: with the origin answering 429 to
// everything and the mirror healthy, a cold pull of an official image
// succeeds and says it came via a mirror.
func TestOrigin429ColdPullViaMirror(t *testing.T) {
	s := newMirrorStack(t, mirrorOptions{})
	img := s.backend.PushImage(t, "library/httpd", "2.4", testhub.ImageOptions{Layers: 2})
	s.hub.SetFault(testhub.Fault429)
	resp, body := s.do("GET", "/v2/library/httpd/manifests/2.4", map[string]string{"Accept": acceptAll})
	if resp.StatusCode != 200 || string(body) != string(img.Manifest) {
		t.Fatalf("cold pull with origin 429: %d %s", resp.StatusCode, body)
	}
	if resp.Header.Get("X-Regcache-Tag-Source") != "mirror" || !strings.HasSuffix(resp.Header.Get("X-Regcache-Source"), "/docker") {
		t.Errorf("not marked as coming via a mirror: %v", resp.Header)
	}
	if d, err := s.pull("library/httpd", "2.4"); err != nil || d != img.Digest {
		t.Fatalf("whole pull: %v", err)
	}
	if got := testutil.ToFloat64(s.app.Metrics.TagFallbacks.WithLabelValues("docker.io", resp.Header.Get("X-Regcache-Source"))); got < 1 {
		t.Errorf("tag fallback counter = %v", got)
	}
	// A non-official image has no mirror: the client hears the origin's 429.
	s.backend.PushImage(t, "someone/tool", "1", testhub.ImageOptions{})
	resp, body = s.do("GET", "/v2/someone/tool/manifests/1", nil)
	if code, _ := ociError(t, body); resp.StatusCode != 429 || code != "TOOMANYREQUESTS" {
		t.Fatalf("non-official with origin 429: %d %s", resp.StatusCode, code)
	}
}

// tag_fallback: never keeps tags at the origin even when it fails.
func TestTagFallbackNever(t *testing.T) {
	s := newMirrorStack(t, mirrorOptions{tagFallback: "never"})
	s.backend.PushImage(t, "library/httpd", "2.4", testhub.ImageOptions{})
	s.hub.SetFault(testhub.Fault500)
	resp, body := s.do("GET", "/v2/library/httpd/manifests/2.4", nil)
	if code, _ := ociError(t, body); resp.StatusCode != 503 || code != "UNAVAILABLE" {
		t.Fatalf("got %d %s", resp.StatusCode, code)
	}
	if n := s.mirror.Counts().ManifestGETs; n != 0 {
		t.Fatalf("mirror asked for a tag %d times with tag_fallback: never", n)
	}
}

// Acceptance 3: a mirror whose manifest bytes do not match the digest is
// not used for it, nothing bad is cached, and the pull succeeds from the
// origin.
func TestWrongDigestMirrorSkipped(t *testing.T) {
	s := newMirrorStack(t, mirrorOptions{})
	img := s.backend.PushImage(t, "library/redis", "7", testhub.ImageOptions{})
	s.mirror.SetFaultFor(testhub.FaultCorrupt, testhub.ScopeManifests)
	resp, body := s.do("GET", "/v2/library/redis/manifests/7", map[string]string{"Accept": acceptAll})
	if resp.StatusCode != 200 || string(body) != string(img.Manifest) {
		t.Fatalf("got %d", resp.StatusCode)
	}
	if src := resp.Header.Get("X-Regcache-Source"); src != "origin" {
		t.Fatalf("served from %q, want origin after the mirror's bad bytes", src)
	}
	if s.mirror.Counts().ManifestGETs == 0 {
		t.Fatal("the mirror was never tried")
	}
	if d, err := s.pull("library/redis", "7"); err != nil || d != img.Digest {
		t.Fatalf("pull: %v", err)
	}
}

// A mirror that streamed wrong bytes for a layer is not asked for that layer
// again: the client's retry is served by the origin, though one failure is
// far from opening the mirror's breaker, and the bad bytes are never cached.
func TestCorruptMirrorBlobRetryGoesToOrigin(t *testing.T) {
	s := newMirrorStack(t, mirrorOptions{})
	img := s.backend.PushImage(t, "library/redis", "7", testhub.ImageOptions{LayerSize: 1 << 20})
	layer := img.Layers[0]
	s.mirror.SetFaultFor(testhub.FaultCorrupt, testhub.ScopeBlobs)
	if err := s.fetchBlob("library/redis", layer); err == nil {
		t.Fatal("the first pull of a corrupted layer succeeded")
	}
	for i := range 3 {
		if err := s.fetchBlob("library/redis", layer); err != nil {
			t.Fatalf("retry %d: %v", i, err)
		}
	}
	if n := s.mirror.Counts().BlobGETs[layer]; n != 1 {
		t.Errorf("the mirror was asked %d times for a layer it had corrupted, want 1", n)
	}
	if n := s.hub.Counts().BlobGETs[layer]; n != 1 {
		t.Errorf("the origin served the layer %d times, want 1 (then the cache)", n)
	}
	var bad int
	for _, src := range s.app.status(time.Now()).Registries[0].Sources {
		bad += src.BadDigests
	}
	if bad != 1 {
		t.Errorf("status reports %d bad digests, want 1", bad)
	}
}

// A failing mirror is put in backoff instead of being asked for every blob.
func TestFailingMirrorBackoff(t *testing.T) {
	s := newMirrorStack(t, mirrorOptions{})
	var imgs []testhub.Image
	for i := 0; i < 12; i++ {
		imgs = append(imgs, s.backend.PushImage(t, "library/many", fmt.Sprint(i), testhub.ImageOptions{}))
	}
	s.mirror.SetFault(testhub.Fault500)
	for _, img := range imgs {
		if err := s.fetchBlob("library/many", img.Layers[0]); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.mirror.Counts().Requests; n >= len(imgs) {
		t.Fatalf("the failing mirror was asked %d times for %d blobs: no backoff", n, len(imgs))
	}
}

// Below the reserve, a tag that moved is served from the cache instead of
// spending one of the last pulls; true misses still get them.
func TestReserveServesStale(t *testing.T) {
	s := newMirrorStack(t, mirrorOptions{tagTTL: "0s", reserve: 7, origin: testhub.Options{AnonymousLimit: 10}})
	old := s.backend.PushImage(t, "someone/app", "v1", testhub.ImageOptions{})
	for i := 0; i < 3; i++ {
		s.backend.PushImage(t, "someone/other", fmt.Sprint(i), testhub.ImageOptions{})
	}
	s.backend.PushImage(t, "library/nginx", "1", testhub.ImageOptions{})
	if _, err := s.pull("someone/app", "v1"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := s.pull("someone/other", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.hub.Remaining(""); got != 7 {
		t.Fatalf("remaining %d, want 7 (at the reserve)", got)
	}
	s.backend.PushImage(t, "someone/app", "v1", testhub.ImageOptions{Layers: 2}) // the tag moves
	resp, body := s.do("GET", "/v2/someone/app/manifests/v1", map[string]string{"Accept": acceptAll})
	if resp.StatusCode != 200 || string(body) != string(old.Manifest) || resp.Header.Get("X-Regcache") != "stale" {
		t.Fatalf("below reserve: %d, stale=%q", resp.StatusCode, resp.Header.Get("X-Regcache"))
	}
	if got := s.hub.Remaining(""); got != 7 {
		t.Fatalf("a moved tag spent a pull below the reserve: remaining %d", got)
	}
	if n := testutil.ToFloat64(s.app.Metrics.StaleServed.WithLabelValues("docker.io", "reserve")); n != 1 {
		t.Errorf("stale reserve counter %v", n)
	}
	// A true miss still gets a pull.
	if _, err := s.pull("someone/other", "2"); err != nil {
		t.Fatalf("true miss below the reserve: %v", err)
	}
	// An official tag that moves is still followed below the reserve: the
	// mirror has the new manifest, and it costs no counted pull.
	if _, err := s.pull("library/nginx", "1"); err != nil {
		t.Fatal(err)
	}
	moved := s.backend.PushImage(t, "library/nginx", "1", testhub.ImageOptions{Layers: 2})
	before := s.hub.Remaining("")
	if d, err := s.pull("library/nginx", "1"); err != nil || d != moved.Digest {
		t.Fatalf("moved official tag below the reserve: %v, got %s want %s", err, d, moved.Digest)
	}
	if got := s.hub.Remaining(""); got != before {
		t.Fatalf("a mirrored manifest spent an origin pull: %d -> %d", before, got)
	}
}
