package e2e

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/regcache/regcache/internal/testhub"
)

// TestDockerdMirrorWithClientAuth: with client_auth, docker.io listed under
// anonymous_registries stays usable as dockerd's registry-mirror, which
// cannot be given a login for a mirror: with no Docker Hub login, and with
// one, which dockerd forwards to the mirror and regcache must ignore rather
// than refuse.
func TestDockerdMirrorWithClientAuth(t *testing.T) {
	w := newWorld(t)
	password := randomSecret(t)
	images, _, rc := startHubAndRegcacheWith(t, w, testhub.Options{},
		regcacheConfig{htpasswd: writeHtpasswd(t, w, "ci", password), anonymous: []string{"docker.io"}})

	// registry-mirrors as usual, plus insecure-registries so that
	// `docker login` may talk plain HTTP to regcache.
	cfg := dockerdBaseConfig(w)
	cfg["registry-mirrors"] = []string{"http://" + rc.host()}
	cfg["insecure-registries"] = []string{rc.host()}
	cfgPath := filepath.Join(w.mkdir("dockerd"), "daemon.json")
	writeJSON(t, cfgPath, cfg)
	docker, env := startDockerdWithConfig(t, w, cfgPath)
	// A Docker Hub login in the CLI's config: the CLI hands it to dockerd
	// with the pull, and dockerd offers it to the mirror.
	hubLogin := "dockerhub-user:dckr_pat_" + randomSecret(t)
	loginConfig := w.mkdir("docker-hub-login")
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{
		"https://index.docker.io/v1/": map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(hubLogin))},
	}})
	if err := os.WriteFile(filepath.Join(loginConfig, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  []string
		imgs []testImage
	}{
		{"no Docker Hub login", env, images[:2]},
		{"with a Docker Hub login", append(append([]string(nil), env...), "DOCKER_CONFIG="+loginConfig), images[2:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pull := dockerPuller(w, docker, tc.env)
			for _, img := range tc.imgs {
				if got := pull(t, img); got != img.want {
					t.Errorf("dockerd pulled %s:%s with digest %q, upstream has %s", img.repo, img.tag, got, img.want)
				}
			}
		})
	}
	// docker login goes through the token flow and asks for an offline
	// token, which a wrong password does not get.
	loginDir := w.mkdir("docker-login")
	loginEnv := append(append([]string(nil), env...), "DOCKER_CONFIG="+loginDir)
	if out, err := w.run(t.Context(), pullTimeout, loginEnv, docker, "login", "-u", "ci", "-p", "not-"+password, rc.host()); err == nil {
		t.Errorf("docker login with a wrong password succeeded:\n%s", out)
	} else if !strings.Contains(out, "invalid username or password") {
		t.Errorf("docker login with a wrong password failed, but not for that:\n%s", out)
	}
	if out, err := w.run(t.Context(), pullTimeout, loginEnv, docker, "login", "-u", "ci", "-p", password, rc.host()); err != nil || !strings.Contains(out, "Login Succeeded") {
		t.Errorf("docker login: %v\n%s", err, out)
	}
	rc.stop()
	log := readFile(t, rc.proc.log)
	if strings.Contains(log, password) {
		t.Error("the client password appears in regcache's log")
	}
	if strings.Contains(log, "client authentication failed") {
		t.Error("regcache refused the Docker Hub login dockerd forwarded for an anonymous registry")
	}
	if strings.Contains(log, strings.SplitN(hubLogin, ":", 2)[1]) {
		t.Error("the forwarded Docker Hub token appears in regcache's log")
	}
}
