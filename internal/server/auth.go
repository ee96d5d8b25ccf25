package server

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/regcache/regcache/internal/clientauth"
	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
)

// ClientAuth checks a client's login (clientauth.File).
type ClientAuth interface {
	Check(user, password string) bool
}

// tokenPath is regcache's token endpoint, the realm of its Bearer challenge.
const tokenPath = "/_regcache/token"

// The design follows the distribution token flow, as Harbor and Docker Hub
// do: /v2/ answers 401 with a Bearer challenge, the client fetches a token
// from the realm (with its login if it has one, without if not) and sends
// it with every request. A login is checked once per token; an anonymous
// token opens only the anonymous registries. Basic credentials sent
// directly are accepted too.
//
// A refused login still gets a token, an anonymous one that remembers the
// refusal: dockerd forwards the user's Docker Hub login to its mirrors and
// their token realms, and a 401 there would stop pulls of anonymous
// registries that need no login at all.

// identity is who sent a request: user for a good login; refused names a
// login that was offered and refused.
type identity struct {
	user, refused string
}

func (s *Server) identify(r *http.Request) identity {
	h := r.Header.Get("Authorization")
	if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
		c, err := s.tokens.Verify(strings.TrimSpace(tok))
		if err != nil {
			return identity{} // expired or foreign: challenge again
		}
		return identity{user: c.User, refused: c.Refused}
	}
	user, password, ok := r.BasicAuth()
	// containers/image answers a challenge with empty credentials when it
	// has none: that is no login, not a wrong one.
	if !ok || (user == "" && password == "") {
		return identity{}
	}
	if s.auth.Check(user, password) {
		return identity{user: user}
	}
	return identity{refused: user}
}

// authorize decides whether r may be served, given the route it asks for
// (parsed is false when the path named no configured registry). It returns
// nil when the request may go on, else the 401 to send; the challenge
// header is already set.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, rt Route, parsed bool) error {
	if s.auth == nil {
		return nil
	}
	id := s.identify(r)
	if id.user != "" {
		return nil
	}
	anonymousOK := parsed && rt.Kind != KindBase && s.anonymous[rt.Repo.Registry()]
	if anonymousOK {
		return nil
	}
	challenge := `Bearer realm="` + realmURL(r) + `",service="regcache"`
	if parsed && rt.Kind != KindBase {
		challenge += `,scope="repository:` + rt.Name + `:pull"`
	}
	w.Header().Set("WWW-Authenticate", challenge)
	base := parsed && rt.Kind == KindBase
	if id.refused != "" {
		s.metrics.ClientAuthFailures.WithLabelValues("invalid").Inc()
		if !base {
			// The user name is worth logging (which CI job has a stale
			// secret); the password never is.
			s.log.Info("client login refused", "user", id.refused, "path", r.URL.Path, "remote", r.RemoteAddr)
		}
		return regerr.New(regerr.Unauthorized, "invalid username or password")
	}
	if !base {
		s.metrics.ClientAuthFailures.WithLabelValues("missing").Inc()
	}
	return regerr.New(regerr.Unauthorized, "authentication required: log in to this regcache (docker login, podman login, crane auth login)")
}

// realmURL is the token endpoint on the host and scheme the client used.
func realmURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + tokenPath
}

// serveToken issues tokens: GET with optional Basic credentials (the
// distribution token spec), or POST with an OAuth2 password grant (what
// containerd tries first when it has a login).
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	if s.auth == nil {
		writeError(w, regerr.New(regerr.NotFound, "client_auth is not configured; no token is needed"), KindBase)
		return
	}
	var user, password string
	var login bool
	switch r.Method {
	case http.MethodGet:
		user, password, login = r.BasicAuth()
	case http.MethodPost:
		if err := r.ParseForm(); err != nil {
			writeError(w, regerr.New(regerr.Invalid, "unreadable form"), KindBase)
			return
		}
		if gt := r.PostForm.Get("grant_type"); gt != "password" {
			writeError(w, regerr.New(regerr.Invalid, "grant_type %s is not supported; use password", ref.Quote(gt)), KindBase)
			return
		}
		user, password, login = r.PostForm.Get("username"), r.PostForm.Get("password"), true
	default:
		writeError(w, regerr.New(regerr.Unsupported, "%s is not supported here", r.Method), KindBase)
		return
	}
	var c clientauth.Claims
	if login && (user != "" || password != "") {
		if s.auth.Check(user, password) {
			c.User = user
		} else {
			if r.URL.Query().Get("offline_token") == "true" {
				// `docker login` asks for an offline token; pulls never
				// do. A login that is being checked gets a plain no.
				s.log.Info("client login refused", "user", user, "path", r.URL.Path, "remote", r.RemoteAddr)
				writeError(w, regerr.New(regerr.Unauthorized, "invalid username or password"), KindBase)
				return
			}
			c.Refused = user
			s.log.Debug("token for a refused login: anonymous access only", "user", user, "remote", r.RemoteAddr)
		}
	}
	tok, ttl := s.tokens.Issue(c)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"token": tok, "access_token": tok, "expires_in": int(ttl / time.Second),
		"issued_at": time.Now().UTC().Format(time.RFC3339),
	})
}
