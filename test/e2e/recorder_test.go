package e2e

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
)

// recorder is a transparent HTTP proxy in front of regcache (or a plain
// registry) that records every request a client sends. Each client gets its
// own, so the test can assert which routing mode the client really used
// (host in path, ?ns=, bare) and the log shows the exact request lines.
type recorder struct {
	host string // 127.0.0.1:PORT clients talk to
	log  string

	mu   sync.Mutex
	reqs []recordedRequest
}

type recordedRequest struct {
	Method, URI, UserAgent, Range, Accept string
	Status                                int
	// Namespace is the OCI-Namespace response header.
	Namespace string
}

func (r recordedRequest) String() string {
	var hdr string
	if r.Range != "" {
		hdr += " [Range: " + r.Range + "]"
	}
	if r.Accept != "" && strings.Contains(r.URI, "/manifests/") {
		hdr += " [Accept: " + r.Accept + "]"
	}
	return fmt.Sprintf("%s %s%s -> %d (%s)", r.Method, r.URI, hdr, r.Status, r.UserAgent)
}

func startRecorder(t *testing.T, w *world, name, target string) *recorder {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{host: l.Addr().String(), log: w.logFile("requests-" + name)}
	proxy := hostKeepingProxy(&url.URL{Scheme: "http", Host: target})
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
		sw := &statusWriter{ResponseWriter: rw, status: http.StatusOK}
		proxy.ServeHTTP(sw, req)
		rr := recordedRequest{
			Method: req.Method, URI: req.RequestURI, UserAgent: req.UserAgent(), Range: req.Header.Get("Range"),
			Accept: strings.Join(req.Header.Values("Accept"), ", "),
			Status: sw.status, Namespace: sw.Header().Get("OCI-Namespace"),
		}
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, rr)
		rec.mu.Unlock()
		rec.append(rr.String() + "\n")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return rec
}

// hostKeepingProxy forwards to target with the client's Host header, so
// any absolute URL the server builds points back at the proxy (and a
// signature over the host still holds). It streams bodies as they arrive:
// regcache's streaming is part of what the clients exercise.
func hostKeepingProxy(target *url.URL) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
		},
		FlushInterval: -1,
	}
}

func (r *recorder) append(line string) {
	f, err := os.OpenFile(r.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = f.WriteString(line)
}

func (r *recorder) requests() []recordedRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recordedRequest(nil), r.reqs...)
}

// statusWriter remembers the status code and keeps http.Flusher working
// for the proxy's streaming.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// route is how a client names the upstream registry to a mirror.
type route int

const (
	// routeHostInPath: /v2/docker.io/library/alpine/... (podman/CRI-O
	// registries.conf mirrors; skopeo, crane and regctl addressing
	// regcache directly).
	routeHostInPath route = iota
	// routeNSQuery: /v2/library/alpine/...?ns=docker.io (containerd
	// hosts.toml).
	routeNSQuery
	// routeBare: /v2/library/alpine/... (dockerd registry-mirrors).
	routeBare
)

func (r route) String() string {
	return [...]string{"host in path", "?ns= query", "bare path"}[r]
}

// checkRoute asserts that every manifest and blob request the client sent
// used routing mode want, and that there was at least one: a client that
// reached regcache some other way would not be testing what it claims to.
//
// With echoNS, a successful answer to ?ns= must carry it back as
// OCI-Namespace (regcache does; a plain registry does not).
func checkRoute(t *testing.T, reqs []recordedRequest, want route, echoNS bool) {
	t.Helper()
	n := 0
	for _, r := range reqs {
		u, err := url.ParseRequestURI(r.URI)
		if err != nil {
			t.Errorf("unparsable request %s", r)
			continue
		}
		if !strings.Contains(u.Path, "/manifests/") && !strings.Contains(u.Path, "/blobs/") {
			continue // /v2/ ping, token, etc.
		}
		n++
		hostInPath := strings.HasPrefix(u.Path, "/v2/docker.io/library/")
		bare := strings.HasPrefix(u.Path, "/v2/library/")
		ns := u.Query().Get("ns")
		ok := false
		switch want {
		case routeHostInPath:
			ok = hostInPath && ns == ""
		case routeNSQuery:
			ok = bare && ns == "docker.io"
		case routeBare:
			ok = bare && ns == ""
		}
		if !ok {
			t.Errorf("request not routed by %s: %s", want, r)
		}
		// The distribution spec's answer to ?ns=: echo it.
		if echoNS && ns != "" && r.Status < 300 && r.Namespace != ns {
			t.Errorf("OCI-Namespace: %q in the answer to %s", r.Namespace, r)
		}
	}
	if n == 0 {
		t.Errorf("client sent no manifest or blob requests through the mirror")
	}
}
