package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// world is one test's sandbox: a temp dir, a logs dir that collects every
// process's and client's output, and the secrets that must never show up in
// any of it (acceptance 8).
type world struct {
	t       *testing.T
	dir     string
	logs    string
	mu      sync.Mutex
	secrets []string
	seq     int
}

// newWorld creates the sandbox. Its cleanup is registered before any process
// is started, so it runs after every process has been stopped and all logs
// are complete.
func newWorld(t *testing.T) *world {
	t.Helper()
	dir := t.TempDir()
	w := &world{t: t, dir: dir, logs: filepath.Join(dir, "logs")}
	if err := os.MkdirAll(w.logs, 0o755); err != nil {
		t.Fatal(err)
	}
	// An empty docker config: podman and skopeo fail if DOCKER_CONFIG's
	// config.json is missing, and skopeo also fails on a truncated one. It
	// is written once, here, before any client runs: rewriting it from
	// baseEnv, which parallel clients call while others are reading it,
	// made skopeo see an empty file now and then.
	if err := os.MkdirAll(filepath.Join(dir, "home", ".docker"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "home", ".docker", "config.json"), []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		w.checkSecrets()
		if t.Failed() {
			w.dumpLogs()
		}
		w.keepLogs()
	})
	return w
}

// mkdir returns a directory under the sandbox, creating it if needed. It
// is called from parallel subtests, so it reports with Errorf (safe from
// any goroutine) rather than Fatal on the world's test.
func (w *world) mkdir(elem ...string) string {
	p := filepath.Join(append([]string{w.dir}, elem...)...)
	if err := os.MkdirAll(p, 0o755); err != nil {
		w.t.Errorf("mkdir: %v", err)
	}
	return p
}

// logFile returns a new, uniquely named file in the logs dir.
func (w *world) logFile(name string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seq++
	return filepath.Join(w.logs, fmt.Sprintf("%02d-%s.log", w.seq, sanitize(name)))
}

// addSecret registers a password that must not leak. Its Basic-auth encoding
// is registered too: a dumped Authorization header would leak it in that form.
func (w *world) addSecret(user, password string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.secrets = append(w.secrets, password,
		base64.StdEncoding.EncodeToString([]byte(user+":"+password)),
		base64.URLEncoding.EncodeToString([]byte(user+":"+password)))
}

// checkSecrets greps every captured log for every registered secret.
func (w *world) checkSecrets() {
	w.mu.Lock()
	secrets := append([]string(nil), w.secrets...)
	w.mu.Unlock()
	if len(secrets) == 0 {
		return
	}
	files, leaks, err := scanForSecrets(w.logs, secrets)
	if err != nil {
		w.t.Errorf("scanning logs for secrets: %v", err)
	}
	for _, l := range leaks {
		w.t.Errorf("secret leaked: %s", l)
	}
	w.t.Logf("secret scan: %d log files, %d secret forms, %d leaks", files, len(secrets), len(leaks))
}

// scanForSecrets reads every file under dir and reports each occurrence of
// a secret with some context, the secret itself masked.
func scanForSecrets(dir string, secrets []string) (files int, leaks []string, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files++
		for _, s := range secrets {
			if i := bytes.Index(b, []byte(s)); i >= 0 {
				lo, hi := max(0, i-120), min(len(b), i+len(s)+40)
				ctx := strings.ReplaceAll(string(b[lo:hi]), s, "<SECRET>")
				leaks = append(leaks, fmt.Sprintf("%s: ...%s...", filepath.Base(p), ctx))
			}
		}
		return nil
	})
	return files, leaks, err
}

// envKeepLogs names a directory that receives a copy of every test's logs
// (for CI artifacts, or to read the exact requests each client sent).
const envKeepLogs = "REGCACHE_E2E_KEEP_LOGS"

func (w *world) keepLogs() {
	root := os.Getenv(envKeepLogs)
	if root == "" {
		return
	}
	dest := filepath.Join(root, sanitize(w.t.Name()))
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		w.t.Logf("keeping logs: %v", err)
		return
	}
	_ = os.RemoveAll(dest)
	if err := os.CopyFS(dest, os.DirFS(w.logs)); err != nil {
		w.t.Logf("keeping logs: %v", err)
		return
	}
	w.t.Logf("logs kept in %s", dest)
}

