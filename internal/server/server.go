// Package server is regcache's HTTP side: it routes OCI distribution API
// requests (host in the path, ?ns=, or the default registry) to the
// pull-through cache and writes the answers, including OCI error JSON.
//
// Handlers know nothing about upstreams or storage; they talk to
// *pull.Cache only.
package server

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/regcache/regcache/internal/clientauth"
	"github.com/regcache/regcache/internal/metrics"
	"github.com/regcache/regcache/internal/pull"
	"github.com/regcache/regcache/internal/store"
)

// Server serves the registry API.
type Server struct {
	// sendfile selects the kernel's sendfile for cached blobs instead of a
	// buffered copy.
	sendfile bool
	router   *Router
	cache    *pull.Cache
	log      *slog.Logger
	metrics  *metrics.Metrics
	// Admin holds extra handlers (status endpoints) mounted under /_regcache/.
	admin http.Handler
	mux   *http.ServeMux
	// auth is nil when clients need no credentials.
	auth      ClientAuth
	tokens    *clientauth.Issuer
	anonymous map[string]bool
}

// Options configures a Server.
type Options struct {
	Router  *Router
	Cache   *pull.Cache
	Logger  *slog.Logger
	Metrics *metrics.Metrics
	Admin   http.Handler
	// BlobCopy is "buffered" (default) or "sendfile".
	BlobCopy string
	// ClientAuth, when set, makes every /v2/ request carry a login (a
	// token from the server's own realm, or Basic credentials), except
	// those for AnonymousRegistries.
	ClientAuth          ClientAuth
	AnonymousRegistries []string
	// Tokens signs the tokens; nil means a key of this process's own,
	// which suits a single server.
	Tokens *clientauth.Issuer
	// MetricsLogin puts /metrics behind the login too (client_auth.metrics).
	MetricsLogin bool
}

// New returns a Server.
func New(opt Options) *Server {
	s := &Server{sendfile: opt.BlobCopy == "sendfile", router: opt.Router, cache: opt.Cache, log: opt.Logger, metrics: opt.Metrics, admin: opt.Admin}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opt.ClientAuth != nil {
		s.auth = opt.ClientAuth
		s.tokens = opt.Tokens
		if s.tokens == nil {
			s.tokens = clientauth.NewIssuer()
		}
		s.anonymous = map[string]bool{}
		for _, name := range opt.AnonymousRegistries {
			s.anonymous[name] = true
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v2/", s.serveV2)
	mux.HandleFunc("/v2", s.serveV2)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
	})
	if s.metrics != nil {
		var h http.Handler = promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{})
		if opt.MetricsLogin {
			h = s.requireLogin(h)
		}
		mux.Handle("/metrics", h)
	}
	if s.admin != nil {
		mux.Handle("/_regcache/", s.requireLogin(s.admin))
	}
	mux.HandleFunc(tokenPath, s.serveToken)
	s.mux = mux
	return s
}

// ServeHTTP implements http.Handler. At debug level every request gets a
// log line; paths and statuses only, never headers, so credentials a client
// sends (dockerd forwards the user's Docker Hub login) stay out of logs.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.log.Enabled(r.Context(), slog.LevelDebug) {
		s.mux.ServeHTTP(w, r)
		return
	}
	start := time.Now()
	cw := &countingWriter{ResponseWriter: w}
	s.mux.ServeHTTP(cw, r)
	if cw.status == 0 {
		cw.status = http.StatusOK
	}
	s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "query", r.URL.RawQuery, "status", cw.status,
		"bytes", cw.n, "result", w.Header().Get("X-Regcache"), "duration", time.Since(start))
}

func (s *Server) serveV2(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	rt, perr := s.router.Parse(r.URL.Path, r.URL.Query())
	// Before any other answer: a stranger learns nothing, not even which
	// registries are configured.
	if aerr := s.authorize(w, r, rt, perr == nil); aerr != nil {
		// Not s.fail: every login starts with this challenge, which is
		// no failure; authorize logs the attempts worth logging.
		writeError(w, aerr)
		return
	}
	if perr != nil {
		if perr.Code == "UNSUPPORTED" || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
			perr = errUnsupported("regcache is a read-only cache: only GET and HEAD are supported")
		}
		s.fail(w, r, Route{}, perr)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		s.fail(w, r, rt, errUnsupported("regcache is a read-only cache: "+r.Method+" is not supported"))
		return
	}
	if rt.NS != "" {
		w.Header().Set("OCI-Namespace", rt.NS)
	}
	switch rt.Kind {
	case KindBase:
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		if r.Method == http.MethodGet {
			io.WriteString(w, "{}")
		}
	case KindManifest:
		s.serveManifest(w, r, rt)
	case KindBlob:
		s.serveBlob(w, r, rt)
	case KindTags, KindReferrers:
		s.serveList(w, r, rt)
	}
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, rt Route, e *Error) {
	if rt.Registry != "" && s.metrics != nil {
		s.metrics.Requests.WithLabelValues(rt.Registry, string(rt.Kind), "error").Inc()
	}
	lvl := slog.LevelInfo
	if e.Status >= 500 {
		lvl = slog.LevelWarn
	}
	s.log.Log(r.Context(), lvl, "request failed", "method", r.Method, "path", r.URL.Path,
		"status", e.Status, "code", e.Code, "msg", e.Message)
	writeError(w, e)
}

