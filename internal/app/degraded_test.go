package app

import (
	"encoding/json"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regcache/regcache/internal/testhub"
)

// Issue 12, row by row: a slow or hanging origin, through the whole stack
// (client → regcache → fake hub → real registry). The tests assert what the
// clients got, what the origin and the mirror were asked and what status
// and metrics say; the waits they configure are short, and nothing asserts
// how long a pull took (bench/degraded does, against the targets).

// manifest GETs name:tag as a client accepting every manifest type does.
func (s *stack) manifest(name, tag string) (*http.Response, []byte) {
	s.t.Helper()
	return s.do("GET", "/v2/"+name+"/manifests/"+tag, map[string]string{"Accept": acceptAll})
}

// concurrently runs f(0..n-1) at once and waits for them.
func concurrently(n int, f func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); f(i) }()
	}
	wg.Wait()
}

// originState is the origin's breaker state as GET /_regcache/status
// reports it.
func (s *stack) originState(t *testing.T) string {
	t.Helper()
	resp, body := s.do("GET", "/_regcache/status", nil)
	var st Status
	if err := json.Unmarshal(body, &st); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status: %d %s", resp.StatusCode, body)
	}
	for _, src := range st.Registries[0].Sources {
		if src.Name == "origin" {
			return src.State
		}
	}
	t.Fatalf("status lists no origin: %s", body)
	return ""
}

func (s *stack) staleServed(reason string) float64 {
	return testutil.ToFloat64(s.app.Metrics.StaleServed.WithLabelValues("docker.io", reason))
}

// Row 1: a cached tag past tag_ttl, the origin answering only after a
// delay longer than revalidate_wait. Five clients at once are served the
// cached answer, stale (slow_origin), by one revalidation at the origin;
// it lands in the background, and the next pull sees where the tag moved.
func TestSlowOriginCachedTagServedStale(t *testing.T) {
	s := newStack(t, stackOptions{tagTTL: "1s", extra: "revalidate_wait: 200ms\n"})
	old := s.backend.PushImage(t, "library/node", "22", testhub.ImageOptions{})
	if _, err := s.pull("library/node", "22"); err != nil {
		t.Fatal(err)
	}
	moved := s.backend.PushImage(t, "library/node", "22", testhub.ImageOptions{Layers: 2})
	time.Sleep(1100 * time.Millisecond) // past tag_ttl
	s.hub.SetDelay(2 * time.Second)
	before := s.hub.Counts()

	const clients = 5
	concurrently(clients, func(i int) {
		resp, body := s.manifest("library/node", "22")
		if resp.StatusCode != 200 || digest.FromBytes(body) != old.Digest || resp.Header.Get("X-Regcache") != "stale" {
			t.Errorf("client %d: %d, X-Regcache %q, digest %s; want the cached %s, stale",
				i, resp.StatusCode, resp.Header.Get("X-Regcache"), digest.FromBytes(body), old.Digest)
		}
		if resp.Header.Get("Warning") == "" {
			t.Errorf("client %d: a stale answer without a Warning", i)
		}
	})
	if n := s.staleServed("slow_origin"); n != clients {
		t.Errorf("stale_served{reason=slow_origin} = %v, want %d", n, clients)
	}
	// Every client has been answered and the origin has yet to answer the
	// one request it got: the revalidation's HEAD (Requests counts on
	// arrival, before the delay).
	if n := s.hub.Counts().Requests - before.Requests; n != 1 {
		t.Errorf("the origin was asked %d times for %d clients, want 1", n, clients)
	}

	var got digest.Digest
	waitFor(t, func() bool {
		resp, body := s.manifest("library/node", "22")
		got = digest.FromBytes(body)
		return resp.StatusCode == 200 && got == moved.Digest
	})
	if n := s.hub.Counts().ManifestHEADs - before.ManifestHEADs; n != 1 {
		t.Errorf("%d revalidating HEADs, want 1", n)
	}
	s.hub.SetDelay(0)
	if d, err := s.pull("library/node", "22"); err != nil || d != moved.Digest {
		t.Fatalf("whole pull after the revalidation landed: %s, %v", d, err)
	}
}

