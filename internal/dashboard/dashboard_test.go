package dashboard

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/metrics"
)

// snapshot is a fixed Data.
type snapshot Snapshot

func (s snapshot) Snapshot(time.Time, int) Snapshot { return Snapshot(s) }

var now = time.Date(2026, 11, 3, 14, 31, 5, 0, time.UTC)

// busy is a registry in front of two mirrors, one of them down, with a
// limited budget near its reserve.
func busy() Registry {
	return Registry{Name: "docker.io", Identity: "ci-user",
		Budget: Budget{Limited: true, Limit: 200, Remaining: 143, Window: 6 * time.Hour, UpdatedAt: now.Add(-3 * time.Minute), Reserve: 20},
		Sources: []Source{
			{Name: "public.ecr.aws/docker", URL: "https://public.ecr.aws", State: "closed"},
			{Name: "mirror.gcr.io", URL: "https://mirror.gcr.io", State: "open", Failures: 3, OpenUntil: now.Add(40 * time.Second),
				LastError: "upstream mirror.gcr.io: GET blob library/node: no answer (connection failed or timed out)", LastErrorAt: now.Add(-20 * time.Second)},
			{Name: "origin", URL: "https://registry-1.docker.io", State: "half-open", Failures: 4},
		}}
}

func render(t *testing.T, snap Snapshot, m *metrics.Metrics) (*httptest.ResponseRecorder, string) {
	t.Helper()
	opt := Options{Data: snapshot(snap), Version: "v1.2.3", Now: func() time.Time { return now }}
	if m != nil {
		opt.Metrics = m.Registry
	}
	w := httptest.NewRecorder()
	New(opt).ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	return w, w.Body.String()
}

func TestPage(t *testing.T) {
	const hostile = `<script>alert("pwned")</script>`
	for _, tc := range []struct {
		name    string
		snap    Snapshot
		metrics func(m *metrics.Metrics)
		want    []string
		wantNot []string
	}{
		{
			name: "empty: nothing configured, nothing counted",
			want: []string{"All upstreams healthy", "No image has been pulled by tag since regcache started.",
				`<p class="value">–</p>`, `<p class="value">0</p>`},
			wantNot: []string{`data-registry=`, `<table class="top">`},
		},
		{
			name: "a registry with no limit",
			snap: Snapshot{Registries: []Registry{{Name: "ghcr.io", Identity: "anonymous", Sources: []Source{{Name: "origin", URL: "https://ghcr.io", State: "closed"}}}}},
			want: []string{`data-registry="ghcr.io"`, `data-limited="false"`, ">∞</text>", ">no limit</text>",
				"The origin has sent no rate-limit headers.", `<span class="pill pill-ok">Healthy</span>`},
			wantNot: []string{`class="arc"`, `class="tick"`},
		},
		{
			name: "a limited budget, a pause and every breaker state",
			snap: Snapshot{Registries: []Registry{func() Registry {
				r := busy()
				r.Pauses = []Pause{{Class: "counted_pulls", Until: now.Add(50 * time.Second)}}
				return r
			}()}},
			want: []string{`data-remaining="143"`, `data-limit="200"`, `data-window-seconds="21600"`, ">143</text>", ">of 200 left</text>",
				`stroke-dasharray="53.62 100"`, `class="tick"`, "Window 6 h, rolling", "Reported 3 min ago",
				"Full again by 20:28 UTC at the latest", "Reserve 20 kept for cache misses",
				`data-class="counted_pulls"`, "held back until 14:31 UTC (in 50 s)", "Attention: docker.io", `<span class="pill pill-bad">Held back</span>`,
				`data-source="mirror.gcr.io" data-state="open"`, `<span class="pill pill-bad">Open</span>`, "skipped until 14:31 UTC (in 40 s)",
				"no answer (connection failed or timed out)", "20 s ago",
				`data-source="origin" data-state="half-open"`, `<span class="pill pill-warn">Probing</span>`,
				`data-source="public.ecr.aws/docker" data-state="closed"`, `<span class="pill pill-ok">Healthy</span>`},
		},
		{
			name: "figures from the metrics",
			snap: Snapshot{Registries: []Registry{busy()}},
			metrics: func(m *metrics.Metrics) {
				m.ClientManifestGETs.WithLabelValues("docker.io").Add(41)
				m.CountedPulls.WithLabelValues("docker.io").Add(4)
				m.Requests.WithLabelValues("docker.io", "blob", "hit").Add(90)
				m.Requests.WithLabelValues("docker.io", "manifest", "stale").Add(3)
				m.Requests.WithLabelValues("docker.io", "blob", "miss").Add(7)
				m.Requests.WithLabelValues("docker.io", "manifest", "error").Add(2)
				m.BytesServed.WithLabelValues("docker.io", "blob").Add(3 << 30)
				m.UpstreamBytes.WithLabelValues("docker.io", "origin", "blob").Add(256 << 20)
				m.UpstreamBytes.WithLabelValues("docker.io", "public.ecr.aws/docker", "blob").Add(768 << 20)
				m.MirrorHits.WithLabelValues("docker.io", "public.ecr.aws/docker", "blob").Add(17)
				m.StaleServed.WithLabelValues("docker.io", "rate_limited").Add(2)
				m.StaleServed.WithLabelValues("docker.io", "reserve").Add(1)
				// Another registry's figures stay out of this one's.
				m.CountedPulls.WithLabelValues("quay.io").Add(1000)
			},
			want: []string{`data-saved="37"`, `data-spent="4"`, "4 spent at origins, of 41 that clients asked for",
				"93.0 %", "102 answers: 90 hits, 3 stale, 7 fetched, 2 failed", "2.0 GiB</span> from cache", "3.0 GiB served · 1.0 GiB fetched upstream",
				"768 MiB", "256 MiB", "17 manifests and blobs instead of the origin",
				`data-reason="rate_limited"><span class="n">2</span> the origin was rate limited`,
				`data-reason="reserve"><span class="n">1</span> the pull budget was at the reserve`},
			wantNot: []string{"1,000"},
		},
		{
			name: "most pulled, in order, with a bounded count",
			snap: Snapshot{MostPulled: []Pulled{
				{Registry: "docker.io", Repository: "library/node", Tag: "22", Count: 57},
				{Registry: "ghcr.io", Repository: "acme/tools", Tag: "v4", Count: 12, Overcount: 3},
			}},
			want: []string{`data-image="docker.io/library/node:22"`, `<td class="rank">1</td>`, `width="100.00"`,
				`data-image="ghcr.io/acme/tools:v4"`, `<td class="rank">2</td>`, `width="21.05"`,
				`title="between 9 and 12 pulls (a bounded counter)">≤ 12</td>`},
			wantNot: []string{"No image has been pulled"},
		},
		{
			name: "names and messages are escaped",
			snap: Snapshot{
				Registries: []Registry{{Name: "docker.io", Identity: hostile, Sources: []Source{{Name: "origin", URL: "https://x", State: "closed", LastError: hostile, LastErrorAt: now}}}},
				MostPulled: []Pulled{{Registry: "docker.io", Repository: hostile, Tag: `"><img src=x onerror=alert(1)>`, Count: 1}},
			},
			want:    []string{"&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;", `data-image="docker.io/&lt;script&gt;`, "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"},
			wantNot: []string{hostile, "<img src=x"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := metrics.New()
			if tc.metrics != nil {
				tc.metrics(m)
			}
			_, body := render(t, tc.snap, m)
			for _, s := range tc.want {
				if !strings.Contains(body, s) {
					t.Errorf("page lacks %q", s)
				}
			}
			for _, s := range tc.wantNot {
				if strings.Contains(body, s) {
					t.Errorf("page shows %q", s)
				}
			}
			if t.Failed() {
				t.Logf("page:\n%s", body[strings.Index(body, "<main>"):])
			}
		})
	}
}

