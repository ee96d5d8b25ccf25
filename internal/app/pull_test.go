package app

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/store"
	"github.com/regcache/regcache/internal/testhub"
)

// Acceptance 2: with tag_ttl 0s every pull revalidates with a HEAD and only
// the first costs a counted GET; with 1h at most one HEAD is made.
func TestTagPullsCostOneCountedGet(t *testing.T) {
	tests := []struct {
		ttl       string
		wantHEADs func(int) bool
		desc      string
	}{
		{"0s", func(n int) bool { return n == 100 }, "one HEAD per pull"},
		{"1h", func(n int) bool { return n <= 1 }, "at most one HEAD"},
	}
	for _, tc := range tests {
		t.Run("tag_ttl="+tc.ttl, func(t *testing.T) {
			s := newStack(t, stackOptions{tagTTL: tc.ttl, user: "ci-user", hub: testhub.Options{AnonymousLimit: 50, UserLimit: 200}})
			img := s.backend.PushImage(t, "library/alpine", "3.19", testhub.ImageOptions{Layers: 2})
			s.hub.ResetCounts()
			for i := 0; i < 100; i++ {
				d, err := s.pull("library/alpine", "3.19")
				if err != nil {
					t.Fatalf("pull %d: %v", i, err)
				}
				if d != img.Digest {
					t.Fatalf("pull %d got %s, want %s", i, d, img.Digest)
				}
			}
			c := s.hub.Counts()
			if c.ManifestGETs != 1 {
				t.Errorf("counted manifest GETs = %d, want 1", c.ManifestGETs)
			}
			if !tc.wantHEADs(c.ManifestHEADs) {
				t.Errorf("manifest HEADs = %d, want %s", c.ManifestHEADs, tc.desc)
			}
			for d, n := range c.BlobGETs {
				if n != 1 {
					t.Errorf("blob %s fetched %d times", d, n)
				}
			}
			// The pulls were made with regcache's credentials, not anonymously.
			if got := s.hub.Remaining("ci-user"); got != 199 {
				t.Errorf("ci-user remaining = %d, want 199", got)
			}
			if got := testutil.ToFloat64(s.app.Metrics.CountedPulls.WithLabelValues("docker.io")); got != 1 {
				t.Errorf("counted pulls metric = %v, want 1", got)
			}
			// Every request regcache sends is counted, as the hub saw it.
			if got := testutil.ToFloat64(s.app.Metrics.UpstreamRequests.WithLabelValues("docker.io", "origin", "GET", "manifests", "200")); got != 1 {
				t.Errorf("upstream_requests_total{GET manifests 200} = %v, want 1", got)
			}
			if got := testutil.ToFloat64(s.app.Metrics.UpstreamRequests.WithLabelValues("docker.io", "origin", "HEAD", "manifests", "200")); int(got) != c.ManifestHEADs {
				t.Errorf("upstream_requests_total{HEAD manifests 200} = %v, the hub saw %d", got, c.ManifestHEADs)
			}
		})
	}
}

// Pulls by digest never touch the upstream once cached.
func TestDigestPullsStayLocal(t *testing.T) {
	s := newStack(t, stackOptions{tagTTL: "0s"})
	idx := s.backend.PushIndex(t, "library/busybox", "1.36", []string{"linux/amd64", "linux/arm64"}, true)
	child := idx.Children["linux/arm64"]
	if _, err := s.pull("library/busybox", child.Digest.String()); err != nil {
		t.Fatal(err)
	}
	s.hub.ResetCounts()
	s.hub.SetFault(testhub.Fault500)
	for i := 0; i < 5; i++ {
		if _, err := s.pull("library/busybox", child.Digest.String()); err != nil {
			t.Fatal(err)
		}
	}
	if c := s.hub.Counts(); c.Requests != 0 {
		t.Fatalf("cached digest pulls made %d upstream requests", c.Requests)
	}
}

