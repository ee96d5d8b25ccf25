package server

import (
	"bytes"
	"net/http"
	"strconv"
	"time"

	"github.com/regcache/regcache/internal/pull"
	"github.com/regcache/regcache/internal/pull/index"
	"github.com/regcache/regcache/internal/ref"
)

func (s *Server) serveManifest(w http.ResponseWriter, r *http.Request, rt Route) pull.Result {
	var m *pull.Manifest
	var err error
	if d := rt.Manifest.Digest; d != "" {
		m, err = s.cache.ManifestByDigest(r.Context(), rt.Repo, d)
	} else {
		k := index.TagKey{Repo: rt.Repo, Tag: rt.Manifest.Tag, Mask: ref.ParseAccept(r.Header.Values("Accept"))}
		m, err = s.cache.ManifestByTag(r.Context(), k)
	}
	if err != nil {
		return s.fail(w, r, rt, err)
	}
	if s.pulls != nil && !rt.Manifest.Tag.IsZero() {
		// A pull starts with its tag (a GET, or containerd's HEAD); the
		// manifests it then fetches by digest are the same pull.
		s.pulls.Pulled(rt.Repo, rt.Manifest.Tag)
	}
	h := w.Header()
	setHeaders(h, "Content-Type", m.MediaType, "Docker-Content-Digest", m.Digest.String(),
		"Etag", `"`+m.Digest.String()+`"`)
	setResult(h, m.Result)
	if m.Source != "" {
		h.Set("X-Regcache-Source", m.Source)
	}
	if m.TagFromMirror {
		// A mirror's tag can lag the origin's: say so.
		h.Set("X-Regcache-Tag-Source", "mirror")
		h.Add("Warning", `199 regcache "tag resolved at mirror `+m.Source+` because the origin failed or was slower than hedge_delay"`)
	}
	serveBytes(s.meter(w, r, rt, m.Result), r, m.Data)
	return m.Result
}

// serveBytes answers r with body. Conditional and Range requests, done
// once and correctly by net/http's ServeContent, are rare: clients ask by
// tag or digest and take the whole manifest. The plain GET or HEAD that
// nearly every request is gets the same answer ServeContent would give
// (a test holds them together) without its precondition checks, seeks,
// copy and their allocations: under wrk, ServeContent took 5.9 % of the
// process's CPU where a plain write had taken 2.5 %.
func serveBytes(w http.ResponseWriter, r *http.Request, body []byte) {
	if _, encoded := w.Header()["Content-Encoding"]; encoded || !plainRequest(r) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
		return
	}
	setHeaders(w.Header(), "Accept-Ranges", "bytes", "Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

// plainRequest reports whether r is a GET or HEAD with no header that
// would make its answer anything but the whole body with 200.
func plainRequest(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) && !conditional(r.Header)
}
