// Package adversarial attacks real regcache processes as a hostile client
// or a hostile upstream would, one test per class of attack, so that no
// change brings a class back. Each test starts regcache binaries of its
// own (built once per run with `go build`) on loopback with a config of its
// own, and is bounded in time.
package adversarial

import (
	"bufio"
	"crypto/tls"
	"errors"
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
	"testing"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

const (
	// envInNamespace marks the re-executed test binary: it runs inside
	// private network and mount namespaces.
	envInNamespace = "REGCACHE_ADVERSARIAL_IN_NS"
	// envBin and envBuildLog carry the regcache binary built outside the
	// namespaces (where the Go toolchain may still reach its module proxy),
	// or the build's output when it failed.
	envBin      = "REGCACHE_ADVERSARIAL_BIN"
	envBuildLog = "REGCACHE_ADVERSARIAL_BUILD_LOG"
	// metadataIP is the cloud metadata service's link-local address. Inside
	// the network namespace it is a loopback alias, so a test can listen
	// there and see whether regcache was sent to it, and a regression can
	// never reach a real metadata service.
	metadataIP = "169.254.169.254"
)

// TestMain builds regcache, then runs the tests again inside a private
// network namespace (only loopback, with metadataIP on it) and a private
// mount namespace (so a test may mount a small tmpfs to fill). Like the e2e
// suite, this needs root; it is never skipped.
func TestMain(m *testing.M) {
	if os.Getenv(envInNamespace) != "" || listing() {
		// The tests spend most of their time waiting out timeouts (a
		// rate window, send_timeout), each on processes of its own: they
		// run all at once unless -parallel says otherwise.
		flag.Parse()
		if !flagSet("test.parallel") {
			flag.Set("test.parallel", "16")
		}
		os.Exit(m.Run())
	}
	os.Exit(reexecInNamespaces())
}

func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// listing reports whether the binary only lists tests (go test -list),
// which needs no namespace and no build.
func listing() bool {
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.list") {
			return true
		}
	}
	return false
}

func reexecInNamespaces() int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "adversarial: FAIL: "+format+"\n", args...)
		return 1
	}
	self, err := os.Executable()
	if err != nil {
		return fail("cannot find the test binary: %v", err)
	}
	for _, tool := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fail("`%s` not found (util-linux, iproute2); the adversarial tests run in private namespaces and are never skipped", tool)
		}
	}
	if out, err := exec.Command("unshare", "-n", "-m", "--", "true").CombinedOutput(); err != nil {
		return fail("cannot create network and mount namespaces (`unshare -n -m true`: %v: %s).\n"+
			"The adversarial tests need root or CAP_SYS_ADMIN (a CI container needs --privileged); they are never skipped",
			err, strings.TrimSpace(string(out)))
	}
	dir, err := os.MkdirTemp("", "regcache-adversarial-")
	if err != nil {
		return fail("%v", err)
	}
	defer os.RemoveAll(dir)
	env := append(os.Environ(), envInNamespace+"=1")
	if bin, out, err := buildRegcache(dir); err != nil {
		logPath := filepath.Join(dir, "build.log")
		_ = os.WriteFile(logPath, []byte(fmt.Sprintf("%v\n%s", err, out)), 0o644)
		env = append(env, envBuildLog+"="+logPath)
	} else {
		env = append(env, envBin+"="+bin)
	}
	script := "ip link set lo up && ip addr add " + metadataIP + "/32 dev lo && exec \"$@\""
	args := append([]string{"-n", "-m", "--propagation", "private", "--", "sh", "-c", script, "sh", self}, os.Args[1:]...)
	cmd := exec.Command("unshare", args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = env
	// If `go test` kills us (its own timeout), take the namespaces along.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() > 0 {
			return ee.ExitCode()
		}
		return fail("running the tests in the namespaces: %v", err)
	}
	return 0
}

func buildRegcache(dir string) (bin string, out []byte, err error) {
	root, err := moduleRoot()
	if err != nil {
		return "", nil, err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin = filepath.Join(dir, "regcache")
	cmd := exec.Command(goBin, "build", "-o", bin, "./cmd/regcache")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", out, fmt.Errorf("go build ./cmd/regcache: %v", err)
	}
	return bin, nil, nil
}