// TestPolicyAllowsOnlyThePagesOwnCode: the Content-Security-Policy names
// the inline style and script by hash, so a browser runs exactly those.
func TestPolicyAllowsOnlyThePagesOwnCode(t *testing.T) {
	w, body := render(t, Snapshot{}, nil)
	csp := w.Header().Get("Content-Security-Policy")
	for _, el := range []string{"style", "script"} {
		m := regexp.MustCompile(`(?s)<`+el+`>(.*?)</`+el+`>`).FindAllStringSubmatch(body, -1)
		if len(m) != 1 {
			t.Fatalf("%d <%s> elements, want 1", len(m), el)
		}
		sum := sha256.Sum256([]byte(m[0][1]))
		if want := el + "-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(csp, want) {
			t.Errorf("policy %q lacks %q", csp, want)
		}
	}
	if regexp.MustCompile(`\sstyle=|\son[a-z]+=`).MatchString(body) {
		t.Error("an inline style or event attribute, which the policy blocks")
	}
	for k, want := range map[string]string{"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store", "X-Frame-Options": "DENY"} {
		if got := w.Header().Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if !strings.HasPrefix(body, "<!doctype html>") {
		t.Errorf("page starts %q", body[:min(40, len(body))])
	}
}

func TestHead(t *testing.T) {
	w := httptest.NewRecorder()
	New(Options{Data: snapshot{}}).ServeHTTP(w, httptest.NewRequest(http.MethodHead, "/", nil))
	if w.Code != 200 || w.Body.Len() != 0 || w.Header().Get("Content-Length") == "" {
		t.Errorf("HEAD: %d, %d bytes, Content-Length %q", w.Code, w.Body.Len(), w.Header().Get("Content-Length"))
	}
}

func TestFormats(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{count(0), "0"}, {count(999), "999"}, {count(1000), "1,000"}, {count(1234567), "1,234,567"},
		{bytesIEC(0), "0 B"}, {bytesIEC(1023), "1,023 B"}, {bytesIEC(1536), "1.5 KiB"}, {bytesIEC(300 << 20), "300 MiB"}, {bytesIEC(3 << 40), "3.0 TiB"},
		{percent(1, 0), "–"}, {percent(1, 3), "33.3 %"}, {percent(9999, 10000), "99.9 %"}, {percent(5, 5), "100.0 %"},
		{duration(0), "0 s"}, {duration(45 * time.Second), "45 s"}, {duration(6 * time.Hour), "6 h"},
		{duration(2*time.Hour + 14*time.Minute + 9*time.Second), "2 h 14 min"}, {duration(26 * time.Hour), "1 d 2 h"},
		{ago(time.Time{}, now), "never"}, {ago(now, now), "just now"}, {ago(now.Add(-90*time.Second), now), "1 min 30 s ago"},
		{clock(now.Add(time.Hour), now), "15:31 UTC"}, {clock(now.Add(24*time.Hour), now), "Nov 4 14:31 UTC"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}
