package testhub

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// grant is what an opaque token stands for.
type grant struct {
	identity string // "" = anonymous
	repos    map[string]bool
	all      bool // issued for Options.Scope, good for every repository
	expires  time.Time
}

// authorize reports the identity behind r and whether it may pull repo; an
// empty repo (the /v2/ ping) only needs a valid credential.
func (h *Hub) authorize(r *http.Request, repo string) (string, bool) {
	switch {
	case h.opts.NoAuth:
		return "", true
	case h.opts.BasicAuth:
		u, p, ok := r.BasicAuth()
		if !ok || !h.validUser(u, p) {
			return "", false
		}
		return u, true
	}
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	h.mu.Lock()
	g, ok := h.tokens[strings.TrimSpace(tok)]
	h.mu.Unlock()
	if !ok || !h.now().Before(g.expires) {
		return "", false
	}
	if repo != "" && !g.all && !g.repos[repo] {
		return "", false
	}
	return g.identity, true
}

func (h *Hub) validUser(u, p string) bool {
	want, ok := h.opts.Users[u]
	return ok && want == p
}

// challenge answers 401 with the WWW-Authenticate header a client needs to
// get a credential for repo ("" for the ping, which carries no scope).
func (h *Hub) challenge(w http.ResponseWriter, r *http.Request, repo string) {
	if h.opts.BasicAuth {
		w.Header().Set("WWW-Authenticate", `Basic realm="testhub"`)
	} else {
		c := fmt.Sprintf(`Bearer realm=%q,service=%q`, h.Realm, h.opts.Service)
		switch {
		case h.opts.Scope != "":
			c += fmt.Sprintf(`,scope=%q`, h.opts.Scope)
		case repo != "":
			c += fmt.Sprintf(`,scope="repository:%s:pull"`, repo)
		}
		// A token was sent but is expired or for another scope.
		if strings.HasPrefix(strings.ToLower(r.Header.Get("Authorization")), "bearer ") {
			c += `,error="invalid_token"`
		}
		w.Header().Set("WWW-Authenticate", c)
	}
	writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
}

