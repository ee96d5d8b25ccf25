package adversarial

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/testhub"
)

// An upstream that echoes the credentials regcache sends it (issue 13,
// item 6): the Authorization header, Basic or Bearer, the token alone, and
// the configured password, in every place an error can carry text (the
// OCI message and code, Docker Hub's token-server "details", a text/plain
// body, the token endpoint's own errors). None of it may reach a client,
// whatever it asks, nor regcache's log, at debug level.

// credentials are what regcache sent one hostile upstream.
type credentials struct {
	mu   sync.Mutex
	seen map[string]bool // Authorization values, and their credential part
}

func (c *credentials) record(r *http.Request) string {
	v := r.Header.Get("Authorization")
	if v != "" {
		c.mu.Lock()
		c.seen[v] = true
		if _, cred, ok := strings.Cut(v, " "); ok {
			c.seen[cred] = true
		}
		c.mu.Unlock()
	}
	return v
}

func (c *credentials) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for s := range c.seen {
		out = append(out, s)
	}
	return out
}

// echoes are the error answers of a hostile upstream, each putting what
// it was sent somewhere else; echo is the Authorization header as
// received, password the configured one.
func echoes(echo, password string) map[string]http.HandlerFunc {
	_, cred, _ := strings.Cut(echo, " ")
	return map[string]http.HandlerFunc{
		"message": func(w http.ResponseWriter, r *http.Request) {
			ociError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "no such manifest for Authorization: "+echo+" (password "+password+", token "+cred+")")
		},
		"code-password": func(w http.ResponseWriter, r *http.Request) {
			ociError(w, http.StatusBadRequest, password, "bad request")
		},
		"code-header": func(w http.ResponseWriter, r *http.Request) {
			ociError(w, http.StatusForbidden, echo, cred)
		},
		"details": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, `{"details":"incorrect username or password: %s %s"}`, echo, password)
		},
		"text": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, "upstream exploded handling\nAuthorization: %s\ncredential=%s\n%s\n", echo, cred, password)
		},
		"no-type": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintf(w, "%s %s", cred, password)
		},
		"rate-limited": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "1")
			ociError(w, http.StatusTooManyRequests, "TOOMANYREQUESTS", "slow down, "+echo)
		},
		"unavailable": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "1")
			ociError(w, http.StatusServiceUnavailable, "UNAVAILABLE", password)
		},
	}
}

// upperSecret is a password of capitals, digits and underscores: the
// characters of an OCI error code, so that a code check alone does not
// catch it.
func upperSecret(t *testing.T) string {
	b := make([]byte, 12)
	rand.Read(b)
	return "S3CRET_" + strings.ToUpper(hex.EncodeToString(b))
}