// dumpLogs prints the tail of every log so a CI failure can be diagnosed
// from the test output alone.
func (w *world) dumpLogs() {
	entries, _ := os.ReadDir(w.logs)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(w.logs, e.Name()))
		if err != nil {
			continue
		}
		w.mu.Lock()
		for _, s := range w.secrets {
			b = bytes.ReplaceAll(b, []byte(s), []byte("<SECRET>"))
		}
		w.mu.Unlock()
		w.t.Logf("==== %s (last 60 lines) ====\n%s", e.Name(), tailLines(string(b), 60))
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.', r == '_':
			return r
		}
		return '_'
	}, s)
}

func randomSecret(t *testing.T) string {
	var b [18]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "pw-" + hex.EncodeToString(b[:])
}

// requireBinary fails (never skips: CI must run every client) when a client
// binary is missing, naming the package that provides it.
func requireBinary(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/root/go/bin", filepath.Join(os.Getenv("HOME"), "go", "bin")} {
			if c := filepath.Join(dir, name); isExecutable(c) {
				return c
			}
		}
		t.Fatalf("%s not found in PATH: install %s", name, pkg)
	}
	return p
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// proc is a long-running process (regcache, dockerd, containerd) whose
// output goes to a log file. It runs in its own process group so that its
// children (dockerd's containerd, containerd's shims) are stopped with it,
// and it dies with the test binary.
type proc struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // valid after done is closed
}

func startProc(t *testing.T, name, logPath string, env []string, argv ...string) *proc {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs
// the group. It is idempotent.
func (p *proc) stop(grace time.Duration) {
	pgid := p.cmd.Process.Pid
	if !p.exited() {
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
		}
	}
	// Children may outlive the leader; never leave any behind.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.done
}

// kill9 sends SIGKILL to the process itself, like `kill -9 PID`.
func (p *proc) kill9() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// run executes a short-lived client command with a bounded timeout. The
// command line and its combined output go to a log file (which the secret
// scan covers). It returns the output and the error, if any.
func (w *world) run(ctx context.Context, timeout time.Duration, env []string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (timed out after %s)", err, timeout)
	}
	logPath := w.logFile(filepath.Base(argv[0]))
	_ = os.WriteFile(logPath, fmt.Appendf(nil, "$ %s\n# %s, err=%v\n%s", strings.Join(argv, " "), time.Since(start).Round(time.Millisecond), err, out.Bytes()), 0o644)
	return out.String(), err
}

// mustRun is run that fails the test on error.
func (w *world) mustRun(t *testing.T, timeout time.Duration, env []string, argv ...string) string {
	t.Helper()
	out, err := w.run(t.Context(), timeout, env, argv...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, tailLines(out, 40))
	}
	return out
}

// baseEnv is a minimal, predictable environment for child processes: the
// host's docker/containers/regctl configs must not influence the tests.
func (w *world) baseEnv(extra ...string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH") + ":/root/go/bin",
		"HOME=" + w.mkdir("home"),
		"TMPDIR=" + w.mkdir("tmp"),
		"XDG_RUNTIME_DIR=" + w.mkdir("xdg-runtime"),
		"XDG_CONFIG_HOME=" + w.mkdir("home", ".config"),
		"DOCKER_CONFIG=" + w.mkdir("home", ".docker"),
		"LANG=C",
	}
	return append(env, extra...)
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitFor polls cond until it returns nil, p exits, or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, p *proc, cond func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if last = cond(); last == nil {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited (%v) before it was ready; last check: %v", p.name, p.err, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if last == nil {
		last = errors.New("no check ran")
	}
	return fmt.Errorf("not ready after %s: %w", timeout, last)
}

// httpGetStatus returns the status code of GET url, with a short timeout.
func httpGetStatus(ctx context.Context, client *http.Client, url string) (int, error) {
	return httpStatus(ctx, client, http.MethodGet, url)
}

// httpStatus returns the status code of a request, with a short timeout.
func httpStatus(ctx context.Context, client *http.Client, method, url string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
