package adversarial

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/regcache/regcache/internal/testhub"
)

// Clients that stop reading (issue 13, items 1 and 3): each blob response
// a client stops reading once held a 1 MiB buffer for good, so that 300
// such clients cost 300 MiB that never came back. Now a response may wait
// send_timeout for its client, then it is cut; large copy buffers are few
// and the rest small; a blob in flight is written to every client from the
// download's own memory.

// stalledClient opens a connection with a receive buffer as small as the
// kernel allows, sends one GET and never reads.
func stalledClient(addr, path string) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, addr); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// drain reads what a stalled client was sent, once it starts reading
// again: the status, and how many body bytes came before the end, which
// must be an error or EOF short of the Content-Length. The receive buffer
// grows first: what is queued comes faster.
func drain(conn net.Conn, within time.Duration) (status int, got, length int64, err error) {
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetReadBuffer(1 << 20)
	}
	conn.SetReadDeadline(time.Now().Add(within))
	br := bufio.NewReaderSize(conn, 64<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, 0, 0, err
	}
	got, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, got, resp.ContentLength, err
}

// paced serves a blob's first part at once, then a trickle (fast enough
// for min_transfer_rate) until release is closed, then the rest: its
// download stays in flight while the test needs it to.
func paced(body []byte, first int, release <-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(body).String())
		rc := http.NewResponseController(w)
		if _, err := w.Write(body[:first]); err != nil {
			return
		}
		rc.Flush()
		off := first
		for off < len(body) {
			n := 64 << 10
			select {
			case <-release:
				n = len(body) - off
			case <-time.After(500 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
			n = min(n, len(body)-off)
			if _, err := w.Write(body[off : off+n]); err != nil {
				return
			}
			rc.Flush()
			off += n
		}
	}
}

// stallWave opens n stalled clients on each path, samples regcache's RSS
// until shortly before sendTimeout, and while it does pulls what pull
// names with a client that reads. It returns the clients and the peak.
func stallWave(t *testing.T, rc *regcache, paths []string, n int, sendTimeout time.Duration, pulls func()) ([]net.Conn, int64) {
	t.Helper()
	addr := rc.URL[len("http://"):]
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for _, path := range paths {
		for range n {
			c, err := stalledClient(addr, path)
			if err != nil {
				t.Fatalf("client %d: %v", len(conns), err)
			}
			conns = append(conns, c)
		}
	}
	stalledAt := time.Now()
	var wg sync.WaitGroup
	wg.Go(func() { within(t, "pulls during the attack", 30*time.Second, pulls) })
	var peak int64
	for time.Since(stalledAt) < sendTimeout-time.Second {
		peak = max(peak, rc.rss())
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	return conns, peak
}

// checkCut drains every stalled client: each must have been sent part of
// its blob and then the end of the connection.
func checkCut(t *testing.T, conns []net.Conn) {
	t.Helper()
	errs := make([]string, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			status, got, length, err := drain(c, 30*time.Second)
			switch {
			case status == 0:
				errs[i] = fmt.Sprintf("no response: %v", err)
			case status != 200 || length <= 0:
				errs[i] = fmt.Sprintf("%d, Content-Length %d", status, length)
			case got >= length:
				errs[i] = fmt.Sprintf("got all %d bytes, so it was never cut", got)
			case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.ErrUnexpectedEOF):
			default:
				errs[i] = fmt.Sprintf("%d of %d bytes, then %v", got, length, err)
			}
		})
	}
	wg.Wait()
	for i, e := range errs {
		if e != "" {
			t.Errorf("stalled client %d: %s", i, e)
		}
	}
}