// Row 2: a cached tag whose origin hangs (connections accepted, never
// answered) is served stale after revalidate_wait, not after a timeout;
// the hangs open the origin's breaker, and from then on pulls are served
// without a new wait at the origin.
func TestHangingOriginCachedTagServedStaleBreakerOpens(t *testing.T) {
	s := newStack(t, stackOptions{tagTTL: "0s", extra: "revalidate_wait: 200ms\nupstream_header_timeout: 1s\n"})
	tags := []string{"app1", "app2", "app3"} // the breaker opens after 3 failures in a row
	imgs := map[string]testhub.Image{}
	for _, tag := range tags {
		imgs[tag] = s.backend.PushImage(t, "someone/app", tag, testhub.ImageOptions{})
		if _, err := s.pull("someone/app", tag); err != nil {
			t.Fatal(err)
		}
	}
	s.hub.SetFault(testhub.FaultHang)

	concurrently(len(tags), func(i int) {
		resp, body := s.manifest("someone/app", tags[i])
		if resp.StatusCode != 200 || digest.FromBytes(body) != imgs[tags[i]].Digest || resp.Header.Get("X-Regcache") != "stale" {
			t.Errorf("%s: %d, X-Regcache %q", tags[i], resp.StatusCode, resp.Header.Get("X-Regcache"))
		}
	})
	if n := s.staleServed("slow_origin"); n != float64(len(tags)) {
		t.Errorf("stale_served{reason=slow_origin} = %v, want %d (served on revalidate_wait, not on a timeout)", n, len(tags))
	}
	// The hung revalidations end at upstream_header_timeout, each a failure.
	// (Past the breaker's backoff, with nothing asked, it reads half-open.)
	waitFor(t, func() bool { return s.originState(t) != "closed" })
	hung := s.hub.Counts().Hung
	if hung != len(tags) {
		t.Errorf("the origin held %d requests, want %d", hung, len(tags))
	}

	for range 3 {
		for _, tag := range tags {
			if d, err := s.pull("someone/app", tag); err != nil || d != imgs[tag].Digest {
				t.Fatalf("%s with the breaker open: %s, %v", tag, d, err)
			}
		}
	}
	if n := s.staleServed("error"); n < float64(3*len(tags)) {
		t.Errorf("stale_served{reason=error} = %v, want at least %d (the breaker answering at once)", n, 3*len(tags))
	}
	// No new waits at the origin while the breaker is open; past its
	// backoff one half-open probe is allowed through.
	now := s.hub.Counts().Hung
	if s.originState(t) == "open" && now != hung {
		t.Errorf("the origin was asked %d more times with its breaker open", now-hung)
	}
	if now > hung+1 {
		t.Errorf("the origin was asked %d more times, more than one half-open probe", now-hung)
	}
}

// Row 3: a cold official image, the origin hanging and the mirror healthy:
// the tag is resolved at the mirror after hedge_delay and marked so; the
// pull while the origin still hangs is served from the cache; when the
// origin answers, its answer corrects the tag for the next pull.
func TestHangingOriginColdOfficialImageHedgedToMirror(t *testing.T) {
	// The header timeout is long so that the held requests are still
	// waiting when the origin is released.
	s := newMirrorStack(t, mirrorOptions{extra: "hedge_delay: 200ms\nrevalidate_wait: 200ms\nupstream_header_timeout: 30s\n"})
	img := s.backend.PushImage(t, "library/httpd", "2.4", testhub.ImageOptions{Layers: 2})
	s.hub.SetFault(testhub.FaultHang)

	resp, body := s.manifest("library/httpd", "2.4")
	if resp.StatusCode != 200 || digest.FromBytes(body) != img.Digest {
		t.Fatalf("cold pull, origin hanging: %d %s", resp.StatusCode, body)
	}
	if resp.Header.Get("X-Regcache-Tag-Source") != "mirror" {
		t.Errorf("not marked as resolved at the mirror: %v", resp.Header)
	}
	if d, err := s.pull("library/httpd", "2.4"); err != nil || d != img.Digest {
		t.Fatalf("whole pull, origin hanging: %s, %v", d, err)
	}
	if s.hub.Counts().Hung == 0 {
		t.Fatal("the origin was never asked")
	}

	// The tag moves; the origin recovers and answers what it was asked.
	moved := s.backend.PushImage(t, "library/httpd", "2.4", testhub.ImageOptions{Layers: 3})
	s.hub.SetFault(testhub.FaultNone)
	s.hub.Release()
	waitFor(t, func() bool {
		resp, body := s.manifest("library/httpd", "2.4")
		return resp.StatusCode == 200 && digest.FromBytes(body) == moved.Digest && resp.Header.Get("X-Regcache-Tag-Source") == ""
	})
	if resp, _ := s.manifest("library/httpd", "2.4"); resp.Header.Get("X-Regcache") != "hit" {
		t.Errorf("the origin's answer is not what the cache now holds: X-Regcache %q", resp.Header.Get("X-Regcache"))
	}
	if d, err := s.pull("library/httpd", "2.4"); err != nil || d != moved.Digest {
		t.Fatalf("whole pull after the correction: %s, %v", d, err)
	}
	if n := s.hub.Counts().ManifestGETsByRepo["library/httpd"]; n != 0 {
		t.Errorf("the official image cost %d counted origin pulls", n)
	}
}

