package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// server is one HTTP server under test on loopback.
type server struct {
	name string // as printed in the table
	kind string // regcache, distribution, nginx, origin
	url  string // http://127.0.0.1:port
	p    *proc
	dir  string // its storage or document root
	// pprof is the profiling address of a regcache pprof build.
	pprof string

	// paths to address the test content: nginx serves plain files, the
	// registries serve /v2/ paths.
	restart func(ctx context.Context, wipe bool) error
}

func (s *server) stop() {
	if s != nil {
		s.p.stop()
	}
}

var otelOff = []string{"OTEL_TRACES_EXPORTER=none", "OTEL_METRICS_EXPORTER=none", "OTEL_LOGS_EXPORTER=none"}

// distributionConfig is a registry config; with remote set it is a
// pull-through proxy of remote.
func distributionConfig(addr, root, remote string) string {
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	c := fmt.Sprintf(`version: 0.1
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
`, root, addr, hex.EncodeToString(secret))
	if remote != "" {
		c += fmt.Sprintf("proxy:\n  remoteurl: %q\n", remote)
	}
	return c
}

// startDistribution starts the registry binary as origin (remote == "") or
// as a pull-through proxy of remote.
func startDistribution(ctx context.Context, env *env, name, remote string) (*server, error) {
	s := &server{name: name, kind: "distribution", dir: filepath.Join(env.work, name)}
	if remote == "" {
		s.kind = "origin"
	}
	addr := freeAddr()
	s.url = "http://" + addr
	cfg := filepath.Join(env.work, name+".yml")
	s.restart = func(ctx context.Context, wipe bool) error {
		s.p.stop()
		if wipe {
			resetDir(s.dir)
		}
		writeFile(cfg, distributionConfig(addr, s.dir, remote))
		p, err := startProc(name, otelOff, env.registryBin, "serve", cfg)
		if err != nil {
			return err
		}
		s.p = p
		return waitHTTP(ctx, p, s.url+"/v2/", 200)
	}
	resetDir(s.dir)
	writeFile(cfg, distributionConfig(addr, s.dir, remote))
	p, err := startProc(name, otelOff, env.registryBin, "serve", cfg)
	if err != nil {
		return nil, err
	}
	s.p = p
	return s, waitHTTP(ctx, p, s.url+"/v2/", 200)
}

// regcacheRegistry is the registry name the harness configures; it is also
// the default registry, so bare /v2/<repo>/... paths reach it.
const regcacheRegistry = "origin.bench"

// regcacheConfig is a regcache config; storage is the body of its
// storage: block, indented by two spaces.
func regcacheConfig(addr, storage, upstream string) string {
	return fmt.Sprintf(`listen: %q
storage:
%stag_ttl: 100000h
default_registry: %s
log_level: warn
registries:
  %s:
    url: %q
`, addr, storage, regcacheRegistry, regcacheRegistry, upstream)
}

// startRegcache starts the regcache binary with root as its storage.
func startRegcache(ctx context.Context, env *env, name, root, upstream string, wipe bool) (*server, error) {
	return startRegcacheWith(ctx, env, name, root, fmt.Sprintf("  root: %q\n", root), nil, upstream, wipe)
}

// startRegcacheWith starts the regcache binary with the given storage:
// block and extra environment (object store credentials); dir is wiped
// when asked, and holds nothing else when storage is an object store.
func startRegcacheWith(ctx context.Context, env *env, name, dir, storage string, procEnv []string, upstream string, wipe bool) (*server, error) {
	s := &server{name: name, kind: "regcache", dir: dir}
	addr := freeAddr()
	s.url = "http://" + addr
	cfg := filepath.Join(env.work, name+".yml")
	extra := append([]string(nil), procEnv...)
	if env.pprofDir != "" {
		s.pprof = freeAddr()
		extra = append(extra, "REGCACHE_PPROF="+s.pprof, "REGCACHE_PPROF_DIR="+env.pprofDir)
	}
	start := func(ctx context.Context, wipe bool) error {
		if wipe {
			resetDir(s.dir)
		}
		writeFile(cfg, regcacheConfig(addr, storage, upstream))
		p, err := startProc(name, extra, env.regcacheBin, "serve", "--config", cfg)
		if err != nil {
			return err
		}
		s.p = p
		return waitHTTP(ctx, p, s.url+"/v2/", 200)
	}
	s.restart = func(ctx context.Context, wipe bool) error {
		s.p.stop()
		return start(ctx, wipe)
	}
	if err := start(ctx, wipe); err != nil {
		if s.p == nil {
			return nil, err
		}
		return s, err
	}
	return s, nil
}

