package server

import (
	"net/http"
)

// ClientAuth checks a client's Basic credentials (clientauth.Htpasswd).
type ClientAuth interface {
	Check(user, password string) bool
}

// authRealm is the Basic realm clients show when they ask for a login.
const authRealm = `Basic realm="regcache"`

// authorize decides whether r may be served, given the route it asks for
// (parsed is false when the path named no configured registry). It returns
// nil when the request may go on, else the 401 to send.
//
// The base endpoint /v2/ always asks for credentials: that challenge is how
// clients (go-containerregistry, containerd, dockerd) learn to send them.
// A client that has none carries on anonymously and is served from the
// anonymous registries. For those, whatever credentials come are ignored:
// dockerd forwards the user's Docker Hub login to its registry-mirrors.
func (s *Server) authorize(r *http.Request, rt Route, parsed bool) *Error {
	if s.auth == nil {
		return nil
	}
	if parsed && rt.Kind != KindBase && s.anonymous[rt.Registry] {
		return nil
	}
	user, password, ok := r.BasicAuth()
	// containers/image answers a Basic challenge with empty credentials
	// when it has none: that is no login, not a wrong one.
	ok = ok && (user != "" || password != "")
	if ok && s.auth.Check(user, password) {
		return nil
	}
	if !ok {
		if s.metrics != nil && !(parsed && rt.Kind == KindBase) {
			s.metrics.ClientAuthFailures.WithLabelValues("missing").Inc()
		}
		return &Error{Status: http.StatusUnauthorized, Code: "UNAUTHORIZED", Message: "authentication required: log in to this regcache (docker login, podman login, crane auth login)"}
	}
	if s.metrics != nil {
		s.metrics.ClientAuthFailures.WithLabelValues("invalid").Inc()
	}
	// The user name is worth logging (which CI job has a stale secret);
	// the password never is.
	s.log.Info("client authentication failed", "user", user, "path", r.URL.Path, "remote", r.RemoteAddr)
	return &Error{Status: http.StatusUnauthorized, Code: "UNAUTHORIZED", Message: "invalid username or password"}
}
