package server

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/crypto/bcrypt"

	"github.com/regcache/regcache/internal/clientauth"
	"github.com/regcache/regcache/internal/metrics"
	"github.com/regcache/regcache/internal/testhub"
)

// authFixture is a Server with client_auth on a real htpasswd file, with
// docker.io anonymous and ghcr.io and 127.0.0.1:5001 private. Only requests
// that need no cache are sent to it: the login decides them all.
type authFixture struct {
	t       *testing.T
	s       *Server
	users   *clientauth.File
	path    string
	tokens  *clientauth.Issuer
	logs    *testhub.TailBuffer
	metrics *metrics.Metrics
}

const adminSecret = "ghcr.io via https://upstream.example as robot-account"

func newAuthFixture(t *testing.T, metricsLogin bool) *authFixture {
	t.Helper()
	fx := &authFixture{t: t, path: filepath.Join(t.TempDir(), "htpasswd"), tokens: clientauth.NewIssuer(), logs: testhub.NewTailBuffer(0), metrics: metrics.New()}
	fx.writeUsers(map[string]string{"ci": "ci-pw", "ops": "ops-pw"})
	var err error
	if fx.users, err = clientauth.Open(fx.path); err != nil {
		t.Fatal(err)
	}
	admin := http.NewServeMux()
	admin.HandleFunc("GET /_regcache/status", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, adminSecret) })
	fx.s = New(Options{
		Router: testRouter(), Logger: slog.New(slog.NewTextHandler(fx.logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Metrics: fx.metrics, Admin: admin, Tokens: fx.tokens, MetricsLogin: metricsLogin,
		Dashboard:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, adminSecret) }),
		ClientAuth:          clientauth.NewLogins(fx.users, clientauth.Options{Checked: fx.metrics.ClientAuthChecks.Inc}),
		AnonymousRegistries: []string{"docker.io"},
	})
	return fx
}

func (fx *authFixture) writeUsers(users map[string]string) {
	var b strings.Builder
	for u, pw := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			fx.t.Fatal(err)
		}
		b.WriteString(u + ":" + string(h) + "\n")
	}
	if err := os.WriteFile(fx.path, []byte(b.String()), 0o600); err != nil {
		fx.t.Fatal(err)
	}
}

// req describes a request: from a client address, with a login (Basic),
// or a token.
type req struct {
	method, target string
	remote         string // default 192.0.2.1
	user, pw       string // Basic when either is set
	token          string
	form           url.Values // POST body
}

func (fx *authFixture) do(r req) *httptest.ResponseRecorder {
	fx.t.Helper()
	if r.method == "" {
		r.method = http.MethodGet
	}
	var hr *http.Request
	if r.form != nil {
		hr = httptest.NewRequest(r.method, r.target, strings.NewReader(r.form.Encode()))
		hr.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	} else {
		hr = httptest.NewRequest(r.method, r.target, nil)
	}
	hr.RemoteAddr = "192.0.2.1:40000"
	if r.remote != "" {
		hr.RemoteAddr = r.remote + ":40000"
	}
	if r.user != "" || r.pw != "" {
		hr.SetBasicAuth(r.user, r.pw)
	}
	if r.token != "" {
		hr.Header.Set("Authorization", "Bearer "+r.token)
	}
	w := httptest.NewRecorder()
	fx.s.ServeHTTP(w, hr)
	return w
}

func (fx *authFixture) token(r req) string {
	fx.t.Helper()
	w := fx.do(r)
	var tr struct{ Token string }
	if w.Code != 200 || json.Unmarshal(w.Body.Bytes(), &tr) != nil || tr.Token == "" {
		fx.t.Fatalf("token: %d %s", w.Code, w.Body)
	}
	return tr.Token
}

func (fx *authFixture) failures(reason string) int {
	return int(testutil.ToFloat64(fx.metrics.ClientAuthFailures.WithLabelValues(reason)))
}

func ociCode(t *testing.T, body []byte) string {
	t.Helper()
	var e struct{ Errors []struct{ Code string } }
	if json.Unmarshal(body, &e) != nil || len(e.Errors) != 1 {
		t.Fatalf("not OCI error JSON: %s", body)
	}
	return e.Errors[0].Code
}