// nginxConfig serves www as static files. sendfile off uses 1 MiB output
// buffers, the configuration that was faster on loopback.
func nginxConfig(dir, addr string, sendfile bool) string {
	sf := "sendfile on;\n    tcp_nopush on;"
	if !sendfile {
		sf = "sendfile off;\n    output_buffers 1 1m;"
	}
	return fmt.Sprintf(`user root;
worker_processes 2;
daemon off;
master_process on;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
    access_log off;
    %[3]s
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    client_body_temp_path %[1]s/tmp;
    proxy_temp_path %[1]s/tmp;
    fastcgi_temp_path %[1]s/tmp;
    uwsgi_temp_path %[1]s/tmp;
    scgi_temp_path %[1]s/tmp;
    types { }
    default_type application/octet-stream;
    server {
        listen %[2]s;
        root %[1]s/www;
        location = /manifest {
            default_type application/vnd.docker.distribution.manifest.v2+json;
        }
    }
}
`, dir, addr, sf)
}

// startNginx serves the files in env.www (shared by both configurations).
func startNginx(ctx context.Context, env *env, name string, sendfile bool) (*server, error) {
	dir := filepath.Join(env.work, name)
	resetDir(dir)
	mustMkdir(filepath.Join(dir, "tmp"))
	if err := os.Symlink(env.www, filepath.Join(dir, "www")); err != nil {
		return nil, err
	}
	addr := freeAddr()
	cfg := filepath.Join(dir, "nginx.conf")
	writeFile(cfg, nginxConfig(dir, addr, sendfile))
	p, err := startProc(name, nil, env.nginxBin, "-p", dir, "-c", cfg)
	if err != nil {
		return nil, err
	}
	s := &server{name: name, kind: "nginx", url: "http://" + addr, p: p, dir: dir}
	return s, waitHTTP(ctx, p, s.url+"/manifest", 200)
}

// counter is a TCP forwarder in front of the origin that counts the bytes
// the origin sends. Both proxies use it as their upstream and direct pulls
// go through it too, so the extra hop is the same for everyone.
type counter struct {
	ln     net.Listener
	target string
	bytes  atomic.Int64
	wg     sync.WaitGroup
}

func startCounter(target string) (*counter, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c := &counter{ln: ln, target: target}
	go c.serve()
	return c, nil
}

func (c *counter) url() string { return "http://" + c.ln.Addr().String() }

func (c *counter) serve() {
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			return
		}
		go c.forward(conn)
	}
}

type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (cw countWriter) Write(p []byte) (int, error) {
	n, err := cw.w.Write(p)
	cw.n.Add(int64(n))
	return n, err
}

func (c *counter) forward(client net.Conn) {
	defer client.Close()
	up, err := net.DialTimeout("tcp", c.target, 5*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		// Request direction: the kernel may splice this one.
		_, _ = io.Copy(up, client)
		if tc, ok := up.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		close(done)
	}()
	bp := copyBufs.Get().(*[]byte)
	_, _ = io.CopyBuffer(countWriter{w: client, n: &c.bytes}, struct{ io.Reader }{up}, *bp)
	copyBufs.Put(bp)
	if tc, ok := client.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	<-done
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func (c *counter) close() { c.ln.Close() }

// lookBin finds an executable or says how to install it.
func lookBin(name string, candidates ...string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return c, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}