// Acceptance 3: 20 concurrent cold pulls of a big single-layer image make
// the upstream serve the blob once, and the first client gets bytes before
// the upstream transfer is over.
func TestConcurrentColdPullsShareOneFetch(t *testing.T) {
	s := newStack(t, stackOptions{})
	const size = 256 << 20
	img := s.backend.PushImage(t, "library/big", "1", testhub.ImageOptions{LayerSize: size, Uncompressed: true})
	layer := img.Layers[0]
	s.hub.ResetCounts()
	// Slow enough that "first byte before the end" is not a race.
	s.hub.SetThrottle(128 << 20)

	const clients = 20
	var wg sync.WaitGroup
	firstByte := make([]time.Time, clients)
	errs := make([]error, clients)
	start := make(chan struct{})
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			resp, err := http.Get(s.srv.URL + "/v2/library/big/blobs/" + layer.String())
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 || resp.ContentLength != size {
				errs[i] = fmt.Errorf("status %d, length %d", resp.StatusCode, resp.ContentLength)
				return
			}
			h := sha256.New()
			buf := make([]byte, 1<<20)
			n, err := io.ReadAtLeast(resp.Body, buf, 1)
			firstByte[i] = time.Now()
			if err != nil {
				errs[i] = err
				return
			}
			h.Write(buf[:n])
			if _, err := io.CopyBuffer(h, resp.Body, buf); err != nil {
				errs[i] = err
				return
			}
			if got := digest.NewDigest(digest.SHA256, h); got != layer {
				errs[i] = fmt.Errorf("got content %s", got)
			}
		}(i)
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("client %d: %v", i, err)
		}
	}
	c := s.hub.Counts()
	if c.BlobGETs[layer] != 1 {
		t.Fatalf("upstream served the layer %d times, want 1", c.BlobGETs[layer])
	}
	var end time.Time
	for _, tr := range s.hub.Transfers() {
		if tr.Digest == layer {
			end = tr.End
		}
	}
	earliest := firstByte[0]
	for _, fb := range firstByte {
		if fb.Before(earliest) {
			earliest = fb
		}
	}
	if end.IsZero() || !earliest.Before(end) {
		t.Fatalf("first client byte at %v, upstream transfer ended at %v: not streamed", earliest, end)
	}
	if shared := testutil.ToFloat64(s.app.Metrics.SharedFetches.WithLabelValues("docker.io", "blob")); shared != clients-1 {
		t.Errorf("shared fetch metric = %v, want %d", shared, clients-1)
	}
}

// A client that hangs up does not abort the download others and the cache
// depend on.
func TestClientDisconnectKeepsFetch(t *testing.T) {
	s := newStack(t, stackOptions{})
	img := s.backend.PushImage(t, "library/mid", "1", testhub.ImageOptions{LayerSize: 8 << 20, Uncompressed: true})
	layer := img.Layers[0]
	s.hub.SetThrottle(8 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", s.srv.URL+"/v2/library/mid/blobs/"+layer.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(resp.Body, make([]byte, 1024))
	cancel()
	resp.Body.Close()
	s.hub.SetThrottle(0)
	if err := s.fetchBlob("library/mid", layer); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := s.app.Store.Stat(context.Background(), layer); return err == nil })
	if n := s.hub.Counts().BlobGETs[layer]; n != 1 {
		t.Fatalf("layer fetched %d times, want 1", n)
	}
}