// TestClientsThatStopReading: twice, 300 clients ask for a blob and never
// read: 100 a cached blob, 100 a blob in flight whose download they join
// early (they write from its memory), 100 one they join after it passed
// its memory window (they read back from its file). regcache's memory
// stays bounded, a client that reads is served meanwhile, and every
// stalled response is cut after send_timeout; the second wave stays within
// the same bound, so what the first held was let go.
func TestClientsThatStopReading(t *testing.T) {
	t.Parallel()
	h := startHostile(t)
	cached := h.Backend.PushImage(t, "team/cached", "v1", testhub.ImageOptions{LayerSize: 8 << 20, Uncompressed: true})
	// In flight: an early blob of 8 MiB that stops after 2 MiB, and a
	// late one of 24 MiB that stops after 20, past the download's memory
	// window (16 MiB at most); both trickle on until released. (A client
	// that stops reading stalls within its first megabyte: socket buffers
	// hold no more.)
	type inFlight struct {
		path    string
		release chan struct{}
	}
	var early, late [2]inFlight
	for wave := range 2 {
		for _, f := range []struct {
			fl          *inFlight
			name        string
			size, first int64
		}{{&early[wave], "early", 8 << 20, 2 << 20}, {&late[wave], "late", 24 << 20, 20 << 20}} {
			repo := fmt.Sprintf("team/%s%d", f.name, wave)
			img := h.Backend.PushImage(t, repo, "v1", testhub.ImageOptions{LayerSize: f.size, Uncompressed: true})
			rel := make(chan struct{})
			h.on("GET", "/v2/"+repo+"/blobs/"+img.Layers[0].String(), paced(h.fetch(t, repo, img.Layers[0]), int(f.first), rel))
			*f.fl = inFlight{"/v2/hostile.example/" + repo + "/blobs/" + img.Layers[0].String(), rel}
			t.Cleanup(func() {
				select {
				case <-rel:
				default:
					close(rel)
				}
			})
		}
	}
	h.Backend.PushImage(t, "team/other", "v1", testhub.ImageOptions{LayerSize: 4 << 20, Uncompressed: true})
	const sendTimeout = 4 * time.Second
	rc := startRegcache(t, registryConfig(h.URL, "")+"send_timeout: 4s\n")
	accept := http.Header{"Accept": {acceptManifests}}
	if err := pull(rc.Client, rc.URL, "hostile.example/team/cached", "v1", accept); err != nil {
		t.Fatal(err)
	}
	rc.Client.CloseIdleConnections()
	time.Sleep(time.Second)
	baseline := rc.rss()
	// What 300 stalled responses may hold: 32 large copy buffers (1 MiB)
	// and 68 small ones (64 KiB) for the cached blob, about 36 MiB; the
	// downloads' chunks, which the early writers write from (8 and 16 MiB
	// at most: the blob, the largest window); the late ones' read-back buffers
	// (64 KiB each, 6 MiB); 300 connections' goroutines and buffers,
	// about 10 MiB; and the previous wave's downloads, 32 MiB, not yet
	// collected: about 110 MiB, and the collector may let the heap grow
	// past what is live before it runs. Before send_timeout and the
	// buffer cap, the buffers alone took 300 MiB, and never came back.
	const bound = 192 << 20

	for wave := range 2 {
		// The late download must be past its window before its clients come.
		starter, err := stalledClient(rc.URL[len("http://"):], late[wave].path)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		paths := []string{early[wave].path, late[wave].path, "/v2/hostile.example/team/cached/blobs/" + cached.Layers[0].String()}
		conns, peak := stallWave(t, rc, paths, 100, sendTimeout, func() {
			if wave == 0 {
				if err := pull(rc.Client, rc.URL, "hostile.example/team/other", "v1", accept); err != nil {
					t.Errorf("a cold pull during the attack: %v", err)
				}
			}
			if err := pull(rc.Client, rc.URL, "hostile.example/team/cached", "v1", accept); err != nil {
				t.Errorf("a cached pull during the attack: %v", err)
			}
		})
		t.Logf("wave %d: RSS %d MiB before the attack, %d MiB at the most with %d clients not reading", wave+1, baseline>>20, peak>>20, len(conns))
		if peak-baseline > bound {
			t.Errorf("wave %d: RSS grew by %d MiB, bound %d MiB", wave+1, (peak-baseline)>>20, bound>>20)
		}
		// Until the release, the trickle may still get into a stalled
		// client's socket buffers; after it, nothing does, and after
		// send_timeout every stalled response is cut.
		close(early[wave].release)
		close(late[wave].release)
		time.Sleep(sendTimeout + 2*time.Second)
		checkCut(t, append(conns, starter))
		t.Logf("wave %d: RSS %d MiB after the cut", wave+1, rc.rss()>>20)
	}
}

