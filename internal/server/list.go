package server

import (
	"net/http"
	"strconv"

	"github.com/regcache/regcache/internal/pull"
)

func (s *Server) serveList(w http.ResponseWriter, r *http.Request, rt Route) pull.Result {
	var l *pull.List
	var err error
	if rt.Kind == KindTags {
		l, err = s.cache.Tags(r.Context(), rt.Repo, r.URL.Query())
	} else {
		l, err = s.cache.Referrers(r.Context(), rt.Repo, rt.Digest, r.URL.Query())
	}
	if err != nil {
		return s.fail(w, r, rt, err)
	}
	h := w.Header()
	h.Set("Content-Type", l.ContentType)
	if l.Next != nil {
		h.Set("Link", nextLink(rt, l))
	}
	if l.Filtered != "" {
		h.Set("OCI-Filters-Applied", l.Filtered)
	}
	h.Set("Content-Length", strconv.Itoa(len(l.Body)))
	setResult(h, l.Result)
	mw := s.meter(w, r, rt, l.Result)
	mw.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		mw.Write(l.Body)
	}
	return l.Result
}

// nextLink points at the next page on this server, under the name the
// client used.
func nextLink(rt Route, l *pull.List) string {
	q := l.Next
	if rt.NS != "" {
		q.Set("ns", rt.NS)
	}
	path := "/v2/" + rt.Name + "/tags/list"
	if rt.Kind == KindReferrers {
		path = "/v2/" + rt.Name + "/referrers/" + rt.Digest.String()
	}
	return "<" + path + "?" + q.Encode() + `>; rel="next"`
}
