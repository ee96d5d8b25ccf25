package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/app"
	"github.com/regcache/regcache/internal/testhub"
)

// TestDashboardInBrowser loads the status page in headless Chromium from a
// regcache in front of a rate-limited hub, a healthy mirror and a dead one,
// and a second registry with no limit, after real pulls. The rendered DOM
// must show the budget /_regcache/status reports, the counted pulls saved
// and spent as /metrics counts them, each source's breaker state and the
// images pulled, after the page has refreshed itself once; the screenshot
// is kept in the test's logs directory (dashboard.png), which
// REGCACHE_E2E_KEEP_LOGS keeps.
func TestDashboardInBrowser(t *testing.T) {
	chromium := requireBinary(t, "chromium", "chromium")
	crane := requireBinary(t, "crane", "crane")
	w := newWorld(t)
	reg := testhub.StartRegistry(t)
	images := seedImages(t, reg)
	reg.PushImage(t, "acme/build-tools", "v4", testhub.ImageOptions{Layers: 2})
	secret := randomSecret(t)
	hub := testhub.NewHub(t, reg, testhub.Options{Users: map[string]string{"ci-user": secret}, UserLimit: 100, Window: 6 * time.Hour})
	ecr := testhub.NewHub(t, reg, testhub.Options{RepoPrefix: "docker/", Service: "public.ecr.aws", Scope: "aws"})
	ghcr := testhub.NewHub(t, reg, testhub.Options{})
	// Nothing listens there: its breaker opens.
	dead := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	rc := startRegcache(t, w, regcacheConfig{upstreamURL: hub.URL, user: "ci-user", password: secret, extra: fmt.Sprintf(`    reserve: 10
    mirrors:
      - url: %s
      - url: %s
        repo_prefix: docker/
        repositories: ["library/alpine", "library/redis"]
  ghcr.io:
    url: %s
`, dead, ecr.URL, ghcr.URL)})

	// A CI fleet's morning: every image once, the popular ones again
	// (answered from the cache), and one from the second registry.
	pull := func(ref string) {
		w.mustRun(t, pullTimeout, w.baseEnv(), crane, "pull", "--insecure", "--format", "oci", ref,
			filepath.Join(w.mkdir("pulls"), sanitize(ref)+strconv.FormatInt(time.Now().UnixNano(), 36)))
	}
	for _, img := range images {
		pull(rc.host() + "/docker.io/" + img.repo + ":" + img.tag)
	}
	for range 2 {
		pull(rc.host() + "/docker.io/" + images[0].repo + ":" + images[0].tag)
		pull(rc.host() + "/docker.io/" + images[1].repo + ":" + images[1].tag)
	}
	pull(rc.host() + "/ghcr.io/acme/build-tools:v4")
	// A fresh image right before the page is drawn asks the dead mirror
	// again, so its breaker is open (not half-open) in the screenshot.
	reg.PushImage(t, "team/api", "2026.11", testhub.ImageOptions{})
	pull(rc.host() + "/docker.io/team/api:2026.11")

	before := fetchStatus(t, rc, nil)
	page := filepath.Join(w.logs, "dashboard.png")
	runChromium(t, w, chromium, rc.url()+"/", "--screenshot="+page, "--window-size=1280,1600")
	// Past the page's 10 s refresh, in Chromium's virtual time: the DOM is
	// the refreshed one, which proves the script runs under the page's
	// Content-Security-Policy.
	dom := runChromium(t, w, chromium, rc.url()+"/", "--virtual-time-budget=12000", "--dump-dom")
	after := fetchStatus(t, rc, nil)
	if !regexp.MustCompile(`<body data-refresh="10" data-refreshed="[^"]+">`).MatchString(dom) {
		t.Error("the page did not refresh itself")
	}
	if err := os.WriteFile(filepath.Join(w.logs, "dashboard.html"), []byte(dom), 0o644); err != nil {
		t.Fatal(err)
	}
	checkScreenshot(t, page)

	// The budget is the one /_regcache/status reports.
	docker := section(t, dom, "docker.io")
	b := registry(t, before, "docker.io").Budget
	if a := registry(t, after, "docker.io").Budget; a != b {
		t.Fatalf("the budget moved while the page loaded: %+v, then %+v", b, a)
	}
	if !b.Limited || b.Limit != 100 || b.Remaining >= 100 {
		t.Fatalf("status budget %+v: the hub's limit was not seen, or nothing was spent", b)
	}
	for _, want := range []string{
		fmt.Sprintf(`data-limited="true" data-remaining="%d" data-limit="%d" data-window-seconds="%d"`, b.Remaining, b.Limit, b.WindowSeconds),
		fmt.Sprintf(">%d</text>", b.Remaining), fmt.Sprintf(">of %d left</text>", b.Limit),
		"Window 6 h, rolling", "Reserve 10 kept for cache misses",
	} {
		if !strings.Contains(docker, want) {
			t.Errorf("docker.io's budget lacks %q", want)
		}
	}
	if ghcr := section(t, dom, "ghcr.io"); !strings.Contains(ghcr, `data-limited="false"`) || !strings.Contains(ghcr, ">no limit</text>") {
		t.Errorf("ghcr.io, which sends no limit, is not drawn so:\n%s", ghcr)
	}

	// Saved and spent are what /metrics counts.
	m := scrape(t, rc)
	gets, spent := m[`regcache_client_manifest_gets_total{registry="docker.io"}`], m[`regcache_upstream_counted_pulls_total{registry="docker.io"}`]
	if spent == 0 || gets <= spent {
		t.Errorf("metrics: %v client manifest GETs, %v counted pulls: the repeated pulls saved none", gets, spent)
	}
	for _, want := range []string{fmt.Sprintf(`data-saved="%v"`, gets-spent), fmt.Sprintf(`data-spent="%v"`, spent)} {
		if !strings.Contains(docker, want) {
			t.Errorf("docker.io lacks %s", want)
		}
	}

	// Each source's breaker, as the status says before or after the page
	// was drawn: an open breaker turns half-open with time alone.
	deadName := strings.TrimPrefix(dead, "http://")
	ecrName := strings.TrimPrefix(ecr.URL, "http://") + "/docker"
	earlier := registry(t, before, "docker.io").Sources
	for i, src := range registry(t, after, "docker.io").Sources {
		if !strings.Contains(docker, fmt.Sprintf(`data-source="%s" data-state="%s"`, src.Name, src.State)) &&
			!strings.Contains(docker, fmt.Sprintf(`data-source="%s" data-state="%s"`, src.Name, earlier[i].State)) {
			t.Errorf("page does not show %s as %s", src.Name, src.State)
		}
		switch src.Name {
		case deadName:
			if src.State == "closed" || !strings.Contains(docker, "no answer (connection failed or timed out)") {
				t.Errorf("the dead mirror: %+v", src)
			}
		case ecrName, "origin":
			if src.State != "closed" {
				t.Errorf("a healthy source: %+v", src)
			}
		default:
			t.Errorf("an unexpected source %q", src.Name)
		}
	}

	// The most pulled images, most first.
	rows := regexp.MustCompile(`data-image="([^"]+)">\s*<td class="rank">(\d+)</td>[\s\S]*?<td class="num"[^>]*>(?:≤ )?([\d,]+)</td>`).FindAllStringSubmatch(dom, -1)
	counts := map[string]int{}
	last := 1 << 30
	for _, r := range rows {
		n, _ := strconv.Atoi(strings.ReplaceAll(r[3], ",", ""))
		if n > last {
			t.Errorf("most pulled out of order at %s: %d after %d", r[1], n, last)
		}
		last, counts[r[1]] = n, n
	}
	for _, img := range images {
		ref := "docker.io/" + img.repo + ":" + img.tag
		if counts[ref] == 0 {
			t.Errorf("%s is not among the most pulled: %v", ref, counts)
		}
	}
	if counts["docker.io/"+images[0].repo+":"+images[0].tag] < 3 || counts["ghcr.io/acme/build-tools:v4"] == 0 {
		t.Errorf("most pulled %v: the repeated pulls or ghcr.io are missing", counts)
	}
	if strings.Contains(dom, secret) {
		t.Error("the page shows the upstream password")
	}
	t.Logf("screenshot: %s (kept under $%s/%s when set)", page, envKeepLogs, sanitize(t.Name()))
}

