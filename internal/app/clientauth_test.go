package app

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
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
	private := "/v2/private.example/library/alpine/manifests/latest"
	privateBlob := "/v2/private.example/library/alpine/blobs/" + img.Layers[0].String()

	for _, tc := range []struct {
		name     string
		path     string
		hdr      map[string]string
		want     int
		wantCode string
	}{
		{"ping without credentials gets the challenge", "/v2/", none, 401, "UNAUTHORIZED"},
		{"ping with credentials", "/v2/", good, 200, ""},
		{"ping with a wrong password", "/v2/", wrong, 401, "UNAUTHORIZED"},
		{"anonymous registry, no credentials", "/v2/library/alpine/manifests/latest", none, 200, ""},
		{"anonymous registry, host in path", "/v2/docker.io/library/alpine/manifests/latest", none, 200, ""},
		{"anonymous registry, forwarded Docker Hub login", "/v2/library/alpine/manifests/latest", hubLogin, 200, ""},
		{"private registry, no credentials", private, none, 401, "UNAUTHORIZED"},
		{"private registry, empty credentials (containers/image without a login)", private, basic("", ""), 401, "UNAUTHORIZED"},
		{"private registry blob, no credentials", privateBlob, none, 401, "UNAUTHORIZED"},
		{"private registry, wrong password", private, wrong, 401, "UNAUTHORIZED"},
		{"private registry, Docker Hub login", private, hubLogin, 401, "UNAUTHORIZED"},
		{"private registry, credentials", private, good, 200, ""},
		{"private registry blob, credentials", privateBlob, good, 200, ""},
		{"unconfigured registry, no credentials: nothing revealed", "/v2/elsewhere.example/x/manifests/1", none, 401, "UNAUTHORIZED"},
		{"unconfigured registry, credentials", "/v2/elsewhere.example/x/manifests/1", good, 404, "NAME_UNKNOWN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := s.do("GET", tc.path, tc.hdr)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
			if tc.wantCode != "" {
				if code, _ := ociError(t, body); code != tc.wantCode {
					t.Errorf("code %s, want %s", code, tc.wantCode)
				}
			}
			if challenge := resp.Header.Get("WWW-Authenticate"); (tc.want == 401) != (challenge == `Basic realm="regcache"`) {
				t.Errorf("WWW-Authenticate %q with status %d", challenge, resp.StatusCode)
			}
		})
	}

	failures := s.app.Metrics.ClientAuthFailures
	if got := testutil.ToFloat64(failures.WithLabelValues("missing")); got != 4 {
		t.Errorf("missing-credential failures %v, want 4 (the /v2/ challenge is not one)", got)
	}
	if got := testutil.ToFloat64(failures.WithLabelValues("invalid")); got != 3 {
		t.Errorf("invalid-credential failures %v, want 3", got)
	}
	logs := s.logs.String()
	if !strings.Contains(logs, `msg="client authentication failed" user=ci`) {
		t.Error("a wrong password for a known user was not logged")
	}
	for _, secret := range []string{password, hubLogin["Authorization"][6:], good["Authorization"][6:]} {
		if strings.Contains(logs, secret) {
			t.Error("a client credential appears in regcache's logs")
		}
	}
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
	if status("ci", oldPW) != 200 {
		t.Fatal("the first password does not work")
	}

	// A new password for ci, and a new user.
	writeUsers(t, htpasswd, map[string]string{"ci": newPW, "ops": opsPW})
	eventually("new password and new user", func() bool { return status("ci", newPW) == 200 && status("ops", opsPW) == 200 })
	if status("ci", oldPW) != 401 {
		t.Error("the old password still works after it was changed (remembered logins must not survive a reload)")
	}

	// A broken file keeps the users in force and is reported once.
	if err := os.WriteFile(htpasswd, []byte("ci:not-a-bcrypt-hash\nops\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually("error logged", func() bool { return strings.Contains(s.logs.String(), "client_auth.htpasswd not reloaded") })
	time.Sleep(50 * time.Millisecond) // several more checks of the same broken file
	if status("ci", newPW) != 200 || status("ops", opsPW) != 200 {
		t.Error("a broken htpasswd file locked the users out")
	}
	if n := strings.Count(s.logs.String(), "client_auth.htpasswd not reloaded"); n != 1 {
		t.Errorf("the same error was logged %d times", n)
	}

	// Removing a user takes effect at once.
	writeUsers(t, htpasswd, map[string]string{"ops": opsPW})
	eventually("ci removed", func() bool { return status("ci", newPW) == 401 })
	if status("ops", opsPW) != 200 {
		t.Error("ops lost access when ci was removed")
	}
	for _, pw := range []string{oldPW, newPW, opsPW} {
		if strings.Contains(s.logs.String(), pw) {
			t.Error("a client password appears in the logs")
		}
	}
}

func writeUsers(t *testing.T, path string, users map[string]string) {
	t.Helper()
	var b strings.Builder
	for u, pw := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(u + ":" + string(h) + "\n")
	}
	// Write and rename, as config management does: the watcher never
	// reads a half-written file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
