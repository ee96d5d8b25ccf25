package upstream

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regcache/regcache/internal/regerr"
)

func TestParseRateLimit(t *testing.T) {
	tests := []struct {
		in     string
		n      int
		window time.Duration
		ok     bool
	}{
		{"100;w=21600", 100, 6 * time.Hour, true},
		{"76;w=21600", 76, 6 * time.Hour, true},
		{"200;w=21600", 200, 6 * time.Hour, true},
		{"0;w=21600", 0, 6 * time.Hour, true},
		{" 100 ; w=3600 ", 100, time.Hour, true},
		{"100;w=\"3600\"", 100, time.Hour, true},
		{"100", 100, 0, true},
		{"100, 100;w=21600", 100, 6 * time.Hour, true},
		{"10, 10;w=60, 1000;w=86400", 10, time.Minute, true},
		{"", 0, 0, false},
		{"abc;w=21600", 0, 0, false},
		{"-1;w=60", 0, 0, false},
		{"100;w=abc", 100, 0, true},
	}
	for _, tt := range tests {
		n, w, ok := parseRateLimit(tt.in)
		if n != tt.n || w != tt.window || ok != tt.ok {
			t.Errorf("parseRateLimit(%q) = %d, %v, %v; want %d, %v, %v", tt.in, n, w, ok, tt.n, tt.window, tt.ok)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 23, 13, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"120", 2 * time.Minute, true},
		{"0", 0, true},
		{"Mon, 23 Nov 2026 13:05:00 GMT", 5 * time.Minute, true},
		{"Mon, 23 Nov 2026 12:00:00 GMT", 0, true}, // in the past
		{"9999999999", 7 * 24 * time.Hour, true},   // cut to a week; the caller caps it further
		{"", 0, false},
		{"soon", 0, false},
		{"-5", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestBudgetObserve(t *testing.T) {
	now := time.Date(2026, 11, 23, 13, 0, 0, 0, time.UTC)
	const host = "registry-1.docker.io"
	const maxPause = time.Hour
	type resp struct {
		method, path string
		status       int
		header       map[string]string
	}
	const manifest, blob = "/v2/library/alpine/manifests/3.19", "/v2/library/alpine/blobs/sha256:abc"
	manifestHead := func(h map[string]string) resp { return resp{http.MethodHead, manifest, 200, h} }
	pullLimit := map[string]string{"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0;w=21600"}
	with := func(h map[string]string, k, v string) map[string]string {
		out := map[string]string{k: v}
		for hk, hv := range h {
			out[hk] = hv
		}
		return out
	}
	paused := func(c Class, until time.Time) (p [numClasses]time.Time) {
		p[c] = until
		return p
	}
	tests := []struct {
		name  string
		resps []resp
		want  Budget
	}{
		{
			name: "docker hub anonymous",
			resps: []resp{manifestHead(map[string]string{
				"ratelimit-limit":         "100;w=21600",
				"ratelimit-remaining":     "76;w=21600",
				"docker-ratelimit-source": "203.0.113.7",
			})},
			want: Budget{Limit: 100, Remaining: 76, Window: 6 * time.Hour, Source: "203.0.113.7", Known: true, UpdatedAt: now},
		},
		{
			name: "docker hub authenticated",
			resps: []resp{manifestHead(map[string]string{
				"RateLimit-Limit":         "200;w=21600",
				"RateLimit-Remaining":     "199;w=21600",
				"Docker-RateLimit-Source": "0f3c8a1e-5b6d-4c2e-9a7f-1d2e3f4a5b6c",
			})},
			want: Budget{Limit: 200, Remaining: 199, Window: 6 * time.Hour, Source: "0f3c8a1e-5b6d-4c2e-9a7f-1d2e3f4a5b6c", Known: true, UpdatedAt: now},
		},
		{
			name: "headers then a manifest without them: no limit",
			resps: []resp{
				manifestHead(map[string]string{"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "5;w=21600"}),
				manifestHead(nil),
			},
			want: Budget{Limit: 100, Remaining: 5, Window: 6 * time.Hour, Known: false, UpdatedAt: now},
		},
		{
			name: "blob and ping responses say nothing",
			resps: []resp{
				manifestHead(map[string]string{"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "5;w=21600"}),
				{http.MethodGet, blob, 200, nil},
				{http.MethodGet, "/v2/", 200, nil},
			},
			want: Budget{Limit: 100, Remaining: 5, Window: 6 * time.Hour, Known: true, UpdatedAt: now},
		},
		{
			// The pull limit: HEADs still work, so only GETs wait.
			name:  "pull-limit 429 with Retry-After",
			resps: []resp{{http.MethodGet, manifest, 429, with(pullLimit, "retry-after", "3600")}},
			want:  Budget{Limit: 100, Remaining: 0, Window: 6 * time.Hour, Known: true, UpdatedAt: now, RetryUntil: now.Add(time.Hour)},
		},
		{
			name:  "pull-limit 429 with a day's Retry-After is capped",
			resps: []resp{{http.MethodGet, manifest, 429, with(pullLimit, "retry-after", "86400")}},
			want:  Budget{Limit: 100, Remaining: 0, Window: 6 * time.Hour, Known: true, UpdatedAt: now, RetryUntil: now.Add(maxPause)},
		},
		{
			// A HEAD is never counted, so its 429 is not the pull limit.
			name:  "429 with limit headers on a HEAD pauses manifests",
			resps: []resp{{http.MethodHead, manifest, 429, with(pullLimit, "retry-after", "60")}},
			want:  Budget{Limit: 100, Remaining: 0, Window: 6 * time.Hour, Known: true, UpdatedAt: now, Paused: paused(ClassManifests, now.Add(time.Minute))},
		},
		{
			name:  "bare 429 backs off its class",
			resps: []resp{{http.MethodHead, manifest, 429, nil}},
			want:  Budget{UpdatedAt: now, Paused: paused(ClassManifests, now.Add(backoff429Min))},
		},
		{
			name: "second bare 429 backs off longer",
			resps: []resp{
				{http.MethodHead, manifest, 429, nil},
				{http.MethodHead, manifest, 429, nil},
			},
			want: Budget{UpdatedAt: now, Paused: paused(ClassManifests, now.Add(2*backoff429Min))},
		},
		{
			name: "a success resets the backoff",
			resps: []resp{
				{http.MethodHead, manifest, 429, nil},
				{http.MethodHead, manifest, 200, nil},
				{http.MethodHead, manifest, 429, nil},
			},
			want: Budget{UpdatedAt: now, Paused: paused(ClassManifests, now.Add(backoff429Min))},
		},
		{
			name:  "bare 429 on a blob pauses blobs only",
			resps: []resp{{http.MethodGet, blob, 429, nil}},
			want:  Budget{UpdatedAt: now, Paused: paused(ClassBlobs, now.Add(backoff429Min))},
		},
		{
			name:  "a day's Retry-After on a blob is capped",
			resps: []resp{{http.MethodGet, blob, 429, map[string]string{"Retry-After": "86400"}}},
			want:  Budget{UpdatedAt: now, Paused: paused(ClassBlobs, now.Add(maxPause))},
		},
		{
			// Every request starts with the ping: refused, it holds back
			// every class.
			name:  "503 with Retry-After on the ping",
			resps: []resp{{http.MethodGet, "/v2/", 503, map[string]string{"Retry-After": "30"}}},
			want: Budget{UpdatedAt: now, Paused: [numClasses]time.Time{
				ClassManifests: now.Add(30 * time.Second), ClassBlobs: now.Add(30 * time.Second), ClassOther: now.Add(30 * time.Second)}},
		},
		{
			name:  "503 with Retry-After on a tags list",
			resps: []resp{{http.MethodGet, "/v2/library/alpine/tags/list", 503, map[string]string{"Retry-After": "30"}}},
			want:  Budget{UpdatedAt: now, Paused: paused(ClassOther, now.Add(30*time.Second))},
		},
		{
			name:  "503 without Retry-After pauses nothing",
			resps: []resp{{http.MethodGet, manifest, 503, nil}},
			want:  Budget{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bt := newBudgetTracker(host, func() time.Time { return now }, maxPause)
			for _, r := range tt.resps {
				req := &http.Request{Method: r.method, URL: &url.URL{Scheme: "https", Host: host, Path: r.path}}
				res := &http.Response{StatusCode: r.status, Header: http.Header{}}
				for k, v := range r.header {
					res.Header.Set(k, v)
				}
				bt.observe(req, res)
			}
			if got := bt.get(); got != tt.want {
				t.Errorf("budget = %+v\nwant      %+v", got, tt.want)
			}
		})
	}
}

// TestBudgetGate: which requests a pause holds back, and what it reports.
func TestBudgetGate(t *testing.T) {
	const manifest, blob, tags = "/v2/library/alpine/manifests/3.19", "/v2/library/alpine/blobs/sha256:abc", "/v2/library/alpine/tags/list"
	type req struct{ method, path string }
	all := []req{{http.MethodHead, manifest}, {http.MethodGet, manifest}, {http.MethodHead, blob}, {http.MethodGet, blob}, {http.MethodGet, tags}}
	tests := []struct {
		name    string
		status  int
		method  string
		path    string
		header  map[string]string
		refused map[req]regerr.Kind
	}{
		{"pull limit: counted GETs only", 429, http.MethodGet, manifest,
			map[string]string{"ratelimit-remaining": "0;w=21600", "retry-after": "60"},
			map[req]regerr.Kind{{http.MethodGet, manifest}: regerr.RateLimited}},
		{"bare 429 on a blob: blobs only", 429, http.MethodGet, blob, nil,
			map[req]regerr.Kind{{http.MethodHead, blob}: regerr.RateLimited, {http.MethodGet, blob}: regerr.RateLimited}},
		{"bare 429 on a HEAD: manifests only", 429, http.MethodHead, manifest, nil,
			map[req]regerr.Kind{{http.MethodHead, manifest}: regerr.RateLimited, {http.MethodGet, manifest}: regerr.RateLimited}},
		{"503 with Retry-After on tags: the rest", 503, http.MethodGet, tags, map[string]string{"retry-after": "60"},
			map[req]regerr.Kind{{http.MethodGet, tags}: regerr.Unavailable}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			bt := newBudgetTracker("h", clock.Now, time.Hour)
			res := &http.Response{StatusCode: tt.status, Header: http.Header{}}
			for k, v := range tt.header {
				res.Header.Set(k, v)
			}
			bt.observe(&http.Request{Method: tt.method, URL: &url.URL{Scheme: "https", Host: "h", Path: tt.path}}, res)
			for _, r := range all {
				kind, wait, ok := bt.gate(r.method, r.path)
				want, refused := tt.refused[r]
				if ok == refused || (refused && (kind != want || wait <= 0)) {
					t.Errorf("%s %s: kind %s, wait %s, sent %v; want refused %v (%s)", r.method, r.path, kind, wait, ok, refused, want)
				}
			}
			clock.Advance(time.Hour)
			for _, r := range all {
				if _, _, ok := bt.gate(r.method, r.path); !ok {
					t.Errorf("%s %s still refused after the pause", r.method, r.path)
				}
			}
		})
	}
}

// TestBlob429PausesBlobsOnly: an abuse limit on blobs holds back blobs,
// not the manifest HEADs that keep tags fresh; and a Retry-After longer
// than Limits.MaxRetryAfter is cut to it.
func TestBlob429PausesBlobsOnly(t *testing.T) {
	const maxPause = 10 * time.Minute
	for _, tc := range []struct {
		name       string
		retryAfter string
		pause      time.Duration
	}{
		{"bare", "", backoff429Min},
		{"a day", "86400", maxPause},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeRegistry(t, "anon")
			f.putManifest("library/node", "22", ocispec.MediaTypeImageManifest, []byte(testManifest))
			d := f.putBlob([]byte("layer"))
			var blobGETs atomic.Int64
			f.hook = func(w http.ResponseWriter, r *http.Request) bool {
				if strings.Contains(r.URL.Path, "/blobs/") && blobGETs.Add(1) == 1 {
					if tc.retryAfter != "" {
						w.Header().Set("Retry-After", tc.retryAfter)
					}
					w.WriteHeader(http.StatusTooManyRequests)
					return true
				}
				return false
			}
			clock := newFakeClock()
			r := newRegistryT(t, Config{URL: f.srv.URL, Limits: Limits{MaxRetryAfter: maxPause}}, clock)
			ctx := context.Background()
			node := repo(t, "library/node")

			_, err := r.Blob(ctx, node, d, -1)
			if e := asError(t, err); e.Kind != regerr.RateLimited || e.Status != 429 || e.RetryAfter > maxPause {
				t.Fatalf("first blob GET: %v; want a 429 asking for at most %s", err, maxPause)
			}
			if got, want := r.Budget().Paused[ClassBlobs], clock.Now().Add(tc.pause); !got.Equal(want) {
				t.Errorf("blobs paused until %s, want %s", got, want)
			}
			b := r.Budget()
			if !b.Paused[ClassManifests].IsZero() || !b.Paused[ClassOther].IsZero() || !b.RetryUntil.IsZero() {
				t.Errorf("a blob 429 paused more than blobs: %+v", b)
			}
			// Blobs wait, without a request.
			_, err = r.Blob(ctx, node, d, -1)
			if e := asError(t, err); e.Kind != regerr.RateLimited || e.RetryAfter != tc.pause || !isNotSent(err) {
				t.Errorf("blob during the pause: %v; want a refusal asking for %s", err, tc.pause)
			}
			if _, err := r.StatBlob(ctx, node, d); !regerr.Is(err, regerr.RateLimited) {
				t.Errorf("blob HEAD during the pause: %v", err)
			}
			if n := blobGETs.Load(); n != 1 {
				t.Errorf("%d blob requests reached the origin, want 1", n)
			}
			// Manifest HEADs still go out.
			if _, err := r.HeadManifest(ctx, node, byTag(t, "22"), nil); err != nil {
				t.Errorf("HEAD manifest during a blob pause: %v", err)
			}
			if n := f.count("HEAD /v2/library/node/manifests/22"); n != 1 {
				t.Errorf("manifest HEADs at the origin = %d, want 1", n)
			}
			clock.Advance(tc.pause)
			b2, err := r.Blob(ctx, node, d, -1)
			if err != nil {
				t.Fatalf("after the pause: %v", err)
			}
			if _, err := readBlob(b2); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestRateLimitTransportOnlyOrigin(t *testing.T) {
	// A CDN or token server on another host must not move the origin's budget.
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "600")
		w.Header().Set("ratelimit-remaining", "1;w=60")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer other.Close()
	bt := newBudgetTracker("origin.example:443", time.Now, 0)
	rt := &rateLimitTransport{inner: http.DefaultTransport, tracker: bt}
	req, _ := http.NewRequest(http.MethodGet, other.URL+"/v2/x/manifests/y", nil)
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := bt.get(); got != (Budget{}) {
		t.Errorf("budget moved by another host: %+v", got)
	}
}

func TestRegistryBudget(t *testing.T) {
	f := newFakeRegistry(t, "bearer")
	f.putManifest("library/alpine", "3.19", ocispec.MediaTypeImageManifest, []byte(testManifest))
	f.manifestHeader = http.Header{
		"Ratelimit-Limit":         {"100;w=21600"},
		"Ratelimit-Remaining":     {"42;w=21600"},
		"Docker-Ratelimit-Source": {"192.0.2.1"},
	}
	r := newTestRegistry(t, f, nil)
	if b := r.Budget(); b.Known {
		t.Fatalf("budget known before any request: %+v", b)
	}
	if _, err := r.HeadManifest(context.Background(), repo(t, "library/alpine"), byTag(t, "3.19"), nil); err != nil {
		t.Fatal(err)
	}
	b := r.Budget()
	if !b.Known || b.Limit != 100 || b.Remaining != 42 || b.Window != 6*time.Hour || b.Source != "192.0.2.1" || b.UpdatedAt.IsZero() {
		t.Errorf("Budget() = %+v", b)
	}
}

// What another replica saw merges in: newer counts win, and a pause lasts
// until the later of the two ends, never past max_retry_after.
func TestBudgetMerge(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	paused := func(c Class, until time.Time) (p [numClasses]time.Time) {
		p[c] = until
		return p
	}
	bt := newBudgetTracker("h", func() time.Time { return now }, time.Hour)
	bt.b = Budget{Limit: 100, Remaining: 50, Known: true, UpdatedAt: now.Add(-time.Minute), Paused: paused(ClassBlobs, now.Add(10*time.Minute))}
	bt.merge(Budget{Limit: 100, Remaining: 40, Known: true, UpdatedAt: now, RetryUntil: now.Add(time.Minute),
		Paused: [numClasses]time.Time{ClassManifests: now.Add(5 * time.Hour), ClassBlobs: now.Add(time.Minute)}})
	got := bt.get()
	if got.Remaining != 40 || !got.RetryUntil.Equal(now.Add(time.Minute)) {
		t.Errorf("newer count or RetryUntil not taken: %+v", got)
	}
	if !got.Paused[ClassBlobs].Equal(now.Add(10 * time.Minute)) {
		t.Errorf("a shorter remote pause shortened ours: %v", got.Paused[ClassBlobs])
	}
	if !got.Paused[ClassManifests].Equal(now.Add(time.Hour)) {
		t.Errorf("a remote pause past max_retry_after was not capped: %v", got.Paused[ClassManifests])
	}
	bt.merge(Budget{Remaining: 99, Known: true, UpdatedAt: now.Add(-time.Hour)})
	if bt.get().Remaining != 40 {
		t.Error("an older remote count replaced a newer one")
	}
	if _, _, ok := bt.gate(http.MethodHead, "/v2/library/alpine/manifests/3.19"); ok {
		t.Error("a merged manifest pause does not hold back manifest HEADs")
	}
}
