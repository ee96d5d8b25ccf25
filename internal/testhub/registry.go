package testhub

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// RegistryEnv names the environment variable that overrides which registry
// binary StartRegistry runs.
const RegistryEnv = "REGCACHE_TEST_REGISTRY"

// Registry is a running registry process on loopback.
type Registry struct {
	URL  string // http://127.0.0.1:port
	Host string // 127.0.0.1:port
	// Binary is the registry executable that was started.
	Binary string
	// Dir is the filesystem storage root; tests may inspect it.
	Dir string

	out *TailBuffer
}

// Output returns the end of the registry process's log.
func (r *Registry) Output() string { return r.out.String() }

// FindRegistryBinary returns the registry executable StartRegistry would use,
// in its order of preference, or an error that says what to install.
func FindRegistryBinary() (string, error) {
	return findTool(RegistryEnv, "registry", "/usr/bin/docker-registry",
		"install one with `go install github.com/distribution/distribution/v3/cmd/registry@v3.1.2` "+
			"(or `apt-get install docker-registry`)")
}

// findTool returns the executable named by $env, else name from PATH or
// $GOPATH/bin, else fallback if it exists; or an error that says how to
// install it.
func findTool(env, name, fallback, install string) (string, error) {
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("$%s=%q: %w", env, p, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if p := goBinTool(name); p != "" {
		return p, nil
	}
	if fallback != "" {
		if _, err := os.Stat(fallback); err == nil {
			return fallback, nil
		}
	}
	return "", fmt.Errorf("no %s binary found: %s, or set $%s", name, install, env)
}

// goBinTool returns name from $GOPATH/bin (go install's target), or "".
func goBinTool(name string) string {
	var dirs []string
	if gp := os.Getenv("GOPATH"); gp != "" {
		dirs = append(dirs, filepath.SplitList(gp)...)
	}
	// Asking the go command is the authoritative answer but costs a process;
	// only do it when the environment does not already say.
	if len(dirs) == 0 {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			dirs = append(dirs, filepath.SplitList(strings.TrimSpace(string(out)))...)
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "bin", name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return ""
}

// StartRegistry starts a real registry process on 127.0.0.1:<free port> with
// filesystem storage in t.TempDir() and deletion enabled, waits until GET /v2/
// answers, and stops it via t.Cleanup. The binary is $REGCACHE_TEST_REGISTRY,
// else `registry` from PATH, else $(go env GOPATH)/bin/registry, else
// /usr/bin/docker-registry.
func StartRegistry(t testing.TB) *Registry {
	t.Helper()
	bin, err := FindRegistryBinary()
	if err != nil {
		t.Fatalf("testhub: %v", err)
	}
	return startRegistry(t, bin, "")
}

// StartProxy starts the same registry binary as a pull-through cache of
// remote (Distribution's proxy mode, anonymous): the peer regcache is
// compared with.
func StartProxy(t testing.TB, remote string) *Registry {
	t.Helper()
	bin, err := FindRegistryBinary()
	if err != nil {
		t.Fatalf("testhub: %v", err)
	}
	return startRegistry(t, bin, fmt.Sprintf("proxy:\n  remoteurl: %q\n", remote))
}

func startRegistry(t testing.TB, bin, extra string) *Registry {
	t.Helper()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	// Picking a free port and handing it to another process is racy, so a
	// registry that dies before answering is retried on a fresh port.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		r, err := startRegistryOnce(t, bin, dir, data, extra)
		if err == nil {
			return r
		}
		lastErr = err
	}
	t.Fatalf("testhub: starting %s: %v", bin, lastErr)
	return nil
}

func startRegistryOnce(t testing.TB, bin, dir, data, extra string) (*Registry, error) {
	host, err := FreeAddr("127.0.0.1")
	if err != nil {
		return nil, err
	}
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %q
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %q
  secret: %q
`, data, host, hex.EncodeToString(secret)) + extra
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}

	out := NewTailBuffer(64 << 10)
	cmd := exec.Command(bin, "serve", cfgPath)
	cmd.Stdout = out
	cmd.Stderr = out
	// v3 initialises OpenTelemetry with an OTLP exporter by default; keep it
	// from trying to reach a collector.
	cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none", "OTEL_METRICS_EXPORTER=none", "OTEL_LOGS_EXPORTER=none")
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}

	url := "http://" + host
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := waitReady(ctx, url+"/v2/", exited); err != nil {
		stop()
		return nil, fmt.Errorf("%w; output:\n%s", err, out.String())
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("testhub: registry %s output:\n%s", host, out.String())
		}
	})
	return &Registry{URL: url, Host: host, Binary: bin, Dir: data, out: out}, nil
}

// waitReady polls url until it answers 200 (or 401, a registry with auth).
func waitReady(ctx context.Context, url string, exited <-chan error) error {
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("exited before answering: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("no answer to GET %s: %w", url, ctx.Err())
		case <-tick.C:
		}
	}
}

// FreeAddr returns ip:port with a port the kernel just considered free.
func FreeAddr(ip string) (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// TailBuffer keeps the last max bytes written to it (everything when max is
// 0); a server's output is only interesting when something went wrong, and
// then only its end. It is safe for concurrent use.
type TailBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

// NewTailBuffer returns a TailBuffer that keeps max bytes.
func NewTailBuffer(max int) *TailBuffer { return &TailBuffer{max: max} }

func (b *TailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if over := b.buf.Len() - b.max; b.max > 0 && over > 0 {
		b.buf.Next(over)
	}
	return len(p), nil
}

func (b *TailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