// A stranger learns nothing about the configuration: every registry path
// gets the same challenge and body, whether the registry is configured or
// not, and regcache's own pages need a login.
func TestStrangerLearnsNothing(t *testing.T) {
	fx := newAuthFixture(t, false)
	const dg = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	var first *httptest.ResponseRecorder
	for _, path := range []string{
		"/v2/ghcr.io/org/app/manifests/v1",
		"/v2/elsewhere.example/org/app/manifests/v1",
		"/v2/org/app/manifests/v1?ns=ghcr.io",
		"/v2/org/app/manifests/v1?ns=elsewhere.example",
		"/v2/ghcr.io/org/app/blobs/" + dg,
		"/v2/elsewhere.example/org/app/blobs/" + dg,
		"/v2/127.0.0.1:5001/team/app/tags/list",
		"/v2/127.0.0.1:5002/team/app/tags/list",
		"/v2/ghcr.io/org/app/manifests/-bad",
		"/v2/_catalog",
		"/v2/whatever",
	} {
		w := fx.do(req{target: path})
		if w.Code != 401 {
			t.Errorf("%s: %d, want 401", path, w.Code)
			continue
		}
		if first == nil {
			first = w
			if got := w.Header().Get("WWW-Authenticate"); got != `Bearer realm="http://example.com/_regcache/token",service="regcache"` {
				t.Errorf("challenge %q", got)
			}
			continue
		}
		if w.Header().Get("WWW-Authenticate") != first.Header().Get("WWW-Authenticate") || w.Body.String() != first.Body.String() {
			t.Errorf("%s: %q %s differs from %q %s", path, w.Header().Get("WWW-Authenticate"), w.Body, first.Header().Get("WWW-Authenticate"), first.Body)
		}
	}

	goodToken := fx.token(req{target: tokenPath, user: "ci", pw: "ci-pw"})
	for _, tc := range []struct {
		name, path string
		r          req
		want       int
		challenge  string
	}{
		{"status without a login", "/_regcache/status", req{}, 401, `Basic realm="regcache"`},
		{"another admin path without a login", "/_regcache/dashboard", req{}, 401, `Basic realm="regcache"`},
		{"status with a wrong password", "/_regcache/status", req{user: "ci", pw: "nope"}, 401, `Basic realm="regcache"`},
		{"status with an anonymous token", "/_regcache/status", req{token: fx.token(req{target: tokenPath})}, 401, `Basic realm="regcache"`},
		{"status with a login", "/_regcache/status", req{user: "ci", pw: "ci-pw"}, 200, ""},
		{"status with a token", "/_regcache/status", req{token: goodToken}, 200, ""},
		{"dashboard without a login", "/", req{}, 401, `Basic realm="regcache"`},
		{"dashboard with a wrong password", "/", req{user: "ci", pw: "nope"}, 401, `Basic realm="regcache"`},
		{"dashboard with a login", "/", req{user: "ci", pw: "ci-pw"}, 200, ""},
		{"another path stays unknown", "/favicon.ico", req{user: "ci", pw: "ci-pw"}, 404, ""},
		{"metrics stay open", "/metrics", req{}, 200, ""},
		{"healthz stays open", "/healthz", req{}, 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.r
			r.target = tc.path
			w := fx.do(r)
			if w.Code != tc.want || w.Header().Get("WWW-Authenticate") != tc.challenge {
				t.Fatalf("%d %q, want %d %q", w.Code, w.Header().Get("WWW-Authenticate"), tc.want, tc.challenge)
			}
			if leaked := strings.Contains(w.Body.String(), "ghcr.io"); leaked != (tc.want == 200 && (tc.path == "/_regcache/status" || tc.path == "/")) {
				t.Errorf("body names a registry: %v: %s", leaked, w.Body)
			}
		})
	}
}

func TestMetricsLogin(t *testing.T) {
	fx := newAuthFixture(t, true)
	for _, tc := range []struct {
		r    req
		want int
	}{
		{req{}, 401},
		{req{user: "ci", pw: "wrong"}, 401},
		{req{user: "ci", pw: "ci-pw"}, 200},
	} {
		tc.r.target = "/metrics"
		if w := fx.do(tc.r); w.Code != tc.want {
			t.Errorf("/metrics as %q: %d, want %d", tc.r.user, w.Code, tc.want)
		}
	}
	if w := fx.do(req{target: "/healthz"}); w.Code != 200 {
		t.Errorf("/healthz: %d", w.Code)
	}
}

