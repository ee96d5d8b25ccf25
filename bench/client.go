package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

func newTransport() *http.Transport {
	return &http.Transport{
		DisableCompression:  true,
		MaxIdleConnsPerHost: 64,
		ReadBufferSize:      1 << 20,
		WriteBufferSize:     64 << 10,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}
}

var streamBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// getAll GETs url and reads the body into h (nil: discard) with 1 MiB reads.
// It returns the bytes read and the response headers.
func getAll(ctx context.Context, c *http.Client, url string, hdr map[string]string, h hash.Hash) (int64, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, resp.Header, fmt.Errorf("GET %s: %s %s", url, resp.Status, b)
	}
	bp := streamBufs.Get().(*[]byte)
	defer streamBufs.Put(bp)
	buf := *bp
	var n int64
	for {
		m, err := resp.Body.Read(buf)
		if m > 0 {
			n += int64(m)
			if h != nil {
				h.Write(buf[:m])
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, resp.Header, err
		}
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, resp.Header, fmt.Errorf("GET %s: short body %d of %d", url, n, resp.ContentLength)
	}
	return n, resp.Header, nil
}

// streams runs n concurrent GETs of url and returns the total bytes, the
// wall time, and the X-Regcache values seen.
func streams(ctx context.Context, url string, n int) (int64, time.Duration, []string, error) {
	urls := make([]string, n)
	for i := range urls {
		urls[i] = url
	}
	return streamsResults(ctx, urls)
}

// streamsTo runs one GET of each of urls, all at once, and returns the
// total bytes and the wall time.
func streamsTo(ctx context.Context, urls []string) (int64, time.Duration, error) {
	total, el, _, err := streamsResults(ctx, urls)
	return total, el, err
}

func streamsResults(ctx context.Context, urls []string) (int64, time.Duration, []string, error) {
	c := &http.Client{Transport: newTransport()}
	defer c.CloseIdleConnections()
	var mu sync.Mutex
	var total int64
	var firstErr error
	results := map[string]bool{}
	var wg sync.WaitGroup
	start := time.Now()
	for _, url := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, h, err := getAll(ctx, c, url, nil, nil)
			mu.Lock()
			defer mu.Unlock()
			total += got
			if err != nil && firstErr == nil {
				firstErr = err
			}
			if h != nil && h.Get("X-Regcache") != "" {
				results[h.Get("X-Regcache")] = true
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	var res []string
	for k := range results {
		res = append(res, k)
	}
	return total, el, res, firstErr
}

// pull is what a registry client does for `pull repo:tag` minus unpacking:
// resolve the tag (GET manifest with the containerd Accept header), then
// fetch config and layers, 3 at a time (containerd's default), verifying
// every digest.
func pull(ctx context.Context, base, repo, tag string) (int64, error) {
	c := &http.Client{Transport: newTransport()}
	defer c.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", acceptAll)
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	mb, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("manifest %s:%s: %s %s", repo, tag, resp.Status, mb)
	}
	var m manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		return 0, err
	}
	blobs := append([]descriptor{m.Config}, m.Layers...)
	sem := make(chan struct{}, 3)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var total int64
	var firstErr error
	for _, b := range blobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			h := sha256.New()
			n, _, err := getAll(ctx, c, base+"/v2/"+repo+"/blobs/"+b.Digest, nil, h)
			if err == nil && "sha256:"+hex.EncodeToString(h.Sum(nil)) != b.Digest {
				err = fmt.Errorf("blob %s: digest mismatch", b.Digest)
			}
			mu.Lock()
			total += n + int64(len(mb))/int64(len(blobs))
			if err != nil && firstErr == nil {
				firstErr = err
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return total, firstErr
}

