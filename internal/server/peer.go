package server

import (
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/cluster"
	"github.com/regcache/regcache/internal/regerr"
)

// PeerAuth checks that a request comes from another replica of the
// cluster (cluster.Coordinator).
type PeerAuth interface {
	VerifyPeer(r *http.Request) error
}

// servePeer answers another replica's request for a blob it is
// downloading or has stored. A request without a valid signature learns
// nothing (404, as for a path that does not exist), and nothing here ever
// makes this replica fetch from an upstream.
func (s *Server) servePeer(w http.ResponseWriter, r *http.Request) {
	if s.peers == nil || s.peers.VerifyPeer(r) != nil || r.Method != http.MethodGet {
		writeError(w, regerr.New(regerr.NotFound, "not found"), KindBlob)
		return
	}
	d, err := digest.Parse(strings.TrimPrefix(r.URL.Path, cluster.PeerPath))
	if err != nil {
		writeError(w, &regerr.Error{Kind: regerr.Invalid, Code: "DIGEST_INVALID", Message: "invalid digest"}, KindBlob)
		return
	}
	b, err := s.cache.PeerBlob(r.Context(), d)
	if err != nil {
		writeError(w, err, KindBlob)
		return
	}
	defer b.Close()
	if err := settle(r, b); err != nil {
		writeError(w, err, KindBlob)
		return
	}
	h := w.Header()
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Type", "application/octet-stream")
	rt := Route{Kind: KindBlob, Digest: d}
	sw := newSendWriter(w, s.sendTimeout)
	defer sw.done()
	if b.Content != nil {
		s.serveStored(w, sw, r, rt, b)
		return
	}
	s.streamBlob(w, sw, r, rt, b)
}
