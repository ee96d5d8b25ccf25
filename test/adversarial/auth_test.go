package adversarial

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"

	"github.com/regcache/regcache/internal/testhub"
)

// Attacks on client logins (issue 13, items 5 and 14): guessing passwords,
// starving the server with bcrypt, using a removed user's token, and
// learning the configuration without a login.

const acceptManifests = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, " +
	"application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"

// writeHtpasswd writes user:bcrypt lines, hashing each password at its cost.
func writeHtpasswd(t *testing.T, path string, users map[string]string, cost int) {
	t.Helper()
	var b strings.Builder
	for u, pw := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(u + ":" + string(h) + "\n")
	}
	// Written and renamed, as config management does.
	if err := os.WriteFile(path+".tmp", []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func basicAuth(user, password string) http.Header {
	return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))}}
}

func bearer(tok string) http.Header {
	return http.Header{"Authorization": {"Bearer " + tok}, "Accept": {acceptManifests}}
}

// tokenFrom decodes a token endpoint's answer.
func tokenFrom(body []byte) string {
	var tr struct{ Token string }
	_ = json.Unmarshal(body, &tr)
	return tr.Token
}

// claims is a token's payload without its expiry.
func claims(tok string) string {
	p, _, _ := strings.Cut(tok, ".")
	b, _ := base64.RawURLEncoding.DecodeString(p)
	var c map[string]any
	if json.Unmarshal(b, &c) != nil {
		return "undecodable " + p
	}
	delete(c, "e")
	out, _ := json.Marshal(c)
	return string(out)
}

// pull fetches a manifest and every blob it names, checking each digest.
func pull(c *http.Client, base, name, ref string, hdr http.Header) error {
	resp, body, err := send(c, "GET", base+"/v2/"+name+"/manifests/"+ref, hdr, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("manifest %s:%s: %d %s", name, ref, resp.StatusCode, body)
	}
	var m struct {
		Config struct{ Digest digest.Digest }
		Layers []struct{ Digest digest.Digest }
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return err
	}
	for _, d := range append([]digest.Digest{m.Config.Digest}, func() (ds []digest.Digest) {
		for _, l := range m.Layers {
			ds = append(ds, l.Digest)
		}
		return
	}()...) {
		resp, blob, err := send(c, "GET", base+"/v2/"+name+"/blobs/"+d.String(), hdr, nil)
		if err != nil {
			return err
		}
		if resp.StatusCode != 200 || digest.FromBytes(blob) != d {
			return fmt.Errorf("blob %s: %d, %d bytes that hash to %s", d, resp.StatusCode, len(blob), digest.FromBytes(blob))
		}
	}
	return nil
}