// TestDashboardNeedsLogin: with client_auth the page is refused without a
// login (a Basic challenge, so a browser asks), renders in Chromium with
// one, and shows neither password.
func TestDashboardNeedsLogin(t *testing.T) {
	chromium := requireBinary(t, "chromium", "chromium")
	w := newWorld(t)
	user, password := "ops", randomSecret(t)
	w.addSecret(user, password)
	_, _, rc := startHubAndRegcacheWith(t, w, testhub.Options{UserLimit: 100}, regcacheConfig{htpasswd: writeHtpasswd(t, w, user, password)})

	for _, path := range []string{"/", "/_regcache/"} {
		resp, body := get(t, rc, path, nil)
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != `Basic realm="regcache"` {
			t.Errorf("GET %s without a login: %d %q", path, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
		if bytes.Contains(body, []byte("docker.io")) {
			t.Errorf("GET %s without a login names a registry: %s", path, body)
		}
	}
	if dom := runChromium(t, w, chromium, rc.url()+"/", "--dump-dom"); strings.Contains(dom, "data-registry") || strings.Contains(dom, "docker.io") {
		t.Errorf("Chromium without a login was shown:\n%s", dom)
	}
	u, _ := url.Parse(rc.url() + "/")
	u.User = url.UserPassword(user, password)
	dom := runChromium(t, w, chromium, u.String(), "--virtual-time-budget=12000", "--dump-dom")
	if err := os.WriteFile(filepath.Join(w.logs, "dashboard-login.html"), []byte(dom), 0o644); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(dom, `data-registry="docker.io"`) || !strings.Contains(dom, "Pull budget") {
		t.Errorf("Chromium with a login did not render the page:\n%s", dom)
	}
	if !strings.Contains(dom, "data-refreshed=") {
		t.Error("the page did not refresh itself with the browser's login")
	}
	for _, s := range []string{password, rc.cfg.password} {
		if strings.Contains(dom, s) {
			t.Error("the page shows a password")
		}
	}
}

// runChromium runs headless Chromium on url with a fresh profile and
// returns what it printed on stdout (the DOM, with --dump-dom). The flags
// keep it off the network: in the test namespace every connection it
// tries on its own would fail. The command is logged with the URL's
// password masked.
func runChromium(t *testing.T, w *world, bin, rawURL string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	argv := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
		"--user-data-dir=" + w.mkdir("chromium-profile", strconv.FormatInt(time.Now().UnixNano(), 36))}, args...)
	cmd := exec.CommandContext(ctx, bin, append(argv, rawURL)...)
	cmd.Env = w.baseEnv()
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	shown := rawURL
	if u, perr := url.Parse(rawURL); perr == nil {
		shown = u.Redacted()
	}
	_ = os.WriteFile(w.logFile("chromium"), fmt.Appendf(nil, "$ chromium %s %s\n# err=%v\n%s", strings.Join(argv, " "), shown, err, stderr.Bytes()), 0o644)
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", shown, err, tailLines(stderr.String(), 30))
	}
	return stdout.String()
}

