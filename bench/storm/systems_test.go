package storm

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/regcache/regcache/bench/internal/systems"
	"github.com/regcache/regcache/internal/testhub"
)

// originTap is a transparent reverse proxy in front of the origin hub that
// counts response body bytes by kind. The hub itself counts blob bytes but
// not manifest bytes; the tap gives both (its blob figure must agree with
// the hub's BlobBytes).
type originTap struct {
	URL                              string
	manifestBytes, blobBytes, others atomic.Int64
}

var manifestPath = regexp.MustCompile(`^/v2/.+/manifests/[^/]+$`)
var blobPath = regexp.MustCompile(`^/v2/.+/blobs/[^/]+$`)

func newOriginTap(t testing.TB, hub *testhub.Hub) *originTap {
	t.Helper()
	target, _ := url.Parse(hub.URL)
	tap := &originTap{}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{Proxy: nil, DisableCompression: true, MaxIdleConnsPerHost: 64}
	rp.ErrorLog = nil
	rp.ModifyResponse = func(resp *http.Response) error {
		// The token realm goes through the tap too, so the origin is one
		// host:port. (go-containerregistry, which regcache uses, refuses a
		// realm on another literal loopback address as an SSRF guard.)
		if ch := resp.Header.Get("WWW-Authenticate"); ch != "" {
			resp.Header.Set("WWW-Authenticate", strings.ReplaceAll(ch, hub.Realm, tap.URL+"/token"))
		}
		req := resp.Request
		if req.Method != http.MethodGet {
			return nil
		}
		ctr := &tap.others
		switch {
		case manifestPath.MatchString(req.URL.Path):
			ctr = &tap.manifestBytes
		case blobPath.MatchString(req.URL.Path):
			ctr = &tap.blobBytes
		}
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent {
			ctr = &tap.others
		}
		resp.Body = &countingBody{ReadCloser: resp.Body, n: ctr}
		return nil
	}
	srv := httptest.NewUnstartedServer(rp)
	tap.URL = "http://" + srv.Listener.Addr().String()
	srv.Start()
	t.Cleanup(srv.Close)
	return tap
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// ---- regcache ----

// regcacheConfig is the regcache configuration of the storm: tags are
// revalidated on every pull (tag_ttl 0s, the strictest setting: a HEAD at
// the origin each time), one pull of the 10 is kept in reserve, and the
// ECR Public–style mirror carries library/*.
const regcacheConfig = `listen: %s
storage: %s
tag_ttl: 0s
tag_fallback: mirrors
upstream_timeout: 30s
log_level: info
registries:
  docker.io:
    url: %s
    reserve: %d
    mirrors:
      - url: %s
        repo_prefix: docker/
        repositories: ["library/*"]
`

const regcacheReserve = 1

func startRegcache(t testing.TB, origin, mirror string) *systems.Regcache {
	t.Helper()
	yaml := fmt.Sprintf(regcacheConfig, "127.0.0.1:0", "{root: "+t.TempDir()+"}", origin, regcacheReserve, mirror)
	return systems.StartRegcache(t, yaml, "storm config")
}

// scrape GETs /metrics and returns every sample by its full series name
// (name{labels}) as the Prometheus text format prints it.
func scrape(t testing.TB, base string) promSamples {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	out := promSamples{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out
}

type promSamples map[string]float64

// sum adds the samples of metric whose labels contain every one of want
// (each `k="v"`), and says whether any series matched.
func (p promSamples) sum(metric string, want ...string) (float64, bool) {
	var total float64
	found := false
	for series, v := range p {
		name, labels, _ := strings.Cut(series, "{")
		if name != metric {
			continue
		}
		ok := true
		for _, w := range want {
			if strings.HasPrefix(w, "!") {
				ok = ok && !strings.Contains(labels, w[1:])
			} else {
				ok = ok && strings.Contains(labels, w)
			}
		}
		if ok {
			total += v
			found = true
		}
	}
	return total, found
}

// lines returns the samples of the given metrics, sorted, for the report.
func (p promSamples) lines(metrics ...string) []string {
	var out []string
	for series, v := range p {
		name, _, _ := strings.Cut(series, "{")
		for _, m := range metrics {
			if name == m {
				out = append(out, fmt.Sprintf("%s %g", series, v))
			}
		}
	}
	sortStrings(out)
	return out
}

// ---- small helpers ----