func (s *Server) count(rt Route, result pull.Result, n int64) {
	if s.metrics == nil {
		return
	}
	res := string(result)
	if result == pull.Revalidated {
		res = string(pull.Hit)
	}
	s.metrics.Requests.WithLabelValues(rt.Registry, string(rt.Kind), res).Inc()
	if n > 0 {
		s.metrics.BytesServed.WithLabelValues(rt.Registry, string(rt.Kind)).Add(float64(n))
	}
}

func setResult(h http.Header, res pull.Result) {
	h.Set("X-Regcache", string(res))
	if res == pull.Stale {
		h.Set("Warning", `110 regcache "Response is Stale"`)
	}
}

func (s *Server) serveManifest(w http.ResponseWriter, r *http.Request, rt Route) {
	m, err := s.cache.Manifest(r.Context(), rt.Registry, rt.Repo, rt.Ref, pull.ParseAccept(r.Header.Values("Accept")))
	if err != nil {
		s.fail(w, r, rt, toError(err, rt.Kind))
		return
	}
	h := w.Header()
	h.Set("Content-Type", m.MediaType)
	h.Set("Docker-Content-Digest", m.Digest.String())
	h.Set("Etag", `"`+m.Digest.String()+`"`)
	h.Set("Content-Length", strconv.Itoa(len(m.Data)))
	setResult(h, m.Result)
	if m.Source != "" {
		h.Set("X-Regcache-Source", m.Source)
	}
	if m.TagFromMirror {
		// A mirror's tag can lag the origin's: say so.
		h.Set("X-Regcache-Tag-Source", "mirror")
		h.Add("Warning", `199 regcache "tag resolved at mirror `+m.Source+` because the origin failed"`)
	}
	if inm := r.Header.Get("If-None-Match"); inm != "" && strings.Contains(inm, m.Digest.String()) {
		h.Del("Content-Length")
		w.WriteHeader(http.StatusNotModified)
		s.count(rt, m.Result, 0)
		return
	}
	if r.Method == http.MethodHead {
		s.count(rt, m.Result, 0)
		return
	}
	n, _ := w.Write(m.Data)
	s.count(rt, m.Result, int64(n))
}

func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, rt Route) {
	d := digest.Digest(rt.Ref)
	h := w.Header()
	h.Set("Docker-Content-Digest", rt.Ref)
	h.Set("Etag", `"`+rt.Ref+`"`)
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Type", "application/octet-stream")
	if r.Method == http.MethodHead {
		size, res, err := s.cache.StatBlob(r.Context(), rt.Registry, rt.Repo, d)
		if err != nil {
			s.fail(w, r, rt, toError(err, rt.Kind))
			return
		}
		h.Set("Content-Length", strconv.FormatInt(size, 10))
		setResult(h, res)
		s.count(rt, res, 0)
		return
	}
	b, err := s.cache.Blob(r.Context(), rt.Registry, rt.Repo, d)
	if err != nil {
		s.fail(w, r, rt, toError(err, rt.Kind))
		return
	}
	defer b.Close()
	setResult(h, b.Result)
	if b.Content != nil {
		s.serveStored(w, r, rt, b)
		return
	}
	h.Set("X-Regcache-Source", b.Source)
	s.streamBlob(w, r, rt, b)
}

