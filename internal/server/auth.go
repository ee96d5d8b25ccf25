package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/regcache/regcache/internal/clientauth"
	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
)

// ClientAuth checks clients' logins (clientauth.Logins).
type ClientAuth interface {
	// Login checks a user and password sent by client; it may decline to
	// check them (Throttled) when there were too many failures.
	Login(ctx context.Context, client netip.Addr, user, password string) clientauth.Verdict
	// Valid reports whether a token's user and stamp are still good: the
	// user is still in the htpasswd file, with the same password.
	Valid(user, stamp string) bool
}

// tokenPath is regcache's token endpoint, the realm of its Bearer challenge.
const tokenPath = "/_regcache/token"

// maxTokenForm bounds the body of a password-grant token request.
const maxTokenForm = 64 << 10

// The design follows the distribution token flow, as Harbor and Docker Hub
// do: /v2/ answers 401 with a Bearer challenge, the client fetches a token
// from the realm (with its login if it has one, without if not) and sends
// it with every request. A login is checked once per token; an anonymous
// token opens only the anonymous registries. Basic credentials sent
// directly are accepted too.
//
// A refused login still gets a token, an anonymous one: dockerd forwards the
// user's Docker Hub login to its mirrors and their token realms, and a 401
// there would stop pulls of anonymous registries that need no login at all.
// That token is the same as one issued without a login, so it tells its
// holder nothing; a refusal is logged and counted when the token is issued.
//
// The challenge is the same for every path: a scope in it, or a message,
// that differed between configured and unconfigured registries would tell a
// stranger which registries are configured.

// identity is who sent a request.
type identity struct {
	user    string             // the user of a good login or token
	offered bool               // a login was offered and not accepted:
	name    string             // its user name,
	verdict clientauth.Verdict // and what became of it (refused or throttled)
}

func (s *Server) identify(r *http.Request) identity {
	h := r.Header.Get("Authorization")
	if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
		c, err := s.tokens.Verify(strings.TrimSpace(tok))
		if err != nil || c.User == "" {
			return identity{} // anonymous, expired or foreign: challenge again
		}
		if !s.auth.Valid(c.User, c.Stamp) {
			// The user was removed or given a new password since: the
			// client fetches a new token, with the login it has now.
			s.log.Debug("token of a removed user or an old password", "user", logName(c.User), "remote", r.RemoteAddr)
			return identity{}
		}
		return identity{user: c.User}
	}
	user, password, ok := r.BasicAuth()
	// containers/image answers a challenge with empty credentials when it
	// has none: that is no login, not a wrong one.
	if !ok || (user == "" && password == "") {
		return identity{}
	}
	v := s.auth.Login(r.Context(), clientAddr(r), user, password)
	if v.Outcome == clientauth.Accepted {
		return identity{user: user}
	}
	return identity{offered: true, name: user, verdict: v}
}

// authorize decides whether r may be served, given the route it asks for
// (parsed is false when the path named no configured registry). It returns
// nil when the request may go on, else the error to send; the challenge
// header is already set.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, rt Route, parsed bool) error {
	if s.auth == nil {
		return nil
	}
	if parsed && rt.Kind != KindBase && s.anonymous[rt.Repo.Registry()] {
		// No login is looked at, so the Docker Hub login dockerd
		// forwards costs no password check.
		return nil
	}
	id := s.identify(r)
	if id.user != "" {
		return nil
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="`+realmURL(r)+`",service="regcache"`)
	return s.refusal(r, id, parsed && rt.Kind == KindBase)
}

// refusal is the answer to a request without a good login, counted and
// logged. ping is set for GET /v2/, which every login starts with: a
// missing login there is no failure, and a refused one is not logged (the
// token request or the pull that follows is).
func (s *Server) refusal(r *http.Request, id identity, ping bool) error {
	switch {
	case id.offered && id.verdict.Outcome == clientauth.Throttled:
		return s.throttled(r, id.name, id.verdict)
	case id.offered:
		s.countAuthFailure("invalid")
		if !ping {
			s.logRefusal(r, id.name, id.verdict, "path", r.URL.Path)
		}
		return errBadLogin()
	}
	if !ping {
		s.countAuthFailure("missing")
	}
	return regerr.New(regerr.Unauthorized, "authentication required: log in to this regcache (docker login, podman login, crane auth login)")
}

// requireLogin serves h only to clients with a good login when client_auth
// is on. It guards regcache's own pages, which name the configured
// registries and upstream accounts. Its challenge is Basic, so that a
// browser asks for the login; tokens from the realm work too.
func (s *Server) requireLogin(h http.Handler) http.Handler {
	if s.auth == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := s.identify(r)
		if id.user != "" {
			h.ServeHTTP(w, r)
			return
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="regcache"`)
		writeError(w, s.refusal(r, id, false), KindBase)
	})
}

