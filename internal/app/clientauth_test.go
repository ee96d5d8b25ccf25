package app

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/crypto/bcrypt"

	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/testhub"
)

// writeHtpasswd writes an htpasswd file with one bcrypt user.
func writeHtpasswd(t *testing.T, user, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(p, []byte(user+":"+string(h)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func basic(user, password string) map[string]string {
	return map[string]string{
		"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password)),
		"Accept":        acceptAll,
	}
}

// With client_auth, a private registry answers only to users in the
// htpasswd file, while docker.io stays open to dockerd's registry-mirrors,
// which cannot log in to a mirror and forward the user's Docker Hub login.
func TestClientAuth(t *testing.T) {
	password := "ci-" + randomHex(t)
	htpasswd := writeHtpasswd(t, "ci", password)
	s := newStack(t, stackOptions{extra: fmt.Sprintf(`  private.example:
    url: {{hub}}
client_auth:
  htpasswd: %s
  anonymous_registries: [docker.io]
`, htpasswd)})
	img := s.backend.PushImage(t, "library/alpine", "latest", testhub.ImageOptions{})
	good := basic("ci", password)
	wrong := basic("ci", "not-"+password)
	hubLogin := basic("dockerhub-user", "dckr_pat_"+randomHex(t)) // what dockerd forwards
	none := map[string]string{"Accept": acceptAll}
	bearer := func(tok string) map[string]string {
		return map[string]string{"Authorization": "Bearer " + tok, "Accept": acceptAll}
	}
	// Tokens as clients get them from the realm: GET with or without a
	// login, or containerd's POST password grant.
	anonToken := s.token(t, nil)
	userToken := s.token(t, good)
	refusedToken := s.token(t, wrong) // a refusal, counted and logged here
	hubToken := s.tokenFor(t, hubLogin, "repository:library/alpine:pull")
	grantToken := s.tokenGrant(t, "ci", password)
	if claims(t, refusedToken) != claims(t, anonToken) || claims(t, hubToken) != claims(t, anonToken) {
		t.Errorf("a refused login's token differs from an anonymous one: %s, %s, %s", claims(t, refusedToken), claims(t, hubToken), claims(t, anonToken))
	}
	private := "/v2/private.example/library/alpine/manifests/latest"
	privateBlob := "/v2/private.example/library/alpine/blobs/" + img.Layers[0].String()
	anonymous := "/v2/library/alpine/manifests/latest"

	counted := map[string]int{"invalid": 1}
	for _, tc := range []struct {
		name    string
		path    string
		hdr     map[string]string
		want    int
		wantMsg string // part of the OCI error message
		counted string // the failure counter it adds to
	}{
		{"ping without a login gets the challenge", "/v2/", none, 401, "authentication required", ""},
		{"ping with Basic credentials", "/v2/", good, 200, "", ""},
		{"ping with a wrong password", "/v2/", wrong, 401, "invalid username or password", "invalid"},
		{"ping with a user token", "/v2/", bearer(userToken), 200, "", ""},
		{"ping with an anonymous token", "/v2/", bearer(anonToken), 401, "authentication required", ""},
		{"ping with a refused login's token (podman login fails)", "/v2/", bearer(refusedToken), 401, "authentication required", ""},
		{"anonymous registry, no login", anonymous, none, 200, "", ""},
		{"anonymous registry, host in path", "/v2/docker.io/library/alpine/manifests/latest", none, 200, "", ""},
		{"anonymous registry, forwarded Docker Hub login", anonymous, hubLogin, 200, "", ""},
		{"anonymous registry, token for the forwarded Docker Hub login", anonymous, bearer(hubToken), 200, "", ""},
		{"anonymous registry, anonymous token", anonymous, bearer(anonToken), 200, "", ""},
		{"private registry, no login", private, none, 401, "authentication required", "missing"},
		{"private registry, empty credentials (containers/image without a login)", private, basic("", ""), 401, "authentication required", "missing"},
		{"private registry blob, no login", privateBlob, none, 401, "authentication required", "missing"},
		{"private registry, anonymous token", private, bearer(anonToken), 401, "authentication required", "missing"},
		{"private registry, wrong password", private, wrong, 401, "invalid username or password", "invalid"},
		{"private registry, refused login's token", private, bearer(refusedToken), 401, "authentication required", "missing"},
		{"private registry, Docker Hub login's token", private, bearer(hubToken), 401, "authentication required", "missing"},
		{"private registry, Docker Hub login", private, hubLogin, 401, "invalid username or password", "invalid"},
		{"private registry, forged token", private, bearer("eyJ1IjoiY2kiLCJlIjo5OTk5OTk5OTk5fQ.AAAA"), 401, "authentication required", "missing"},
		{"private registry, Basic credentials", private, good, 200, "", ""},
		{"private registry, user token", private, bearer(userToken), 200, "", ""},
		{"private registry blob, user token", privateBlob, bearer(userToken), 200, "", ""},
		{"private registry, password-grant token", private, bearer(grantToken), 200, "", ""},
		{"unconfigured registry, no login: nothing revealed", "/v2/elsewhere.example/x/manifests/1", none, 401, "authentication required", "missing"},
		{"unconfigured registry, logged in", "/v2/elsewhere.example/x/manifests/1", bearer(userToken), 404, "not configured", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := s.do("GET", tc.path, tc.hdr)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
			if tc.wantMsg != "" {
				if _, msg := ociError(t, body); !strings.Contains(msg, tc.wantMsg) {
					t.Errorf("message %q, want it to contain %q", msg, tc.wantMsg)
				}
			}
			// The same challenge for every path: no scope that would tell
			// configured registries from others.
			challenge := resp.Header.Get("WWW-Authenticate")
			wantChallenge := `Bearer realm="` + s.srv.URL + `/_regcache/token",service="regcache"`
			if (tc.want == 401) != (challenge == wantChallenge) {
				t.Errorf("WWW-Authenticate %q with status %d", challenge, resp.StatusCode)
			}
		})
		if tc.counted != "" {
			counted[tc.counted]++
		}
	}

	// docker login asks for an offline token: a wrong password is refused
	// there, with a message, instead of getting an anonymous token.
	for _, tc := range []struct {
		hdr  map[string]string
		want int
	}{{wrong, 401}, {good, 200}, {none, 200}} {
		resp, body := s.do("GET", "/_regcache/token?account=ci&client_id=docker&offline_token=true&service=regcache", tc.hdr)
		if resp.StatusCode != tc.want || (tc.want == 401 && !strings.Contains(string(body), "invalid username or password")) {
			t.Errorf("docker login token request: %d %s, want %d", resp.StatusCode, body, tc.want)
		}
	}
	counted["invalid"]++

	for _, reason := range []string{"missing", "invalid"} {
		if got := testutil.ToFloat64(s.app.Metrics.ClientAuthFailures.WithLabelValues(reason)); int(got) != counted[reason] {
			t.Errorf("%s-login failures %v, want %d (the /v2/ challenge is not one)", reason, got, counted[reason])
		}
	}
	logs := s.logs.String()
	if !strings.Contains(logs, `level=INFO msg="client login refused" user=ci`) {
		t.Error("a wrong password for a known user was not logged")
	}
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "level=INFO") && strings.Contains(line, "user=dockerhub-user") && !strings.Contains(line, "path=/v2/private.example/") {
			t.Errorf("the Docker Hub login dockerd forwards for an anonymous registry was logged as a refusal: %s", line)
		}
	}
	for _, secret := range []string{password, hubLogin["Authorization"][6:], good["Authorization"][6:], userToken} {
		if strings.Contains(logs, secret) {
			t.Error("a client credential or token appears in regcache's logs")
		}
	}
}

