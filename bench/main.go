// Command bench runs regcache side by side with CNCF Distribution v3 in
// proxy mode and nginx serving the same bytes as static files, all on
// loopback, and prints medians, ratios, server CPU seconds and peak RSS.
//
//	go run ./bench                      # all workloads (make bench)
//	go run ./bench -quick               # smaller sizes, 1 repetition, < 3 min
//	go run ./bench -workloads 1,3,7     # a selection
//	go run ./bench -pprof /tmp/prof     # regcache built with net/http/pprof; CPU and alloc profiles per measurement
//
// Workloads are registered in the workloads table (workloads.go); each one
// takes the shared environment (origin, servers started on demand, seeded
// content) and appends rows to the results. New ones, such as the CI storm
// of issue 3, are added the same way.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"
)

// env is everything a workload needs. Servers are started on first use and
// stopped at the end of the run.
type env struct {
	ctx   context.Context
	quick bool
	reps  int
	work  string // scratch directory: server storage, configs, generated files
	cache string // generated content reused across runs (random files, tag stores)

	regcacheBin, registryBin, nginxBin, wrkBin, heyBin string

	pprofDir string // when set, regcache is the pprof build and profiles go here

	blobSize  int64 // workloads 1, 2, 6
	imageSize int64 // workloads 4, 5
	layers    int
	fanout    int
	loadDur   time.Duration
	tagCounts []int

	origin  *server
	counter *counter
	servers map[string]*server
	s3      *objectStore // the S3 workloads' server, started on first use

	// seeded content
	blob  blobFile
	small image // small image for manifest workloads
	big   image // image for cold pulls
	www   string

	results []row
	extra   []string       // Markdown sections workloads add to the report
	loads   []string       // per workload: duration and machine load around it
	shared  map[string]any // results one workload leaves for another
}

// row is one measured figure: the median over reps of Values, with the
// server's CPU seconds and peak RSS for the same measurements.
type row struct {
	Workload string    `json:"workload"`
	Case     string    `json:"case"`
	Server   string    `json:"server"`
	Unit     string    `json:"unit"`
	Values   []float64 `json:"values"`
	CPU      []float64 `json:"cpu_s,omitempty"`
	RSS      []float64 `json:"peak_rss_mib,omitempty"`
	// PerUnitCPU names what CPU is divided by for the "CPU per" column:
	// "GiB" (bytes in Work), "kreq" (requests in Work).
	PerUnit string    `json:"cpu_per_unit,omitempty"`
	Work    []float64 `json:"work,omitempty"`
	Note    string    `json:"note,omitempty"`
	Tool    string    `json:"tool,omitempty"`
}

func (r row) median() float64    { return median(r.Values) }
func (r row) cpuMedian() float64 { return median(r.CPU) }
func (r row) rssMedian() float64 { return median(r.RSS) }