// throttled answers a login that was not checked. It is logged at debug
// level only: the failures that led to it were logged, and a guesser must
// not be able to flood the log for free.
func (s *Server) throttled(r *http.Request, user string, v clientauth.Verdict) error {
	s.countAuthFailure("throttled")
	s.log.Debug("client login not checked: too many failures", "user", logName(user), "remote", r.RemoteAddr, "retry_after", v.RetryAfter)
	return &regerr.Error{Kind: regerr.RateLimited, Message: "too many failed logins from this address or for this user; try again later",
		RetryAfter: v.RetryAfter}
}

func errBadLogin() error {
	return regerr.New(regerr.Unauthorized, "invalid username or password")
}

func (s *Server) countAuthFailure(reason string) {
	s.metrics.ClientAuthFailures.WithLabelValues(reason).Inc()
}

// logRefusal logs a refused login. The user name is worth logging (which
// CI job has a stale secret); the password never is. A refusal answered
// from memory (the same wrong password again, which costs no check) is
// logged at debug level only, so that repeating it cannot flood the log.
func (s *Server) logRefusal(r *http.Request, user string, v clientauth.Verdict, attrs ...any) {
	attrs = append([]any{"user", logName(user), "remote", r.RemoteAddr}, attrs...)
	if v.Backoff > 0 {
		attrs = append(attrs, "backoff", v.Backoff)
	}
	if v.Remembered {
		s.log.Debug("client login refused", attrs...)
		return
	}
	s.log.Info("client login refused", attrs...)
}

// logName is a user name as logged: a client chooses it, so it is cut short.
func logName(name string) string {
	if len(name) > 64 {
		return name[:64] + "…"
	}
	return name
}

// clientAddr is the address of the client's end of the connection; an
// X-Forwarded-For header is not trusted.
func clientAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
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
		r.Body = http.MaxBytesReader(w, r.Body, maxTokenForm)
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
		// `docker login` asks for an offline token; pulls never do. A
		// login that is being checked gets a plain answer.
		offline := r.URL.Query().Get("offline_token") == "true"
		scopes := append(r.URL.Query()["scope"], r.PostForm["scope"]...)
		// A login offered only for anonymous registries is dockerd's
		// forwarded Docker Hub login: its refusal is no news.
		quiet := !offline && s.onlyAnonymous(scopes)
		v := s.auth.Login(r.Context(), clientAddr(r), user, password)
		switch v.Outcome {
		case clientauth.Accepted:
			c.User, c.Stamp = user, v.Stamp
		case clientauth.Throttled:
			if !quiet {
				writeError(w, s.throttled(r, user, v), KindBase)
				return
			}
		case clientauth.Refused:
			if quiet {
				s.log.Debug("token for a refused login: anonymous access only", "user", logName(user), "remote", r.RemoteAddr)
				break
			}
			s.countAuthFailure("invalid")
			var attrs []any
			if len(scopes) > 0 {
				attrs = []any{"scope", strings.Join(scopes, " ")}
			}
			s.logRefusal(r, user, v, attrs...)
			if offline {
				writeError(w, errBadLogin(), KindBase)
				return
			}
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

// onlyAnonymous reports whether scopes (token request scope values, each
// a space-separated list) name repositories of anonymous registries only.
func (s *Server) onlyAnonymous(scopes []string) bool {
	fields := strings.Fields(strings.Join(scopes, " "))
	if len(fields) == 0 {
		return false
	}
	for _, f := range fields {
		typ, rest, _ := strings.Cut(f, ":")
		i := strings.LastIndexByte(rest, ':')
		if typ != "repository" || i <= 0 {
			return false
		}
		rt, err := s.router.Parse("/v2/"+rest[:i]+"/tags/list", url.Values{})
		if err != nil || !s.anonymous[rt.Repo.Registry()] {
			return false
		}
	}
	return true
}
