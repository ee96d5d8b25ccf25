package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

type workload struct {
	id, title string
	run       func(e *env) error
	// optIn workloads run only when named in -workloads.
	optIn bool
	// standalone workloads need neither the origin nor the seeded content.
	standalone bool
}

// workloads run in this order. Add new ones (the CI storm of issue 3 will be
// "storm") here; a workload gets servers with e.get or starts its own, and
// records figures with e.add.
var workloads = []workload{
	{"1", "cached blob, one stream", func(e *env) error { return e.blobStreams("1", 1) }, false, false},
	{"2", "cached blob, 16 concurrent streams", func(e *env) error { return e.blobStreams("2", 16) }, false, false},
	{"3", "cached manifest requests/s, 32 connections", (*env).manifestRPS, false, false},
	{"4", "cold pull through each proxy vs direct", (*env).coldPull, false, false},
	{"5", "fan-out: 16 concurrent cold pulls", (*env).fanOut, false, false},
	{"6", "memory: 16 streams and 1,000 idle keep-alive connections", (*env).memory, false, false},
	{"7", "scaling with 10k/100k/1M cached tags (synthetic store)", (*env).scaling, false, false},
	// The CI storm of issue 3 lives in ./bench/storm as a Go test (it uses
	// internal/testhub's fake Docker Hub); this runs it and carries its
	// table into the report.
	{id: "storm", title: "CI storm (issue 3): go test ./bench/storm", run: (*env).storm, optIn: true, standalone: true},
	// Issue 9: regcache on an S3-compatible server (versitygw), opt-in.
	{id: "s3-blob", title: "cached blob on S3: direct, proxied, redirected", run: (*env).s3Blob, optIn: true},
	{id: "s3-manifest", title: "cached manifest requests/s, S3 vs filesystem store", run: (*env).s3Manifest, optIn: true},
	{id: "s3-replicas", title: "cached blob throughput, 1-3 replicas on one bucket", run: (*env).s3Replicas, optIn: true},
}

const gib = float64(1 << 30)

var blobServers = []string{"regcache", "distribution", "nginx-sendfile", "nginx-copy1m"}

func (e *env) blobURL(s *server) string {
	if s.kind == "nginx" {
		return s.url + "/blob"
	}
	return s.url + "/v2/bench/blob/blobs/" + e.blob.digest
}

func (e *env) manifestURL(s *server, ref string) string {
	if s.kind == "nginx" {
		return s.url + "/manifest"
	}
	return s.url + "/v2/bench/small/manifests/" + ref
}

