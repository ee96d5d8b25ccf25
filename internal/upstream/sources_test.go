package upstream

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regcache/regcache/internal/metrics"
	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
)

// codeFor is the OCI error code a registry sends with status.
func codeFor(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return "UNAUTHORIZED"
	case status == http.StatusForbidden:
		return "DENIED"
	case status == http.StatusTooManyRequests:
		return "TOOMANYREQUESTS"
	case status >= 500:
		return "UNAVAILABLE"
	}
	return "UNKNOWN"
}

// failWith makes f answer every /v2/<repo>/... request with status, and
// counts those requests.
func failWith(f *fakeRegistry, status int) *atomic.Int64 {
	var n atomic.Int64
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hook = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/v2/" {
			return false
		}
		n.Add(1)
		if status == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		ociError(w, status, codeFor(status), "injected")
		return true
	}
	return &n
}

func TestMirrorOrderAndSkipping(t *testing.T) {
	blob := []byte("layer from somewhere")
	d := digest.FromBytes(blob)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	tests := []struct {
		name       string
		first      func(t *testing.T) string // URL of the first mirror
		wantSource string
	}{
		{"first mirror has it", func(t *testing.T) string {
			f := newFakeRegistry(t, "anon")
			f.putBlob(blob)
			return f.srv.URL
		}, "first"},
		{"404 skipped", func(t *testing.T) string { return newFakeRegistry(t, "anon").srv.URL }, "second"},
		{"429 skipped", func(t *testing.T) string {
			f := newFakeRegistry(t, "anon")
			failWith(f, http.StatusTooManyRequests)
			return f.srv.URL
		}, "second"},
		{"500 skipped", func(t *testing.T) string {
			f := newFakeRegistry(t, "anon")
			failWith(f, http.StatusInternalServerError)
			return f.srv.URL
		}, "second"},
		{"unreachable skipped", func(*testing.T) string { return closed.URL }, "second"},
		{"401 skipped", func(t *testing.T) string { return newFakeRegistry(t, "basic").srv.URL }, "second"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			second := newFakeRegistry(t, "bearer")
			second.putBlob(blob)
			origin := newFakeRegistry(t, "anon")
			origin.putBlob(blob)
			// A mirror that does not carry the repository is never asked.
			other := newFakeRegistry(t, "anon")
			other.putBlob(blob)

			r := newRegistryT(t, Config{URL: origin.srv.URL, Mirrors: []MirrorConfig{
				{Name: "other", URL: other.srv.URL, Repositories: []string{"bitnami/*"}},
				{Name: "first", URL: tt.first(t), Repositories: []string{"library/*"}},
				{Name: "second", URL: second.srv.URL},
			}}, newFakeClock())

			b, err := r.Blob(context.Background(), repo(t, "library/node"), d, int64(len(blob)))
			if err != nil {
				t.Fatal(err)
			}
			got, err := readBlob(b)
			if err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("body %q, err %v", got, err)
			}
			if b.Source != tt.wantSource {
				t.Errorf("Source = %q, want %q", b.Source, tt.wantSource)
			}
			if n := origin.count("GET /v2/library/node/blobs/" + d.String()); n != 0 {
				t.Errorf("origin asked %d times though a mirror had the blob", n)
			}
			if pings, _ := other.stats(); pings != 0 || len(other.requests()) != 0 {
				t.Errorf("mirror for bitnami/* was asked about library/node")
			}

			desc, err := r.StatBlob(context.Background(), repo(t, "library/node"), d)
			if err != nil || desc.Size != int64(len(blob)) {
				t.Errorf("StatBlob = %+v, %v", desc, err)
			}
		})
	}
}

func TestMirrorFallsBackToOrigin(t *testing.T) {
	blob := []byte("only at the origin")
	d := digest.FromBytes(blob)
	mirror := newFakeRegistry(t, "anon")
	origin := newFakeRegistry(t, "anon")
	origin.putBlob(blob)
	r := newRegistryT(t, Config{URL: origin.srv.URL, Mirrors: []MirrorConfig{{URL: mirror.srv.URL}}}, newFakeClock())
	b, err := r.Blob(context.Background(), repo(t, "library/node"), d, -1)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if b.Source != SourceOrigin {
		t.Errorf("Source = %q, want origin", b.Source)
	}
	// Nowhere at all: the origin's 404 is what the caller sees.
	_, err = r.Blob(context.Background(), repo(t, "library/node"), digest.FromString("nowhere"), -1)
	if e := asError(t, err); e.Kind != regerr.NotFound || e.Registry != "docker.io" {
		t.Errorf("want the origin's not-found, got %v", err)
	}
}

