package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
)

// The two cold-pull floors of workload 4. A cold pull through any
// pull-through cache costs at least what these two cost, on the same
// machine in the same run:
//
//   - nginx-proxy: nginx's proxy_pass, streaming (no buffering, no disk,
//     no check). What one more hop costs with a mature proxy written in C.
//   - hash-forward: the hop plus the one thing a cache must not skip, a
//     SHA-256 check of every blob, in Go; still nothing on disk. It is this
//     harness re-run with -hash-forward.
//
// On a machine whose cores are all busy during the direct pull, the gap
// between these floors and direct is the hop and the hash; the gap between
// them and regcache is what storing (and regcache's own code) costs.

// hashForwardFlags are the hidden flags that make the harness the
// hash-forward proxy: -hash-forward ADDR -hash-forward-upstream URL.
const hashForwardFlag, hashForwardUpstreamFlag = "hash-forward", "hash-forward-upstream"

// serveHashForward forwards every request to upstream and checks each
// blob's bytes against the digest in its path as they pass: a mismatch cuts
// the response short, so a client never gets a complete body of bad
// content. Its buffers are regcache's read size (256 KiB).
func serveHashForward(addr, upstream string) error {
	u, err := url.Parse(upstream)
	if err != nil {
		return fmt.Errorf("-%s: %w", hashForwardUpstreamFlag, err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.BufferPool = bufPool{}
	rp.ErrorLog = log.New(io.Discard, "", 0)
	rp.ModifyResponse = func(resp *http.Response) error {
		d, ok := blobDigest(resp.Request.URL.Path)
		if ok && resp.StatusCode == http.StatusOK && resp.Request.Method == http.MethodGet {
			resp.Body = &verifyingBody{rc: resp.Body, v: d.Verifier()}
		}
		return nil
	}
	return http.ListenAndServe(addr, rp)
}

// blobDigest is the digest of a /v2/<name>/blobs/<digest> path.
func blobDigest(p string) (digest.Digest, bool) {
	dir, last := path.Split(p)
	if !strings.HasPrefix(p, "/v2/") || !strings.HasSuffix(dir, "/blobs/") {
		return "", false
	}
	d, err := digest.Parse(last)
	return d, err == nil
}

var errMismatch = errors.New("digest mismatch")

// verifyingBody hashes what passes and turns the final io.EOF into an error
// when the bytes do not match.
type verifyingBody struct {
	rc io.ReadCloser
	v  digest.Verifier
}

func (b *verifyingBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.v.Write(p[:n])
	if err == io.EOF && !b.v.Verified() {
		err = errMismatch
	}
	return n, err
}

func (b *verifyingBody) Close() error { return b.rc.Close() }

type bufPool struct{}

var forwardBufs = sync.Pool{New: func() any { return make([]byte, 256<<10) }}

func (bufPool) Get() []byte  { return forwardBufs.Get().([]byte) }
func (bufPool) Put(b []byte) { forwardBufs.Put(b) }

// startHashForward runs this harness as the hash-forward proxy of upstream.
func startHashForward(env *env, name, upstream string) (*server, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	addr := freeAddr()
	s := &server{name: name, kind: "hash-forward", url: "http://" + addr}
	return startFresh(env.ctx, s, self, "-"+hashForwardFlag, addr, "-"+hashForwardUpstreamFlag, upstream)
}

// startFresh starts the command args as s and makes s.restart start it
// again from nothing. Like the caches, a floor is a fresh process for
// every repetition: a warm one would be spared the first touch of its
// memory that they pay.
func startFresh(ctx context.Context, s *server, args ...string) (*server, error) {
	start := func(ctx context.Context) error {
		p, err := startProc(s.name, nil, args...)
		if err != nil {
			return err
		}
		s.p = p
		return waitHTTP(ctx, p, s.url+"/v2/", 200)
	}
	s.restart = func(ctx context.Context, _ bool) error {
		s.p.stop()
		return start(ctx)
	}
	return s, start(ctx)
}

// nginxProxyConfig is nginx forwarding everything to upstream as it
// arrives: no buffering to disk, 256 KiB reads like regcache's.
func nginxProxyConfig(dir, addr, upstream string) string {
	return fmt.Sprintf(`user root;
worker_processes 2;
daemon off;
master_process on;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %[1]s/tmp;
    proxy_temp_path %[1]s/tmp;
    fastcgi_temp_path %[1]s/tmp;
    uwsgi_temp_path %[1]s/tmp;
    scgi_temp_path %[1]s/tmp;
    server {
        listen %[2]s;
        location / {
            proxy_pass %[3]s;
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_buffer_size 256k;
            proxy_buffers 4 256k;
        }
    }
}
`, dir, addr, upstream)
}

// startNginxProxy runs nginx as a streaming reverse proxy of upstream.
func startNginxProxy(env *env, name, upstream string) (*server, error) {
	dir := filepath.Join(env.work, name)
	resetDir(dir)
	mustMkdir(filepath.Join(dir, "tmp"))
	addr := freeAddr()
	cfg := filepath.Join(dir, "nginx.conf")
	writeFile(cfg, nginxProxyConfig(dir, addr, upstream))
	s := &server{name: name, kind: "nginx", url: "http://" + addr, dir: dir}
	return startFresh(env.ctx, s, env.nginxBin, "-p", dir, "-c", cfg)
}