// Acceptance 4: once warm, a cached tag is served through 429, 500 and
// dropped connections; an uncached tag gets 429 or 503 as OCI JSON.
func TestServeStaleOnUpstreamError(t *testing.T) {
	tests := []struct {
		fault      testhub.Fault
		wantStatus []int
		wantCode   string
	}{
		{testhub.Fault429, []int{429}, "TOOMANYREQUESTS"},
		{testhub.Fault500, []int{503}, "UNAVAILABLE"},
		{testhub.FaultDrop, []int{503}, "UNAVAILABLE"},
	}
	for _, tc := range tests {
		t.Run(tc.fault.String(), func(t *testing.T) {
			// A fresh stack each time: after a 429 regcache rightly leaves
			// the origin alone for its Retry-After.
			s := newStack(t, stackOptions{tagTTL: "0s"})
			img := s.backend.PushImage(t, "library/nginx", "1.25", testhub.ImageOptions{})
			s.backend.PushImage(t, "library/redis", "7", testhub.ImageOptions{})
			if _, err := s.pull("library/nginx", "1.25"); err != nil {
				t.Fatal(err)
			}
			s.hub.SetFault(tc.fault)
			defer s.hub.SetFault(testhub.FaultNone)
			resp, body := s.do("GET", "/v2/library/nginx/manifests/1.25", map[string]string{"Accept": acceptAll})
			if resp.StatusCode != 200 || digest.FromBytes(body) != img.Digest {
				t.Fatalf("cached tag: status %d, body %q", resp.StatusCode, body)
			}
			if resp.Header.Get("X-Regcache") != "stale" || resp.Header.Get("Warning") == "" {
				t.Errorf("stale answer not marked: %v", resp.Header)
			}
			if d, err := s.pull("library/nginx", "1.25"); err != nil || d != img.Digest {
				t.Fatalf("whole pull of the cached tag: %v", err)
			}
			resp, body = s.do("GET", "/v2/library/redis/manifests/7", map[string]string{"Accept": acceptAll})
			code, msg := ociError(t, body)
			if resp.StatusCode != tc.wantStatus[0] || code != tc.wantCode {
				t.Fatalf("uncached tag: %d %s %q", resp.StatusCode, code, msg)
			}
			if !strings.Contains(msg, "docker.io") {
				t.Errorf("message does not name the upstream: %q", msg)
			}
			if tc.fault == testhub.Fault429 && (!strings.Contains(msg, "auth") || resp.Header.Get("Retry-After") == "") {
				t.Errorf("429 should name the remedy and carry Retry-After: %q %v", msg, resp.Header)
			}
			reason := "error"
			if tc.fault == testhub.Fault429 {
				reason = "rate_limited"
			}
			if n := testutil.ToFloat64(s.app.Metrics.StaleServed.WithLabelValues("docker.io", reason)); n < 1 {
				t.Errorf("stale %s counter = %v", reason, n)
			}
			if !strings.Contains(s.logs.String(), "serving cached tag") {
				t.Errorf("no log line for the stale answer")
			}
		})
	}
}

// Acceptance 5: corrupted upstream bytes reach no cache and fail the client;
// the same pull works once the fault is gone.
func TestCorruptUpstreamNeverCached(t *testing.T) {
	for _, scope := range []testhub.Scope{testhub.ScopeManifests, testhub.ScopeBlobs} {
		t.Run(fmt.Sprint("scope", scope), func(t *testing.T) {
			s := newStack(t, stackOptions{})
			img := s.backend.PushImage(t, "library/python", "3.12", testhub.ImageOptions{LayerSize: 1 << 20})
			s.hub.SetFaultFor(testhub.FaultCorrupt, scope)
			if _, err := s.pull("library/python", "3.12"); err == nil {
				t.Fatal("a pull of corrupted content succeeded")
			}
			// Nothing may enter the cache later either: let every
			// download end before looking.
			if err := s.app.Cache.Drain(context.Background()); err != nil {
				t.Fatal(err)
			}
			corrupted := []digest.Digest{img.Digest}
			if scope == testhub.ScopeBlobs {
				corrupted = append([]digest.Digest{img.Config}, img.Layers...)
			}
			for _, d := range corrupted {
				if _, err := s.app.Store.Stat(context.Background(), d); err == nil {
					t.Errorf("%s entered the cache", d)
				}
			}
			if entries, _ := os.ReadDir(filepath.Join(s.app.Store.(*store.FS).Root(), "tmp")); len(entries) != 0 {
				t.Errorf("%d temp files left", len(entries))
			}
			s.hub.SetFault(testhub.FaultNone)
			if d, err := s.pull("library/python", "3.12"); err != nil || d != img.Digest {
				t.Fatalf("pull after clearing the fault: %v", err)
			}
		})
	}
}

