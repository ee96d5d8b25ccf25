package server

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/regcache/regcache/internal/pull"
	"github.com/regcache/regcache/internal/store"
)

func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, rt Route) pull.Result {
	h := w.Header()
	h.Set("Docker-Content-Digest", rt.Digest.String())
	h.Set("Etag", `"`+rt.Digest.String()+`"`)
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Type", "application/octet-stream")
	u, res, err := s.cache.BlobRedirect(r.Context(), rt.Repo, rt.Digest, r.Method)
	if err != nil {
		return s.fail(w, r, rt, err)
	}
	if u != "" {
		return s.redirectBlob(w, r, rt, u, res)
	}
	if r.Method == http.MethodHead {
		size, res, err := s.cache.StatBlob(r.Context(), rt.Repo, rt.Digest)
		if err != nil {
			return s.fail(w, r, rt, err)
		}
		h.Set("Content-Length", strconv.FormatInt(size, 10))
		setResult(h, res)
		s.meter(w, r, rt, res).WriteHeader(http.StatusOK)
		return res
	}
	b, err := s.cache.Blob(r.Context(), rt.Repo, rt.Digest)
	if err != nil {
		return s.fail(w, r, rt, err)
	}
	defer b.Close()
	if err := settle(r, b); err != nil {
		return s.fail(w, r, rt, err)
	}
	setResult(h, b.Result)
	mw := s.meter(w, r, rt, b.Result)
	defer mw.done()
	sw := newSendWriter(mw, s.sendTimeout)
	defer sw.done()
	if b.Content != nil {
		s.serveStored(mw, sw, r, rt, b)
	} else {
		h.Set("X-Regcache-Source", b.Source)
		if !b.Stream.Stored() {
			// The store could not take it (full): served, not cached.
			h.Set("X-Regcache-Stored", "no")
		}
		s.streamBlob(mw, sw, r, rt, b)
	}
	return b.Result
}

// redirectBlob sends the client to fetch a cached blob from the object
// store, as Distribution's redirect option does. A Range or a precondition
// is sent again to the new location by the client. The location is signed:
// it goes in this one header and nowhere else (the request log records the
// path and status only).
func (s *Server) redirectBlob(w http.ResponseWriter, r *http.Request, rt Route, location string, res pull.Result) pull.Result {
	h := w.Header()
	h.Del("Content-Type")
	h.Del("Accept-Ranges")
	h.Del("Etag")
	h.Set("Location", location)
	setResult(h, res)
	s.metrics.BlobRedirects.WithLabelValues(rt.Repo.Registry(), r.Method).Inc()
	s.meter(w, r, rt, res).WriteHeader(http.StatusTemporaryRedirect)
	return res
}

// conditional reports whether a request asks for anything but the whole
// body: a Range, or a precondition.
func conditional(h http.Header) bool {
	for _, k := range []string{"Range", "If-None-Match", "If-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range"} {
		if h.Get(k) != "" {
			return true
		}
	}
	return false
}

// serveStored serves a committed blob. Range and conditional requests go
// through http.ServeContent. A plain GET is copied with pooled buffers, or
// handed to the kernel's sendfile when BlobCopy is "sendfile": on loopback
// and on 2 cores the buffered copy was faster and cheaper in CPU (see
// BENCHMARKS.md, P1/E1); on a real NIC sendfile may win, so it is the
// operator's measured choice.
func (s *Server) serveStored(w http.ResponseWriter, sw *sendWriter, r *http.Request, rt Route, b *pull.Blob) {
	var rs io.ReadSeeker = b.Content
	if f, ok := b.Content.(*store.File); ok {
		rs = f.File
	}
	if s.sendfile || conditional(r.Header) {
		// ServeContent writes through the send deadline too; where the
		// writer underneath can sendfile (HTTP/1), it still does, through
		// deadlineResponse's ReadFrom.
		http.ServeContent(deadlineResponse{w, sw}, r, "", time.Time{}, rs)
		return
	}
	w.Header().Set("Content-Length", strconv.FormatInt(b.Size, 10))
	w.WriteHeader(http.StatusOK)
	buf, put := s.buffers.get()
	defer put()
	// The wrappers hide ReadFrom/WriteTo so io.CopyBuffer really uses the
	// buffer instead of falling back to sendfile or 32 KiB copies.
	n, err := io.CopyBuffer(struct{ io.Writer }{sw}, struct{ io.Reader }{rs}, buf)
	if err != nil && r.Context().Err() == nil {
		s.log.Warn("blob response cut short", "registry", rt.Repo.Registry(), "digest", rt.Digest, "sent", n, "err", err)
	}
}