// h2Attacker is one HTTP/2 connection whose streams never read: it says
// its streams' windows are 0, so the server may send response headers but
// not one byte of a body, and it never opens them.
type h2Attacker struct {
	conn net.Conn
	fr   *http2.Framer
	wmu  sync.Mutex // the framer's writes

	mu      sync.Mutex
	headers map[uint32]string        // stream: :status
	resets  map[uint32]http2.ErrCode // stream: RST_STREAM code
	data    int64                    // DATA bytes received; must stay 0
	goAway  bool
	err     error // why the read loop ended
}

func dialH2Attacker(t *testing.T, rc *regcache) *h2Attacker {
	t.Helper()
	cfg := rc.TLS.Clone()
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", rc.URL[len("https://"):], cfg)
	if err != nil {
		t.Fatal(err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q, not h2", p)
	}
	t.Cleanup(func() { conn.Close() })
	a := &h2Attacker{conn: conn, fr: http2.NewFramer(conn, conn), headers: map[uint32]string{}, resets: map[uint32]http2.ErrCode{}}
	a.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := a.write(func() error {
		return a.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	}); err != nil {
		t.Fatal(err)
	}
	go a.read()
	return a
}

func (a *h2Attacker) write(f func() error) error {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	return f()
}

// read answers SETTINGS and PINGs, as a live client must, and records
// what each stream was sent.
func (a *h2Attacker) read() {
	for {
		f, err := a.fr.ReadFrame()
		if err != nil {
			a.mu.Lock()
			a.err = err
			a.mu.Unlock()
			return
		}
		a.mu.Lock()
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				a.write(a.fr.WriteSettingsAck)
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				a.write(func() error { return a.fr.WritePing(true, f.Data) })
			}
		case *http2.MetaHeadersFrame:
			a.headers[f.StreamID] = f.PseudoValue("status")
		case *http2.RSTStreamFrame:
			a.resets[f.StreamID] = f.ErrCode
		case *http2.DataFrame:
			a.data += int64(len(f.Data()))
		case *http2.GoAwayFrame:
			a.goAway = true
		}
		a.mu.Unlock()
	}
}

// open opens n streams (1, 3, 5, ...) that GET path.
func (a *h2Attacker) open(t *testing.T, n int, authority, path string) {
	t.Helper()
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for i := range n {
		buf.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", authority}, {":path", path}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		err := a.write(func() error {
			return a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: buf.Bytes(), EndStream: true, EndHeaders: true})
		})
		if err != nil {
			t.Fatalf("stream %d: %v", 2*i+1, err)
		}
	}
}

// tally counts the streams answered with headers (and of those, the ones
// since reset), and the streams refused without any.
func (a *h2Attacker) tally() (answered, cut, refused int, data int64, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id := range a.headers {
		answered++
		if _, ok := a.resets[id]; ok {
			cut++
		}
	}
	for id := range a.resets {
		if _, ok := a.headers[id]; !ok {
			refused++
		}
	}
	return answered, cut, refused, a.data, a.err
}