// checkScreenshot fails unless p is a PNG of the window's size.
func checkScreenshot(t *testing.T, p string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	if len(b) < 24 || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("%s is not a PNG", p)
	}
	width, height := be32(b[16:20]), be32(b[20:24])
	if width != 1280 || height != 1600 {
		t.Errorf("screenshot is %dx%d, want 1280x1600", width, height)
	}
}

func be32(b []byte) int { return int(b[0])<<24 | int(b[1])<<16 | int(b[2])<<8 | int(b[3]) }

// section is the part of the page about one registry.
func section(t *testing.T, dom, registry string) string {
	t.Helper()
	start := strings.Index(dom, `data-registry="`+registry+`"`)
	if start < 0 {
		t.Fatalf("the page has no section for %s", registry)
	}
	end := strings.Index(dom[start:], "</section>")
	if end < 0 {
		t.Fatalf("%s's section does not end", registry)
	}
	return dom[start : start+end]
}

// registry is one registry's part of a status.
func registry(t *testing.T, st app.Status, name string) app.RegistryStatus {
	t.Helper()
	for _, r := range st.Registries {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("status has no registry %s", name)
	return app.RegistryStatus{}
}

func fetchStatus(t *testing.T, rc *regcache, hdr http.Header) app.Status {
	t.Helper()
	resp, body := get(t, rc, "/_regcache/status", hdr)
	var st app.Status
	if err := json.Unmarshal(body, &st); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/_regcache/status: %d %v %s", resp.StatusCode, err, body)
	}
	return st
}

// scrape reads regcache's /metrics into series → value.
func scrape(t *testing.T, rc *regcache) map[string]float64 {
	t.Helper()
	_, body := get(t, rc, "/metrics", nil)
	out := map[string]float64{}
	for line := range strings.SplitSeq(string(body), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		if f, err := strconv.ParseFloat(value, 64); err == nil {
			out[name] = f
		}
	}
	return out
}

func get(t *testing.T, rc *regcache, path string, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, rc.url()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := rc.client().Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp, body
}