// deadlineResponse is a ResponseWriter whose writes go through a
// sendWriter, for handlers (ServeContent) that write themselves.
type deadlineResponse struct {
	http.ResponseWriter
	sw *sendWriter
}

func (d deadlineResponse) Write(p []byte) (int, error) { return d.sw.Write(p) }
func (d deadlineResponse) Unwrap() http.ResponseWriter { return d.ResponseWriter }

// sendfilePiece is how much one sendfile call may send under one deadline.
const sendfilePiece = 4 << 20

// ReadFrom keeps sendfile where the writer underneath has it, in pieces
// that each get the send deadline.
func (d deadlineResponse) ReadFrom(r io.Reader) (int64, error) {
	rf, ok := d.ResponseWriter.(io.ReaderFrom)
	if !ok {
		return io.Copy(struct{ io.Writer }{d.sw}, r)
	}
	var total int64
	for {
		if d.sw.timeout > 0 {
			_ = d.sw.rc.SetWriteDeadline(time.Now().Add(d.sw.timeout))
		}
		n, err := rf.ReadFrom(io.LimitReader(r, sendfilePiece))
		total += n
		if err != nil || n < sendfilePiece {
			return total, err
		}
	}
}

// streamBlob serves a blob from a download in flight, straight from the
// download's memory for a client that keeps up. If the download fails or
// the content does not verify, the connection is aborted: the client must
// see a broken transfer, never a complete-looking body.
func (s *Server) streamBlob(w http.ResponseWriter, sw *sendWriter, r *http.Request, rt Route, b *pull.Blob) {
	h := w.Header()
	if inm := r.Header.Get("If-None-Match"); inm != "" && strings.Contains(inm, rt.Digest.String()) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	status := http.StatusOK
	length := b.Size
	if start, end, ok := parseRange(r.Header.Get("Range"), b.Size); ok {
		if _, err := b.Stream.Seek(start, io.SeekStart); err == nil {
			length = end - start + 1
			h.Set("Content-Range", "bytes "+strconv.FormatInt(start, 10)+"-"+strconv.FormatInt(end, 10)+"/"+strconv.FormatInt(b.Size, 10))
			status = http.StatusPartialContent
		}
	}
	if length >= 0 {
		h.Set("Content-Length", strconv.FormatInt(length, 10))
	}
	w.WriteHeader(status)
	// The headers go out now, not with the first byte: from a slow
	// upstream, or held back until the blob verifies, that byte may be
	// seconds away (serveBlob waited settleWait for it), and a client must
	// not take regcache for a server that does not answer.
	_ = http.NewResponseController(w).Flush()
	// A client that falls behind the download's memory window reads the
	// rest back from the file, through a copy buffer lent for as long as
	// the response lasts (and only then).
	var put func()
	defer func() {
		if put != nil {
			put()
		}
	}()
	n, err := b.Stream.CopyTo(r.Context(), sw, length, func() []byte {
		buf, p := s.buffers.get()
		put = p
		return buf
	})
	if err != nil {
		if r.Context().Err() == nil {
			s.log.Warn("aborting blob response", "registry", rt.Repo.Registry(), "repo", rt.Repo.Path(), "digest", rt.Digest, "sent", n, "err", err)
		}
		panic(http.ErrAbortHandler)
	}
}

// settleWait is how long a streamed blob's status waits for its first
// byte: long enough for a small blob from a healthy upstream to arrive and
// verify, short enough that a client never wonders whether it is answered.
const settleWait = time.Second

// settle holds a streamed blob's status until the first byte the client
// may have, or the download's end, for up to settleWait. A small blob is
// held back whole until it verifies, so one that fails gets its error (502
// DIGEST_INVALID, say) instead of a 200 cut short.
func settle(r *http.Request, b *pull.Blob) error {
	if b.Stream == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), settleWait)
	defer cancel()
	return b.Stream.Settle(ctx)
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
