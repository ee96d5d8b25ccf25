package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/regcache/regcache/internal/testhub"
)

// TestClientsLogInOverTLS: with tls: and client_auth:, regcache serves
// HTTPS and every client must log in. Each real client is given the
// certificate and a login in its own usual way (cert dirs, hosts.toml ca,
// SSL_CERT_FILE; --creds, --user, a docker config.json) and pulls the
// upstream's digests; without a login it is refused. dockerd is not here:
// it reads registry certificates only from /etc/docker/certs.d on the host.
func TestClientsLogInOverTLS(t *testing.T) {
	w := newWorld(t)
	cert := testhub.SelfSignedCert(t, w.mkdir("tls"))
	certDir := w.mkdir("tls-ca") // containers-image reads *.crt from a directory
	if err := os.WriteFile(filepath.Join(certDir, "ca.crt"), []byte(readFile(t, cert.CertFile)), 0o644); err != nil {
		t.Fatal(err)
	}
	user, password := "ci", randomSecret(t)
	images, _, rc := startHubAndRegcacheWith(t, w, testhub.Options{}, regcacheConfig{cert: &cert, htpasswd: writeHtpasswd(t, w, user, password)})
	host := rc.host()
	creds := user + ":" + password

	// A docker config.json with the login, for the clients that read one.
	dockerConfig := w.mkdir("login-docker-config")
	auths := map[string]any{"auths": map[string]any{host: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(creds))}}}
	b, _ := json.Marshal(auths)
	if err := os.WriteFile(filepath.Join(dockerConfig, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	goEnv := w.baseEnv("SSL_CERT_FILE="+cert.CertFile, "DOCKER_CONFIG="+dockerConfig)

	type puller func(t *testing.T, img testImage, login bool) (string, error)
	// goClient pulls into an OCI layout with a Go client (crane, regctl),
	// which trusts SSL_CERT_FILE and finds the login in DOCKER_CONFIG.
	goClient := func(name string, argv func(ref, dest string, img testImage) []string) puller {
		return func(t *testing.T, img testImage, login bool) (string, error) {
			env := goEnv
			if !login {
				env = w.baseEnv("SSL_CERT_FILE=" + cert.CertFile)
			}
			dest := filepath.Join(w.mkdir(name), fmt.Sprintf("%s-%v", img.name, login))
			out, err := w.run(t.Context(), pullTimeout, env, argv(host+"/docker.io/"+img.repo+":"+img.tag, dest, img)...)
			if err != nil {
				return out, err
			}
			return ociLayoutDigest(t, dest), nil
		}
	}
	clients := []struct {
		name  string
		setup func(t *testing.T) puller
	}{
		{"skopeo", func(t *testing.T) puller {
			bin := requireBinary(t, "skopeo", "skopeo")
			policy, env := writeContainersConfig(t, w, "skopeo-login", "")
			return func(t *testing.T, img testImage, login bool) (string, error) {
				args := []string{"--policy", policy, "inspect", "--no-tags", "--cert-dir", certDir, "--format", "{{.Digest}}"}
				if login {
					args = append(args, "--creds", creds)
				}
				out, err := w.run(t.Context(), pullTimeout, env, append(append([]string{bin}, args...), "docker://"+host+"/docker.io/"+img.repo+":"+img.tag)...)
				if err != nil || !login {
					return out, err
				}
				dest := filepath.Join(w.mkdir("skopeo-login", "out"), img.name)
				w.mustRun(t, pullTimeout, env, bin, "--policy", policy, "copy", "--all", "--src-creds", creds,
					"--src-cert-dir", certDir, "docker://"+host+"/docker.io/"+img.repo+":"+img.tag, "dir:"+dest)
				return strings.TrimSpace(out), nil
			}
		}},
		{"crane", func(t *testing.T) puller {
			bin := requireBinary(t, "crane", "crane")
			return goClient("crane-login", func(ref, dest string, img testImage) []string {
				return []string{bin, "pull", "--format", "oci", ref, dest}
			})
		}},
		{"regctl", func(t *testing.T) puller {
			bin := requireBinary(t, "regctl", "regctl")
			return goClient("regctl-login", func(ref, dest string, img testImage) []string {
				return []string{bin, "image", "copy", ref, "ocidir://" + dest + ":" + img.tag}
			})
		}},
		{"podman", func(t *testing.T) puller {
			bin := requireBinary(t, "podman", "podman")
			policy, env := writeContainersConfig(t, w, "podman-login", "")
			return func(t *testing.T, img testImage, login bool) (string, error) {
				ref := host + "/docker.io/" + img.repo + ":" + img.tag
				args := []string{bin, "pull", "--signature-policy", policy, "--cert-dir", certDir}
				if login {
					args = append(args, "--creds", creds)
				}
				out, err := w.run(t.Context(), pullTimeout, env, append(args, ref)...)
				if err != nil {
					return out, err
				}
				out = w.mustRun(t, time.Minute, env, bin, "image", "inspect", "--format", "{{json .RepoDigests}}", ref)
				var repoDigests []string
				if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &repoDigests); err != nil {
					t.Fatalf("podman image inspect: %v: %q", err, out)
				}
				return pickDigest(repoDigests, img.want), nil
			}
		}},
		{"ctr", func(t *testing.T) puller {
			ctr := requireBinary(t, "ctr", "containerd")
			sock := startContainerd(t, w, "containerd-login")
			hostsDir := w.mkdir("login-certs.d")
			hosts := fmt.Sprintf("server = \"https://registry-1.docker.io\"\n\n[host.\"https://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = %q\n", host, cert.CertFile)
			if err := os.WriteFile(filepath.Join(w.mkdir("login-certs.d", "docker.io"), "hosts.toml"), []byte(hosts), 0o644); err != nil {
				t.Fatal(err)
			}
			env := w.baseEnv()
			return func(t *testing.T, img testImage, login bool) (string, error) {
				ref := "docker.io/" + img.repo + ":" + img.tag
				args := []string{ctr, "--address", sock, "-n", fmt.Sprintf("login-%v", login), "images", "pull",
					"--snapshotter", "native", "--hosts-dir", hostsDir}
				if login {
					args = append(args, "--user", creds)
				}
				out, err := w.run(t.Context(), pullTimeout, env, append(args, ref)...)
				if err != nil {
					return out, err
				}
				out = w.mustRun(t, time.Minute, env, ctr, "--address", sock, "-n", fmt.Sprintf("login-%v", login), "images", "ls")
				return field(out, ref, 2), nil
			}
		}},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			pull := c.setup(t)
			if out, err := pull(t, images[0], false); err == nil {
				t.Errorf("%s pulled through regcache without a login:\n%s", c.name, tailLines(out, 10))
			} else if lower := strings.ToLower(out); !strings.Contains(lower, "unauthorized") && !strings.Contains(lower, "authentication required") && !strings.Contains(lower, "401") {
				t.Errorf("%s was refused, but not for want of a login:\n%s", c.name, tailLines(out, 10))
			}
			for _, img := range images {
				got, err := pull(t, img, true)
				if err != nil {
					t.Fatalf("%s with a login: %v\n%s", c.name, err, tailLines(got, 20))
				}
				if got != img.want {
					t.Errorf("%s pulled docker.io/%s:%s with digest %q, upstream has %s", c.name, img.repo, img.tag, got, img.want)
				}
			}
		})
	}
	t.Cleanup(func() {
		// Runs after the client subtests: the client login must not be in
		// regcache's own log or metrics (the clients' command lines carry
		// it, so the world's secret scan cannot be given it).
		rc.stop()
		for _, f := range []string{rc.proc.log} {
			if strings.Contains(readFile(t, f), password) {
				t.Errorf("the client password appears in %s", filepath.Base(f))
			}
		}
	})
}

// writeHtpasswd writes regcache's client_auth file with one user.
func writeHtpasswd(t *testing.T, w *world, user, password string) string {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(w.mkdir("regcache-etc"), "htpasswd")
	if err := os.WriteFile(p, []byte(user+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