// A small blob is held back whole until it verifies, so a corrupted one
// gets OCI error JSON with a 502, not a 200 that is then cut short; a
// large one has its headers sent with its first bytes and can only be cut.
func TestCorruptSmallBlobGetsAnError(t *testing.T) {
	s := newStack(t, stackOptions{})
	img := s.backend.PushImage(t, "library/busybox", "1", testhub.ImageOptions{})
	s.hub.SetFaultFor(testhub.FaultCorrupt, testhub.ScopeBlobs)
	resp, err := http.Get(s.srv.URL + "/v2/library/busybox/blobs/" + img.Config.String())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("corrupted config blob: %d %q, want 502", resp.StatusCode, body)
	}
	if code, msg := ociError(t, body); code != "DIGEST_INVALID" {
		t.Errorf("corrupted config blob: code %s (%s), want DIGEST_INVALID", code, msg)
	}
	if resp.Header.Get("Docker-Content-Digest") != "" || resp.Header.Get("Etag") != "" {
		t.Errorf("the error carries the blob's headers: %v", resp.Header)
	}
	s.hub.SetFault(testhub.FaultNone)
	if err := s.fetchBlob("library/busybox", img.Config); err != nil {
		t.Fatalf("after clearing the fault: %v", err)
	}
}

// A download cut off mid-body never becomes visible and the next request
// fetches it again.
func TestCutOffDownloadNotCached(t *testing.T) {
	s := newStack(t, stackOptions{})
	img := s.backend.PushImage(t, "library/go", "1", testhub.ImageOptions{LayerSize: 4 << 20, Uncompressed: true})
	s.hub.SetFaultFor(testhub.FaultDropMidBody, testhub.ScopeBlobs)
	if err := s.fetchBlob("library/go", img.Layers[0]); err == nil {
		t.Fatal("cut-off download served as complete")
	}
	if _, err := s.app.Store.Stat(context.Background(), img.Layers[0]); err == nil {
		t.Fatal("partial blob entered the cache")
	}
	s.hub.SetFault(testhub.FaultNone)
	if err := s.fetchBlob("library/go", img.Layers[0]); err != nil {
		t.Fatal(err)
	}
}

// Acceptance 7: an unconfigured registry gets a 4xx and regcache opens no
// connection to it.
func TestUnconfiguredRegistryNoOutbound(t *testing.T) {
	s := newStack(t, stackOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	host := ln.Addr().String()
	for _, p := range []string{
		"/v2/" + host + "/team/app/manifests/latest",
		"/v2/team/app/manifests/latest?ns=" + host,
		"/v2/" + host + "/team/app/blobs/sha256:" + strings.Repeat("a", 64),
		"/v2/" + host + "/team/app/tags/list",
		"/v2/evil.example.com/x/manifests/latest",
	} {
		resp, body := s.do("GET", p, nil)
		if resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Errorf("%s: status %d", p, resp.StatusCode)
		}
		if code, _ := ociError(t, body); code != "NAME_UNKNOWN" {
			t.Errorf("%s: code %s", p, code)
		}
	}
	time.Sleep(100 * time.Millisecond) // let a stray dial, if any, land
	if n := accepted.Load(); n != 0 {
		t.Fatalf("regcache opened %d connections to an unconfigured registry", n)
	}
}

