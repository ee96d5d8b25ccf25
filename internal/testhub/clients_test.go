package testhub

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestRealClients pulls through the hub with independent registry clients,
// when they are installed: token flow, platform selection, blob redirect and
// the digests of what PushIndex seeded all have to satisfy them.
func TestRealClients(t *testing.T) {
	reg := StartRegistry(t)
	idx := reg.PushIndex(t, "library/node", "21", []string{"linux/amd64", "linux/arm64"}, false)
	arm := idx.Children["linux/arm64"]
	users := map[string]string{"alice": "pw"}

	tests := []struct {
		name string
		tool string
		opts Options
		args func(hub *Hub, dir string) []string
	}{
		{"skopeo anonymous via CDN", "skopeo", Options{BlobRedirect: true, AnonymousLimit: 10}, func(hub *Hub, dir string) []string {
			return []string{"copy", "--src-tls-verify=false", "--override-arch", "arm64", "docker://" + hub.Host + "/library/node:21", "dir:" + dir}
		}},
		{"skopeo with credentials", "skopeo", Options{Users: users, UserLimit: 10}, func(hub *Hub, dir string) []string {
			return []string{"copy", "--src-tls-verify=false", "--src-creds", "alice:pw", "--override-arch", "arm64", "docker://" + hub.Host + "/library/node:21", "dir:" + dir}
		}},
		{"skopeo basic registry", "skopeo", Options{BasicAuth: true, Users: users}, func(hub *Hub, dir string) []string {
			return []string{"copy", "--src-tls-verify=false", "--src-creds", "alice:pw", "--override-arch", "arm64", "docker://" + hub.Host + "/library/node:21", "dir:" + dir}
		}},
		{"skopeo ECR-style mirror", "skopeo", Options{RepoPrefix: "docker/", Service: "public.ecr.aws", Scope: "aws"}, func(hub *Hub, dir string) []string {
			return []string{"copy", "--src-tls-verify=false", "--override-arch", "arm64", "docker://" + hub.Host + "/docker/library/node:21", "dir:" + dir}
		}},
		{"crane via CDN host name", "crane", Options{BlobRedirect: true, CDNHostname: "localhost"}, func(hub *Hub, dir string) []string {
			return []string{"pull", "--insecure", "--platform", "linux/arm64", "--format", "oci", hub.Host + "/library/node:21", dir}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bin, err := exec.LookPath(tc.tool)
			if err != nil {
				t.Skipf("%s not installed", tc.tool)
			}
			hub := NewHub(t, reg, tc.opts)
			dir := filepath.Join(t.TempDir(), "out")
			cmd := exec.CommandContext(t.Context(), bin, tc.args(hub, dir)...)
			// Keep the tools away from the user's auth and policy files.
			cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "REGISTRY_AUTH_FILE="+filepath.Join(t.TempDir(), "auth.json"), "DOCKER_CONFIG="+t.TempDir())
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
			}
			if tc.tool == "skopeo" {
				m, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
				if err != nil || digest.FromBytes(m) != arm.Digest {
					t.Errorf("skopeo copied manifest %s (%v), want arm64 child %s", digest.FromBytes(m), err, arm.Digest)
				}
			}
			c := hub.Counts()
			for _, l := range arm.Layers {
				if c.BlobGETs[l] != 1 {
					t.Errorf("arm64 layer %s fetched %d times, want 1", l, c.BlobGETs[l])
				}
			}
			if c.ManifestGETs < 1 || c.CDNAuthHeaders != 0 || c.Requests == 0 {
				t.Errorf("counts %+v", c)
			}
		})
	}
}
