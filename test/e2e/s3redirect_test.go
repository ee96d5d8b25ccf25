package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

// TestClientsFollowBlobRedirects (issue 9, storage.s3.redirect): regcache
// keeps its cache in a bucket on a real S3 server (versitygw) and answers
// cached blob requests with a 307 to a presigned URL. Every real client
// pulls the four manifest types through it, and:
//   - each reports the upstream's digest;
//   - every blob request it sent regcache was answered 307, none with bytes;
//   - regcache served no blob bytes at all, and the bytes the clients got
//     came from the object store, through presigned URLs carrying no
//     Authorization header.
//
// The object store sits behind a counting proxy addressed as localhost, a
// host name other than regcache's 127.0.0.1, as an object store is in
// production: a client sends its registry credentials only to the
// registry's host. It is a name, not another loopback address such as
// 127.0.0.2: crane (go-containerregistry >= 0.22) refuses a redirect to a
// different host that is a private or loopback IP literal ("SSRF
// protection"). regcache is configured with the proxy's URL, so that is
// the host the URLs are signed for.
func TestClientsFollowBlobRedirects(t *testing.T) {
	w := newWorld(t)
	s3srv := testhub.StartS3(t)
	w.addSecret(s3srv.AccessKey, s3srv.SecretKey)
	front := startS3Front(t, w, s3srv.Endpoint)
	images, _, rc := startHubAndRegcacheWith(t, w, testhub.Options{}, regcacheConfig{
		storage: fmt.Sprintf("{s3: {bucket: %s, endpoint: %s, path_style: true, redirect: true, redirect_expiry: 10m}}",
			s3srv.Bucket, strconv.Quote(front.url)),
		env: s3srv.Env(),
	})

	// Warm the cache (the first pull streams, as nothing is committed),
	// then wait until every blob is committed: from then on each answer is
	// a redirect.
	crane := requireBinary(t, "crane", "crane")
	var blobs []string
	for _, img := range images {
		dest := filepath.Join(w.mkdir("warm"), img.name)
		w.mustRun(t, pullTimeout, w.baseEnv(), crane, "pull", "--insecure", "--format", "oci",
			rc.host()+"/docker.io/"+img.repo+":"+img.tag, dest)
		entries, err := os.ReadDir(filepath.Join(dest, "blobs", "sha256"))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			blobs = append(blobs, rc.url()+"/v2/docker.io/"+img.repo+"/blobs/sha256:"+e.Name())
		}
	}
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, u := range blobs {
		err := waitFor(t.Context(), 30*time.Second, rc.proc, func() error {
			code, err := httpStatus(t.Context(), noFollow, http.MethodHead, u)
			if err == nil && code != http.StatusTemporaryRedirect {
				err = fmt.Errorf("HEAD %s: %d", u, code)
			}
			return err
		})
		if err != nil {
			t.Fatalf("blob not redirected after the warm-up: %v", err)
		}
	}
	served0 := rc.metric(t, "regcache_served_bytes_total", `kind="blob"`)
	front.reset()

	t.Run("clients", func(t *testing.T) {
		pullWithEveryClient(t, w, rc.host(), true, images, func(t *testing.T, reqs []recordedRequest) {
			redirected := 0
			for _, r := range reqs {
				if !strings.Contains(r.URI, "/blobs/") {
					continue
				}
				if r.Status != http.StatusTemporaryRedirect {
					t.Errorf("a cached blob was not redirected: %s", r)
				}
				if r.Method == http.MethodGet {
					redirected++
				}
			}
			if redirected == 0 {
				t.Errorf("no blob GET was redirected")
			}
		})
	})

	if served := rc.metric(t, "regcache_served_bytes_total", `kind="blob"`) - served0; served != 0 {
		t.Errorf("regcache served %v blob bytes itself", served)
	}
	t.Logf("regcache_blob_redirects_total: GET %v, HEAD %v",
		rc.metric(t, "regcache_blob_redirects_total", `method="GET"`), rc.metric(t, "regcache_blob_redirects_total", `method="HEAD"`))
	st := front.stats()
	for _, line := range st.table() {
		t.Log(line)
	}
	if st.auth != 0 {
		t.Errorf("%d presigned requests reached the object store with an Authorization header", st.auth)
	}
	// Each client names itself differently (podman says containers/...,
	// skopeo skopeo/...): every one of them fetched from the object store.
	if len(st.byAgent) < len(realClients()) || st.bytes == 0 {
		t.Errorf("presigned GETs from %d user agents (%d bytes), want one per client (%d)", len(st.byAgent), st.bytes, len(realClients()))
	}
	for _, leak := range []string{"X-Amz-Signature", "X-Amz-Credential"} {
		if b, _ := os.ReadFile(rc.proc.log); strings.Contains(string(b), leak) {
			t.Errorf("regcache's log holds %s: a presigned URL was logged", leak)
		}
	}
}