// Manifests are served byte for byte, for all four media types, and a
// client that accepts fewer types is not served a cached answer meant for
// another.
func TestManifestMediaTypesAndAccept(t *testing.T) {
	s := newStack(t, stackOptions{})
	docker := s.backend.PushImage(t, "library/a", "docker", testhub.ImageOptions{})
	oci := s.backend.PushImage(t, "library/a", "oci", testhub.ImageOptions{OCI: true})
	list := s.backend.PushIndex(t, "library/a", "list", []string{"linux/amd64", "linux/arm64"}, false)
	index := s.backend.PushIndex(t, "library/a", "index", []string{"linux/amd64", "linux/arm64"}, true)
	tests := []struct {
		tag       string
		digest    digest.Digest
		mediaType string
		body      []byte
	}{
		{"docker", docker.Digest, docker.MediaType, docker.Manifest},
		{"oci", oci.Digest, oci.MediaType, oci.Manifest},
		{"list", list.Digest, list.MediaType, list.Manifest},
		{"index", index.Digest, index.MediaType, index.Manifest},
	}
	for _, tc := range tests {
		t.Run(tc.tag, func(t *testing.T) {
			for _, method := range []string{"GET", "HEAD"} {
				resp, body := s.do(method, "/v2/library/a/manifests/"+tc.tag, map[string]string{"Accept": acceptAll})
				if resp.StatusCode != 200 {
					t.Fatalf("%s: %d %s", method, resp.StatusCode, body)
				}
				if ct := resp.Header.Get("Content-Type"); ct != tc.mediaType {
					t.Errorf("%s Content-Type %q, want %q", method, ct, tc.mediaType)
				}
				if dg := resp.Header.Get("Docker-Content-Digest"); dg != tc.digest.String() {
					t.Errorf("%s digest %s, want %s", method, dg, tc.digest)
				}
				if resp.Header.Get("Content-Length") != fmt.Sprint(len(tc.body)) {
					t.Errorf("%s Content-Length %s, want %d", method, resp.Header.Get("Content-Length"), len(tc.body))
				}
				if resp.Header.Get("Docker-Distribution-Api-Version") != "registry/2.0" {
					t.Errorf("no API version header")
				}
				if method == "GET" && string(body) != string(tc.body) {
					t.Errorf("bytes differ from the upstream's")
				}
			}
			// And by digest.
			resp, body := s.do("GET", "/v2/library/a/manifests/"+tc.digest.String(), nil)
			if resp.StatusCode != 200 || string(body) != string(tc.body) || resp.Header.Get("Content-Type") != tc.mediaType {
				t.Errorf("by digest: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
		})
	}
	// A client that accepts only OCI manifests must not get the cached index
	// for "index": its answer is asked of the upstream under its own key.
	heads := s.hub.Counts().ManifestHEADs
	resp, body := s.do("GET", "/v2/library/a/manifests/index", map[string]string{"Accept": "application/vnd.oci.image.manifest.v1+json"})
	if s.hub.Counts().ManifestHEADs != heads+1 {
		t.Errorf("a different Accept set was answered from another set's cache entry")
	}
	if resp.StatusCode == 200 && digest.FromBytes(body) == index.Digest {
		t.Logf("upstream chose to send the index to an OCI-manifest-only client")
	}
}

// Blob GET with Range, HEAD, and tags/list pagination pass through.
func TestBlobRangeHeadAndTags(t *testing.T) {
	s := newStack(t, stackOptions{})
	img := s.backend.PushImage(t, "library/r", "1", testhub.ImageOptions{LayerSize: 64 << 10, Uncompressed: true})
	for _, tag := range []string{"2", "3", "4"} {
		s.backend.PushImage(t, "library/r", tag, testhub.ImageOptions{})
	}
	layer := img.Layers[0]
	// The expected bytes come straight from the real registry behind the hub.
	upResp, err := http.Get(s.backend.URL + "/v2/library/r/blobs/" + layer.String())
	if err != nil {
		t.Fatal(err)
	}
	full, err := io.ReadAll(upResp.Body)
	upResp.Body.Close()
	if err != nil || int64(len(full)) != img.Size {
		t.Fatalf("reading the layer from the registry: %v, %d bytes", err, len(full))
	}
	resp, _ := s.do("HEAD", "/v2/library/r/blobs/"+layer.String(), nil)
	if resp.StatusCode != 200 || resp.ContentLength != img.Size {
		t.Fatalf("HEAD uncached blob: %d, length %d want %d", resp.StatusCode, resp.ContentLength, img.Size)
	}
	// Range on the first (in-flight) request and on the cached blob.
	for _, when := range []string{"cold", "cached"} {
		resp, body := s.do("GET", "/v2/library/r/blobs/"+layer.String(), map[string]string{"Range": "bytes=100-199"})
		if resp.StatusCode != 206 || len(body) != 100 || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 100-199/%d", img.Size) {
			t.Fatalf("%s Range: %d, %d bytes, %q", when, resp.StatusCode, len(body), resp.Header.Get("Content-Range"))
		}
		if when == "cold" {
			if err := s.app.Cache.Drain(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		if string(body) != string(full[100:200]) {
			t.Fatalf("%s Range: wrong bytes", when)
		}
	}
	resp, body := s.do("GET", "/v2/library/r/tags/list?n=2", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"1"`) {
		t.Fatalf("tags/list: %d %s", resp.StatusCode, body)
	}
	if link := resp.Header.Get("Link"); !strings.HasPrefix(link, "</v2/library/r/tags/list?") || !strings.Contains(link, "last=") {
		t.Fatalf("Link not rewritten to this server: %q", link)
	}
	resp, _ = s.do("GET", "/v2/docker.io/library/r/tags/list?n=2&last=2", nil)
	if link := resp.Header.Get("Link"); link != "" && !strings.HasPrefix(link, "</v2/docker.io/library/r/tags/list?") {
		t.Fatalf("host-in-path Link: %q", link)
	}
}

// Token and Basic auth flows, and redirects to a CDN that must not see the
// credentials.
func TestUpstreamAuthModes(t *testing.T) {
	tests := []struct {
		name string
		hub  testhub.Options
		user string
	}{
		{"anonymous bearer", testhub.Options{}, ""},
		{"credentialed bearer", testhub.Options{}, "ci-user"},
		{"basic", testhub.Options{BasicAuth: true}, "ci-user"},
		{"bearer with CDN redirect", testhub.Options{BlobRedirect: true}, "ci-user"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStack(t, stackOptions{hub: tc.hub, user: tc.user})
			img := s.backend.PushImage(t, "team/app", "v1", testhub.ImageOptions{Layers: 2})
			if d, err := s.pull("team/app", "v1"); err != nil || d != img.Digest {
				t.Fatalf("pull: %v", err)
			}
			c := s.hub.Counts()
			if c.CDNAuthHeaders != 0 {
				t.Fatalf("the CDN received %d Authorization headers", c.CDNAuthHeaders)
			}
			if tc.hub.BlobRedirect && c.CDNRequests == 0 {
				t.Fatalf("blobs were not redirected")
			}
		})
	}
}

// Push and delete are refused with 405 UNSUPPORTED.
func TestReadOnly(t *testing.T) {
	s := newStack(t, stackOptions{})
	for _, r := range []struct{ method, path string }{
		{"POST", "/v2/library/alpine/blobs/uploads/"},
		{"PUT", "/v2/library/alpine/manifests/latest"},
		{"DELETE", "/v2/library/alpine/manifests/latest"},
		{"PATCH", "/v2/library/alpine/blobs/uploads/abc"},
		{"DELETE", "/v2/library/alpine/blobs/sha256:" + strings.Repeat("a", 64)},
	} {
		resp, body := s.do(r.method, r.path, nil)
		if code, _ := ociError(t, body); resp.StatusCode != 405 || code != "UNSUPPORTED" {
			t.Errorf("%s %s: %d %s", r.method, r.path, resp.StatusCode, code)
		}
	}
	if s.hub.Counts().Requests != 0 {
		t.Errorf("a refused write reached the upstream")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// regcache starts with every upstream unreachable and serves what it has
// cached; nothing is contacted at start-up.
func TestStartsOfflineAndServesCache(t *testing.T) {
	s := newStack(t, stackOptions{tagTTL: "0s"})
	img := s.backend.PushImage(t, "library/alpine", "3.19", testhub.ImageOptions{})
	if _, err := s.pull("library/alpine", "3.19"); err != nil {
		t.Fatal(err)
	}
	if err := s.app.Cache.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A port nothing listens on.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	yaml := fmt.Sprintf("storage: {root: %s}\ntag_ttl: 0s\nupstream_timeout: 2s\nregistries:\n  docker.io:\n    url: http://%s\n", s.app.Store.(*store.FS).Root(), dead)
	cfg, err := config.Parse([]byte(yaml), "offline")
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("start-up with the upstream down: %v", err)
	}
	s.srv.Config.Handler = a.Handler
	s.app = a
	if d, err := s.pull("library/alpine", "3.19"); err != nil || d != img.Digest {
		t.Fatalf("offline pull of a cached tag: %v", err)
	}
	resp, body := s.do("GET", "/v2/library/alpine/manifests/edge", nil)
	if code, _ := ociError(t, body); resp.StatusCode != 503 || code != "UNAVAILABLE" {
		t.Fatalf("uncached tag offline: %d %s", resp.StatusCode, code)
	}
}

// Content is stored once per digest, but a repository only gets content the
// upstream confirms it has: knowing a private blob's digest is not enough to
// read it through another repository's name.
func TestCachedContentIsScopedToRepositories(t *testing.T) {
	s := newStack(t, stackOptions{})
	img := s.backend.PushImage(t, "private/secret", "1", testhub.ImageOptions{})
	if _, err := s.pull("private/secret", "1"); err != nil {
		t.Fatal(err)
	}
	s.backend.PushImage(t, "public/app", "1", testhub.ImageOptions{})
	for _, p := range []string{
		"/v2/public/app/blobs/" + img.Layers[0].String(),
		"/v2/public/app/manifests/" + img.Digest.String(),
	} {
		resp, body := s.do("GET", p, nil)
		if resp.StatusCode != 404 {
			t.Fatalf("%s: %d %q — cached content leaked across repositories", p, resp.StatusCode, body)
		}
	}
}

// With storage.max_size set, the least recently used content is evicted and
// an evicted blob is simply fetched again.
func TestStoreSizeBound(t *testing.T) {
	s := newStack(t, stackOptions{})
	var imgs []testhub.Image
	for i := 0; i < 3; i++ {
		imgs = append(imgs, s.backend.PushImage(t, "library/gc", fmt.Sprint(i), testhub.ImageOptions{LayerSize: 1 << 20, Uncompressed: true}))
	}
	for _, img := range imgs {
		if _, err := s.pull("library/gc", img.Tag); err != nil {
			t.Fatal(err)
		}
		// Clients get verified bytes before the blob is made durable.
		if err := s.app.Cache.Drain(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// Age everything past the in-use grace, image 0's layer the most.
	old := time.Now().Add(-2 * time.Hour)
	filepath.WalkDir(filepath.Join(s.app.Store.(*store.FS).Root(), "blobs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			at := old
			if filepath.Base(p) == imgs[0].Layers[0].Encoded() {
				at = old.Add(-time.Hour)
			}
			os.Chtimes(p, at, at)
		}
		return nil
	})
	s.app.cfg.Storage.MaxSize = 2<<20 + 512<<10
	s.app.collect(context.Background())
	if got := testutil.ToFloat64(s.app.Metrics.EvictedBytes); got < 1<<20 {
		t.Fatalf("evicted %v bytes", got)
	}
	if _, err := s.app.Store.Stat(context.Background(), imgs[0].Layers[0]); err == nil {
		t.Fatal("the least recently used layer survived")
	}
	before := s.hub.Counts().BlobGETs[imgs[0].Layers[0]]
	if d, err := s.pull("library/gc", "0"); err != nil || d != imgs[0].Digest {
		t.Fatalf("pull after eviction: %v", err)
	}
	if s.hub.Counts().BlobGETs[imgs[0].Layers[0]] != before+1 {
		t.Fatal("evicted layer was not fetched again")
	}
}
