package server

import (
	"bytes"
	"net/http"
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
	h.Set("Content-Type", m.MediaType)
	h.Set("Docker-Content-Digest", m.Digest.String())
	h.Set("Etag", `"`+m.Digest.String()+`"`)
	setResult(h, m.Result)
	if m.Source != "" {
		h.Set("X-Regcache-Source", m.Source)
	}
	if m.TagFromMirror {
		// A mirror's tag can lag the origin's: say so.
		h.Set("X-Regcache-Tag-Source", "mirror")
		h.Add("Warning", `199 regcache "tag resolved at mirror `+m.Source+` because the origin failed or was slower than hedge_delay"`)
	}
	// Conditional and Range requests, HEAD and Content-Length, done once
	// and correctly by net/http.
	http.ServeContent(s.meter(w, r, rt, m.Result), r, "", time.Time{}, bytes.NewReader(m.Data))
	return m.Result
}
