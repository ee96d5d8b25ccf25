// Package adversarial attacks real regcache processes as a hostile client
// or a hostile upstream would, one test per class of attack, so that no
// change brings a class back. Each test starts regcache binaries of its
// own (built once per run with `go build`) on loopback with a config of its
// own, and is bounded in time.
package adversarial

import (
	"bufio"
	"errors"
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
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

// build is the regcache binary, built on first use, removed by TestMain.
var build struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// regcacheBinary builds ./cmd/regcache once per run. It also stats every
// source file of the module: the binary is not imported, so without that
// `go test` would replay a cached pass after the server's code changed.
func regcacheBinary(t *testing.T) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != root && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		if err == nil && strings.HasSuffix(p, ".go") {
			_, _ = os.Stat(p)
		}
		return nil
	})
	build.once.Do(func() {
		if build.dir, build.err = os.MkdirTemp("", "regcache-adversarial-"); build.err != nil {
			return
		}
		build.bin = filepath.Join(build.dir, "regcache")
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		cmd := exec.Command(goBin, "build", "-o", build.bin, "./cmd/regcache")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/regcache: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.bin
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	for ; err == nil; dir = filepath.Dir(dir) {
		if _, serr := os.Stat(filepath.Join(dir, "go.mod")); serr == nil {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			break
		}
	}
	return "", errors.New("go.mod not found above the test directory")
}

// regcache is a running regcache process.
type regcache struct {
	t    *testing.T
	URL  string // http://127.0.0.1:port
	cmd  *exec.Cmd
	logs *testhub.TailBuffer // stdout and stderr
	done chan struct{}
}

// startRegcache runs `regcache serve` with config (YAML without listen and
// storage, which the harness adds) and waits until /healthz answers. The
// process is stopped when the test ends; its log is shown if the test
// failed.
func startRegcache(t *testing.T, config string, env ...string) *regcache {
	t.Helper()
	bin := regcacheBinary(t)
	addr, err := testhub.FreeAddr("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "regcache.yaml")
	full := fmt.Sprintf("listen: %s\nstorage: {root: %s}\n%s", addr, filepath.Join(dir, "data"), config)
	if err := os.WriteFile(cfgPath, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	r := &regcache{t: t, URL: "http://" + addr, logs: testhub.NewTailBuffer(1 << 20), done: make(chan struct{})}
	r.cmd = exec.Command(bin, "serve", "--config", cfgPath)
	r.cmd.Stdout, r.cmd.Stderr = r.logs, r.logs
	r.cmd.Env = append(os.Environ(), env...)
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		r.stop()
		if t.Failed() {
			t.Logf("regcache log (tail):\n%s", tail(r.logs.String(), 6000))
		}
	})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get(r.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return r
			}
		}
		select {
		case <-r.done:
			t.Fatalf("regcache exited at start-up:\n%s", r.logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("regcache did not answer /healthz within 20 s:\n%s", r.logs)
		}
	}
}

// stop sends SIGTERM, and SIGKILL after 10 s.
func (r *regcache) stop() {
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

// waitLog waits until the log contains s.
func (r *regcache) waitLog(s string, within time.Duration) {
	r.t.Helper()
	for deadline := time.Now().Add(within); !strings.Contains(r.logs.String(), s); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			r.t.Fatalf("no %q in the log within %v", s, within)
		}
	}
}

// metric reads one sample from /metrics: name with its labels as written
// in the exposition format, e.g. `regcache_client_auth_failures_total{reason="throttled"}`.
// A sample that is not there reads 0.
func (r *regcache) metric(sample string) float64 {
	r.t.Helper()
	resp, err := http.Get(r.URL + "/metrics")
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		r.t.Fatalf("/metrics: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				r.t.Fatalf("%s: %v", sample, err)
			}
			return f
		}
	}
	return 0
}

// clientFrom is an HTTP client whose connections come from a loopback
// address of its own (any of 127.0.0.0/8), so that regcache sees a client
// of its own.
func clientFrom(t *testing.T, ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// send sends a request and returns the response with its body read. It
// does not fail the test, so that attackers' goroutines may use it.
func send(c *http.Client, method, url string, hdr http.Header, body io.Reader) (*http.Response, []byte, error) {
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// call is send for the test's own goroutine: an error fails the test.
func call(t *testing.T, c *http.Client, method, url string, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	resp, body, err := send(c, method, url, hdr, nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp, body
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
