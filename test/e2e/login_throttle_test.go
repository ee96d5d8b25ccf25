package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

// TestClientsReportThrottledLogins: after many failed logins from one
// address, regcache answers further logins from it with 429
// TOOMANYREQUESTS and Retry-After, at the token endpoint and to Basic
// credentials. Every real client must then fail with a message that says
// so (rather than "wrong password", or a fallback elsewhere), even with
// the right password.
func TestClientsReportThrottledLogins(t *testing.T) {
	w := newWorld(t)
	user, password := "ci", randomSecret(t)
	images, _, rc := startHubAndRegcacheWith(t, w, testhub.Options{}, regcacheConfig{htpasswd: writeHtpasswd(t, w, user, password)})
	host := rc.host()
	img := images[0]
	ref := host + "/docker.io/" + img.repo + ":" + img.tag
	creds := user + ":" + password

	dockerConfig := w.mkdir("throttle-docker-config")
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{host: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(creds))}}})
	if err := os.WriteFile(filepath.Join(dockerConfig, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	clients := []struct {
		name string
		argv func(t *testing.T) ([]string, []string) // command line and environment
	}{
		{"skopeo", func(t *testing.T) ([]string, []string) {
			policy, env := writeContainersConfig(t, w, "throttle-skopeo", "")
			return []string{requireBinary(t, "skopeo", "skopeo"), "--policy", policy, "inspect", "--tls-verify=false", "--creds", creds, "docker://" + ref}, env
		}},
		{"podman", func(t *testing.T) ([]string, []string) {
			policy, env := writeContainersConfig(t, w, "throttle-podman", "")
			return []string{requireBinary(t, "podman", "podman"), "pull", "--signature-policy", policy, "--tls-verify=false", "--creds", creds, ref}, env
		}},
		{"ctr", func(t *testing.T) ([]string, []string) {
			sock := startContainerd(t, w, "throttle-containerd")
			return []string{requireBinary(t, "ctr", "containerd"), "--address", sock, "images", "pull", "--plain-http", "--snapshotter", "native", "--user", creds, ref}, w.baseEnv()
		}},
		{"crane", func(t *testing.T) ([]string, []string) {
			return []string{requireBinary(t, "crane", "crane"), "manifest", "--insecure", ref}, w.baseEnv("DOCKER_CONFIG=" + dockerConfig)
		}},
		{"docker login", func(t *testing.T) ([]string, []string) {
			cfg := dockerdBaseConfig(w)
			cfg["insecure-registries"] = []string{host}
			cfgPath := filepath.Join(w.mkdir("throttle-dockerd"), "daemon.json")
			writeJSON(t, cfgPath, cfg)
			docker, env := startDockerdWithConfig(t, w, cfgPath)
			return []string{docker, "login", "-u", user, "-p", password, host}, append(env, "DOCKER_CONFIG="+w.mkdir("throttle-docker-login"))
		}},
	}
	type prepared struct {
		name      string
		argv, env []string
	}
	var runs []prepared
	for _, c := range clients {
		argv, env := c.argv(t)
		runs = append(runs, prepared{c.name, argv, env})
	}

	// Wrong guesses until this address (and the user name) is held back
	// for 16 s: four free failures, then one each time the hold lapses
	// (1, 2, 4, 8 s); guesses during a hold are no failures.
	failures := 0
	for failures < 8 {
		req, _ := http.NewRequest("GET", rc.url()+"/v2/", nil)
		req.SetBasicAuth(user, fmt.Sprintf("guess-%d", failures))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		switch resp.StatusCode {
		case 401:
			failures++
		case 429:
			wait, err := time.ParseDuration(resp.Header.Get("Retry-After") + "s")
			if err != nil {
				t.Fatalf("429 with Retry-After %q", resp.Header.Get("Retry-After"))
			}
			time.Sleep(wait)
		default:
			t.Fatalf("a wrong guess: %d", resp.StatusCode)
		}
	}
	// The clients run well within those 16 s.
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			out, err := w.run(t.Context(), pullTimeout, r.env, r.argv...)
			if err == nil {
				t.Fatalf("%s logged in while its address was held back:\n%s", r.name, tailLines(out, 10))
			}
			lower := strings.ToLower(out)
			if !strings.Contains(lower, "429") && !strings.Contains(lower, "too many") && !strings.Contains(lower, "toomanyrequests") {
				t.Errorf("%s failed, but does not say it was throttled:\n%s", r.name, tailLines(out, 10))
			}
			t.Logf("%s says: %s", r.name, tailLines(out, 3))
		})
	}
}