// Row 4: a cold official image while the origin refuses connections is
// resolved at the mirror; an image no mirror carries fails truthfully.
func TestRefusingOriginColdOfficialImageFromMirror(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()
	s := newMirrorStack(t, mirrorOptions{originURL: dead})
	img := s.backend.PushImage(t, "library/httpd", "2.4", testhub.ImageOptions{})
	s.backend.PushImage(t, "someone/tool", "1", testhub.ImageOptions{})

	resp, body := s.manifest("library/httpd", "2.4")
	if resp.StatusCode != 200 || digest.FromBytes(body) != img.Digest || resp.Header.Get("X-Regcache-Tag-Source") != "mirror" {
		t.Fatalf("cold official pull, origin refusing: %d, tag source %q", resp.StatusCode, resp.Header.Get("X-Regcache-Tag-Source"))
	}
	if d, err := s.pull("library/httpd", "2.4"); err != nil || d != img.Digest {
		t.Fatalf("whole pull: %v", err)
	}
	resp, body = s.manifest("someone/tool", "1")
	if code, _ := ociError(t, body); resp.StatusCode != 503 || code != "UNAVAILABLE" {
		t.Fatalf("non-official, origin refusing: %d %s", resp.StatusCode, code)
	}
}

// stale_while_revalidate: a cached tag past tag_ttl is answered at once,
// stale (revalidating), while the origin is asked in the background; the
// next pull after that lands sees the new digest.
func TestStaleWhileRevalidateServesAtOnce(t *testing.T) {
	s := newStack(t, stackOptions{tagTTL: "0s", extra: "stale_while_revalidate: true\n"})
	old := s.backend.PushImage(t, "library/node", "22", testhub.ImageOptions{})
	if _, err := s.pull("library/node", "22"); err != nil {
		t.Fatal(err)
	}
	moved := s.backend.PushImage(t, "library/node", "22", testhub.ImageOptions{Layers: 2})
	resp, body := s.manifest("library/node", "22")
	if resp.StatusCode != 200 || digest.FromBytes(body) != old.Digest || resp.Header.Get("X-Regcache") != "stale" {
		t.Fatalf("first pull after the move: %d, X-Regcache %q, digest %s; want the cached one, stale",
			resp.StatusCode, resp.Header.Get("X-Regcache"), digest.FromBytes(body))
	}
	if n := s.staleServed("revalidating"); n != 1 {
		t.Errorf("stale_served{reason=revalidating} = %v, want 1", n)
	}
	waitFor(t, func() bool {
		resp, body := s.manifest("library/node", "22")
		return resp.StatusCode == 200 && digest.FromBytes(body) == moved.Digest
	})
	if d, err := s.pull("library/node", "22"); err != nil || d != moved.Digest {
		t.Fatalf("whole pull: %s, %v", d, err)
	}
}