func TestMirrorRepoMapping(t *testing.T) {
	// ECR Public: docker.io's library/node is public.ecr.aws/docker/library/node.
	man := []byte(testManifest)
	blob := []byte("node layer")
	mirror := newFakeRegistry(t, "bearer")
	md := mirror.putManifest("docker/library/node", "", ocispec.MediaTypeImageManifest, man)
	bd := mirror.putBlob(blob)
	origin := newFakeRegistry(t, "anon")
	r := newRegistryT(t, Config{URL: origin.srv.URL, Mirrors: []MirrorConfig{
		{URL: mirror.srv.URL, RepoPrefix: "docker/", Repositories: []string{"library/*"}},
	}}, newFakeClock())
	ctx := context.Background()

	m, err := r.Manifest(ctx, repo(t, "library/node"), md, AnySource)
	if err != nil {
		t.Fatal(err)
	}
	wantSource := mirror.host() + "/docker"
	if m.Source != wantSource || m.Digest != md {
		t.Errorf("manifest from %q digest %s; want %q %s", m.Source, m.Digest, wantSource, md)
	}
	b, err := r.Blob(ctx, repo(t, "library/node"), bd, int64(len(blob)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readBlob(b); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"GET /v2/docker/library/node/manifests/" + md.String(), "GET /v2/docker/library/node/blobs/" + bd.String()} {
		if mirror.count(p) != 1 {
			t.Errorf("mirror did not see %s: %v", p, mirror.requests())
		}
	}
	if got := origin.requests(); len(got) != 0 {
		t.Errorf("origin was asked: %v", got)
	}
}

func TestWrongDigestMirrorRejected(t *testing.T) {
	good := []byte(testManifest)
	d := digest.FromBytes(good)
	liar := newFakeRegistry(t, "anon")
	liar.mu.Lock()
	liar.manifests["library/node@"+d.String()] = fakeManifest{mediaType: ocispec.MediaTypeImageManifest, data: []byte(`{"schemaVersion":2,"evil":true}`), header: d.String()}
	liar.mu.Unlock()
	liarBlob := digest.FromString("real layer")
	liar.mu.Lock()
	liar.blobs[liarBlob] = []byte("corrupted layer")
	liar.mu.Unlock()

	origin := newFakeRegistry(t, "anon")
	origin.putManifest("library/node", "", ocispec.MediaTypeImageManifest, good)
	r := newRegistryT(t, Config{URL: origin.srv.URL, Mirrors: []MirrorConfig{{Name: "liar", URL: liar.srv.URL}}}, newFakeClock())
	ctx := context.Background()

	m, err := r.Manifest(ctx, repo(t, "library/node"), d, AnySource)
	if err != nil {
		t.Fatal(err)
	}
	if m.Source != SourceOrigin || !bytes.Equal(m.Data, good) {
		t.Errorf("got %q from %q; want the origin's bytes", m.Data, m.Source)
	}
	if liar.count("GET /v2/library/node/manifests/"+d.String()) != 1 {
		t.Error("the mirror was not tried first")
	}
	if st := r.Sources()[0]; st.Failures != 1 {
		t.Errorf("wrong digest did not count against the mirror: %+v", st)
	}

	// A blob is streamed, so the mismatch shows at the end of the body.
	b, err := r.Blob(ctx, repo(t, "library/node"), liarBlob, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err = readBlob(b); !regerr.Is(err, regerr.BadContent) {
		t.Errorf("corrupt mirror blob: read error %v, want BadContent", err)
	}
	if st := r.Sources()[0]; st.Failures != 2 {
		t.Errorf("corrupt blob did not count against the mirror: %+v", st)
	}
}

func TestBreaker(t *testing.T) {
	clock := newFakeClock()
	b := newBreaker(clock.Now)
	fail := func() {
		ok, probe := b.allow()
		if !ok {
			t.Fatal("refused while it should allow")
		}
		b.done(probe, outcomeFailure, 0, "")
	}
	for range breakerThreshold {
		fail()
	}
	if st, _, _ := b.state(); st != BreakerOpen {
		t.Fatalf("state %s after %d failures, want open", st, breakerThreshold)
	}
	if ok, _ := b.allow(); ok {
		t.Fatal("open breaker let a request through")
	}
	clock.Advance(breakerMinBackoff)
	if st, _, _ := b.state(); st != BreakerHalfOpen {
		t.Fatalf("state %s after backoff, want half-open", st)
	}
	ok, probe := b.allow()
	if !ok || !probe {
		t.Fatal("half-open breaker refused the probe")
	}
	if ok, _ := b.allow(); ok {
		t.Fatal("half-open breaker let a second request through during the probe")
	}
	b.done(true, outcomeFailure, 0, "")
	// A failed probe reopens for twice as long.
	clock.Advance(breakerMinBackoff)
	if ok, _ := b.allow(); ok {
		t.Fatal("reopened breaker used the first backoff again")
	}
	clock.Advance(breakerMinBackoff)
	ok, probe = b.allow()
	if !ok || !probe {
		t.Fatal("no probe after the doubled backoff")
	}
	// A 404 proves the source is up.
	b.done(true, outcomeSuccess, 0, "")
	if st, f, _ := b.state(); st != BreakerClosed || f != 0 {
		t.Fatalf("state %s failures %d after good probe, want closed 0", st, f)
	}
	// Neutral outcomes do not open it, and free the probe slot.
	for range breakerThreshold + 1 {
		ok, probe := b.allow()
		if !ok {
			t.Fatal("neutral outcomes opened the breaker")
		}
		b.done(probe, outcomeNeutral, 0, "")
	}
	// Retry-After longer than the backoff wins.
	for range breakerThreshold - 1 {
		fail()
	}
	ok, probe = b.allow()
	b.done(probe, outcomeFailure, time.Hour, "")
	clock.Advance(30 * time.Minute)
	if ok, _ := b.allow(); ok {
		t.Fatal("breaker reopened before the source's Retry-After")
	}
}

func TestMirrorBreakerOpensAndHalfOpens(t *testing.T) {
	blob := []byte("x")
	d := digest.FromBytes(blob)
	mirror := newFakeRegistry(t, "anon")
	hits := failWith(mirror, http.StatusInternalServerError)
	origin := newFakeRegistry(t, "anon")
	origin.putBlob(blob)
	clock := newFakeClock()
	r := newRegistryT(t, Config{URL: origin.srv.URL, Mirrors: []MirrorConfig{{Name: "m", URL: mirror.srv.URL}}}, clock)
	ctx := context.Background()
	get := func() string {
		t.Helper()
		b, err := r.Blob(ctx, repo(t, "library/node"), d, int64(len(blob)))
		if err != nil {
			t.Fatal(err)
		}
		// Read to the end: a blob is judged on its whole body.
		if _, err := readBlob(b); err != nil {
			t.Fatal(err)
		}
		return b.Source
	}
	for range breakerThreshold {
		get()
	}
	if got := hits.Load(); got != breakerThreshold {
		t.Fatalf("mirror hits = %d, want %d", got, breakerThreshold)
	}
	for range 5 {
		if src := get(); src != SourceOrigin {
			t.Fatalf("Source = %q", src)
		}
	}
	if got := hits.Load(); got != breakerThreshold {
		t.Errorf("open breaker still sent %d requests to the mirror", got-breakerThreshold)
	}
	if st := r.Sources()[0]; st.State != BreakerOpen {
		t.Errorf("Sources()[0] = %+v, want open", st)
	}
	// After the backoff one probe goes through; it fails, so the breaker
	// reopens and the next call skips the mirror again.
	clock.Advance(breakerMinBackoff)
	get()
	get()
	if got := hits.Load(); got != breakerThreshold+1 {
		t.Errorf("half-open sent %d probes, want 1", got-breakerThreshold)
	}
	// The mirror recovers: the next probe closes the breaker.
	mirror.mu.Lock()
	mirror.hook = nil
	mirror.mu.Unlock()
	mirror.putBlob(blob)
	clock.Advance(2 * breakerMinBackoff)
	if src := get(); src != "m" {
		t.Errorf("after recovery Source = %q, want the mirror", src)
	}
	if st := r.Sources()[0]; st.State != BreakerClosed || !strings.Contains(st.LastError, "status 500") {
		t.Errorf("after a good probe: %+v (the last failure stays on record)", st)
	}
}

func TestMirror404DoesNotOpenBreaker(t *testing.T) {
	mirror := newFakeRegistry(t, "anon")
	origin := newFakeRegistry(t, "anon")
	blob := []byte("x")
	d := origin.putBlob(blob)
	r := newRegistryT(t, Config{URL: origin.srv.URL, Mirrors: []MirrorConfig{{URL: mirror.srv.URL}}}, newFakeClock())
	for range breakerThreshold * 2 {
		b, err := r.Blob(context.Background(), repo(t, "library/node"), d, -1)
		if err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	if got := mirror.count("GET /v2/library/node/blobs/" + d.String()); got != breakerThreshold*2 {
		t.Errorf("mirror asked %d times, want every time", got)
	}
	if st := r.Sources()[0]; st.State != BreakerClosed {
		t.Errorf("404s opened the breaker: %+v", st)
	}
}

func TestOriginBreaker(t *testing.T) {
	origin := newFakeRegistry(t, "anon")
	hits := failWith(origin, http.StatusBadGateway)
	clock := newFakeClock()
	r := newRegistryT(t, Config{URL: origin.srv.URL}, clock)
	for range breakerThreshold + 3 {
		_, err := r.HeadManifest(context.Background(), repo(t, "library/node"), byTag(t, "22"), nil)
		if !regerr.Is(err, regerr.Unavailable) {
			t.Fatalf("want unavailable, got %v", err)
		}
	}
	if got := hits.Load(); got != breakerThreshold {
		t.Errorf("origin hit %d times, want %d before the breaker opened", got, breakerThreshold)
	}
	_, err := r.ManifestByTag(context.Background(), repo(t, "library/node"), tag(t, "22"), nil)
	if e := asError(t, err); e.Op != "GET manifest" || e.Repo != "library/node" || e.Kind != regerr.Unavailable || e.RetryAfter <= 0 || !isNotSent(err) {
		t.Errorf("circuit-open error = %#v", e)
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	origin := newFakeRegistry(t, "anon")
	origin.putManifest("library/node", "22", ocispec.MediaTypeImageManifest, []byte(testManifest))
	var limited atomic.Bool
	limited.Store(true)
	var gets atomic.Int64
	origin.hook = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") {
			gets.Add(1)
			if limited.Load() {
				// Docker Hub's pull limit: counted GETs refused, headers sent.
				w.Header().Set("Ratelimit-Limit", "100;w=21600")
				w.Header().Set("Ratelimit-Remaining", "0;w=21600")
				w.Header().Set("Retry-After", "60")
				ociError(w, http.StatusTooManyRequests, "TOOMANYREQUESTS", "You have reached your pull rate limit.")
				return true
			}
		}
		return false
	}
	clock := newFakeClock()
	r := newRegistryT(t, Config{URL: origin.srv.URL, Reserve: 5}, clock)
	ctx := context.Background()
	node, tg := repo(t, "library/node"), tag(t, "22")

	_, err := r.ManifestByTag(ctx, node, tg, nil)
	if e := asError(t, err); e.Kind != regerr.RateLimited || e.Status != http.StatusTooManyRequests || e.RetryAfter != time.Minute {
		t.Fatalf("want the 429, got %v", err)
	}
	if !r.BelowReserve() {
		t.Error("BelowReserve false with 0 remaining")
	}
	limited.Store(false)
	// Asked again within Retry-After: refused here, with the time left.
	_, err = r.ManifestByTag(ctx, node, tg, nil)
	if e := asError(t, err); e.Kind != regerr.RateLimited || e.RetryAfter != time.Minute || !isNotSent(err) {
		t.Fatalf("second GET within Retry-After: %#v", e)
	}
	if got := gets.Load(); got != 1 {
		t.Errorf("origin got %d manifest GETs; the second must not be sent", got)
	}
	// The pull limit does not stop the free HEAD that resolves tags.
	if _, err := r.HeadManifest(ctx, node, byTag(t, "22"), nil); err != nil {
		t.Errorf("HEAD during a pull-limit pause: %v", err)
	}
	// Nor does it open the origin's breaker.
	if st := r.Sources()[0]; st.State != BreakerClosed {
		t.Errorf("429 opened the origin breaker: %+v", st)
	}
	clock.Advance(61 * time.Second)
	if _, err := r.ManifestByTag(ctx, node, tg, nil); err != nil {
		t.Fatalf("after Retry-After: %v", err)
	}
	if got := gets.Load(); got != 2 {
		t.Errorf("manifest GETs = %d, want 2", got)
	}
}

// TestBare429PausesItsClass: an abuse limit (a bare 429 on a HEAD) holds
// back manifest requests until its backoff has passed; nothing is sent
// meanwhile.
func TestBare429PausesItsClass(t *testing.T) {
	origin := newFakeRegistry(t, "anon")
	origin.putManifest("library/node", "22", ocispec.MediaTypeImageManifest, []byte(testManifest))
	d := origin.putBlob([]byte("layer"))
	var heads atomic.Int64
	origin.hook = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/manifests/") {
			if heads.Add(1) == 1 {
				w.WriteHeader(http.StatusTooManyRequests) // abuse limit: no body, no Retry-After
				return true
			}
		}
		return false
	}
	clock := newFakeClock()
	r := newRegistryT(t, Config{URL: origin.srv.URL}, clock)
	ctx := context.Background()
	node := repo(t, "library/node")
	if _, err := r.HeadManifest(ctx, node, byTag(t, "22"), nil); !regerr.Is(err, regerr.RateLimited) {
		t.Fatalf("want 429, got %v", err)
	}
	_, err := r.HeadManifest(ctx, node, byTag(t, "22"), nil)
	if e := asError(t, err); e.Kind != regerr.RateLimited || e.RetryAfter != backoff429Min || !isNotSent(err) {
		t.Fatalf("want an immediate refusal with the backoff, got %#v", e)
	}
	if _, err := r.ManifestByTag(ctx, node, tag(t, "22"), nil); !regerr.Is(err, regerr.RateLimited) || !isNotSent(err) {
		t.Errorf("manifest GET during a manifests pause: %v", err)
	}
	if heads.Load() != 1 || origin.count("GET /v2/library/node/manifests/22") != 0 {
		t.Errorf("HEADs sent = %d, GETs %d; want 1 and 0", heads.Load(), origin.count("GET /v2/library/node/manifests/22"))
	}
	// Blobs are another class.
	if b, err := r.Blob(ctx, node, d, -1); err != nil {
		t.Errorf("blob during a manifests pause: %v", err)
	} else if _, err := readBlob(b); err != nil {
		t.Error(err)
	}
	clock.Advance(backoff429Min)
	if _, err := r.HeadManifest(ctx, node, byTag(t, "22"), nil); err != nil {
		t.Errorf("after backoff: %v", err)
	}
}