// warmBlob makes sure a proxy has the blob cached: GET it until regcache
// answers X-Regcache: hit, or until Distribution's storage holds the whole
// blob.
func (e *env) warmBlob(s *server) error {
	key := "warm-blob-" + s.name
	if e.shared[key] != nil || s.kind == "nginx" {
		return nil
	}
	hex := strings.TrimPrefix(e.blob.digest, "sha256:")
	for i := 0; i < 5; i++ {
		_, _, res, err := streams(e.ctx, e.blobURL(s), 1)
		if err != nil {
			return err
		}
		switch s.kind {
		case "regcache":
			if len(res) == 1 && res[0] == "hit" {
				e.shared[key] = true
				return nil
			}
		case "distribution":
			st, err := os.Stat(filepath.Join(s.dir, "docker/registry/v2/blobs/sha256", hex[:2], hex, "data"))
			if err == nil && st.Size() == e.blob.size {
				e.shared[key] = true
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s: blob not cached after 5 GETs", s.name)
}

// measure runs f while metering the server (and profiling it when it is a
// pprof build of regcache).
func (e *env) measure(s *server, prof string, f func() error) (meterResult, error) {
	e.profile(s, "start", prof)
	m := s.p.startMeter()
	err := f()
	r := m.end()
	e.profile(s, "stop", prof)
	return r, err
}

func (e *env) profile(s *server, op, name string) {
	if s.pprof == "" || name == "" {
		return
	}
	resp, err := http.Get("http://" + s.pprof + "/bench/" + op + "?name=" + url.QueryEscape(name))
	if err != nil {
		logf("pprof %s %s: %v", op, name, err)
		return
	}
	resp.Body.Close()
}

func profName(parts ...string) string {
	return strings.NewReplacer(" ", "_", "/", "_", ":", "").Replace(strings.Join(parts, "-"))
}

// blobStreams is workloads 1 and 2: n concurrent GETs of the cached blob.
func (e *env) blobStreams(id string, n int) error {
	cas := fmt.Sprintf("%d MiB blob, %d stream(s)", e.blob.size>>20, n)
	for _, name := range blobServers {
		s, err := e.get(name)
		if err != nil {
			return err
		}
		if err := e.warmBlob(s); err != nil {
			return err
		}
		r := row{Workload: id, Case: cas, Server: name, Unit: "GB/s", PerUnit: "s/GiB", Tool: "Go client, 1 MiB reads"}
		for i := 0; i < e.reps; i++ {
			var total int64
			var el time.Duration
			var res []string
			mr, err := e.measure(s, profName("w"+id, name, fmt.Sprint(i)), func() error {
				var err error
				total, el, res, err = streams(e.ctx, e.blobURL(s), n)
				return err
			})
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if s.kind == "regcache" && (len(res) != 1 || res[0] != "hit") {
				r.Note = fmt.Sprintf("X-Regcache %v", res)
			}
			r.Values = append(r.Values, float64(total)/el.Seconds()/1e9)
			r.CPU = append(r.CPU, mr.CPUSeconds)
			r.Work = append(r.Work, float64(total)/gib)
			r.RSS = append(r.RSS, float64(mr.PeakRSS)/(1<<20))
		}
		e.add(r)
	}
	return nil
}

// manifestRPS is workload 3.
func (e *env) manifestRPS() error {
	type tcase struct {
		cas, ref, method string
	}
	for _, name := range []string{"regcache", "distribution", "nginx-sendfile"} {
		s, err := e.get(name)
		if err != nil {
			return err
		}
		var cases []tcase
		if s.kind == "nginx" {
			cases = []tcase{{"static file GET", "", "GET"}, {"static file HEAD", "", "HEAD"}}
		} else {
			cases = []tcase{
				{"by tag GET", e.small.tag, "GET"}, {"by tag HEAD", e.small.tag, "HEAD"},
				{"by digest GET", e.small.digest, "GET"}, {"by digest HEAD", e.small.digest, "HEAD"},
			}
			// Warm: one GET of each puts tag and manifest in the cache.
			for _, ref := range []string{e.small.tag, e.small.digest} {
				c := &http.Client{}
				if _, h, err := getAll(e.ctx, c, e.manifestURL(s, ref), map[string]string{"Accept": acceptAll}, nil); err != nil {
					return fmt.Errorf("%s: warm %s: %w", name, ref, err)
				} else if s.kind == "regcache" {
					_, h, _ = getAll(e.ctx, c, e.manifestURL(s, ref), map[string]string{"Accept": acceptAll}, nil)
					if h.Get("X-Regcache") != "hit" {
						return fmt.Errorf("regcache: %s not a cache hit after warm-up: %q", ref, h.Get("X-Regcache"))
					}
				}
			}
		}
		for _, tc := range cases {
			u := e.manifestURL(s, tc.ref)
			r := row{Workload: "3", Case: tc.cas, Server: name, Unit: "req/s", PerUnit: "ms/kreq"}
			if tc.method == "GET" {
				r.Tool = "wrk -t2 -c32"
			} else {
				r.Tool = "hey -c32 -m HEAD"
			}
			for i := 0; i < e.reps; i++ {
				var wr wrkResult
				mr, err := e.measure(s, profName("w3", name, tc.cas, fmt.Sprint(i)), func() error {
					var err error
					if tc.method == "GET" {
						wr, err = runWrk(e.ctx, e, u, 32, e.loadDur, acceptAll, "")
					} else {
						wr, err = runHey(e.ctx, e, "HEAD", u, 32, e.loadDur, acceptAll)
					}
					return err
				})
				if err != nil {
					return err
				}
				r.addLoad(wr, mr, e.loadDur)
			}
			e.add(r)
		}
	}
	return nil
}

// coldProxy starts (or restarts with an empty cache) a proxy for cold pulls.
func (e *env) coldProxy(kind string) (*server, error) {
	name := kind + "-cold"
	if s, ok := e.servers[name]; ok {
		return s, s.restart(e.ctx, true)
	}
	var s *server
	var err error
	switch kind {
	case "regcache":
		s, err = startRegcache(e.ctx, e, name, filepath.Join(e.work, name), e.counter.url(), true)
	case "distribution":
		s, err = startDistribution(e.ctx, e, name, e.counter.url())
	case "nginx-proxy":
		s, err = startNginxProxy(e, kind, e.counter.url())
	case "hash-forward":
		s, err = startHashForward(e, kind, e.counter.url())
	default:
		err = fmt.Errorf("unknown proxy %q", kind)
	}
	if s != nil {
		e.servers[name] = s
	}
	return s, err
}

// pulls runs n concurrent pulls of the big image from base and returns the
// wall time and the bytes the origin sent meanwhile.
func (e *env) pulls(base string, n int) (time.Duration, int64, error) {
	o0 := e.counter.bytes.Load()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(e.ctx, 5*time.Minute)
			defer cancel()
			if _, err := pull(ctx, base, e.big.repo, e.big.tag); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	close(errs)
	return el, e.counter.bytes.Load() - o0, <-errs
}

// pullTargets are the ways to pull: from the origin directly (through the
// byte counter, like the proxies), through each proxy, cold, and through
// the two floors (floor.go).
var pullTargets = []string{"direct", "regcache", "distribution", "nginx-proxy", "hash-forward"}

// pullSeries runs reps of n concurrent cold pulls per target.
func (e *env) pullSeries(id, cas string, n, reps int, targets []string) error {
	for _, t := range targets {
		r := row{Workload: id, Case: cas, Server: t, Unit: "s", PerUnit: "s/GiB", Tool: "Go pull client, 3 blobs at a time, sha256 verified"}
		ob := row{Workload: id, Case: cas + ": origin bytes", Server: t, Unit: "× image"}
		for i := 0; i < reps; i++ {
			base := e.counter.url()
			var s *server
			if t != "direct" {
				var err error
				if s, err = e.coldProxy(t); err != nil {
					return err
				}
				base = s.url
			}
			var el time.Duration
			var originBytes int64
			f := func() error {
				var err error
				el, originBytes, err = e.pulls(base, n)
				return err
			}
			var mr meterResult
			var err error
			if s != nil {
				mr, err = e.measure(s, profName("w"+id, t, fmt.Sprint(i)), f)
				r.CPU = append(r.CPU, mr.CPUSeconds)
				r.RSS = append(r.RSS, float64(mr.PeakRSS)/(1<<20))
				r.Work = append(r.Work, float64(int64(n)*e.big.size)/gib)
			} else {
				err = f()
			}
			if err != nil {
				return fmt.Errorf("%s: %w", t, err)
			}
			r.Values = append(r.Values, el.Seconds())
			ob.Values = append(ob.Values, float64(originBytes)/float64(e.big.size))
		}
		e.add(r)
		e.add(ob)
	}
	return nil
}

func (e *env) coldPull() error {
	return e.pullSeries("4", fmt.Sprintf("1 cold pull of %d MiB", e.big.size>>20), 1, e.reps, pullTargets)
}

func (e *env) fanOut() error {
	// 16 × the image per repetition: at most 2 repetitions keep the full
	// run inside its time budget.
	return e.pullSeries("5", fmt.Sprintf("%d concurrent cold pulls of %d MiB", e.fanout, e.big.size>>20), e.fanout, min(e.reps, 2), pullTargets[:3])
}

// memory is workload 6: peak RSS with 16 streams (taken from workload 2
// when it ran) and with 1,000 idle keep-alive connections.
func (e *env) memory() error {
	cas2 := fmt.Sprintf("%d MiB blob, %d stream(s)", e.blob.size>>20, 16)
	if _, ok := e.find("2", cas2, "regcache"); !ok {
		if err := e.blobStreams("2", 16); err != nil {
			return err
		}
	}
	for _, name := range blobServers {
		r2, _ := e.find("2", cas2, name)
		e.add(row{Workload: "6", Case: "peak RSS, 16 streams (workload 2)", Server: name, Unit: "MiB", Values: r2.RSS})
	}
	const idle = 1000
	for _, name := range []string{"regcache", "distribution", "nginx-sendfile"} {
		s, err := e.get(name)
		if err != nil {
			return err
		}
		r := row{Workload: "6", Case: fmt.Sprintf("RSS, %d idle keep-alive conns", idle), Server: name, Unit: "MiB"}
		var helds []float64
		for i := 0; i < e.reps; i++ {
			var held float64
			mr, err := e.measure(s, profName("w6", name, fmt.Sprint(i)), func() error {
				closeAll, err := holdIdle(s.url, strings.TrimPrefix(e.manifestURL(s, e.small.tag), s.url), idle)
				if err != nil {
					return err
				}
				time.Sleep(time.Second)
				held = float64(s.p.rssBytes()) / (1 << 20)
				closeAll()
				return nil
			})
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			r.Values = append(r.Values, float64(mr.PeakRSS)/(1<<20))
			helds = append(helds, held)
		}
		r.Note = fmt.Sprintf("peak over the measurement; RSS 1 s after the last connection opened: %.1f MiB (median)", median(helds))
		e.add(r)
	}
	return nil
}

// storm runs the CI storm benchmark of issue 3 (./bench/storm) and keeps
// the Markdown table it prints.
func (e *env) storm() error {
	if _, err := os.Stat("bench/storm"); err != nil {
		return fmt.Errorf("./bench/storm not found (run from the module root): %w", err)
	}
	cmd := exec.CommandContext(e.ctx, "go", "test", "./bench/storm", "-run", "Storm", "-count=1", "-v")
	out, err := cmd.CombinedOutput()
	var table []string
	for _, l := range strings.Split(string(out), "\n") {
		if t := strings.TrimSpace(l); strings.HasPrefix(t, "|") {
			table = append(table, t)
		}
	}
	e.extra = append(e.extra, "### CI storm (issue 3, `go test ./bench/storm -run Storm -v`)\n\n"+strings.Join(table, "\n")+"\n")
	if err != nil {
		return fmt.Errorf("go test ./bench/storm: %v\n%s", err, out)
	}
	return nil
}

// addLoad records one load-generator run of a requests-per-second row: the
// rate, the server's CPU and peak RSS, and the requests made (in millions,
// so CPU/Work is ms of server CPU per 1,000 requests).
func (r *row) addLoad(wr wrkResult, mr meterResult, d time.Duration) {
	if wr.Non2xx > 0 || wr.Errors > 0 {
		r.Note = fmt.Sprintf("%d non-2xx, %d socket errors", wr.Non2xx, wr.Errors)
	}
	r.Values = append(r.Values, wr.RPS)
	r.CPU = append(r.CPU, mr.CPUSeconds)
	r.Work = append(r.Work, wr.RPS*d.Seconds()/1e6)
	r.RSS = append(r.RSS, float64(mr.PeakRSS)/(1<<20))
}