// TestHTTP2StreamsThatNeverRead: one HTTP/2 connection opens 250 streams
// for a cached 8 MiB blob and gives none of them a window. regcache
// serves at most http2_max_streams (100) of them at once, refuses the
// rest, holds bounded memory, serves other clients over HTTP/2 and
// HTTP/1.1 meanwhile, and resets every stalled stream after send_timeout.
// A second such connection afterwards stays within the same bound.
func TestHTTP2StreamsThatNeverRead(t *testing.T) {
	t.Parallel()
	h := startHostile(t)
	img := h.Backend.PushImage(t, "team/app", "v1", testhub.ImageOptions{LayerSize: 8 << 20, Uncompressed: true})
	const sendTimeout = 4 * time.Second
	rc := start(t, options{Config: registryConfig(h.URL, "") + "send_timeout: 4s\n", TLS: true})
	accept := http.Header{"Accept": {acceptManifests}}
	if err := pull(rc.Client, rc.URL, "hostile.example/team/app", "v1", accept); err != nil {
		t.Fatal(err)
	}
	h1 := &http.Client{Transport: &http.Transport{TLSClientConfig: rc.TLS.Clone(), TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	time.Sleep(time.Second)
	baseline := rc.rss()
	// 100 streams at once, each with a copy buffer: 32 of 1 MiB and 68 of
	// 64 KiB, about 36 MiB, with the HTTP/2 server's own state per stream
	// and the collector's headroom. 250 streams with a 1 MiB buffer each
	// once took 258 MB.
	const bound = 96 << 20
	blob := "/v2/hostile.example/team/app/blobs/" + img.Layers[0].String()

	for wave := range 2 {
		a := dialH2Attacker(t, rc)
		a.open(t, 250, rc.URL[len("https://"):], blob)
		start := time.Now()
		var wg sync.WaitGroup
		wg.Go(func() {
			within(t, "pulls during the attack", 30*time.Second, func() {
				for _, c := range []*http.Client{rc.Client, h1} {
					if err := pull(c, rc.URL, "hostile.example/team/app", "v1", accept); err != nil {
						t.Errorf("a pull during the attack: %v", err)
					}
				}
			})
		})
		var peak int64
		for time.Since(start) < sendTimeout-time.Second {
			peak = max(peak, rc.rss())
			time.Sleep(100 * time.Millisecond)
		}
		wg.Wait()
		answered, _, refused, data, err := a.tally()
		t.Logf("wave %d: %d streams answered, %d refused; RSS %d MiB before, %d MiB at the most", wave+1, answered, refused, baseline>>20, peak>>20)
		if answered > 100 || answered+refused != 250 || data != 0 || err != nil {
			t.Errorf("wave %d: %d streams answered, %d refused, of 250; %d body bytes sent into a zero window; %v", wave+1, answered, refused, data, err)
		}
		if peak-baseline > bound {
			t.Errorf("wave %d: RSS grew by %d MiB, bound %d MiB", wave+1, (peak-baseline)>>20, bound>>20)
		}
		// Every answered stream is reset once send_timeout has passed.
		for deadline := start.Add(sendTimeout + 10*time.Second); ; time.Sleep(100 * time.Millisecond) {
			answered, cut, _, _, _ := a.tally()
			if cut == answered {
				t.Logf("wave %d: all %d stalled streams reset after %v", wave+1, cut, time.Since(start).Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("wave %d: %d of %d stalled streams reset %v after they were opened", wave+1, cut, answered, time.Since(start))
			}
		}
		a.conn.Close()
	}
}

// Over HTTP/2, every way of asking for a blob works with either copy mode
// (a wrapper that asserted io.ReaderFrom once reset the streams of Range
// requests and of sendfile copies): in flight, plain and Range; cached,
// plain, Range, conditional and HEAD.
func TestHTTP2EveryBlobRequest(t *testing.T) {
	t.Parallel()
	h := startHostile(t)
	for _, mode := range []string{"buffered", "sendfile"} {
		repo := "team/" + mode
		img := h.Backend.PushImage(t, repo, "v1", testhub.ImageOptions{LayerSize: 3 << 20, Uncompressed: true})
		want := h.fetch(t, repo, img.Layers[0])
		// The download stops after 1 MiB until released: the first
		// requests are answered from it in flight.
		release := make(chan struct{})
		h.on("GET", "/v2/"+repo+"/blobs/"+img.Layers[0].String(), paced(want, 1<<20, release))
		rc := start(t, options{Config: registryConfig(h.URL, "") + "blob_copy: " + mode + "\n", TLS: true})
		blob := rc.URL + "/v2/hostile.example/" + repo + "/blobs/" + img.Layers[0].String()
		check := func(name, method string, hdr http.Header, status int, body []byte) {
			t.Helper()
			resp, got, err := send(rc.Client, method, blob, hdr, nil)
			switch {
			case err != nil:
				t.Errorf("%s, %s: %v", mode, name, err)
			case resp.ProtoMajor != 2 || resp.StatusCode != status || !bytes.Equal(got, body):
				t.Errorf("%s, %s: %s %d, %d bytes; want HTTP/2 %d and %d bytes", mode, name, resp.Proto, resp.StatusCode, len(got), status, len(body))
			}
		}
		check("in flight, Range", "GET", http.Header{"Range": {"bytes=100-199"}}, 206, want[100:200])
		time.AfterFunc(500*time.Millisecond, func() { close(release) })
		check("in flight", "GET", nil, 200, want)
		waitStored(t, rc.Data, img.Layers[0])
		check("cached", "GET", nil, 200, want)
		check("cached, Range", "GET", http.Header{"Range": {"bytes=1000-"}}, 206, want[1000:])
		check("cached, conditional", "GET", http.Header{"If-None-Match": {`"` + img.Layers[0].String() + `"`}}, 304, nil)
		check("cached, HEAD", "HEAD", nil, 200, nil)
	}
}

// sockets counts the sockets a process has open.
func sockets(t *testing.T, pid int) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink(dir + "/" + fd.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// max_connections bounds the connections regcache serves at once: 40
// clients that never read get 16 of them; the rest, and a client that
// reads, wait in the listen backlog until send_timeout frees places, and
// are then served.
func TestMaxConnections(t *testing.T) {
	t.Parallel()
	h := startHostile(t)
	img := h.Backend.PushImage(t, "team/app", "v1", testhub.ImageOptions{LayerSize: 8 << 20, Uncompressed: true})
	const sendTimeout = 3 * time.Second
	rc := startRegcache(t, registryConfig(h.URL, "")+"max_connections: 16\nsend_timeout: 3s\n")
	accept := http.Header{"Accept": {acceptManifests}}
	if err := pull(rc.Client, rc.URL, "hostile.example/team/app", "v1", accept); err != nil {
		t.Fatal(err)
	}
	rc.Client.CloseIdleConnections()
	time.Sleep(500 * time.Millisecond)
	idle := sockets(t, rc.cmd.Process.Pid) // the listener, upstream connections
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range 40 {
		c, err := stalledClient(rc.URL[len("http://"):], "/v2/hostile.example/team/app/blobs/"+img.Layers[0].String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	time.Sleep(time.Second)
	if n := sockets(t, rc.cmd.Process.Pid) - idle; n > 16 {
		t.Errorf("regcache holds %d client connections, max_connections is 16", n)
	}
	// A client that reads waits its turn, which comes when send_timeout
	// cuts stalled ones off: three rounds at most before its own.
	within(t, "a request behind 40 stalled connections", 4*sendTimeout+15*time.Second, func() {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Minute}
		if resp, body, err := send(c, "GET", rc.URL+"/v2/hostile.example/team/app/manifests/v1", accept, nil); err != nil || resp.StatusCode != 200 {
			t.Errorf("a request behind the stalled connections: %v %.200s", err, body)
		}
	})
	// Every stalled client is answered in turn, and cut: regcache is left
	// with no client connection.
	for deadline := time.Now().Add(60 * time.Second); sockets(t, rc.cmd.Process.Pid) > idle; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d client connections still open a minute on", sockets(t, rc.cmd.Process.Pid)-idle)
		}
	}
	checkCut(t, conns)
}