// max_stale: within tag_ttl+max_stale a hanging origin is outwaited by the
// cache; past it a pull waits for the origin and fails truthfully when the
// origin does, and is answered fresh by a slow one.
func TestMaxStaleWaitsForTheOrigin(t *testing.T) {
	s := newStack(t, stackOptions{tagTTL: "0s", extra: "max_stale: 3s\nrevalidate_wait: 100ms\nupstream_header_timeout: 1s\n"})
	img := s.backend.PushImage(t, "someone/app", "v1", testhub.ImageOptions{})
	if _, err := s.pull("someone/app", "v1"); err != nil {
		t.Fatal(err)
	}
	checked := time.Now() // the origin's answer was recorded before this
	s.hub.SetFault(testhub.FaultHang)
	resp, _ := s.manifest("someone/app", "v1")
	if resp.StatusCode != 200 || resp.Header.Get("X-Regcache") != "stale" {
		t.Fatalf("within max_stale, origin hanging: %d, X-Regcache %q", resp.StatusCode, resp.Header.Get("X-Regcache"))
	}

	time.Sleep(time.Until(checked.Add(3100 * time.Millisecond)))
	resp, body := s.manifest("someone/app", "v1")
	if code, _ := ociError(t, body); resp.StatusCode != 503 || code != "UNAVAILABLE" {
		t.Fatalf("past max_stale, origin hanging: %d %s; want 503 UNAVAILABLE, not the cached answer", resp.StatusCode, code)
	}

	s.hub.SetFault(testhub.FaultNone)
	s.hub.Release()
	s.hub.SetDelay(500 * time.Millisecond) // slower than revalidate_wait
	resp, body = s.manifest("someone/app", "v1")
	if resp.StatusCode != 200 || digest.FromBytes(body) != img.Digest || resp.Header.Get("X-Regcache") == "stale" {
		t.Fatalf("past max_stale, slow origin: %d, X-Regcache %q; want the origin's word", resp.StatusCode, resp.Header.Get("X-Regcache"))
	}
}

// The latency histogram keeps answers that waited on an upstream
// (revalidated, miss, stale) apart from cache hits. (revalidate_wait is long
// so that the healthy revalidation is never cut short on a busy machine.)
func TestLatencyHistogramByResult(t *testing.T) {
	s := newStack(t, stackOptions{tagTTL: "0s", extra: "revalidate_wait: 30s\n"})
	img := s.backend.PushImage(t, "library/redis", "7", testhub.ImageOptions{Layers: 2})
	blobs := len(img.Layers) + 1
	if _, err := s.pull("library/redis", "7"); err != nil { // manifest miss, blobs miss
		t.Fatal(err)
	}
	if err := s.app.Cache.Drain(t.Context()); err != nil { // the blobs committed
		t.Fatal(err)
	}
	if _, err := s.pull("library/redis", "7"); err != nil { // manifest revalidated, blobs hit
		t.Fatal(err)
	}
	s.hub.SetFault(testhub.Fault500)
	if _, err := s.pull("library/redis", "7"); err != nil { // manifest stale, blobs hit
		t.Fatal(err)
	}
	s.hub.SetFault(testhub.FaultNone)
	if resp, _ := s.manifest("library/redis", "nope"); resp.StatusCode != 404 {
		t.Fatalf("unknown tag: %d", resp.StatusCode)
	}

	want := map[[2]string]uint64{
		{"manifest", "miss"}: 1, {"manifest", "revalidated"}: 1, {"manifest", "stale"}: 1, {"manifest", "error"}: 1,
		{"manifest", "hit"}: 0, {"blob", "miss"}: uint64(blobs), {"blob", "hit"}: uint64(2 * blobs),
	}
	got := map[[2]string]uint64{}
	families, err := s.app.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "regcache_request_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			var k [2]string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "kind":
					k[0] = l.GetValue()
				case "result":
					k[1] = l.GetValue()
				}
			}
			got[k] = m.GetHistogram().GetSampleCount()
		}
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("request_duration_seconds{kind=%s,result=%s}: %d observations, want %d (all: %v)", k[0], k[1], got[k], n, got)
		}
	}
}