// token fetches a token for a private.example repository from regcache's
// realm, with Basic credentials from hdr if it has them.
func (s *stack) token(t *testing.T, hdr map[string]string) string {
	t.Helper()
	return s.tokenFor(t, hdr, "repository:private.example/library/alpine:pull")
}

func (s *stack) tokenFor(t *testing.T, hdr map[string]string, scope string) string {
	t.Helper()
	h := map[string]string{}
	if a := hdr["Authorization"]; a != "" {
		h["Authorization"] = a
	}
	resp, body := s.do("GET", "/_regcache/token?service=regcache&scope="+url.QueryEscape(scope), h)
	return decodeToken(t, resp.StatusCode, body)
}

// claims is what a token says, without its expiry.
func claims(t *testing.T, tok string) string {
	t.Helper()
	p, _, _ := strings.Cut(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(p)
	var c map[string]any
	if err != nil || json.Unmarshal(b, &c) != nil {
		t.Fatalf("token payload %q", p)
	}
	delete(c, "e")
	out, _ := json.Marshal(c)
	return string(out)
}

// tokenGrant fetches a token with an OAuth2 password grant, as containerd does.
func (s *stack) tokenGrant(t *testing.T, user, password string) string {
	t.Helper()
	form := url.Values{"grant_type": {"password"}, "username": {user}, "password": {password}, "service": {"regcache"}}
	resp, err := http.PostForm(s.srv.URL+"/_regcache/token", form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return decodeToken(t, resp.StatusCode, body)
}

func decodeToken(t *testing.T, status int, body []byte) string {
	t.Helper()
	var tr struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if status != 200 || json.Unmarshal(body, &tr) != nil || tr.Token == "" || tr.Token != tr.AccessToken || tr.ExpiresIn <= 0 {
		t.Fatalf("token endpoint: %d %s", status, body)
	}
	return tr.Token
}

// A bad client_auth or tls setting stops start-up with an error that names
// the key and the file.
func TestClientAuthAndTLSStartupErrors(t *testing.T) {
	dir := t.TempDir()
	md5 := filepath.Join(dir, "md5.htpasswd")
	if err := os.WriteFile(md5, []byte("ci:$apr1$Vh1cZ/1Z$k2g9N0Yq7a0xV2o0b8u6Z/\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a pem\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, extra string
		want        []string
	}{
		{"missing htpasswd", "client_auth: {htpasswd: " + filepath.Join(dir, "none") + "}\n", []string{"client_auth.htpasswd", "none", "no such file"}},
		{"md5 htpasswd", "client_auth: {htpasswd: " + md5 + "}\n", []string{"client_auth.htpasswd", md5 + ":1", "bcrypt"}},
		{"bad certificate", "tls: {certificate: " + junk + ", key: " + junk + "}\n", []string{"tls.certificate", junk}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse([]byte("listen: 127.0.0.1:0\nstorage: {root: "+t.TempDir()+"}\nregistries:\n  docker.io: {url: http://127.0.0.1:1}\n"+tc.extra), "test")
			if err != nil {
				t.Fatal(err)
			}
			_, err = New(cfg, slog.New(slog.DiscardHandler))
			if err == nil {
				t.Fatal("started")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// Users can be added, removed or given new passwords by editing the
// htpasswd file, without a restart; a file that no longer parses keeps the
// previous users.
func TestClientAuthReloadsHtpasswd(t *testing.T) {
	oldPW, newPW, opsPW := "old-"+randomHex(t), "new-"+randomHex(t), "ops-"+randomHex(t)
	htpasswd := writeHtpasswd(t, "ci", oldPW)
	s := newStack(t, stackOptions{extra: fmt.Sprintf("client_auth: {htpasswd: %s}\n", htpasswd)})
	s.app.usersEvery = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { s.app.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	status := func(user, pw string) int {
		resp, _ := s.do("GET", "/v2/", basic(user, pw))
		return resp.StatusCode
	}
	// eventually waits for the watcher to pick a change up.
	eventually := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("not reloaded: %s", what)
			}
		}
	}
	// tokenStatus is the answer to a pull with a token.
	tokenStatus := func(tok string) int {
		resp, _ := s.do("GET", "/v2/", map[string]string{"Authorization": "Bearer " + tok})
		return resp.StatusCode
	}
	if status("ci", oldPW) != 200 {
		t.Fatal("the first password does not work")
	}
	oldToken := s.token(t, basic("ci", oldPW))

	// A new password for ci, and a new user.
	writeUsers(t, htpasswd, map[string]string{"ci": newPW, "ops": opsPW})
	eventually("new password and new user", func() bool { return status("ci", newPW) == 200 && status("ops", opsPW) == 200 })
	if status("ci", oldPW) != 401 {
		t.Error("the old password still works after it was changed (remembered logins must not survive a reload)")
	}
	if tokenStatus(oldToken) != 401 {
		t.Error("a token issued for the old password still works after the reload")
	}
	newToken, opsToken := s.token(t, basic("ci", newPW)), s.token(t, basic("ops", opsPW))
	if tokenStatus(newToken) != 200 {
		t.Error("a token for the new password does not work")
	}

	// A broken file keeps the users in force and is reported once.
	working, _ := os.ReadFile(htpasswd)
	writeAtomic(t, htpasswd, "ci:not-a-bcrypt-hash\nops\n")
	eventually("error logged", func() bool { return strings.Contains(s.logs.String(), "client_auth.htpasswd not reloaded") })
	time.Sleep(50 * time.Millisecond) // several more checks of the same broken file
	if status("ci", newPW) != 200 || status("ops", opsPW) != 200 {
		t.Error("a broken htpasswd file locked the users out")
	}
	if n := strings.Count(s.logs.String(), "client_auth.htpasswd not reloaded"); n != 1 {
		t.Errorf("the same error was logged %d times", n)
	}

	// Removing a user takes effect at once, for their tokens too; the
	// others' tokens stay good.
	writeAtomic(t, htpasswd, string(working))
	writeUsers(t, htpasswd, map[string]string{"ops": opsPW})
	eventually("ci removed", func() bool { return status("ci", newPW) == 401 })
	if tokenStatus(newToken) != 401 {
		t.Error("a removed user's token still works after the reload")
	}
	if status("ops", opsPW) != 200 || tokenStatus(opsToken) != 200 {
		t.Error("ops lost access when ci was removed")
	}
	for _, pw := range []string{oldPW, newPW, opsPW} {
		if strings.Contains(s.logs.String(), pw) {
			t.Error("a client password appears in the logs")
		}
	}
}

// writeUsers rewrites the htpasswd file with users, keeping the entry of a
// user whose password stays, as htpasswd(1) and config management do: a
// changed entry ends the user's tokens.
func writeUsers(t *testing.T, path string, users map[string]string) {
	t.Helper()
	old, _ := os.ReadFile(path)
	var b strings.Builder
	for u, pw := range users {
		var h []byte
		for _, line := range strings.Split(string(old), "\n") {
			if user, hash, _ := strings.Cut(line, ":"); user == u && bcrypt.CompareHashAndPassword([]byte(hash), []byte(pw)) == nil {
				h = []byte(hash)
			}
		}
		if h == nil {
			var err error
			if h, err = bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost); err != nil {
				t.Fatal(err)
			}
		}
		b.WriteString(u + ":" + string(h) + "\n")
	}
	writeAtomic(t, path, b.String())
}

// writeAtomic writes and renames, as config management does: the watcher
// never reads a half-written file (which would be a second, different
// error in the test that counts them).
func writeAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// Replicas that share client_auth.token_key_file accept each other's
// tokens, as they must behind one load balancer; a bad key file stops
// start-up with the key and the file named.
func TestClientAuthSharedTokenKey(t *testing.T) {
	password := "ci-" + randomHex(t)
	htpasswd := writeHtpasswd(t, "ci", password)
	keyFile := filepath.Join(t.TempDir(), "token.key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("k", 48)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	extra := fmt.Sprintf("  private.example:\n    url: {{hub}}\nclient_auth: {htpasswd: %s, token_key_file: %s}\n", htpasswd, keyFile)
	a := newStack(t, stackOptions{extra: extra})
	b := newStack(t, stackOptions{extra: extra})
	a.backend.PushImage(t, "library/alpine", "latest", testhub.ImageOptions{})
	b.backend.PushImage(t, "library/alpine", "latest", testhub.ImageOptions{})
	tok := a.token(t, basic("ci", password))
	resp, body := b.do("GET", "/v2/private.example/library/alpine/manifests/latest", map[string]string{"Authorization": "Bearer " + tok, "Accept": acceptAll})
	if resp.StatusCode != 200 {
		t.Errorf("replica b refused replica a's token: %d %s", resp.StatusCode, body)
	}

	short := filepath.Join(t.TempDir(), "short.key")
	os.WriteFile(short, []byte("too short"), 0o600)
	for file, want := range map[string]string{short: "at least 32", filepath.Join(t.TempDir(), "none"): "no such file"} {
		cfg, err := config.Parse([]byte(fmt.Sprintf("storage: {root: %s}\nregistries:\n  docker.io: {url: http://127.0.0.1:1}\nclient_auth: {htpasswd: %s, token_key_file: %s}\n", t.TempDir(), htpasswd, file)), "test")
		if err != nil {
			t.Fatal(err)
		}
		_, err = New(cfg, slog.New(slog.DiscardHandler))
		if err == nil || !strings.Contains(err.Error(), "client_auth.token_key_file") || !strings.Contains(err.Error(), want) {
			t.Errorf("token_key_file %s: %v, want the key named and %q", file, err, want)
		}
	}
}

// With client_auth, regcache's own pages need a login: they name the
// configured registries, upstream URLs and accounts. /healthz stays open,
// and /metrics too unless client_auth.metrics is login.
func TestClientAuthPagesNeedLogin(t *testing.T) {
	password := "ci-" + randomHex(t)
	htpasswd := writeHtpasswd(t, "ci", password)
	for _, tc := range []struct {
		metrics      string
		metricsNoLog int
	}{{"", 200}, {"open", 200}, {"login", 401}} {
		t.Run("metrics "+tc.metrics, func(t *testing.T) {
			metrics := ""
			if tc.metrics != "" {
				metrics = ", metrics: " + tc.metrics
			}
			s := newStack(t, stackOptions{user: "robot-account", extra: fmt.Sprintf("  private.example:\n    url: {{hub}}\nclient_auth: {htpasswd: %s%s}\n", htpasswd, metrics)})
			good := basic("ci", password)
			for _, c := range []struct {
				path string
				hdr  map[string]string
				want int
			}{
				{"/_regcache/status", nil, 401},
				{"/_regcache/status", basic("ci", "wrong"), 401},
				{"/_regcache/status", map[string]string{"Authorization": "Bearer " + s.token(t, nil)}, 401},
				{"/_regcache/status", good, 200},
				{"/_regcache/status", map[string]string{"Authorization": "Bearer " + s.token(t, good)}, 200},
				{"/_regcache/nothing-here", nil, 401},
				{"/", nil, 401},
				{"/", basic("ci", "wrong"), 401},
				{"/", good, 200},
				{"/_regcache/", nil, 401},
				{"/_regcache/", good, 200},
				{"/healthz", nil, 200},
				{"/metrics", nil, tc.metricsNoLog},
				{"/metrics", good, 200},
			} {
				resp, body := s.do("GET", c.path, c.hdr)
				if resp.StatusCode != c.want {
					t.Errorf("GET %s (%v): %d, want %d", c.path, c.hdr != nil, resp.StatusCode, c.want)
				}
				if s.secret != "" && strings.Contains(string(body), s.secret) {
					t.Errorf("GET %s shows the upstream password", c.path)
				}
				if resp.StatusCode == 401 {
					if got := resp.Header.Get("WWW-Authenticate"); got != `Basic realm="regcache"` {
						t.Errorf("GET %s: challenge %q", c.path, got)
					}
					for _, secret := range []string{"private.example", "docker.io", s.hub.URL, "robot-account"} {
						if strings.Contains(string(body), secret) {
							t.Errorf("GET %s without a login shows %q: %s", c.path, secret, body)
						}
					}
				}
			}
		})
	}
}

// A guesser is answered 429 TOOMANYREQUESTS with Retry-After, runs few
// password checks, and holds back neither other clients' logins nor
// pulls. Each client connects from its own loopback address.
func TestClientAuthThrottlesGuessing(t *testing.T) {
	ciPW, opsPW := "ci-"+randomHex(t), "ops-"+randomHex(t)
	htpasswd := writeHtpasswd(t, "ci", ciPW)
	writeUsers(t, htpasswd, map[string]string{"ci": ciPW, "ops": opsPW})
	s := newStack(t, stackOptions{extra: fmt.Sprintf("  private.example:\n    url: {{hub}}\nclient_auth: {htpasswd: %s, anonymous_registries: [docker.io]}\n", htpasswd)})
	s.backend.PushImage(t, "library/alpine", "latest", testhub.ImageOptions{})
	guesser, other := clientFrom(t, "127.0.0.2"), clientFrom(t, "127.0.0.3")
	get := func(c *http.Client, path string, hdr map[string]string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest("GET", s.srv.URL+path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, body
	}
	const privateScope = "/_regcache/token?service=regcache&scope=repository:private.example/library/alpine:pull"
	var answers []int
	for i := range 10 {
		resp, body := get(guesser, privateScope, basic("ci", fmt.Sprint("guess-", i)))
		answers = append(answers, resp.StatusCode)
		if resp.StatusCode == 429 {
			if code, _ := ociError(t, body); code != "TOOMANYREQUESTS" || resp.Header.Get("Retry-After") == "" {
				t.Errorf("429 %s, Retry-After %q", body, resp.Header.Get("Retry-After"))
			}
		}
	}
	if want := "[200 200 200 200 429 429 429 429 429 429]"; fmt.Sprint(answers) != want {
		t.Errorf("the guesser's token requests were answered %v, want %s", answers, want)
	}
	for _, c := range []struct {
		name string
		path string
		hdr  map[string]string
		want int
	}{
		{"Basic on a private path", "/v2/private.example/library/alpine/manifests/latest", basic("ops", opsPW), 429},
		{"a forwarded Docker Hub login for docker.io", "/_regcache/token?service=regcache&scope=repository:library/alpine:pull", basic("hub-user", "dckr_pat_x"), 200},
		{"docker.io without a login", "/v2/library/alpine/manifests/latest", map[string]string{"Accept": acceptAll}, 200},
	} {
		if resp, body := get(guesser, c.path, c.hdr); resp.StatusCode != c.want {
			t.Errorf("the guesser, %s: %d %s, want %d", c.name, resp.StatusCode, body, c.want)
		}
	}
	checks := testutil.ToFloat64(s.app.Metrics.ClientAuthChecks)
	if checks != 4 { // the free guesses; the Docker Hub login is not checked while the client is held
		t.Errorf("%v password checks, want 4", checks)
	}
	// Another client logs in (as another user) and pulls.
	resp, body := get(other, privateScope, basic("ops", opsPW))
	tok := decodeToken(t, resp.StatusCode, body)
	bearer := map[string]string{"Authorization": "Bearer " + tok, "Accept": acceptAll}
	if resp, body := get(other, "/v2/private.example/library/alpine/manifests/latest", bearer); resp.StatusCode != 200 {
		t.Errorf("another client's pull: %d %s", resp.StatusCode, body)
	}
	// The user name that was guessed is held for new clients too.
	if resp, _ := get(other, privateScope, basic("ci", ciPW)); resp.StatusCode != 429 {
		t.Errorf("a new client logging in as the guessed user: %d, want 429", resp.StatusCode)
	}
	if got := testutil.ToFloat64(s.app.Metrics.ClientAuthFailures.WithLabelValues("throttled")); got != 8 {
		t.Errorf("%v throttled logins counted, want 8", got)
	}
}

// clientFrom is an HTTP client whose connections come from a loopback
// address of its own, so that regcache sees a client of its own.
func clientFrom(t *testing.T, ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}
