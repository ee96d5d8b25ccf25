package credentials

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	regconfig "github.com/regcache/regcache/internal/config"
)

func TestFor(t *testing.T) {
	dir := t.TempDir()
	// A credential helper, as docker-credential-ecr-login or -pass would be.
	helperDir := filepath.Join(dir, "bin")
	os.MkdirAll(helperDir, 0o755)
	helper := "#!/bin/sh\nread server\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"helper-user\",\"Secret\":\"helper-secret\"}' \"$server\"\n"
	if err := os.WriteFile(filepath.Join(helperDir, "docker-credential-rctest"), []byte(helper), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", helperDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	auth := base64.StdEncoding.EncodeToString([]byte("hub-user:hub-secret"))
	cfgJSON := `{"auths":{"https://index.docker.io/v1/":{"auth":"` + auth + `"}},"credHelpers":{"ghcr.io":"rctest"}}`
	cfgDir := filepath.Join(dir, "docker")
	os.MkdirAll(cfgDir, 0o755)
	os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(cfgJSON), 0o600)
	os.WriteFile(filepath.Join(dir, "broken.json"), []byte("{not json"), 0o600)
	t.Setenv("RC_CRED_TEST", "env-secret")

	tests := []struct {
		name     string
		registry string
		auth     *regconfig.Auth
		user     string
		pass     string
		wantErr  string
	}{
		{"anonymous", "docker.io", nil, "", "", ""},
		{"env password", "docker.io", &regconfig.Auth{Username: "u", PasswordEnv: "RC_CRED_TEST"}, "u", "env-secret", ""},
		{"docker config auths, Docker Hub key", "docker.io", &regconfig.Auth{DockerConfig: cfgDir}, "hub-user", "hub-secret", ""},
		{"docker config file path", "docker.io", &regconfig.Auth{DockerConfig: filepath.Join(cfgDir, "config.json")}, "hub-user", "hub-secret", ""},
		{"credential helper", "ghcr.io", &regconfig.Auth{DockerConfig: cfgDir}, "helper-user", "helper-secret", ""},
		{"no entry is anonymous", "quay.io", &regconfig.Auth{DockerConfig: cfgDir}, "", "", ""},
		{"missing config", "docker.io", &regconfig.Auth{DockerConfig: filepath.Join(dir, "nope")}, "", "", "registries.x.auth.docker_config: cannot read " + filepath.Join(dir, "nope")},
		{"broken config", "docker.io", &regconfig.Auth{DockerConfig: filepath.Join(dir, "broken.json")}, "", "", "registries.x.auth.docker_config: cannot parse"},
		{"unset env", "docker.io", &regconfig.Auth{Username: "u", PasswordEnv: "RC_CRED_UNSET"}, "", "", "registries.x.auth.password_env"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := For(tc.registry, tc.auth, "registries.x.auth")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ac, err := a.Authorization()
			if err != nil {
				t.Fatal(err)
			}
			user, pass := ac.Username, ac.Password
			if ac.Auth != "" {
				b, _ := base64.StdEncoding.DecodeString(ac.Auth)
				user, pass, _ = strings.Cut(string(b), ":")
			}
			if user != tc.user || pass != tc.pass {
				t.Fatalf("got %q/%q, want %q/%q", user, pass, tc.user, tc.pass)
			}
		})
	}
}
