package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clkTck is USER_HZ, the unit of utime/stime in /proc/<pid>/stat. It is 100
// on every Linux this harness targets (checked with `getconf CLK_TCK`).
const clkTck = 100

// proc is a server process the harness started. Its CPU time and memory
// are read from /proc, for the process and (for nginx) its workers.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *tailBuffer
	done chan struct{}
	err  error
}

func startProc(name string, env []string, args ...string) (*proc, error) {
	p := &proc{name: name, log: &tailBuffer{max: 32 << 10}, done: make(chan struct{})}
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.Env = append(os.Environ(), env...)
	// Own process group, so a stop reaches nginx's workers too and a Ctrl-C
	// of the harness is handled by the harness.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the process group: SIGTERM, then SIGKILL after 5 s.
func (p *proc) stop() {
	if p == nil || p.exited() {
		return
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.done
	}
}

// kill ends the process group at once (a crash, for restart timings).
func (p *proc) kill() {
	if p == nil || p.exited() {
		return
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	<-p.done
}

// pids returns the process and its descendants (nginx workers).
func (p *proc) pids() []int {
	root := p.pid()
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue
		}
		parent[pid] = st.ppid
	}
	out := []int{root}
	for changed := true; changed; {
		changed = false
		for pid, pp := range parent {
			if contains(out, pp) && !contains(out, pid) {
				out = append(out, pid)
				changed = true
			}
		}
	}
	return out
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

type procStat struct {
	ppid         int
	utime, stime int64 // ticks
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name is in parentheses and may contain spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("bad stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return procStat{}, errors.New("short stat")
	}
	ppid, _ := strconv.Atoi(f[1])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	stt, _ := strconv.ParseInt(f[12], 10, 64)
	return procStat{ppid: ppid, utime: ut, stime: stt}, nil
}

// cpuSeconds is user+sys CPU time of the process and its live descendants.
func (p *proc) cpuSeconds() float64 {
	var ticks int64
	for _, pid := range p.pids() {
		if st, err := readStat(pid); err == nil {
			ticks += st.utime + st.stime
		}
	}
	return float64(ticks) / clkTck
}

func statusKB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// rssBytes is the current resident set of the process and its descendants.
func (p *proc) rssBytes() int64 {
	var kb int64
	for _, pid := range p.pids() {
		kb += statusKB(pid, "VmRSS")
	}
	return kb << 10
}

// meter measures a server over one measured interval: CPU seconds, and
// peak RSS both from VmHWM (reset through clear_refs at the start) and from
// sampling VmRSS every 10 ms (summed over processes for nginx).
type meter struct {
	p        *proc
	cpu0     float64
	stop     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	peak     int64
	pidsSnap []int
}

func (p *proc) startMeter() *meter {
	m := &meter{p: p, stop: make(chan struct{})}
	m.pidsSnap = p.pids()
	for _, pid := range m.pidsSnap {
		_ = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
	}
	m.cpu0 = p.cpuSeconds()
	m.peak = p.rssBytes()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				var kb int64
				for _, pid := range m.pidsSnap {
					kb += statusKB(pid, "VmRSS")
				}
				m.mu.Lock()
				if kb<<10 > m.peak {
					m.peak = kb << 10
				}
				m.mu.Unlock()
			}
		}
	}()
	return m
}

type meterResult struct {
	CPUSeconds float64 `json:"cpu_s"`
	PeakRSS    int64   `json:"peak_rss"`
}

func (m *meter) end() meterResult {
	close(m.stop)
	m.wg.Wait()
	r := meterResult{CPUSeconds: m.p.cpuSeconds() - m.cpu0, PeakRSS: m.peak}
	if len(m.pidsSnap) == 1 {
		if hwm := statusKB(m.pidsSnap[0], "VmHWM") << 10; hwm > r.PeakRSS {
			r.PeakRSS = hwm
		}
	}
	return r
}

// freeAddr returns 127.0.0.1:<port> that the kernel just reported free.
func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitHTTP polls url until it answers with one of the given statuses.
func waitHTTP(ctx context.Context, p *proc, url string, ok ...int) error {
	c := &http.Client{Timeout: time.Second}
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			for _, s := range ok {
				if resp.StatusCode == s {
					return nil
				}
			}
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited: %v; output:\n%s", p.name, p.err, p.log.String())
		}
		select {
		case <-ctx.Done():
			out := ""
			if p != nil {
				out = p.log.String()
			}
			return fmt.Errorf("%s did not answer %s: %v; output:\n%s", p.name, url, err, out)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

type tailBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if over := b.buf.Len() - b.max; over > 0 {
		b.buf.Next(over)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func mustMkdir(dirs ...string) {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			panic(err)
		}
	}
}

func resetDir(d string) {
	_ = os.RemoveAll(d)
	mustMkdir(d)
}

func writeFile(path, content string) {
	mustMkdir(filepath.Dir(path))
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		panic(err)
	}
}