// A refused login's token is an anonymous token like any other; the
// refusal is counted and logged when the token is issued, unless the login
// was offered only for anonymous registries (dockerd's forwarded Docker Hub
// login).
func TestTokenEndpoint(t *testing.T) {
	payload := func(tok string) map[string]any {
		p, _, _ := strings.Cut(tok, ".")
		b, err := base64.RawURLEncoding.DecodeString(p)
		var m map[string]any
		if err != nil || json.Unmarshal(b, &m) != nil {
			t.Fatalf("token payload %q", p)
		}
		delete(m, "e")
		return m
	}
	const private, anonymous = "&scope=repository:ghcr.io/org/app:pull", "&scope=repository:library/alpine:pull"
	for _, tc := range []struct {
		name        string
		r           req
		want        int
		payload     string // the token's claims without expiry, as JSON
		invalid     int    // counted as invalid logins
		logged      bool   // "client login refused" at info level
		pingWithTok int    // GET /v2/ with the token
	}{
		{"no login", req{target: tokenPath + "?service=regcache" + private}, 200, `{}`, 0, false, 401},
		{"refused login for a private registry", req{target: tokenPath + "?service=regcache" + private, user: "ci", pw: "wrong"}, 200, `{}`, 1, true, 401},
		{"refused login without a scope", req{target: tokenPath + "?service=regcache", user: "nobody", pw: "wrong"}, 200, `{}`, 1, true, 401},
		{"refused login for an anonymous registry", req{target: tokenPath + "?service=regcache" + anonymous, user: "dockerhub-user", pw: "dckr_pat_x"}, 200, `{}`, 0, false, 401},
		{"refused login for both", req{target: tokenPath + "?service=regcache" + anonymous + private, user: "dockerhub-user", pw: "dckr_pat_y"}, 200, `{}`, 1, true, 401},
		{"docker login with a wrong password", req{target: tokenPath + "?service=regcache&offline_token=true&account=ci", user: "ci", pw: "wrong2"}, 401, "", 1, true, 0},
		{"good login", req{target: tokenPath + "?service=regcache" + private, user: "ci", pw: "ci-pw"}, 200, `{"s":"*","u":"ci"}`, 0, false, 200},
		{"password grant", req{method: "POST", target: tokenPath, form: url.Values{"grant_type": {"password"}, "username": {"ops"}, "password": {"ops-pw"}, "scope": {"repository:ghcr.io/org/app:pull"}}}, 200, `{"s":"*","u":"ops"}`, 0, false, 200},
		{"wrong password grant", req{method: "POST", target: tokenPath, form: url.Values{"grant_type": {"password"}, "username": {"ops"}, "password": {"nope"}}}, 200, `{}`, 1, true, 401},
		{"refresh grant", req{method: "POST", target: tokenPath, form: url.Values{"grant_type": {"refresh_token"}}}, 400, "", 0, false, 0},
		{"huge form", req{method: "POST", target: tokenPath, form: url.Values{"grant_type": {"password"}, "username": {strings.Repeat("u", maxTokenForm)}}}, 400, "", 0, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := newAuthFixture(t, false)
			w := fx.do(tc.r)
			if w.Code != tc.want {
				t.Fatalf("%d %s, want %d", w.Code, w.Body, tc.want)
			}
			if w.Code == 200 {
				var tr struct{ Token string }
				json.Unmarshal(w.Body.Bytes(), &tr)
				got, _ := json.Marshal(payload(tr.Token))
				if p := payload(tr.Token); p["s"] != nil && p["s"] != "" {
					p["s"] = "*"
					got, _ = json.Marshal(p)
				}
				if string(got) != tc.payload {
					t.Errorf("token claims %s, want %s", got, tc.payload)
				}
				if pw := fx.do(req{target: "/v2/", token: tr.Token}); pw.Code != tc.pingWithTok {
					t.Errorf("GET /v2/ with the token: %d, want %d", pw.Code, tc.pingWithTok)
				}
			} else if code := ociCode(t, w.Body.Bytes()); code != "UNAUTHORIZED" && code != "UNSUPPORTED" {
				t.Errorf("code %s", code)
			}
			if got := fx.failures("invalid"); got != tc.invalid {
				t.Errorf("%d invalid logins counted, want %d", got, tc.invalid)
			}
			if logged := strings.Contains(fx.logs.String(), "client login refused"); logged != tc.logged {
				t.Errorf("refusal logged %v, want %v:\n%s", logged, tc.logged, fx.logs)
			}
			if strings.Contains(fx.logs.String(), "wrong") || strings.Contains(fx.logs.String(), "dckr_pat") {
				t.Error("a password appears in the log")
			}
		})
	}
}