func TestUpstreamEchoingCredentialsLeaksNothing(t *testing.T) {
	t.Parallel()
	password := upperSecret(t)
	basicWant := "Basic " + base64.StdEncoding.EncodeToString([]byte("robot:"+password))

	// basic.example: a Basic-auth registry.
	basic := startHostile(t)
	basicCreds := &credentials{seen: map[string]bool{}}
	basic.setGate(func(w http.ResponseWriter, r *http.Request) bool {
		if basicCreds.record(r) != basicWant {
			w.Header().Set("WWW-Authenticate", `Basic realm="hostile"`)
			ociError(w, http.StatusUnauthorized, "UNAUTHORIZED", "log in")
			return false
		}
		return true
	})
	// bearer.example: a token registry; its token is opaque (not a JWT),
	// so no pattern knows it for one.
	bearer := startHostile(t)
	bearerCreds := &credentials{seen: map[string]bool{}}
	tokenBytes := make([]byte, 16)
	rand.Read(tokenBytes)
	token := "opaque" + hex.EncodeToString(tokenBytes)
	bearer.setGate(func(w http.ResponseWriter, r *http.Request) bool {
		got := bearerCreds.record(r)
		switch {
		case r.URL.Path == "/token":
			if got != basicWant {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				fmt.Fprintf(w, `{"details":"bad login %s"}`, got)
				return false
			}
			// A scope whose token request fails, echoing the login.
			if strings.Contains(r.URL.RawQuery, "tokenfail") {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				fmt.Fprintf(w, `{"errors":[{"code":"UNAUTHORIZED","message":"refused %s for %s"}],"details":"%s"}`, got, password, got)
				return false
			}
			if strings.Contains(r.URL.RawQuery, "tokentext") {
				w.Header().Set("Content-Type", "text/plain")
				w.WriteHeader(http.StatusInternalServerError)
				fmt.Fprintf(w, "token server error for %s / %s", got, password)
				return false
			}
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"token":%q,"expires_in":300}`, token)
			return false
		case got != "Bearer "+token:
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="hostile",scope="repository:%s:pull"`,
				bearer.URL, strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/")))
			ociError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
			return false
		}
		return true
	})

	img := basic.Backend.PushImage(t, "team/app", "v1", testhub.ImageOptions{})
	other := basic.Backend.PushImage(t, "team/other", "v1", testhub.ImageOptions{})
	bimg := bearer.Backend.PushImage(t, "team/app", "v1", testhub.ImageOptions{})
	bother := bearer.Backend.PushImage(t, "team/other", "v1", testhub.ImageOptions{})
	upstreams := []struct {
		prefix string
		h      *hostile
		echo   string
		img    testhub.Image
		other  testhub.Image
	}{{"basic", basic, basicWant, img, other}, {"bearer", bearer, "Bearer " + token, bimg, bother}}
	paths := []string{"/manifests/v1", "/manifests/" + digestOf("m"), "/blobs/" + digestOf("b"), "/tags/list", "/referrers/" + digestOf("r")}
	kinds := echoes("", "")

	// Each attack gets a registry of its own (the same upstream under
	// another name): 5xx and 429 answers open breakers and pause classes
	// of requests, which would keep the next attack from being sent.
	var regs strings.Builder
	regs.WriteString("log_level: debug\nregistries:\n")
	registry := func(prefix, kind string, i int) string { return fmt.Sprintf("%s-%s-%d.example", prefix, kind, i) }
	for _, up := range upstreams {
		names := []string{up.prefix + ".example", up.prefix + "-token-0.example", up.prefix + "-token-1.example"}
		for kind := range kinds {
			for i := range paths {
				names = append(names, registry(up.prefix, kind, i))
			}
		}
		for _, name := range names {
			fmt.Fprintf(&regs, "  %s: {url: %s, auth: {username: robot, password_env: ADVERSARIAL_PASSWORD}}\n", name, up.h.URL)
		}
	}
	rc := startRegcache(t, regs.String(), "ADVERSARIAL_PASSWORD="+password)
	accept := http.Header{"Accept": {acceptManifests}}

	// Both work, so regcache has sent its credentials to both.
	for _, up := range upstreams {
		if err := pull(rc.Client, rc.URL, up.prefix+".example/team/app", "v1", accept); err != nil {
			t.Fatalf("a pull from %s: %v", up.prefix, err)
		}
	}

	var answers []string // everything a client was sent
	ask := func(what, path string, hdr http.Header) {
		resp, body, err := send(rc.Client, "GET", rc.URL+path, hdr, nil)
		if err != nil {
			t.Errorf("%s: %v", what, err)
			return
		}
		answers = append(answers, fmt.Sprintf("%s: %d %v %s", what, resp.StatusCode, resp.Header, body))
		if resp.StatusCode < 400 {
			t.Errorf("%s: %d, want an error", what, resp.StatusCode)
		}
	}
	for _, up := range upstreams {
		for kind, fn := range echoes(up.echo, password) {
			// The same answer to a manifest by tag (HEAD and GET), a
			// manifest by digest, a blob, a tags list and referrers.
			repo := "echo/" + kind
			for i, p := range paths {
				up.h.on("", "/v2/"+repo+p, fn)
				ask(up.prefix+" "+kind+" "+p, "/v2/"+registry(up.prefix, kind, i)+"/"+repo+p, accept)
				if up.h.count("GET /v2/"+repo+p)+up.h.count("HEAD /v2/"+repo+p) == 0 {
					t.Errorf("%s %s %s: the upstream was not asked", up.prefix, kind, p)
				}
			}
		}
		// A blob answered by an echo, after its manifest was served well.
		up.h.on("GET", "/v2/team/other/blobs/"+up.other.Layers[0].String(), echoes(up.echo, password)["message"])
		name := up.prefix + "-token-0.example/team/other"
		if resp, body := call(t, rc.Client, "GET", rc.URL+"/v2/"+name+"/manifests/v1", accept); resp.StatusCode != 200 {
			t.Fatalf("%s manifest: %d %s", name, resp.StatusCode, body)
		}
		ask(up.prefix+" blob after a good manifest", "/v2/"+name+"/blobs/"+up.other.Layers[0].String(), nil)
	}
	// The token endpoint's own errors.
	ask("token endpoint error", "/v2/bearer-token-0.example/tokenfail/app/manifests/v1", accept)
	ask("token endpoint text", "/v2/bearer-token-1.example/tokentext/app/manifests/v1", accept)

	// The status page and the metrics are answers too.
	for _, p := range []string{"/_regcache/status", "/metrics"} {
		resp, body := call(t, rc.Client, "GET", rc.URL+p, nil)
		answers = append(answers, fmt.Sprintf("%s: %d %v %s", p, resp.StatusCode, resp.Header, body))
	}

	secrets := append(append([]string{password}, basicCreds.list()...), bearerCreds.list()...)
	if !contains(secrets, token) || !contains(secrets, basicWant) {
		t.Fatalf("the upstreams never saw regcache's credentials: %q", secrets)
	}
	log := rc.wholeLog()
	if !strings.Contains(log, "echo/message") {
		t.Fatal("the log does not show the attacks: the scan below would prove nothing")
	}
	for _, s := range secrets {
		for _, a := range answers {
			if strings.Contains(a, s) {
				t.Errorf("a client was shown %q: %.600s", s, a)
			}
		}
		if i := strings.Index(log, s); i >= 0 {
			t.Errorf("the log shows %q: …%s…", s, log[max(0, i-300):min(len(log), i+100)])
		}
	}
}

// digestOf is a digest nothing has, named by s.
func digestOf(s string) string { return digest.FromString(s).String() }

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