func TestBelowReserve(t *testing.T) {
	now := time.Date(2026, 11, 23, 13, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		budget  Budget
		reserve int
		age     time.Duration
		want    bool
	}{
		{"unknown", Budget{}, 10, 0, false},
		{"plenty", Budget{Known: true, Limit: 100, Remaining: 50, Window: 6 * time.Hour}, 10, 0, false},
		{"at reserve", Budget{Known: true, Limit: 100, Remaining: 10, Window: 6 * time.Hour}, 10, 0, true},
		{"below", Budget{Known: true, Limit: 100, Remaining: 3, Window: 6 * time.Hour}, 10, 0, true},
		{"zero reserve, none left", Budget{Known: true, Limit: 100, Remaining: 0, Window: 6 * time.Hour}, 0, 0, true},
		{"older than the window", Budget{Known: true, Limit: 100, Remaining: 0, Window: 6 * time.Hour}, 10, 7 * time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bt := newBudgetTracker("h", func() time.Time { return now.Add(tt.age) }, 0)
			tt.budget.UpdatedAt = now
			bt.b = tt.budget
			if got := bt.belowReserve(tt.reserve); got != tt.want {
				t.Errorf("belowReserve = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestTagByHeadThenDigestSpendsNoCountedPull: the cache resolves a tag
// with the origin's free HEAD and fetches the manifest by digest, which a
// mirror can serve; the origin sees no counted GET.
func TestTagByHeadThenDigestSpendsNoCountedPull(t *testing.T) {
	man := []byte(testManifest)
	origin := newFakeRegistry(t, "bearer")
	d := origin.putManifest("library/node", "22", ocispec.MediaTypeImageManifest, man)
	mirror := newFakeRegistry(t, "bearer")
	mirror.putManifest("docker/library/node", "", ocispec.MediaTypeImageManifest, man)
	r := newRegistryT(t, Config{URL: origin.srv.URL, Auth: credsFor(origin), Mirrors: []MirrorConfig{
		{URL: mirror.srv.URL, RepoPrefix: "docker", Repositories: []string{"library/*"}},
	}}, newFakeClock())
	ctx := context.Background()
	node := repo(t, "library/node")

	desc, err := r.HeadManifest(ctx, node, byTag(t, "22"), nil)
	if err != nil || desc.Digest != d {
		t.Fatalf("HeadManifest = %+v, %v", desc, err)
	}
	for _, from := range []From{AnySource, MirrorsOnly} {
		m, err := r.Manifest(ctx, node, desc.Digest, from)
		if err != nil {
			t.Fatal(err)
		}
		if m.Digest != d || m.Source == SourceOrigin || !bytes.Equal(m.Data, man) {
			t.Errorf("got %s from %q", m.Digest, m.Source)
		}
	}
	if n := origin.count("HEAD /v2/library/node/manifests/22"); n != 1 {
		t.Errorf("origin HEADs = %d, want 1", n)
	}
	for k, n := range origin.requests() {
		if strings.HasPrefix(k, "GET ") && strings.Contains(k, "/manifests/") {
			t.Errorf("counted pull at the origin: %s ×%d", k, n)
		}
	}
}

// TestMirrorsOnlyNeverAsksTheOrigin: when the budget must be kept, a
// manifest no mirror has is an error, not a counted pull.
func TestMirrorsOnlyNeverAsksTheOrigin(t *testing.T) {
	man := []byte(testManifest)
	origin := newFakeRegistry(t, "anon")
	d := origin.putManifest("library/node", "", ocispec.MediaTypeImageManifest, man)
	mirror := newFakeRegistry(t, "anon")
	r := newRegistryT(t, Config{URL: origin.srv.URL, Mirrors: []MirrorConfig{{URL: mirror.srv.URL, Repositories: []string{"library/*"}}}}, newFakeClock())
	ctx := context.Background()
	if _, err := r.Manifest(ctx, repo(t, "library/node"), d, MirrorsOnly); !regerr.Is(err, regerr.NotFound) {
		t.Errorf("mirror's 404: %v, want NotFound", err)
	}
	if _, err := r.Manifest(ctx, repo(t, "bitnami/redis"), d, MirrorsOnly); !regerr.Is(err, regerr.NotFound) || !isNotSent(err) {
		t.Errorf("no mirror carries the repository: %v, want NotFound, not sent", err)
	}
	if got := origin.requests(); len(got) != 0 {
		t.Errorf("the origin was asked: %v", got)
	}
}

func TestTagAtMirror(t *testing.T) {
	man := []byte(testManifest)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	empty := newFakeRegistry(t, "anon")
	mirror := newFakeRegistry(t, "anon")
	d := mirror.putManifest("docker/library/node", "22", ocispec.MediaTypeImageManifest, man)
	other := newFakeRegistry(t, "anon")
	r := newRegistryT(t, Config{URL: closed.URL, Mirrors: []MirrorConfig{
		{Name: "empty", URL: empty.srv.URL, Repositories: []string{"library/*"}},
		{Name: "ecr", URL: mirror.srv.URL, RepoPrefix: "docker/", Repositories: []string{"library/*"}},
		{Name: "other", URL: other.srv.URL, Repositories: []string{"library/*"}},
	}}, newFakeClock())
	ctx := context.Background()
	node := repo(t, "library/node")

	if _, err := r.HeadManifest(ctx, node, byTag(t, "22"), nil); !regerr.Is(err, regerr.Unavailable) {
		t.Fatalf("origin should be down: %v", err)
	}
	m, err := r.TagAtMirror(ctx, node, tag(t, "22"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Source != "ecr" || m.Digest != d {
		t.Errorf("got %s from %q", m.Digest, m.Source)
	}
	if n := other.count("GET /v2/library/node/manifests/22"); n != 0 {
		t.Errorf("a mirror after the one that answered was asked %d times", n)
	}
	// No mirror carries it: refused without a request. (It used to be
	// neither not-found nor unavailable; it is now a NotFound that was
	// never sent, which the cache answers with the origin's own error.)
	_, err = r.TagAtMirror(ctx, repo(t, "bitnami/redis"), tag(t, "7"), nil)
	if !regerr.Is(err, regerr.NotFound) || !isNotSent(err) || regerr.Transient(err) {
		t.Errorf("no mirror: got %v", err)
	}
	for _, f := range []*fakeRegistry{empty, mirror, other} {
		if n := f.count("GET /v2/bitnami/redis/manifests/7"); n != 0 {
			t.Errorf("a mirror not configured for bitnami/* was asked")
		}
	}
	// A digest is not a tag: the type cannot hold one.
	if _, err := ref.NewTag(d.String()); err == nil {
		t.Error("a digest made a tag")
	}
}

func TestMirrorsNeverSeeOriginCredentials(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	mirror := newFakeRegistry(t, "anon")
	mirror.hook = func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		mu.Unlock()
		return false
	}
	origin := newFakeRegistry(t, "basic")
	blob := []byte("x")
	d := origin.putBlob(blob)
	md := origin.putManifest("library/node", "22", ocispec.MediaTypeImageManifest, []byte(testManifest))
	r := newRegistryT(t, Config{URL: origin.srv.URL, Auth: credsFor(origin), Mirrors: []MirrorConfig{{URL: mirror.srv.URL}}}, newFakeClock())
	ctx := context.Background()
	node := repo(t, "library/node")
	b, err := r.Blob(ctx, node, d, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readBlob(b); err != nil || b.Source != SourceOrigin {
		t.Fatalf("blob from %q: %v", b.Source, err)
	}
	if _, err := r.StatBlob(ctx, node, d); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Manifest(ctx, node, md, AnySource); err != nil {
		t.Fatal(err)
	}
	r.TagAtMirror(ctx, node, tag(t, "22"), nil)
	mu.Lock()
	defer mu.Unlock()
	if len(seen) < 4 {
		t.Fatalf("mirror asked %d times, want every call to try it", len(seen))
	}
	for _, a := range seen {
		if a != "" {
			t.Errorf("mirror received Authorization %q", a)
		}
	}
}

func TestMirrorConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		m    []MirrorConfig
	}{
		{"path in URL", []MirrorConfig{{URL: "https://host.example/docker"}}},
		{"bad pattern", []MirrorConfig{{URL: "https://host.example", Repositories: []string{"library/["}}}},
		{"bad prefix", []MirrorConfig{{URL: "https://host.example", RepoPrefix: "Docker Hub"}}},
		{"duplicate", []MirrorConfig{{URL: "https://a.example"}, {URL: "https://a.example"}}},
		{"credentials in URL", []MirrorConfig{{URL: "https://u:p@a.example"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(Config{Name: "docker.io", URL: "https://registry-1.docker.io", Mirrors: tt.m}); err == nil {
				t.Error("want error")
			}
		})
	}
	if _, err := New(Config{Name: "docker.io", URL: "https://registry-1.docker.io", Reserve: -1}); err == nil {
		t.Error("negative reserve accepted")
	}
}

// TestMirrorBadDigestRemembered: once a mirror has served wrong bytes for a
// digest, the next request for that digest skips it and goes to the next
// source at once, though the mirror's breaker is still closed; an hour
// later the mirror is asked again. Every mismatch is counted in metrics.
func TestMirrorBadDigestRemembered(t *testing.T) {
	good := []byte(testManifest)
	md := digest.FromBytes(good)
	layer := []byte("real layer")
	bd := digest.FromBytes(layer)
	sized := []byte("another real layer")
	sd := digest.FromBytes(sized)

	liar := newFakeRegistry(t, "anon")
	liar.mu.Lock()
	liar.manifests["library/node@"+md.String()] = fakeManifest{mediaType: ocispec.MediaTypeImageManifest, data: []byte(`{"schemaVersion":2,"evil":true}`), header: md.String()}
	liar.blobs[bd] = []byte("fake layer") // the right length, the wrong bytes
	liar.blobs[sd] = []byte("a layer of another length")
	liar.mu.Unlock()
	// The liar serves other content right, so its breaker stays closed:
	// what keeps it from being asked again is its memory of bad content.
	healthy := liar.putBlob([]byte("served right"))
	origin := newFakeRegistry(t, "anon")
	origin.putManifest("library/node", "", ocispec.MediaTypeImageManifest, good)
	origin.putBlob(layer)
	origin.putBlob(sized)
	clock := newFakeClock()
	m := metrics.New()
	r := newRegistryT(t, Config{URL: origin.srv.URL, Metrics: m, Mirrors: []MirrorConfig{{Name: "liar", URL: liar.srv.URL}}}, clock)
	ctx := context.Background()
	node := repo(t, "library/node")

	getBlob := func(d digest.Digest, size int64) func() ([]byte, string, error) {
		return func() ([]byte, string, error) {
			b, err := r.Blob(ctx, node, d, size)
			if err != nil {
				return nil, "", err
			}
			data, err := readBlob(b)
			return data, b.Source, err
		}
	}
	getManifest := func() ([]byte, string, error) {
		m, err := r.Manifest(ctx, node, md, AnySource)
		return m.Data, m.Source, err
	}
	for _, tc := range []struct {
		name    string
		get     func() ([]byte, string, error)
		want    []byte
		liarKey string
		// The first fetch of a blob is already streaming from the mirror
		// when the mismatch shows; a manifest is checked before it is
		// returned, and a blob whose Content-Length is not its size is
		// refused before its body, so those fall back to the origin at
		// once.
		firstFails bool
	}{
		{"manifest", getManifest, good, "GET /v2/library/node/manifests/" + md.String(), false},
		{"blob", getBlob(bd, int64(len(layer))), layer, "GET /v2/library/node/blobs/" + bd.String(), true},
		{"blob of the wrong length", getBlob(sd, int64(len(sized))), sized, "GET /v2/library/node/blobs/" + sd.String(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if data, src, err := getBlob(healthy, -1)(); err != nil || src != "liar" {
				t.Fatalf("content the mirror has right: %q from %q, %v", data, src, err)
			}
			data, src, err := tc.get()
			if tc.firstFails {
				if !regerr.Is(err, regerr.BadContent) {
					t.Fatalf("first fetch: err %v, want BadContent", err)
				}
			} else if err != nil || src != SourceOrigin || !bytes.Equal(data, tc.want) {
				t.Fatalf("first fetch: %q from %q, err %v; want the origin's bytes", data, src, err)
			}
			for i := range 3 {
				data, src, err := tc.get()
				if err != nil || src != SourceOrigin || !bytes.Equal(data, tc.want) {
					t.Fatalf("retry %d: %q from %q, err %v; want the origin's bytes", i, data, src, err)
				}
			}
			if n := liar.count(tc.liarKey); n != 1 {
				t.Errorf("the mirror was asked %d times for a digest it had served wrong, want 1", n)
			}
			if st := r.Sources()[0]; st.State != BreakerClosed {
				t.Errorf("mirror status %+v, want a closed breaker", st)
			}
		})
	}
	if st := r.Sources()[0]; st.BadDigests != 3 {
		t.Errorf("mirror status %+v, want 3 bad digests", st)
	}
	if got := testutil.ToFloat64(m.DigestMismatches.WithLabelValues("docker.io", "liar")); got != 3 {
		t.Errorf("digest mismatches counted for the mirror = %v, want 3", got)
	}
	if got := testutil.ToFloat64(m.DigestMismatches.WithLabelValues("docker.io", SourceOrigin)); got != 0 {
		t.Errorf("digest mismatches counted for the origin = %v, want 0", got)
	}

	clock.Advance(badContentTTL)
	if _, _, err := getManifest(); err != nil {
		t.Fatal(err)
	}
	if n := liar.count("GET /v2/library/node/manifests/" + md.String()); n != 2 {
		t.Errorf("after an hour the mirror was asked %d times in all, want 2", n)
	}
}

func TestBadContentBounded(t *testing.T) {
	clock := newFakeClock()
	b := newBadContent(clock.Now)
	first := digest.FromString("0")
	b.add(first)
	clock.Advance(time.Minute)
	for i := 1; i < badContentMax+10; i++ {
		b.add(digest.FromString(strconv.Itoa(i)))
	}
	if n := b.size(); n != badContentMax {
		t.Errorf("size %d, want the bound %d", n, badContentMax)
	}
	if b.has(first) {
		t.Error("the oldest digest was kept when the memory was full")
	}
	last := digest.FromString(strconv.Itoa(badContentMax + 9))
	if !b.has(last) {
		t.Error("the newest digest was dropped")
	}
	clock.Advance(badContentTTL)
	if b.has(last) {
		t.Error("a digest was still remembered after the TTL")
	}
}

// TestSourceLastError: a source's status names its latest failure in
// regcache's own words (status page), never in the upstream's, and keeps it
// after the source recovers; a healthy "not found" is no failure.
func TestSourceLastError(t *testing.T) {
	blob := []byte("layer")
	d := digest.FromBytes(blob)
	const upstreamText = "token=leaked-by-upstream"
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	for _, tc := range []struct {
		name    string
		mirror  func(t *testing.T) string // the mirror's URL
		want    []string                  // in LastError
		wantNot []string
	}{
		{"5xx with the upstream's own text", func(t *testing.T) string {
			f := newFakeRegistry(t, "anon")
			f.hook = func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path == "/v2/" {
					return false
				}
				ociError(w, http.StatusBadGateway, "UNKNOWN", upstreamText)
				return true
			}
			return f.srv.URL
		}, []string{"upstream m", "GET blob library/node@" + d.String(), "status 502 UNKNOWN"}, []string{upstreamText}},
		{"unreachable", func(t *testing.T) string { return closed.URL },
			[]string{"upstream m", "no answer"}, []string{"127.0.0.1", "refused"}},
		{"wrong bytes", func(t *testing.T) string {
			f := newFakeRegistry(t, "anon")
			f.blobs[d] = []byte("LAYER")
			return f.srv.URL
		}, []string{"upstream m", "hashes to"}, nil},
		{"not found is no failure", func(t *testing.T) string { return newFakeRegistry(t, "anon").srv.URL }, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			origin := newFakeRegistry(t, "anon")
			origin.putBlob(blob)
			clock := newFakeClock()
			r := newRegistryT(t, Config{URL: origin.srv.URL, Mirrors: []MirrorConfig{{Name: "m", URL: tc.mirror(t)}}}, clock)
			b, err := r.Blob(context.Background(), repo(t, "library/node"), d, int64(len(blob)))
			if err != nil {
				t.Fatal(err)
			}
			// Wrong bytes fail at the end of the body; the others are
			// served by the origin.
			_, readErr := readBlob(b)
			if (readErr != nil) != (tc.name == "wrong bytes") {
				t.Fatalf("reading the blob: %v", readErr)
			}
			st := r.Sources()[0]
			if len(tc.want) == 0 {
				if st.LastError != "" || !st.LastErrorAt.IsZero() {
					t.Errorf("LastError = %q at %v, want none", st.LastError, st.LastErrorAt)
				}
				return
			}
			for _, s := range tc.want {
				if !strings.Contains(st.LastError, s) {
					t.Errorf("LastError = %q, want it to contain %q", st.LastError, s)
				}
			}
			for _, s := range tc.wantNot {
				if strings.Contains(st.LastError, s) {
					t.Errorf("LastError = %q shows %q", st.LastError, s)
				}
			}
			if !st.LastErrorAt.Equal(clock.Now()) {
				t.Errorf("LastErrorAt = %v, want %v", st.LastErrorAt, clock.Now())
			}
			if o := r.Sources()[1]; o.LastError != "" {
				t.Errorf("the origin served; its LastError = %q", o.LastError)
			}
		})
	}
}