// cpuPer is the median over reps of CPU seconds per unit of work.
func (r row) cpuPer() float64 {
	if len(r.CPU) == 0 || len(r.Work) != len(r.CPU) {
		return 0
	}
	var v []float64
	for i := range r.CPU {
		if r.Work[i] > 0 {
			v = append(v, r.CPU[i]/r.Work[i])
		}
	}
	return median(v)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (e *env) add(r row) {
	e.results = append(e.results, r)
	fmt.Fprintf(os.Stderr, "  %-4s %-34s %-22s %12.3f %-6s", r.Workload, r.Case, r.Server, r.median(), r.Unit)
	if len(r.CPU) > 0 {
		fmt.Fprintf(os.Stderr, "  cpu %.2fs", r.cpuMedian())
	}
	if len(r.RSS) > 0 {
		fmt.Fprintf(os.Stderr, "  rss %.1fMiB", r.rssMedian())
	}
	if r.Note != "" {
		fmt.Fprintf(os.Stderr, "  (%s)", r.Note)
	}
	fmt.Fprintln(os.Stderr)
}

func (e *env) find(workload, cas, server string) (row, bool) {
	for _, r := range e.results {
		if r.Workload == workload && r.Case == cas && r.Server == server {
			return r, true
		}
	}
	return row{}, false
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05")+" "+format+"\n", args...)
}

func main() {
	quick := flag.Bool("quick", false, "small sizes, one repetition, short load runs (< 3 minutes)")
	sel := flag.String("workloads", "", "comma-separated workloads to run, e.g. 1,2,3 (default: all)")
	reps := flag.Int("reps", 0, "repetitions per measurement (default 3, or 1 with -quick)")
	work := flag.String("workdir", filepath.Join(os.TempDir(), "regcache-bench"), "scratch directory; generated files and tag stores are kept in <workdir>/cache for the next run")
	pprofDir := flag.String("pprof", "", "build regcache with net/http/pprof (bench/regcachepprof) and write CPU and alloc profiles of each regcache measurement here")
	jsonOut := flag.String("json", "", "also write the results as JSON to this file")
	mdOut := flag.String("md", "", "also write the Markdown tables to this file")
	regcacheBin := flag.String("regcache", "", "use this regcache binary instead of building ./cmd/regcache")
	loadDur := flag.Duration("duration", 0, "duration of each load-generator run (default 8s, or 3s with -quick)")
	hashForward := flag.String(hashForwardFlag, "", "internal: serve as workload 4's hash-forward proxy on this address")
	hashForwardUpstream := flag.String(hashForwardUpstreamFlag, "", "internal: the hash-forward proxy's upstream URL")
	flag.Parse()
	if *hashForward != "" {
		fmt.Fprintln(os.Stderr, "bench:", serveHashForward(*hashForward, *hashForwardUpstream))
		os.Exit(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	e := &env{ctx: ctx, quick: *quick, reps: *reps, work: filepath.Join(*work, "run"), cache: filepath.Join(*work, "cache"),
		servers: map[string]*server{}, shared: map[string]any{}, pprofDir: *pprofDir}
	if e.reps == 0 {
		e.reps = 3
		if e.quick {
			e.reps = 1
		}
	}
	e.blobSize, e.imageSize, e.layers, e.fanout, e.loadDur = 1<<30, 512<<20, 4, 16, 8*time.Second
	e.tagCounts = []int{10_000, 100_000, 1_000_000}
	if e.quick {
		e.blobSize, e.imageSize, e.loadDur = 256<<20, 128<<20, 3*time.Second
		e.tagCounts = []int{10_000, 100_000}
	}
	if *loadDur > 0 {
		e.loadDur = *loadDur
	}

	selected := map[string]bool{}
	for _, s := range strings.Split(*sel, ",") {
		if s = strings.TrimSpace(s); s != "" {
			selected[s] = true
		}
	}
	start := time.Now()
	// Standalone workloads (storm) bring their own servers: without any
	// other, nothing is built, started or seeded here.
	needSetup := false
	for _, w := range workloads {
		if !w.standalone && (selected[w.id] || len(selected) == 0 && !w.optIn) {
			needSetup = true
		}
	}
	if err := e.setupIf(needSetup, *regcacheBin); err != nil {
		e.teardown()
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	failed := false
	for _, w := range workloads {
		if (len(selected) > 0 || w.optIn) && !selected[w.id] {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		logf("workload %s: %s", w.id, w.title)
		t0 := time.Now()
		la0 := loadavg()
		if err := w.run(e); err != nil {
			failed = true
			logf("workload %s FAILED: %v", w.id, err)
		}
		logf("workload %s took %s", w.id, time.Since(t0).Round(time.Second))
		e.loads = append(e.loads, fmt.Sprintf("workload %s: %s, 1-min load average %s → %s", w.id, time.Since(t0).Round(time.Second), la0, loadavg()))
	}
	e.teardown()

	md := e.report(time.Since(start), strings.Join(os.Args[1:], " "))
	fmt.Println(md)
	if *mdOut != "" {
		_ = os.WriteFile(*mdOut, []byte(md), 0o644)
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(e.results, "", "  ")
		_ = os.WriteFile(*jsonOut, b, 0o644)
	}
	if failed {
		os.Exit(1)
	}
}

func (e *env) setupIf(need bool, regcacheBin string) error {
	if !need {
		return nil
	}
	return e.setup(regcacheBin)
}

func (e *env) setup(regcacheBin string) error {
	var err error
	resetDir(e.work)
	mustMkdir(e.cache)
	if e.registryBin, err = lookBin("registry", filepath.Join(gopath(), "bin", "registry")); err != nil {
		return fmt.Errorf("%w: go install github.com/distribution/distribution/v3/cmd/registry@v3.1.2", err)
	}
	if e.nginxBin, err = lookBin("nginx", "/usr/sbin/nginx"); err != nil {
		return fmt.Errorf("%w: apt-get install nginx", err)
	}
	if e.wrkBin, err = lookBin("wrk"); err != nil {
		return fmt.Errorf("%w: apt-get install wrk", err)
	}
	if e.heyBin, err = lookBin("hey"); err != nil {
		return fmt.Errorf("%w: apt-get install hey", err)
	}
	if e.pprofDir != "" {
		if abs, err := filepath.Abs(e.pprofDir); err == nil {
			e.pprofDir = abs
		}
		mustMkdir(e.pprofDir)
	}
	switch {
	case regcacheBin != "":
		e.regcacheBin = regcacheBin
	default:
		pkg := "./cmd/regcache"
		if e.pprofDir != "" {
			pkg = "./bench/regcachepprof"
		}
		e.regcacheBin = filepath.Join(e.work, "bin", "regcache")
		logf("building %s", pkg)
		cmd := exec.Command("go", "build", "-o", e.regcacheBin, pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build %s: %w", pkg, err)
		}
	}

	logf("starting origin (distribution %s)", e.registryBin)
	if e.origin, err = startDistribution(e.ctx, e, "origin", ""); err != nil {
		return err
	}
	if e.counter, err = startCounter(strings.TrimPrefix(e.origin.url, "http://")); err != nil {
		return err
	}
	return e.seed()
}

func gopath() string {
	if gp := os.Getenv("GOPATH"); gp != "" {
		return filepath.SplitList(gp)[0]
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, "go")
}

// seed pushes the test content to the origin and lays out nginx's files.
func (e *env) seed() error {
	t0 := time.Now()
	var err error
	e.blob, err = randomFile(e.cache, "blob", e.blobSize, 1)
	if err != nil {
		return err
	}
	if err := pushBlobFile(e.origin.url, "bench/blob", e.blob); err != nil {
		return err
	}
	small, err := randomFile(e.cache, "small", 4096, 2)
	if err != nil {
		return err
	}
	if e.small, err = pushImage(e.origin.url, "bench/small", "v1", []blobFile{small}); err != nil {
		return err
	}
	var layers []blobFile
	for i := 0; i < e.layers; i++ {
		l, err := randomFile(e.cache, fmt.Sprintf("layer%d", i), e.imageSize/int64(e.layers), uint64(10+i))
		if err != nil {
			return err
		}
		layers = append(layers, l)
	}
	if e.big, err = pushImage(e.origin.url, "bench/pull", "v1", layers); err != nil {
		return err
	}
	// nginx serves the same bytes: the blob (a hard link, same page cache
	// as the generated file) and the small manifest.
	e.www = filepath.Join(e.work, "www")
	mustMkdir(e.www)
	if err := os.Link(e.blob.path, filepath.Join(e.www, "blob")); err != nil {
		return err
	}
	writeFile(filepath.Join(e.www, "manifest"), string(e.small.manifest))
	logf("seeded origin in %s: blob %d MiB, image %d MiB in %d layers, manifest %d bytes",
		time.Since(t0).Round(time.Millisecond), e.blob.size>>20, e.big.size>>20, e.layers, len(e.small.manifest))
	return nil
}

// get returns a named server, starting it on first use.
//
//	regcache       warm regcache (its own storage)
//	distribution   warm Distribution v3 proxy
//	nginx-sendfile, nginx-copy1m   nginx with sendfile on / off + 1 MiB output buffers
func (e *env) get(name string) (*server, error) {
	if s, ok := e.servers[name]; ok {
		return s, nil
	}
	var s *server
	var err error
	switch name {
	// The warm servers talk to the origin directly: the byte counter is a
	// userspace hop that costs a proxy which dials the origin per request
	// (Distribution's tag path: 140 instead of 400 req/s), and only the
	// cold-pull workloads need origin bytes counted.
	case "regcache":
		s, err = startRegcache(e.ctx, e, name, filepath.Join(e.work, name), e.origin.url, true)
	case "distribution":
		s, err = startDistribution(e.ctx, e, name, e.origin.url)
	case "nginx-sendfile":
		s, err = startNginx(e.ctx, e, name, true)
	case "nginx-copy1m":
		s, err = startNginx(e.ctx, e, name, false)
	default:
		return nil, fmt.Errorf("unknown server %q", name)
	}
	if s != nil {
		e.servers[name] = s
	}
	return s, err
}

func (e *env) drop(name string) {
	if s, ok := e.servers[name]; ok {
		s.stop()
		delete(e.servers, name)
	}
}

func (e *env) teardown() {
	for _, s := range e.servers {
		s.stop()
	}
	if e.counter != nil {
		e.counter.close()
	}
	if e.origin != nil {
		e.origin.stop()
	}
	if e.s3 != nil {
		e.s3.stop()
	}
}

func machine() string {
	var b strings.Builder
	out, _ := exec.Command("nproc").Output()
	fmt.Fprintf(&b, "nproc: %s", out)
	if cpu, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(cpu), "\n") {
			if strings.HasPrefix(l, "model name") {
				fmt.Fprintf(&b, "cpu: %s\n", strings.TrimSpace(strings.SplitN(l, ":", 2)[1]))
				break
			}
		}
	}
	out, _ = exec.Command("free", "-m").Output()
	b.Write(out)
	out, _ = exec.Command("uname", "-sr").Output()
	fmt.Fprintf(&b, "kernel: %sgo: %s\n", out, runtime.Version())
	return b.String()
}

func nproc() int { return runtime.NumCPU() }

// loadavg is the 1-minute load average: other work on the machine (a
// compile, a test run) shows up here and in the figures.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}