// Sixteen clients on four addresses guess the password of a cost-12 user as
// fast as they can, ignoring Retry-After, over the token endpoint (GET and
// POST) and Basic credentials on /v2/. Meanwhile a legitimate client logs in
// as another cost-12 user and pulls, and pulls of an anonymous registry go
// on. The guessers get 429s, no usable token, and few password checks; the
// legitimate login and every pull succeed. Nothing here is timed.
func TestGuessingPasswordsIsThrottledAndCheap(t *testing.T) {
	t.Parallel()
	backend := testhub.StartRegistry(t)
	backend.PushImage(t, "team/app", "v1", testhub.ImageOptions{Layers: 2})
	backend.PushImage(t, "library/alpine", "3.19", testhub.ImageOptions{})
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	const cost = 12
	devPW := "dev-" + randomSecret(t)
	writeHtpasswd(t, htpasswd, map[string]string{"ci": "ci-" + randomSecret(t), "dev": devPW}, cost)
	rc := startRegcache(t, fmt.Sprintf(`registries:
  private.example: {url: %s}
  docker.io: {url: %s}
client_auth: {htpasswd: %s, anonymous_registries: [docker.io]}
`, backend.URL, backend.URL, htpasswd))

	const privateToken = "/_regcache/token?service=regcache&scope=repository:private.example/team/app:pull"
	var (
		attempts, throttled, refused atomic.Int64
		mu                           sync.Mutex
		tokens                       = map[string]bool{} // tokens the guessers were given
		unexpected                   []string
	)
	// The attack lasts until the legitimate client is done, and at least
	// long enough for the holds on "ci" to lapse a few times, and for 160
	// guesses (on a machine busy with the other attacks, 8 s may see
	// fewer).
	legitDone := make(chan struct{})
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	var wg sync.WaitGroup
	for i := range 16 {
		c := clientFrom(t, fmt.Sprintf("127.0.0.%d", 2+i%4))
		wg.Go(func() {
			for n := 0; time.Now().Before(deadline); n++ {
				select {
				case <-legitDone:
					if time.Since(start) > 8*time.Second && attempts.Load() >= 160 {
						return
					}
				default:
				}
				pw := fmt.Sprintf("guess-%d-%d", i, n)
				var resp *http.Response
				var body []byte
				var err error
				switch n % 3 {
				case 0:
					resp, body, err = send(c, "GET", rc.URL+privateToken, basicAuth("ci", pw), nil)
				case 1:
					hdr := basicAuth("ci", pw)
					hdr.Set("Accept", acceptManifests)
					resp, body, err = send(c, "GET", rc.URL+"/v2/private.example/team/app/manifests/v1", hdr, nil)
				case 2:
					form := url.Values{"grant_type": {"password"}, "username": {"ci"}, "password": {pw}, "service": {"regcache"}}
					resp, body, err = send(c, "POST", rc.URL+"/_regcache/token", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}, strings.NewReader(form.Encode()))
				}
				attempts.Add(1)
				mu.Lock()
				switch {
				case err != nil:
					unexpected = append(unexpected, err.Error())
				case resp.StatusCode == 429:
					throttled.Add(1)
					if resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "TOOMANYREQUESTS") {
						unexpected = append(unexpected, fmt.Sprintf("429 without Retry-After or TOOMANYREQUESTS: %s", body))
					}
				case resp.StatusCode == 401 && n%3 == 1:
					refused.Add(1)
				case resp.StatusCode == 200 && n%3 != 1:
					refused.Add(1) // an anonymous token, checked below
					tokens[tokenFrom(body)] = true
				default:
					unexpected = append(unexpected, fmt.Sprintf("attempt %d: %d %s", n%3, resp.StatusCode, body))
				}
				mu.Unlock()
				time.Sleep(10 * time.Millisecond) // a guesser on a budget: the machine is shared
			}
		})
	}
	// The attack is in full swing when the guessers are being held back.
	for throttled.Load() < 16 {
		if time.Now().After(deadline) {
			t.Fatalf("the guessers were never throttled: %d attempts", attempts.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The legitimate client: a first login (a full bcrypt check), then
	// pulls with its token, and anonymous pulls.
	legit := clientFrom(t, "127.0.0.1")
	loginStart := time.Now()
	resp, body := call(t, legit, "GET", rc.URL+privateToken, basicAuth("dev", devPW))
	t.Logf("the legitimate login took %v during the attack (not asserted)", time.Since(loginStart).Round(time.Millisecond))
	tok := tokenFrom(body)
	if resp.StatusCode != 200 || tok == "" {
		t.Fatalf("the legitimate login during the attack: %d %s", resp.StatusCode, body)
	}
	for range 3 {
		if err := pull(legit, rc.URL, "private.example/team/app", "v1", bearer(tok)); err != nil {
			t.Errorf("the legitimate pull during the attack: %v", err)
		}
		if err := pull(legit, rc.URL, "docker.io/library/alpine", "3.19", http.Header{"Accept": {acceptManifests}}); err != nil {
			t.Errorf("an anonymous pull during the attack: %v", err)
		}
	}
	close(legitDone)
	wg.Wait()

	t.Logf("%d guesses: %d throttled, %d refused", attempts.Load(), throttled.Load(), refused.Load())
	for _, u := range unexpected[:min(len(unexpected), 10)] {
		t.Errorf("unexpected answer to a guess: %s", u)
	}
	if attempts.Load() < 160 {
		t.Errorf("only %d guesses: the attack was too small to tell", attempts.Load())
	}
	// Four free failures of "ci", then one check each time the hold on
	// "ci" lapses (after 1, 2, 4, 8, 16, 32 s within the minute the attack
	// may last), and dev's login.
	checks := rc.metric("regcache_client_auth_password_checks_total")
	t.Logf("%v bcrypt checks", checks)
	if checks < 5 || checks > 4+6+1 {
		t.Errorf("%v bcrypt checks for %d guesses and one login, want 5 to 11", checks, attempts.Load())
	}
	if got := rc.metric(`regcache_client_auth_failures_total{reason="throttled"}`); got != float64(throttled.Load()) {
		t.Errorf("%v throttled logins counted, the guessers got %d 429s", got, throttled.Load())
	}
	// Every token a guesser got is an anonymous one: it opens nothing
	// private and says nothing about the guess.
	_, anonBody := call(t, legit, "GET", rc.URL+privateToken, nil)
	anon := claims(tokenFrom(anonBody))
	checked := 0
	for tok := range tokens {
		if checked++; checked > 20 {
			break
		}
		if c := claims(tok); c != anon {
			t.Errorf("a guesser's token says %s, an anonymous one %s", c, anon)
		}
		if resp, _ := call(t, legit, "GET", rc.URL+"/v2/private.example/team/app/manifests/v1", bearer(tok)); resp.StatusCode != 401 {
			t.Errorf("a guesser's token opened a private repository: %d", resp.StatusCode)
		}
	}
	if strings.Contains(rc.logs.String(), "guess-") || strings.Contains(rc.logs.String(), devPW) {
		t.Error("a password appears in regcache's log")
	}
}

// A user removed from the htpasswd file loses access the moment regcache
// reads the file again, token included; other users keep theirs.
func TestRemovedUsersTokenIsRefusedAfterReload(t *testing.T) {
	t.Parallel()
	backend := testhub.StartRegistry(t)
	backend.PushImage(t, "team/app", "v1", testhub.ImageOptions{})
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	users := map[string]string{"ci": "ci-" + randomSecret(t), "leaver": "leaver-" + randomSecret(t)}
	writeHtpasswd(t, htpasswd, users, bcrypt.MinCost)
	rc := startRegcache(t, fmt.Sprintf("registries:\n  private.example: {url: %s}\nclient_auth: {htpasswd: %s}\n", backend.URL, htpasswd))
	c := clientFrom(t, "127.0.0.1")
	token := func(user string) string {
		resp, body := call(t, c, "GET", rc.URL+"/_regcache/token?service=regcache&scope=repository:private.example/team/app:pull", basicAuth(user, users[user]))
		if resp.StatusCode != 200 {
			t.Fatalf("token for %s: %d %s", user, resp.StatusCode, body)
		}
		return tokenFrom(body)
	}
	leaverTok, ciTok := token("leaver"), token("ci")
	for _, tok := range []string{leaverTok, ciTok} {
		if err := pull(c, rc.URL, "private.example/team/app", "v1", bearer(tok)); err != nil {
			t.Fatalf("pull before the reload: %v", err)
		}
	}

	// ci's line stays as it is; leaver's goes.
	data, err := os.ReadFile(htpasswd)
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "leaver:") {
			kept = append(kept, line)
		}
	}
	if err := os.WriteFile(htpasswd+".tmp", []byte(strings.Join(kept, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(htpasswd+".tmp", htpasswd); err != nil {
		t.Fatal(err)
	}
	rc.waitLog("client_auth.htpasswd reloaded", 30*time.Second)

	manifest := rc.URL + "/v2/private.example/team/app/manifests/v1"
	if resp, body := call(t, c, "GET", manifest, bearer(leaverTok)); resp.StatusCode != 401 {
		t.Errorf("the removed user's token after the reload: %d %s", resp.StatusCode, body)
	}
	if resp, _ := call(t, c, "GET", manifest, basicAuth("leaver", users["leaver"])); resp.StatusCode != 401 {
		t.Errorf("the removed user's password after the reload: %d", resp.StatusCode)
	}
	if err := pull(c, rc.URL, "private.example/team/app", "v1", bearer(ciTok)); err != nil {
		t.Errorf("another user's token after the reload: %v", err)
	}
}

// A stranger learns nothing about the configuration: not from regcache's
// pages, not from the challenges, which are the same for configured and
// unconfigured registries, not from a forged or anonymous token.
func TestStrangerLearnsNothing(t *testing.T) {
	t.Parallel()
	backend := testhub.StartRegistry(t)
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	password := "ops-" + randomSecret(t)
	writeHtpasswd(t, htpasswd, map[string]string{"ops": password}, bcrypt.MinCost)
	upstreamSecret := "upstream-" + randomSecret(t)
	rc := startRegcache(t, fmt.Sprintf(`registries:
  private.example:
    url: %s
    auth: {username: robot-account, password_env: ADVERSARIAL_UPSTREAM_PASSWORD}
  internal.corp.example: {url: %s}
client_auth: {htpasswd: %s, metrics: login}
`, backend.URL, backend.URL, htpasswd), "ADVERSARIAL_UPSTREAM_PASSWORD="+upstreamSecret)
	backendHost := strings.TrimPrefix(backend.URL, "http://")
	secrets := []string{"private.example", "internal.corp.example", backendHost, "robot-account", upstreamSecret}
	c := clientFrom(t, "127.0.0.9")
	_, anonBody := call(t, c, "GET", rc.URL+"/_regcache/token?service=regcache", nil)
	forged := base64.RawURLEncoding.EncodeToString([]byte(`{"u":"ops","e":9999999999}`)) + "." + base64.RawURLEncoding.EncodeToString(make([]byte, sha256.Size))
	const dg = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

	// Pairs of paths, one for a configured registry and one for an
	// unconfigured one, must be answered alike.
	pairs := [][2]string{
		{"/v2/private.example/team/app/manifests/v1", "/v2/public.example/team/app/manifests/v1"},
		{"/v2/internal.corp.example/team/app/blobs/" + dg, "/v2/internal.corp.invalid/team/app/blobs/" + dg},
		{"/v2/team/app/manifests/v1?ns=private.example", "/v2/team/app/manifests/v1?ns=public.example"},
		{"/v2/private.example/team/app/tags/list", "/v2/public.example/team/app/tags/list"},
		{"/v2/private.example/team/app/referrers/" + dg, "/v2/public.example/team/app/referrers/" + dg},
	}
	logins := map[string]http.Header{
		"no login":           nil,
		"a wrong password":   basicAuth("ops", "guess"),
		"an unknown user":    basicAuth("private.example", "guess"),
		"an anonymous token": bearer(tokenFrom(anonBody)),
		"a forged token":     bearer(forged),
	}
	for name, hdr := range logins {
		var challenge string
		for _, pair := range pairs {
			r0, b0 := call(t, c, "GET", rc.URL+pair[0], hdr)
			r1, b1 := call(t, c, "GET", rc.URL+pair[1], hdr)
			if r0.StatusCode != 401 || r0.StatusCode != r1.StatusCode || string(b0) != string(b1) ||
				r0.Header.Get("WWW-Authenticate") != r1.Header.Get("WWW-Authenticate") {
				t.Errorf("%s: %s answered %d %q %s; %s answered %d %q %s", name,
					pair[0], r0.StatusCode, r0.Header.Get("WWW-Authenticate"), b0, pair[1], r1.StatusCode, r1.Header.Get("WWW-Authenticate"), b1)
			}
			if challenge == "" {
				challenge = r0.Header.Get("WWW-Authenticate")
			} else if got := r0.Header.Get("WWW-Authenticate"); got != challenge {
				t.Errorf("%s: challenge %q for %s, %q before", name, got, pair[0], challenge)
			}
		}
		for _, path := range []string{"/_regcache/status", "/_regcache/", "/metrics", "/v2/", "/v2/_catalog", "/"} {
			resp, body := call(t, c, "GET", rc.URL+path, hdr)
			if resp.StatusCode == 200 && path != "/v2/" {
				t.Errorf("%s: %s answered 200", name, path)
			}
			seen := string(body) + fmt.Sprint(resp.Header)
			for _, s := range secrets {
				if strings.Contains(seen, s) {
					t.Errorf("%s: %s shows %q: %d %v %s", name, path, s, resp.StatusCode, resp.Header, body)
				}
			}
		}
	}
	if resp, _ := call(t, c, "GET", rc.URL+"/healthz", nil); resp.StatusCode != 200 {
		t.Errorf("/healthz: %d", resp.StatusCode)
	}
	// With a login the status page does name them: the checks above
	// would have seen a leak.
	resp, body := call(t, c, "GET", rc.URL+"/_regcache/status", basicAuth("ops", password))
	if resp.StatusCode != 200 || !strings.Contains(string(body), "private.example") {
		t.Errorf("the status page with a login: %d %s", resp.StatusCode, body)
	}
	if strings.Contains(rc.logs.String(), upstreamSecret) || strings.Contains(rc.logs.String(), password) {
		t.Error("a secret appears in regcache's log")
	}
}

func randomSecret(t *testing.T) string {
	b := make([]byte, 12)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
