package deploy

import (
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/regcache/regcache/internal/config"
)

const composeDir = "compose"

// The three-replica compose deployment is one regcache config that
// regcache accepts, every file it names is a secret the replicas mount,
// each replica advertises its own address, and HAProxy (checked by
// `haproxy -c`) balances over all of them on /readyz.
func TestComposeDeployment(t *testing.T) {
	haproxy := requireTool(t, "haproxy")
	raw, err := os.ReadFile(filepath.Join(composeDir, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
			Secrets     []string          `yaml:"secrets"`
		} `yaml:"services"`
		Secrets map[string]struct {
			File string `yaml:"file"`
		} `yaml:"secrets"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	cfgText, err := os.ReadFile(filepath.Join(composeDir, "regcache.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(cfgText, "compose/regcache.yaml")
	if err != nil {
		t.Fatalf("regcache does not accept the compose config: %v", err)
	}
	if cfg.Cluster == nil || cfg.Storage.S3 == nil {
		t.Fatal("the compose config is not a cluster on a shared store")
	}
	var replicas []string
	advertised := map[string]bool{}
	for name, svc := range doc.Services {
		if !strings.HasPrefix(name, "regcache-") {
			continue
		}
		replicas = append(replicas, name)
		if svc.Environment["REGCACHE_CONFIG"] != "/etc/regcache/regcache.yaml" ||
			!containsPrefix(svc.Volumes, "./regcache.yaml:/etc/regcache/regcache.yaml") {
			t.Errorf("%s does not run the shared config", name)
		}
		adv := svc.Environment[cfg.Cluster.AdvertiseEnv]
		if adv != "http://"+name+":5000" || advertised[adv] {
			t.Errorf("%s advertises %q: each replica must advertise its own service name and port", name, adv)
		}
		advertised[adv] = true
		// Every file the config reads is a secret this replica mounts.
		for _, file := range []string{cfg.Cluster.SecretFile, cfg.Registries["docker.io"].Auth.PasswordFile, svc.Environment["AWS_SHARED_CREDENTIALS_FILE"]} {
			secret := strings.TrimPrefix(file, "/run/secrets/")
			if path.Dir(file) != "/run/secrets" || !contains(svc.Secrets, secret) || doc.Secrets[secret].File == "" {
				t.Errorf("%s: %s is not a mounted secret", name, file)
			}
		}
	}
	if len(replicas) != 3 {
		t.Fatalf("%d replicas, want 3", len(replicas))
	}
	hc, err := os.ReadFile(filepath.Join(composeDir, "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range replicas {
		if !regexp.MustCompile(`(?m)^\s*server ` + r + ` ` + r + `:5000 check`).Match(hc) {
			t.Errorf("haproxy.cfg does not balance over %s", r)
		}
	}
	if !strings.Contains(string(hc), "option httpchk GET /readyz") {
		t.Error("haproxy.cfg does not check /readyz")
	}
	if out, err := run(t, composeDir, haproxy, "-c", "-f", "haproxy.cfg"); err != nil {
		t.Errorf("haproxy -c: %v\n%s", err, out)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func containsPrefix(list []string, p string) bool {
	for _, v := range list {
		if strings.HasPrefix(v, p) {
			return true
		}
	}
	return false
}