// serveStored serves a committed blob. Range and conditional requests go
// through http.ServeContent. A plain GET is copied with pooled 1 MiB
// buffers, or handed to the kernel's sendfile when BlobCopy is "sendfile":
// on loopback and on 2 cores the buffered copy was faster and cheaper in
// CPU (see BENCHMARKS.md, P1/E1); on a real NIC sendfile may win, so it is
// the operator's measured choice.
func (s *Server) serveStored(w http.ResponseWriter, r *http.Request, rt Route, b *pull.Blob) {
	var rs io.ReadSeeker = b.Content
	if f, ok := b.Content.(*store.File); ok {
		rs = f.File
	}
	h := r.Header
	if s.sendfile || h.Get("Range") != "" || h.Get("If-None-Match") != "" || h.Get("If-Match") != "" ||
		h.Get("If-Modified-Since") != "" || h.Get("If-Unmodified-Since") != "" || h.Get("If-Range") != "" {
		cw := &countingWriter{ResponseWriter: w}
		http.ServeContent(cw, r, "", time.Time{}, rs)
		s.count(rt, b.Result, cw.n)
		return
	}
	w.Header().Set("Content-Length", strconv.FormatInt(b.Size, 10))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	bufp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bufp)
	// The wrappers hide ReadFrom/WriteTo so io.CopyBuffer really uses the
	// buffer instead of falling back to sendfile or 32 KiB copies.
	n, err := io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{rs}, *bufp)
	s.count(rt, b.Result, n)
	if err != nil && r.Context().Err() == nil {
		s.log.Warn("blob response cut short", "registry", rt.Registry, "digest", rt.Ref, "sent", n, "err", err)
	}
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// streamBlob serves a blob from a download in flight. If the download fails
// or the content does not verify, the connection is aborted: the client must
// see a broken transfer, never a complete-looking body.
func (s *Server) streamBlob(w http.ResponseWriter, r *http.Request, rt Route, b *pull.Blob) {
	h := w.Header()
	status := http.StatusOK
	length := b.Size
	if start, end, ok := parseRange(r.Header.Get("Range"), b.Size); ok {
		b.Stream.SeekStart(start)
		length = end - start + 1
		h.Set("Content-Range", "bytes "+strconv.FormatInt(start, 10)+"-"+strconv.FormatInt(end, 10)+"/"+strconv.FormatInt(b.Size, 10))
		status = http.StatusPartialContent
	}
	if length >= 0 {
		h.Set("Content-Length", strconv.FormatInt(length, 10))
	}
	w.WriteHeader(status)
	var src io.Reader = b.Stream
	if length >= 0 {
		src = io.LimitReader(b.Stream, length)
	}
	// Large copies: the download lands in 1 MiB steps, and 32 KiB preads
	// and writes (io.Copy's default) cost a cold pull measurable time.
	bufp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bufp)
	n, err := io.CopyBuffer(struct{ io.Writer }{w}, src, *bufp)
	s.count(rt, b.Result, n)
	if err == nil && length >= 0 && n < length {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		if r.Context().Err() == nil {
			s.log.Warn("aborting blob response", "registry", rt.Registry, "repo", rt.Repo, "digest", rt.Ref, "sent", n, "err", err)
		}
		panic(http.ErrAbortHandler)
	}
}

// parseRange understands the single byte range that registry clients send
// to resume a download. Anything else is served whole, which HTTP allows.
func parseRange(v string, size int64) (start, end int64, ok bool) {
	spec, found := strings.CutPrefix(v, "bytes=")
	if !found || size < 0 || strings.Contains(spec, ",") {
		return 0, 0, false
	}
	a, b, found := strings.Cut(spec, "-")
	if !found || a == "" {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(a, 10, 64)
	if err != nil || start < 0 || start >= size {
		return 0, 0, false
	}
	end = size - 1
	if b != "" {
		e, err := strconv.ParseInt(b, 10, 64)
		if err != nil || e < start {
			return 0, 0, false
		}
		if e < end {
			end = e
		}
	}
	return start, end, true
}

func (s *Server) serveList(w http.ResponseWriter, r *http.Request, rt Route) {
	var l *pull.List
	var err error
	if rt.Kind == KindTags {
		l, err = s.cache.Tags(r.Context(), rt.Registry, rt.Repo, r.URL.Query())
	} else {
		l, err = s.cache.Referrers(r.Context(), rt.Registry, rt.Repo, rt.Ref, r.URL.Query())
	}
	if err != nil {
		s.fail(w, r, rt, toError(err, rt.Kind))
		return
	}
	h := w.Header()
	if l.ContentType != "" {
		h.Set("Content-Type", l.ContentType)
	}
	if l.Link != "" {
		if link, ok := rewriteLink(l.Link, rt); ok {
			h.Set("Link", link)
		}
	}
	h.Set("Content-Length", strconv.Itoa(len(l.Body)))
	setResult(h, l.Result)
	w.WriteHeader(l.Status)
	if r.Method == http.MethodGet {
		n, _ := io.Copy(w, bytes.NewReader(l.Body))
		s.count(rt, l.Result, n)
	}
}

// rewriteLink points an upstream pagination link back at this server, under
// the name the client used.
func rewriteLink(link string, rt Route) (string, bool) {
	lt, gt := strings.IndexByte(link, '<'), strings.IndexByte(link, '>')
	if lt < 0 || gt < lt {
		return "", false
	}
	u, err := url.Parse(link[lt+1 : gt])
	if err != nil {
		return "", false
	}
	q := u.Query()
	if rt.NS != "" {
		q.Set("ns", rt.NS)
	}
	path := "/v2/" + rt.Name + "/tags/list"
	if rt.Kind == KindReferrers {
		path = "/v2/" + rt.Name + "/referrers/" + rt.Ref
	}
	return "<" + path + "?" + q.Encode() + ">" + link[gt+1:], true
}

type countingWriter struct {
	http.ResponseWriter
	n      int64
	status int
}

func (c *countingWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

// Flush passes flushes through for streamed blobs.
func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// ReadFrom keeps sendfile available through the wrapper.
func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	n, err := c.ResponseWriter.(io.ReaderFrom).ReadFrom(r)
	c.n += n
	return n, err
}
