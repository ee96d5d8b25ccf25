package upstream

import (
	"bytes"
	"context"
	"errors"
	"io"
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
)

// fakeClock drives breakers and Retry-After without sleeping.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 11, 23, 13, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newRegistryT(t *testing.T, cfg Config, clock *fakeClock) *Registry {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "docker.io"
	}
	r, err := newRegistry(cfg, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	return r
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
		ociError(w, status, statusCode(status, "UNKNOWN"), "injected")
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

			b, err := r.GetBlob(context.Background(), "library/node", d)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(b.Body)
			b.Body.Close()
			if err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("body %q, err %v", got, err)
			}
			if b.Source != tt.wantSource {
				t.Errorf("Source = %q, want %q", b.Source, tt.wantSource)
			}
			if n := origin.count("GET /v2/library/node/blobs/" + d.String()); n != 0 {
				t.Errorf("origin asked %d times though a mirror had the blob", n)
			}
			if pings, _ := other.stats(); pings != 0 || len(other.counts) != 0 {
				t.Errorf("mirror for bitnami/* was asked about library/node")
			}

			desc, err := r.HeadBlob(context.Background(), "library/node", d)
			if err != nil || desc.Size != int64(len(blob)) {
				t.Errorf("HeadBlob = %+v, %v", desc, err)
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
	b, err := r.GetBlob(context.Background(), "library/node", d)
	if err != nil {
		t.Fatal(err)
	}
	b.Body.Close()
	if b.Source != SourceOrigin {
		t.Errorf("Source = %q, want origin", b.Source)
	}
	// Nowhere at all: the origin's 404 is what the caller sees.
	_, err = r.GetBlob(context.Background(), "library/node", digest.FromString("nowhere"))
	var ue *Error
	if !IsNotFound(err) || !errors.As(err, &ue) || ue.Registry != "docker.io" {
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

	m, err := r.GetManifest(ctx, "library/node", md.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	wantSource := mirror.host() + "/docker"
	if m.Source != wantSource || m.Digest != md {
		t.Errorf("manifest from %q digest %s; want %q %s", m.Source, m.Digest, wantSource, md)
	}
	b, err := r.GetBlob(ctx, "library/node", bd)
	if err != nil {
		t.Fatal(err)
	}
	b.Body.Close()
	for _, p := range []string{"GET /v2/docker/library/node/manifests/" + md.String(), "GET /v2/docker/library/node/blobs/" + bd.String()} {
		if mirror.count(p) != 1 {
			t.Errorf("mirror did not see %s: %v", p, mirror.counts)
		}
	}
	if len(origin.counts) != 0 {
		t.Errorf("origin was asked: %v", origin.counts)
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

	m, err := r.GetManifest(ctx, "library/node", d.String(), nil)
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
	b, err := r.GetBlob(ctx, "library/node", liarBlob)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(b.Body)
	b.Body.Close()
	var ue *Error
	if !errors.As(err, &ue) || ue.Code != CodeDigestInvalid {
		t.Errorf("corrupt mirror blob: read error %v, want DIGEST_INVALID", err)
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
		b.done(probe, outcomeFailure, 0)
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
	b.done(true, outcomeFailure, 0)
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
	b.done(true, outcomeSuccess, 0)
	if st, f, _ := b.state(); st != BreakerClosed || f != 0 {
		t.Fatalf("state %s failures %d after good probe, want closed 0", st, f)
	}
	// Neutral outcomes do not open it, and free the probe slot.
	for range breakerThreshold + 1 {
		ok, probe := b.allow()
		if !ok {
			t.Fatal("neutral outcomes opened the breaker")
		}
		b.done(probe, outcomeNeutral, 0)
	}
	// Retry-After longer than the backoff wins.
	for range breakerThreshold - 1 {
		fail()
	}
	ok, probe = b.allow()
	b.done(probe, outcomeFailure, time.Hour)
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
		b, err := r.GetBlob(ctx, "library/node", d)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Body.Close()
		// Read to the end: a mirror's blob is judged on its whole body.
		if _, err := io.ReadAll(b.Body); err != nil {
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
	if st := r.Sources()[0]; st.State != BreakerClosed {
		t.Errorf("after a good probe: %+v", st)
	}
}

func TestMirror404DoesNotOpenBreaker(t *testing.T) {
	mirror := newFakeRegistry(t, "anon")
	origin := newFakeRegistry(t, "anon")
	blob := []byte("x")
	d := origin.putBlob(blob)
	r := newRegistryT(t, Config{URL: origin.srv.URL, Mirrors: []MirrorConfig{{URL: mirror.srv.URL}}}, newFakeClock())
	for range breakerThreshold * 2 {
		b, err := r.GetBlob(context.Background(), "library/node", d)
		if err != nil {
			t.Fatal(err)
		}
		b.Body.Close()
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
		_, err := r.HeadManifest(context.Background(), "library/node", "22", nil)
		if !IsUnavailable(err) {
			t.Fatalf("want unavailable, got %v", err)
		}
	}
	if got := hits.Load(); got != breakerThreshold {
		t.Errorf("origin hit %d times, want %d before the breaker opened", got, breakerThreshold)
	}
	_, err := r.GetManifest(context.Background(), "library/node", "22", nil)
	var ue *Error
	if !errors.As(err, &ue) || ue.Op != "GET manifest" || ue.Repository != "library/node" || ue.Code != CodeUnavailable || ue.RetryAfter <= 0 {
		t.Errorf("circuit-open error = %#v", err)
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

	_, err := r.GetManifest(ctx, "library/node", "22", nil)
	if !IsRateLimited(err) {
		t.Fatalf("want 429, got %v", err)
	}
	if !r.BelowReserve() {
		t.Error("BelowReserve false with 0 remaining")
	}
	limited.Store(false)
	_, err = r.GetManifest(ctx, "library/node", "22", nil)
	var ue *Error
	if !errors.As(err, &ue) || ue.StatusCode != http.StatusTooManyRequests || ue.RetryAfter != time.Minute {
		t.Fatalf("second GET within Retry-After: %#v", err)
	}
	if got := gets.Load(); got != 1 {
		t.Errorf("origin got %d manifest GETs; the second must not be sent", got)
	}
	// The pull limit does not stop the free HEAD that resolves tags.
	if _, err := r.HeadManifest(ctx, "library/node", "22", nil); err != nil {
		t.Errorf("HEAD during a pull-limit pause: %v", err)
	}
	// Nor does it open the origin's breaker.
	if st := r.Sources()[0]; st.State != BreakerClosed {
		t.Errorf("429 opened the origin breaker: %+v", st)
	}
	clock.Advance(61 * time.Second)
	if _, err := r.GetManifest(ctx, "library/node", "22", nil); err != nil {
		t.Fatalf("after Retry-After: %v", err)
	}
	if got := gets.Load(); got != 2 {
		t.Errorf("manifest GETs = %d, want 2", got)
	}
}

func TestBare429PausesEverything(t *testing.T) {
	origin := newFakeRegistry(t, "anon")
	origin.putManifest("library/node", "22", ocispec.MediaTypeImageManifest, []byte(testManifest))
	var heads atomic.Int64
	origin.hook = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodHead {
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
	if _, err := r.HeadManifest(ctx, "library/node", "22", nil); !IsRateLimited(err) {
		t.Fatalf("want 429, got %v", err)
	}
	_, err := r.HeadManifest(ctx, "library/node", "22", nil)
	var ue *Error
	if !errors.As(err, &ue) || ue.StatusCode != http.StatusTooManyRequests || ue.RetryAfter != backoff429Min {
		t.Fatalf("want an immediate 429 with the backoff, got %#v", err)
	}
	if heads.Load() != 1 {
		t.Errorf("HEADs sent = %d, want 1", heads.Load())
	}
	clock.Advance(backoff429Min)
	if _, err := r.HeadManifest(ctx, "library/node", "22", nil); err != nil {
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
			bt := newBudgetTracker("h", func() time.Time { return now.Add(tt.age) })
			tt.budget.UpdatedAt = now
			bt.b = tt.budget
			if got := bt.belowReserve(tt.reserve); got != tt.want {
				t.Errorf("belowReserve = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFetchManifestSpendsNoCountedPull(t *testing.T) {
	man := []byte(testManifest)
	origin := newFakeRegistry(t, "bearer")
	d := origin.putManifest("library/node", "22", ocispec.MediaTypeImageManifest, man)
	mirror := newFakeRegistry(t, "bearer")
	mirror.putManifest("docker/library/node", "", ocispec.MediaTypeImageManifest, man)
	r := newRegistryT(t, Config{URL: origin.srv.URL, Auth: credsFor(origin), Mirrors: []MirrorConfig{
		{URL: mirror.srv.URL, RepoPrefix: "docker", Repositories: []string{"library/*"}},
	}}, newFakeClock())

	m, err := r.FetchManifest(context.Background(), "library/node", "22", nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Digest != d || m.Source == SourceOrigin || !bytes.Equal(m.Data, man) {
		t.Errorf("got %s from %q", m.Digest, m.Source)
	}
	if n := origin.count("HEAD /v2/library/node/manifests/22"); n != 1 {
		t.Errorf("origin HEADs = %d, want 1", n)
	}
	for k, n := range origin.counts {
		if strings.HasPrefix(k, "GET ") && strings.Contains(k, "/manifests/") {
			t.Errorf("counted pull at the origin: %s ×%d", k, n)
		}
	}
}

func TestResolveTagAtMirror(t *testing.T) {
	man := []byte(testManifest)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	empty := newFakeRegistry(t, "anon")
	mirror := newFakeRegistry(t, "anon")
	d := mirror.putManifest("docker/library/node", "22", ocispec.MediaTypeImageManifest, man)
	r := newRegistryT(t, Config{URL: closed.URL, Mirrors: []MirrorConfig{
		{Name: "empty", URL: empty.srv.URL, Repositories: []string{"library/*"}},
		{Name: "ecr", URL: mirror.srv.URL, RepoPrefix: "docker/", Repositories: []string{"library/*"}},
	}}, newFakeClock())
	ctx := context.Background()

	if _, err := r.HeadManifest(ctx, "library/node", "22", nil); !IsUnavailable(err) {
		t.Fatalf("origin should be down: %v", err)
	}
	m, err := r.ResolveTagAtMirror(ctx, "library/node", "22", nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Source != "ecr" || m.Digest != d {
		t.Errorf("got %s from %q", m.Digest, m.Source)
	}
	// No mirror carries it: a plain error, neither not-found nor unavailable,
	// and nothing is sent.
	_, err = r.ResolveTagAtMirror(ctx, "bitnami/redis", "7", nil)
	if err == nil || IsNotFound(err) || IsUnavailable(err) {
		t.Errorf("no mirror: got %v", err)
	}
	if _, err := r.ResolveTagAtMirror(ctx, "library/node", d.String(), nil); err == nil {
		t.Error("a digest is not a tag")
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
	r := newRegistryT(t, Config{URL: origin.srv.URL, Auth: credsFor(origin), Mirrors: []MirrorConfig{{URL: mirror.srv.URL}}}, newFakeClock())
	b, err := r.GetBlob(context.Background(), "library/node", d)
	if err != nil {
		t.Fatal(err)
	}
	b.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(seen) == 0 {
		t.Fatal("mirror not asked")
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
// later the mirror is asked again.
func TestMirrorBadDigestRemembered(t *testing.T) {
	good := []byte(testManifest)
	md := digest.FromBytes(good)
	layer := []byte("real layer")
	bd := digest.FromBytes(layer)

	liar := newFakeRegistry(t, "anon")
	liar.mu.Lock()
	liar.manifests["library/node@"+md.String()] = fakeManifest{mediaType: ocispec.MediaTypeImageManifest, data: []byte(`{"schemaVersion":2,"evil":true}`), header: md.String()}
	liar.blobs[bd] = []byte("corrupted layer")
	liar.mu.Unlock()
	origin := newFakeRegistry(t, "anon")
	origin.putManifest("library/node", "", ocispec.MediaTypeImageManifest, good)
	origin.putBlob(layer)
	clock := newFakeClock()
	r := newRegistryT(t, Config{URL: origin.srv.URL, Mirrors: []MirrorConfig{{Name: "liar", URL: liar.srv.URL}}}, clock)
	ctx := context.Background()

	getBlob := func() ([]byte, string, error) {
		b, err := r.GetBlob(ctx, "library/node", bd)
		if err != nil {
			return nil, "", err
		}
		defer b.Body.Close()
		data, err := io.ReadAll(b.Body)
		return data, b.Source, err
	}
	getManifest := func() ([]byte, string, error) {
		m, err := r.GetManifest(ctx, "library/node", md.String(), nil)
		return m.Data, m.Source, err
	}
	for _, tc := range []struct {
		name    string
		get     func() ([]byte, string, error)
		want    []byte
		liarKey string
		// The first fetch of a blob is already streaming from the mirror
		// when the mismatch shows; a manifest is checked before it is
		// returned, so even the first fetch falls back to the origin.
		firstFails bool
	}{
		{"manifest", getManifest, good, "GET /v2/library/node/manifests/" + md.String(), false},
		{"blob", getBlob, layer, "GET /v2/library/node/blobs/" + bd.String(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, src, err := tc.get()
			if tc.firstFails {
				if !isDigestInvalid(err) {
					t.Fatalf("first fetch: err %v, want DIGEST_INVALID", err)
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
		})
	}
	st := r.Sources()[0]
	if st.BadDigests != 2 || st.State != BreakerClosed {
		t.Errorf("mirror status %+v, want 2 bad digests and a closed breaker", st)
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

// GetBlobUnverified hands a mirror's bytes over unhashed and takes the
// caller's verdict: wrong bytes count against the mirror and are remembered,
// a body closed without a verdict counts for nothing.
func TestGetBlobUnverifiedTakesTheCallersVerdict(t *testing.T) {
	layer := []byte("real layer")
	d := digest.FromBytes(layer)
	for _, tc := range []struct {
		name         string
		mirrorBytes  []byte
		verdict      func(b Blob, body []byte)
		wantFailures int
		wantBad      int
	}{
		{"matching bytes", layer, func(b Blob, body []byte) { b.Judge(nil) }, 0, 0},
		{"wrong bytes", []byte("corrupted layer"), func(b Blob, body []byte) {
			if digest.FromBytes(body) == d {
				t.Fatal("the test mirror served the right bytes")
			}
			b.Judge(ErrContentMismatch)
		}, 1, 1},
		{"cut short", layer, func(b Blob, body []byte) { b.Judge(io.ErrUnexpectedEOF) }, 1, 0},
		{"no verdict", []byte("corrupted layer"), func(Blob, []byte) {}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mirror := newFakeRegistry(t, "anon")
			mirror.mu.Lock()
			mirror.blobs[d] = tc.mirrorBytes
			mirror.mu.Unlock()
			origin := newFakeRegistry(t, "anon")
			origin.putBlob(layer)
			r := newRegistryT(t, Config{URL: origin.srv.URL, Mirrors: []MirrorConfig{{Name: "m", URL: mirror.srv.URL}}}, newFakeClock())

			b, err := r.GetBlobUnverified(context.Background(), "library/node", d)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(b.Body)
			if err != nil {
				t.Fatalf("an unverified body failed to read: %v", err)
			}
			if b.Source != "m" || !bytes.Equal(body, tc.mirrorBytes) {
				t.Fatalf("got %q from %q, want the mirror's bytes as they are", body, b.Source)
			}
			tc.verdict(b, body)
			b.Body.Close()
			if st := r.Sources()[0]; st.Failures != tc.wantFailures || st.BadDigests != tc.wantBad {
				t.Errorf("mirror status %+v, want %d failures and %d bad digests", st, tc.wantFailures, tc.wantBad)
			}
		})
	}
}
