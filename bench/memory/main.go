// Command memory measures regcache's resident memory (RSS) under two of
// issue 13's attacks, for one or more builds of regcache, and prints a
// Markdown table for BENCHMARKS.md:
//
//   - 300 clients that ask for a 32 MiB blob and never read: 150 a cached
//     blob, 150 a blob whose download is in flight;
//   - 60 distinct tags-list queries (?n= and ?last=) of a 600,000-tag list,
//     each answered with hundreds of thousands of tags.
//
// Usage:
//
//	go run ./bench/memory -revs 08afe79,HEAD    # before and after issue 13
//	go run ./bench/memory -revs .               # the working tree as it is
//
// Each revision is built in a temporary git worktree, removed afterwards
// ("." builds the working tree in place). Each measurement gets a regcache
// process of its own, with a config that uses only keys every revision
// knows (the rest at their defaults). The upstream is a real Distribution
// registry (the `registry` binary .ci/deps installs) behind a small front
// on loopback that paces the in-flight blob (4 MiB at once, then 128 KiB/s)
// and serves the large tags list, which no registry could be seeded with in
// reasonable time; it paginates as Distribution does (n, last, Link).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	revs := flag.String("revs", "08afe79,HEAD", "comma-separated git revisions to build and measure; . is the working tree")
	clients := flag.Int("clients", 300, "clients that never read (half on a cached blob, half on one in flight)")
	queries := flag.Int("queries", 60, "distinct tags-list queries")
	flag.Parse()
	if err := run(strings.Split(*revs, ","), *clients, *queries); err != nil {
		fmt.Fprintln(os.Stderr, "memory:", err)
		os.Exit(1)
	}
}

// result is one measurement of one build.
type result struct {
	rev, scenario       string
	before, peak, after int64 // bytes: RSS before the attack, VmHWM, RSS 10 s after it
	upstream            int   // the front's tags-list requests (the list scenario)
	note                string
}

func run(revs []string, clients, queries int) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "regcache-memory-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	up, err := startUpstream(work)
	if err != nil {
		return err
	}
	defer up.stop()
	var results []result
	for _, rev := range revs {
		bin, label, err := build(root, work, rev)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "measuring %s\n", label)
		r, err := stalledClients(bin, work, up, clients)
		if err != nil {
			return fmt.Errorf("%s, stalled clients: %w", label, err)
		}
		r.rev = label
		results = append(results, r)
		r, err = listQueries(bin, work, up, queries)
		if err != nil {
			return fmt.Errorf("%s, list queries: %w", label, err)
		}
		r.rev = label
		results = append(results, r)
	}
	report(results, clients, queries)
	return nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the regcache module")
	}
	return filepath.Dir(mod), nil
}

// build builds ./cmd/regcache at rev and returns the binary and a label
// (the short commit).
func build(root, work, rev string) (bin, label string, err error) {
	src := root
	label = "working tree"
	if rev != "." {
		out, err := exec.Command("git", "-C", root, "rev-parse", "--short", rev+"^{commit}").Output()
		if err != nil {
			return "", "", fmt.Errorf("git rev-parse %s: %w", rev, err)
		}
		label = strings.TrimSpace(string(out))
		src = filepath.Join(work, "src-"+label)
		if out, err := exec.Command("git", "-C", root, "worktree", "add", "--detach", src, label).CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("git worktree add %s: %v: %s", label, err, out)
		}
		defer exec.Command("git", "-C", root, "worktree", "remove", "--force", src).Run()
	}
	bin = filepath.Join(work, "regcache-"+strings.ReplaceAll(label, " ", "-"))
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/regcache")
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("building %s: %v: %s", label, err, out)
	}
	return bin, label, nil
}

// regcache is one running regcache process.
type regcache struct {
	cmd  *exec.Cmd
	url  string
	logs bytes.Buffer
}

func startRegcache(bin, work, upstream string) (*regcache, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(work, "regcache-")
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf("listen: %s\nstorage: {root: %s}\nlog_level: warn\nregistries:\n  bench.example: {url: %s}\n", addr, filepath.Join(dir, "data"), upstream)
	if err := os.WriteFile(filepath.Join(dir, "regcache.yaml"), []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	r := &regcache{url: "http://" + addr}
	r.cmd = exec.Command(bin, "serve", "--config", filepath.Join(dir, "regcache.yaml"))
	r.cmd.Stdout, r.cmd.Stderr = &r.logs, &r.logs
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(r.url + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return r, nil
			}
		}
		if time.Now().After(deadline) {
			r.stop()
			return nil, fmt.Errorf("regcache did not start: %s", r.logs.String())
		}
	}
}

func (r *regcache) stop() {
	r.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		r.cmd.Process.Kill()
		<-done
	}
}

// status reads a field of /proc/PID/status, in bytes.
func (r *regcache) status(field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// get fetches a URL whole and checks its status.
func get(ctx context.Context, url string, accept string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("GET %s: %s %.200s", url, resp.Status, b)
	}
	return b, err
}

func report(results []result, clients, queries int) {
	mib := func(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }
	fmt.Printf("Go %s, %s/%s, %d CPUs, %s\n\n", strings.TrimPrefix(runtime.Version(), "go"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), loadavg())
	fmt.Println("| regcache | attack | RSS before | peak RSS (VmHWM) | RSS 10 s after | upstream list requests |")
	fmt.Println("|---|---|---:|---:|---:|---:|")
	for _, r := range results {
		up := "–"
		if r.scenario == "list" {
			up = strconv.Itoa(r.upstream)
		}
		what := fmt.Sprintf("%d clients not reading", clients)
		if r.scenario == "list" {
			what = fmt.Sprintf("%d distinct tags-list queries", queries)
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", r.rev, what, mib(r.before), mib(r.peak), mib(r.after), up)
	}
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return "load average " + strings.Join(f[:3], " ")
}