// serveToken is the token realm: GET with optional Basic credentials, or the
// OAuth2 POST form (password and refresh_token grants).
func (h *Hub) serveToken(w http.ResponseWriter, r *http.Request) {
	h.count(func(c *Counts) { c.TokenRequests++ })
	if h.injectStatusFault(w, r, h.takeFault(ScopeAll, wholeResponse...)) {
		return
	}
	var (
		identity string
		scopes   []string
		service  string
		offline  bool
	)
	switch r.Method {
	case http.MethodGet:
		q := r.URL.Query()
		service, scopes = q.Get("service"), q["scope"]
		offline = q.Get("offline_token") == "true"
		if u, p, ok := r.BasicAuth(); ok {
			if !h.validUser(u, p) {
				tokenError(w, http.StatusUnauthorized, "incorrect username or password")
				return
			}
			identity = u
		}
	case http.MethodPost:
		if err := r.ParseForm(); err != nil {
			tokenError(w, http.StatusBadRequest, err.Error())
			return
		}
		service, scopes = r.PostForm.Get("service"), r.PostForm["scope"]
		offline = r.PostForm.Get("access_type") == "offline"
		switch r.PostForm.Get("grant_type") {
		case "password":
			u, p := r.PostForm.Get("username"), r.PostForm.Get("password")
			if !h.validUser(u, p) {
				tokenError(w, http.StatusUnauthorized, "incorrect username or password")
				return
			}
			identity = u
		case "refresh_token":
			h.mu.Lock()
			u, ok := h.refresh[r.PostForm.Get("refresh_token")]
			h.mu.Unlock()
			if !ok {
				tokenError(w, http.StatusUnauthorized, "invalid refresh token")
				return
			}
			identity = u
		default:
			tokenError(w, http.StatusBadRequest, "unsupported grant_type")
			return
		}
	default:
		tokenError(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	if service != "" && service != h.opts.Service {
		tokenError(w, http.StatusBadRequest, "unknown service "+strconv.Quote(service))
		return
	}

	g := grant{identity: identity, repos: map[string]bool{}, expires: h.now().Add(h.opts.TokenTTL)}
	for _, s := range scopes {
		for _, one := range strings.Fields(s) {
			if h.opts.Scope != "" && one == h.opts.Scope {
				g.all = true
				continue
			}
			// repository:<name>:<actions>; names never contain ':' but
			// registry hosts in them could, so split from the right.
			rest, actions, ok := cutLast(one, ":")
			typ, repo, ok2 := strings.Cut(rest, ":")
			if ok && ok2 && typ == "repository" && hasAction(actions, "pull") {
				g.repos[repo] = true
			}
		}
	}
	tok := randomToken()
	issued := h.now().UTC()
	body := map[string]any{
		"token":        tok,
		"access_token": tok,
		"expires_in":   int(h.opts.TokenTTL / time.Second),
		"issued_at":    issued.Format(time.RFC3339),
	}
	h.mu.Lock()
	h.tokens[tok] = g
	if offline && identity != "" {
		rt := randomToken()
		h.refresh[rt] = identity
		body["refresh_token"] = rt
	}
	h.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(body)
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

func hasAction(actions, want string) bool {
	for _, a := range strings.Split(actions, ",") {
		if a == want || a == "*" {
			return true
		}
	}
	return false
}

func randomToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// tokenError mimics auth.docker.io, whose errors carry "details"; the
// registry-style "errors" array is there too for clients that parse that.
func tokenError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="testhub"`)
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"details": msg,
		"errors":  []apiError{{Code: "UNAUTHORIZED", Message: msg}},
	})
}

// bucket is one identity's pull budget in the current window.
type bucket struct {
	used  int
	start time.Time
}

// reservation is the state of a budget after a reserve, peek or refund.
type reservation struct {
	limit     int // 0 = unlimited, no headers
	remaining int
	reset     time.Duration // until the window ends
}

func (r reservation) retryAfterSeconds() int {
	return max(int((r.reset+time.Second-1)/time.Second), 1)
}

func (h *Hub) limitFor(identity string) int {
	if identity == "" {
		return h.opts.AnonymousLimit
	}
	return h.opts.UserLimit
}

// bucketLocked returns identity's bucket, starting a new window when the old
// one has passed. h.mu must be held.
func (h *Hub) bucketLocked(identity string) *bucket {
	now := h.now()
	b := h.buckets[identity]
	if b == nil || now.Sub(b.start) >= h.opts.Window {
		b = &bucket{start: now}
		h.buckets[identity] = b
	}
	return b
}

func (h *Hub) stateLocked(identity string, b *bucket) reservation {
	limit := h.limitFor(identity)
	return reservation{limit: limit, remaining: max(limit-b.used, 0), reset: b.start.Add(h.opts.Window).Sub(h.now())}
}

// reserve takes one pull from identity's budget before the manifest is
// fetched, so that concurrent GETs cannot overspend it.
func (h *Hub) reserve(identity string) (reservation, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.limitFor(identity) <= 0 {
		return reservation{}, true
	}
	b := h.bucketLocked(identity)
	if b.used >= h.limitFor(identity) {
		return h.stateLocked(identity, b), false
	}
	b.used++
	return h.stateLocked(identity, b), true
}

// refund returns a reserved pull when the GET did not succeed.
func (h *Hub) refund(identity string, res reservation) reservation {
	if res.limit <= 0 {
		return res
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	b := h.bucketLocked(identity)
	b.used = max(b.used-1, 0)
	return h.stateLocked(identity, b)
}

func (h *Hub) peek(identity string) reservation {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.limitFor(identity) <= 0 {
		return reservation{}
	}
	return h.stateLocked(identity, h.bucketLocked(identity))
}

// source is what docker-ratelimit-source reports: the client IP for
// anonymous pulls, the username otherwise.
func (h *Hub) source(r *http.Request, identity string) string {
	if identity != "" {
		return identity
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (h *Hub) setLimitHeaders(hdr http.Header, source string, res reservation) {
	if res.limit <= 0 {
		return
	}
	w := int(h.opts.Window / time.Second)
	hdr.Set("RateLimit-Limit", fmt.Sprintf("%d;w=%d", res.limit, w))
	hdr.Set("RateLimit-Remaining", fmt.Sprintf("%d;w=%d", res.remaining, w))
	hdr.Set("Docker-RateLimit-Source", source)
}

// Remaining returns the pulls left in identity's current window ("" is
// anonymous), or -1 when no limit applies to it.
func (h *Hub) Remaining(identity string) int {
	res := h.peek(identity)
	if res.limit <= 0 {
		return -1
	}
	return res.remaining
}

// ResetLimits restores every identity's full budget and starts new windows.
func (h *Hub) ResetLimits() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buckets = map[string]*bucket{}
}

// ExpireTokens invalidates every issued token, as if their TTL had passed,
// so tests can exercise re-authentication without waiting.
func (h *Hub) ExpireTokens() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, g := range h.tokens {
		g.expires = time.Time{}
		h.tokens[k] = g
	}
}