// A client that keeps failing gets 429 TOOMANYREQUESTS with Retry-After, on
// /v2/ and at the token endpoint, without a password check; a login
// offered only for anonymous registries still gets its anonymous token.
func TestThrottledLogins(t *testing.T) {
	fx := newAuthFixture(t, false)
	const guesser, other = "198.51.100.7", "198.51.100.8"
	for i := range 4 {
		if w := fx.do(req{target: "/v2/", remote: guesser, user: "ci", pw: fmt.Sprint("guess", i)}); w.Code != 401 {
			t.Fatalf("guess %d: %d", i, w.Code)
		}
	}
	checks := testutil.ToFloat64(fx.metrics.ClientAuthChecks)
	for _, tc := range []struct {
		name string
		r    req
		want int
	}{
		{"Basic on /v2/", req{target: "/v2/", user: "ops", pw: "ops-pw"}, 429},
		{"Basic on a private path", req{target: "/v2/ghcr.io/org/app/manifests/v1", user: "ops", pw: "x"}, 429},
		{"token for a private registry", req{target: tokenPath + "?scope=repository:ghcr.io/org/app:pull", user: "ops", pw: "y"}, 429},
		{"docker login", req{target: tokenPath + "?offline_token=true", user: "ops", pw: "ops-pw"}, 429},
		{"token for an anonymous registry only", req{target: tokenPath + "?scope=repository:library/alpine:pull", user: "dockerhub-user", pw: "z"}, 200},
		{"status page", req{target: "/_regcache/status", user: "ops", pw: "ops-pw"}, 429},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.r.remote = guesser
			w := fx.do(tc.r)
			if w.Code != tc.want {
				t.Fatalf("%d %s, want %d", w.Code, w.Body, tc.want)
			}
			if tc.want == 429 && (ociCode(t, w.Body.Bytes()) != "TOOMANYREQUESTS" || w.Header().Get("Retry-After") != "1") {
				t.Errorf("429 with %s, Retry-After %q", w.Body, w.Header().Get("Retry-After"))
			}
		})
	}
	if got := testutil.ToFloat64(fx.metrics.ClientAuthChecks); got != checks {
		t.Errorf("%v password checks ran for throttled logins", got-checks)
	}
	if got := fx.failures("throttled"); got != 5 {
		t.Errorf("%d throttled logins counted, want 5", got)
	}
	// Another client is not held by the guesser's failures of its own,
	// but the user name they guessed is.
	if w := fx.do(req{target: "/v2/", remote: other, user: "ops", pw: "ops-pw"}); w.Code != 200 {
		t.Errorf("another client's good login: %d", w.Code)
	}
	if w := fx.do(req{target: "/v2/", remote: other, user: "ci", pw: "ci-pw"}); w.Code != 429 {
		t.Errorf("a login for the guessed user name from a new client: %d, want 429", w.Code)
	}
}

// Credentials sent for an anonymous registry are not looked at: the Docker
// Hub login dockerd forwards costs no password check.
func TestAnonymousRegistryIgnoresLogins(t *testing.T) {
	fx := newAuthFixture(t, false)
	for _, path := range []string{"/v2/library/alpine/manifests/3.19", "/v2/docker.io/library/alpine/manifests/3.19"} {
		r := httptest.NewRequest("GET", path, nil)
		r.SetBasicAuth("dockerhub-user", "dckr_pat_x")
		rt, perr := fx.s.router.Parse(r.URL.Path, r.URL.Query())
		if e := fx.s.authorize(httptest.NewRecorder(), r, rt, perr == nil); e != nil {
			t.Errorf("%s: %v", path, e)
		}
	}
	if n := testutil.ToFloat64(fx.metrics.ClientAuthChecks); n != 0 {
		t.Errorf("%v password checks for anonymous registries", n)
	}
}

// A token dies with its user's entry: once the file is read again, a
// removed user's token, or one issued before a password change, is refused.
func TestTokensRevokedOnReload(t *testing.T) {
	fx := newAuthFixture(t, false)
	ci := fx.token(req{target: tokenPath, user: "ci", pw: "ci-pw"})
	ops := fx.token(req{target: tokenPath, user: "ops", pw: "ops-pw"})
	fx.writeUsers(map[string]string{"ops": "ops-new", "dev": "dev-pw"})
	if _, err := fx.users.Reload(); err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"removed user": ci, "old password": ops} {
		w := fx.do(req{target: "/v2/", token: tok})
		if w.Code != 401 || !strings.Contains(w.Body.String(), "authentication required") {
			t.Errorf("%s's token: %d %s, want 401", name, w.Code, w.Body)
		}
	}
	if w := fx.do(req{target: "/v2/", token: fx.token(req{target: tokenPath, user: "ops", pw: "ops-new"})}); w.Code != 200 {
		t.Errorf("a token for the new password: %d", w.Code)
	}
}

func TestOnlyAnonymous(t *testing.T) {
	fx := newAuthFixture(t, false)
	for _, tc := range []struct {
		scopes []string
		want   bool
	}{
		{nil, false},
		{[]string{""}, false},
		{[]string{"repository:library/alpine:pull"}, true},
		{[]string{"repository:docker.io/library/alpine:pull"}, true},
		{[]string{"repository:library/alpine:pull repository:library/busybox:pull"}, true},
		{[]string{"repository:library/alpine:pull", "repository:ghcr.io/org/app:pull"}, false},
		{[]string{"repository:127.0.0.1:5001/team/app:pull"}, false},
		{[]string{"repository:elsewhere.example/x:pull"}, false},
		{[]string{"registry:catalog:*"}, false},
		{[]string{"repository:library/alpine"}, false},
	} {
		if got := fx.s.onlyAnonymous(tc.scopes); got != tc.want {
			t.Errorf("onlyAnonymous(%q) = %v, want %v", tc.scopes, got, tc.want)
		}
	}
}