// metric sums the samples of a metric in regcache's /metrics whose labels
// include every one of labels (`name="value"`).
func (r *regcache) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	resp, err := r.client().Get(r.url() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		series, value, ok := strings.Cut(line, " ")
		if !ok || (series != name && !strings.HasPrefix(series, name+"{")) {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(series, l)
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil && match {
			sum += v
		}
	}
	return sum
}

// s3Front is a reverse proxy in front of an S3 server that counts what
// arrives with a presigned URL (X-Amz-Signature in the query), by client
// User-Agent. It keeps the Host header, which the signatures cover. Its log
// has paths, never queries: those carry signatures.
type s3Front struct {
	url string
	log string

	mu      sync.Mutex
	byAgent map[string]*frontCount
	auth    int
}

type frontCount struct {
	gets, heads int
	bytes       int64
}

type frontStats struct {
	byAgent map[string]frontCount
	auth    int
	bytes   int64
}

func startS3Front(t *testing.T, w *world, target string) *s3Front {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	f := &s3Front{url: fmt.Sprintf("http://localhost:%d", port), log: w.logFile("s3-front"), byAgent: map[string]*frontCount{}}
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	proxy := hostKeepingProxy(u)
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
		cw := &frontWriter{statusWriter: statusWriter{ResponseWriter: rw, status: http.StatusOK}}
		proxy.ServeHTTP(cw, req)
		presigned := req.URL.Query().Get("X-Amz-Signature") != ""
		if presigned {
			f.mu.Lock()
			c := f.byAgent[req.UserAgent()]
			if c == nil {
				c = &frontCount{}
				f.byAgent[req.UserAgent()] = c
			}
			switch req.Method {
			case http.MethodGet:
				c.gets++
				c.bytes += cw.n
			case http.MethodHead:
				c.heads++
			}
			if req.Header.Get("Authorization") != "" {
				f.auth++
			}
			f.mu.Unlock()
		}
		line := fmt.Sprintf("%s %s presigned=%t -> %d, %d bytes (%s)\n", req.Method, req.URL.Path, presigned, cw.status, cw.n, req.UserAgent())
		if fh, err := os.OpenFile(f.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			fh.WriteString(line)
			fh.Close()
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return f
}

func (f *s3Front) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.byAgent, f.auth = map[string]*frontCount{}, 0
}

func (f *s3Front) stats() frontStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := frontStats{byAgent: map[string]frontCount{}, auth: f.auth}
	for a, c := range f.byAgent {
		st.byAgent[a] = *c
		st.bytes += c.bytes
	}
	return st
}

// table is one line per User-Agent: what each client fetched itself.
func (st frontStats) table() []string {
	var lines []string
	for a, c := range st.byAgent {
		lines = append(lines, fmt.Sprintf("object store, presigned: %3d GET (%9d bytes), %3d HEAD from %q", c.gets, c.bytes, c.heads, a))
	}
	sort.Strings(lines)
	return lines
}

// frontWriter is a statusWriter that also counts the body bytes.
type frontWriter struct {
	statusWriter
	n int64
}

func (f *frontWriter) Write(p []byte) (int, error) {
	n, err := f.statusWriter.Write(p)
	f.n += int64(n)
	return n, err
}