// regcacheBinary is the binary TestMain built. It also stats every source
// file of the module: the binary is not imported, so without that `go
// test` would replay a cached pass after the server's code changed.
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
	if bin := os.Getenv(envBin); bin != "" {
		return bin
	}
	msg := "regcache was not built"
	if p := os.Getenv(envBuildLog); p != "" {
		if b, err := os.ReadFile(p); err == nil {
			msg = "building regcache failed:\n" + string(b)
		}
	}
	t.Fatal(msg)
	return ""
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
	t   *testing.T
	URL string // http://127.0.0.1:port, or https:// with TLS
	// Data is storage.root.
	Data string
	// Client talks to it (trusting its certificate when it serves TLS);
	// TLS is that trust, nil without TLS.
	Client *http.Client
	TLS    *tls.Config
	cmd    *exec.Cmd
	logs   *testhub.TailBuffer // the end of stdout and stderr, to show
	// logFile holds all of stdout and stderr, to scan.
	logFile string
	done    chan struct{}
}

// options start a regcache.
type options struct {
	// Config is YAML without listen and storage.root, which the harness
	// adds (storage: keys other than root go in Storage).
	Config string
	// Storage is more of the storage: block, such as "max_size: 40MiB".
	Storage string
	// Data is storage.root; default a new directory. A test may mount a
	// file system there first.
	Data string
	// TLS serves HTTPS with a throwaway certificate.
	TLS bool
	Env []string
}

// startRegcache runs `regcache serve` with config (YAML without listen and
// storage, which the harness adds) and waits until /healthz answers. The
// process is stopped when the test ends; its log is shown if the test
// failed.
func startRegcache(t *testing.T, config string, env ...string) *regcache {
	t.Helper()
	return start(t, options{Config: config, Env: env})
}

func start(t *testing.T, o options) *regcache {
	t.Helper()
	bin := regcacheBinary(t)
	addr, err := testhub.FreeAddr("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if o.Data == "" {
		o.Data = filepath.Join(dir, "data")
	}
	r := &regcache{t: t, URL: "http://" + addr, Data: o.Data, logs: testhub.NewTailBuffer(1 << 20),
		logFile: filepath.Join(dir, "regcache.log"), done: make(chan struct{})}
	tr := &http.Transport{ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 16}
	cfg := o.Config
	if o.TLS {
		cert := testhub.SelfSignedCert(t, dir)
		cfg += fmt.Sprintf("tls: {certificate: %s, key: %s}\n", cert.CertFile, cert.KeyFile)
		r.URL = "https://" + addr
		r.TLS = &tls.Config{RootCAs: cert.Pool}
		tr.TLSClientConfig = r.TLS.Clone()
	}
	t.Cleanup(tr.CloseIdleConnections)
	r.Client = &http.Client{Transport: tr, Timeout: 60 * time.Second}
	cfgPath := filepath.Join(dir, "regcache.yaml")
	storage := "root: " + o.Data
	if o.Storage != "" {
		storage += ", " + o.Storage
	}
	full := fmt.Sprintf("listen: %s\nstorage: {%s}\n%s", addr, storage, cfg)
	if err := os.WriteFile(cfgPath, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(r.logFile)
	if err != nil {
		t.Fatal(err)
	}
	r.cmd = exec.Command(bin, "serve", "--config", cfgPath)
	r.cmd.Stdout = io.MultiWriter(r.logs, logFile)
	r.cmd.Stderr = r.cmd.Stdout
	r.cmd.Env = append(os.Environ(), o.Env...)
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.cmd.Wait(); logFile.Close(); close(r.done) }()
	t.Cleanup(func() {
		r.stop()
		if t.Failed() {
			t.Logf("regcache log (tail):\n%s", tail(r.logs.String(), 6000))
		}
	})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := r.Client.Get(r.URL + "/healthz")
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

// wholeLog is everything the process has written so far.
func (r *regcache) wholeLog() string {
	r.t.Helper()
	b, err := os.ReadFile(r.logFile)
	if err != nil {
		r.t.Fatal(err)
	}
	return string(b)
}

// rss is the process's resident memory (VmRSS), in bytes.
func (r *regcache) rss() int64 {
	r.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.cmd.Process.Pid))
	if err != nil {
		r.t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				r.t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb << 10
		}
	}
	r.t.Fatal("no VmRSS in /proc/PID/status")
	return 0
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
	resp, err := r.Client.Get(r.URL + "/metrics")
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