// holdIdle opens n keep-alive connections to base, sends one request on
// each (GET path) and leaves them open and idle. close ends them.
func holdIdle(base, path string, n int) (close func(), err error) {
	host := strings.TrimPrefix(base, "http://")
	var conns []net.Conn
	close = func() {
		for _, c := range conns {
			c.Close()
		}
	}
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", host, 5*time.Second)
		if err != nil {
			close()
			return nil, fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, c)
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: %s\r\n\r\n", path, host, acceptAll); err != nil {
			close()
			return nil, err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			close()
			return nil, fmt.Errorf("connection %d: %w", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			close()
			return nil, fmt.Errorf("connection %d: %s", i, resp.Status)
		}
	}
	return close, nil
}

// wrkResult is what wrk reported.
type wrkResult struct {
	RPS    float64 `json:"rps"`
	Non2xx int64   `json:"non2xx"`
	Errors int64   `json:"socket_errors"`
	Raw    string  `json:"-"`
}

var (
	reRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	reSock   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

// runWrk drives url with wrk: 2 threads, conns connections, for d. script,
// if set, is Lua run by wrk (method, dynamic paths).
func runWrk(ctx context.Context, env *env, url string, conns int, d time.Duration, accept, script string) (wrkResult, error) {
	args := []string{"-t2", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(int(d.Seconds())) + "s", "--timeout", "5s"}
	if accept != "" {
		args = append(args, "-H", "Accept: "+accept)
	}
	if script != "" {
		f := filepath.Join(env.work, fmt.Sprintf("wrk-%d.lua", time.Now().UnixNano()))
		if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
			return wrkResult{}, err
		}
		defer os.Remove(f)
		args = append(args, "-s", f)
	}
	args = append(args, url)
	cctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, env.wrkBin, args...).CombinedOutput()
	r := wrkResult{Raw: string(out)}
	if err != nil {
		return r, fmt.Errorf("wrk %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	m := reRPS.FindStringSubmatch(r.Raw)
	if m == nil {
		return r, fmt.Errorf("wrk: no Requests/sec in output:\n%s", out)
	}
	r.RPS, _ = strconv.ParseFloat(m[1], 64)
	if m := reNon2xx.FindStringSubmatch(r.Raw); m != nil {
		r.Non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reSock.FindStringSubmatch(r.Raw); m != nil {
		for _, s := range m[1:] {
			v, _ := strconv.ParseInt(s, 10, 64)
			r.Errors += v
		}
	}
	return r, nil
}

const wrkHead = `wrk.method = "HEAD"
`

var (
	reHeyRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reHeyStatus = regexp.MustCompile(`\[(\d{3})\]\s+(\d+) responses`)
	reHeyErrs   = regexp.MustCompile(`\[(\d+)\]\s+Get|\[(\d+)\]\s+Head`)
)

// runHey drives url with hey (used for HEAD: wrk's parser waits for a body
// after a HEAD response that has Content-Length, and stalls).
func runHey(ctx context.Context, env *env, method, url string, conns int, d time.Duration, accept string) (wrkResult, error) {
	args := []string{"-z", strconv.Itoa(int(d.Seconds())) + "s", "-c", strconv.Itoa(conns), "-m", method, "-disable-compression"}
	if accept != "" {
		args = append(args, "-H", "Accept: "+accept)
	}
	args = append(args, url)
	cctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, env.heyBin, args...).CombinedOutput()
	r := wrkResult{Raw: string(out)}
	if err != nil {
		return r, fmt.Errorf("hey %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	m := reHeyRPS.FindStringSubmatch(r.Raw)
	if m == nil {
		return r, fmt.Errorf("hey: no Requests/sec in output:\n%s", out)
	}
	r.RPS, _ = strconv.ParseFloat(m[1], 64)
	for _, m := range reHeyStatus.FindAllStringSubmatch(r.Raw, -1) {
		if m[1] != "200" {
			v, _ := strconv.ParseInt(m[2], 10, 64)
			r.Non2xx += v
		}
	}
	for _, m := range reHeyErrs.FindAllStringSubmatch(r.Raw, -1) {
		v, _ := strconv.ParseInt(m[1]+m[2], 10, 64)
		r.Errors += v
	}
	return r, nil
}
