package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

const (
	blobSize    = 32 << 20
	listTags    = 600_000
	mtManifest  = "application/vnd.docker.distribution.manifest.v2+json"
	mtConfig    = "application/vnd.docker.container.image.v1+json"
	mtLayer     = "application/vnd.docker.image.rootfs.diff.tar"
	acceptTypes = mtManifest + ", application/vnd.oci.image.manifest.v1+json"
)

// upstream is a real registry behind a front.
type upstream struct {
	url      string // the front
	registry *exec.Cmd
	front    *http.Server
	// cold is the layer whose download the front paces; cached the other.
	cold, cached string // digests
	coldBody     []byte
	mu           sync.Mutex
	release      chan struct{} // closed: send the rest of the cold blob at once
	listRequests atomic.Int64
	tags         []string
}

func startUpstream(work string) (*upstream, error) {
	bin, err := testhub.FindRegistryBinary()
	if err != nil {
		return nil, err
	}
	regAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(work, "registry")
	cfg := fmt.Sprintf("version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %q}, delete: {enabled: true}}\nhttp: {addr: %q, secret: bench}\n", filepath.Join(dir, "data"), regAddr)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.yml"), []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	u := &upstream{registry: exec.Command(bin, "serve", filepath.Join(dir, "config.yml")), release: make(chan struct{})}
	u.registry.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none", "OTEL_METRICS_EXPORTER=none", "OTEL_LOGS_EXPORTER=none")
	if err := u.registry.Start(); err != nil {
		return nil, err
	}
	regURL := "http://" + regAddr
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(regURL + "/v2/"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			u.stop()
			return nil, fmt.Errorf("the registry did not start")
		}
	}
	var layers [2][]byte
	for i := range layers {
		layers[i] = random(blobSize, uint64(i+1))
		d, err := pushImage(regURL, []string{"bench/cached", "bench/cold"}[i], layers[i])
		if err != nil {
			u.stop()
			return nil, err
		}
		if i == 0 {
			u.cached = d
		} else {
			u.cold, u.coldBody = d, layers[i]
		}
	}
	for i := range listTags {
		u.tags = append(u.tags, fmt.Sprintf("v%07d", i))
	}

	ru, _ := url.Parse(regURL)
	proxy := httputil.NewSingleHostReverseProxy(ru)
	proxy.ErrorLog = log.New(io.Discard, "", 0)
	mux := http.NewServeMux()
	mux.Handle("/", proxy)
	mux.HandleFunc("GET /v2/bench/cold/blobs/"+u.cold, u.servePaced)
	mux.HandleFunc("GET /v2/bench/tags/tags/list", u.serveTags)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		u.stop()
		return nil, err
	}
	u.url = "http://" + ln.Addr().String()
	u.front = &http.Server{Handler: mux, ErrorLog: log.New(io.Discard, "", 0)}
	go u.front.Serve(ln)
	return u, nil
}

func (u *upstream) stop() {
	if u.front != nil {
		u.front.Close()
	}
	u.registry.Process.Kill()
	u.registry.Wait()
}

// rearm makes the next download of the cold blob paced again.
func (u *upstream) rearm() {
	u.mu.Lock()
	u.release = make(chan struct{})
	u.mu.Unlock()
}

// releaseCold lets the paced download finish.
func (u *upstream) releaseCold() {
	u.mu.Lock()
	defer u.mu.Unlock()
	select {
	case <-u.release:
	default:
		close(u.release)
	}
}

// servePaced sends the cold blob's first 4 MiB at once and then 64 KiB
// every half second (above any minimum transfer rate) until released: the
// download stays in flight while the clients come.
func (u *upstream) servePaced(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	release := u.release
	u.mu.Unlock()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(u.coldBody)))
	w.Header().Set("Docker-Content-Digest", u.cold)
	rc := http.NewResponseController(w)
	off := 4 << 20
	if _, err := w.Write(u.coldBody[:off]); err != nil {
		return
	}
	for off < len(u.coldBody) {
		n := 64 << 10
		select {
		case <-release:
			n = len(u.coldBody) - off
		case <-time.After(500 * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		n = min(n, len(u.coldBody)-off)
		if _, err := w.Write(u.coldBody[off : off+n]); err != nil {
			return
		}
		rc.Flush()
		off += n
	}
}

// serveTags answers as Distribution does: the tags after last, at most n,
// with a Link to the next page when there is one.
func (u *upstream) serveTags(w http.ResponseWriter, r *http.Request) {
	u.listRequests.Add(1)
	q := r.URL.Query()
	tags := u.tags
	if last := q.Get("last"); last != "" {
		i, found := slices.BinarySearch(tags, last)
		if found {
			i++
		}
		tags = tags[i:]
	}
	if n, err := strconv.Atoi(q.Get("n")); err == nil && n >= 0 && n < len(tags) {
		tags = tags[:n]
		if n > 0 {
			w.Header().Set("Link", fmt.Sprintf(`</v2/bench/tags/tags/list?n=%d&last=%s>; rel="next"`, n, tags[n-1]))
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"name": "bench/tags", "tags": tags})
}

// random is size bytes of a ChaCha8 stream: incompressible, the same on
// every run.
func random(size int, seed uint64) []byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	b := make([]byte, size)
	rand.NewChaCha8(s).Read(b)
	return b
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

// pushImage pushes a one-layer image as repo:v1 and returns the layer's
// digest.
func pushImage(base, repo string, layer []byte) (string, error) {
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + sha(layer) + `"]}}`)
	for _, b := range [][]byte{config, layer} {
		if err := pushBlob(base, repo, b); err != nil {
			return "", err
		}
	}
	m, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": mtManifest,
		"config": map[string]any{"mediaType": mtConfig, "digest": sha(config), "size": len(config)},
		"layers": []map[string]any{{"mediaType": mtLayer, "digest": sha(layer), "size": len(layer)}},
	})
	req, _ := http.NewRequest("PUT", base+"/v2/"+repo+"/manifests/v1", bytes.NewReader(m))
	req.Header.Set("Content-Type", mtManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("pushing the manifest of %s: %s", repo, resp.Status)
	}
	return sha(layer), nil
}

// pushBlob uploads b in one monolithic PUT.
func pushBlob(base, repo string, b []byte) error {
	resp, err := http.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("starting an upload: %s", resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return err
	}
	bu, _ := url.Parse(base + "/")
	u := bu.ResolveReference(loc)
	q := u.Query()
	q.Set("digest", sha(b))
	u.RawQuery = q.Encode()
	req, _ := http.NewRequest("PUT", u.String(), bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("uploading %s: %s", sha(b), resp.Status)
	}
	return nil
}
