package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/testhub"
)

// serve --check-config loads the config and builds the server from it
// without listening: exit 0 for a good config, an error naming the key or
// file otherwise.
func TestServeCheckConfig(t *testing.T) {
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(dir, "htpasswd")
	os.WriteFile(htpasswd, []byte("ci:"+string(hash)+"\n"), 0o600)
	notADir := filepath.Join(dir, "file")
	os.WriteFile(notADir, []byte("x"), 0o600)
	// A port that is taken: --check-config must not try to listen on it.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	// A partial download of a server already running on this store: the
	// check must leave it alone.
	store := filepath.Join(dir, "data")
	partial := filepath.Join(store, "tmp", "upload-1")
	os.MkdirAll(filepath.Dir(partial), 0o755)
	os.WriteFile(partial, []byte("half"), 0o600)

	base := "listen: " + busy.Addr().String() + "\nstorage: {root: " + store + "}\n"
	hub := "registries:\n  docker.io:\n    url: https://registry-1.docker.io\n    auth: {username: ci, password_env: CHECK_HUB_TOKEN}\n"
	for _, tc := range []struct {
		name    string
		yaml    string
		env     map[string]string
		wantErr []string // empty: must pass
	}{
		{"good", base + hub + "client_auth: {htpasswd: " + htpasswd + "}\nlog_format: json\n", map[string]string{"CHECK_HUB_TOKEN": "s3cret"}, nil},
		{"store not created yet", "storage: {root: " + filepath.Join(dir, "new", "data") + "}\n", nil, nil},
		{"password variable unset", base + hub, nil, []string{"registries.docker.io.auth.password_env", "CHECK_HUB_TOKEN"}},
		{"unknown key", base + "tag_tll: 5m\n", nil, []string{"unknown key tag_tll"}},
		{"htpasswd missing", base + "client_auth: {htpasswd: " + filepath.Join(dir, "nope") + "}\n", nil, []string{"client_auth.htpasswd"}},
		{"store is a file", "storage: {root: " + notADir + "}\n", nil, []string{"storage.root", "not a directory"}},
		{"tls files missing", base + "tls: {certificate: /nonexistent.crt, key: /nonexistent.key}\n", nil, []string{"tls.certificate"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "regcache.yaml")
			os.WriteFile(cfg, []byte(tc.yaml), 0o600)
			t.Setenv("CHECK_HUB_TOKEN", "")
			os.Unsetenv("CHECK_HUB_TOKEN")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			out, err := runCmd(t, "", "serve", "--config", cfg, "--check-config")
			if len(tc.wantErr) == 0 {
				if err != nil || !strings.Contains(out, cfg+": config OK") {
					t.Fatalf("check of a good config: %v\n%s", err, out)
				}
				return
			}
			if err == nil {
				t.Fatalf("check passed; want an error naming %v\n%s", tc.wantErr, out)
			}
			for _, s := range append(tc.wantErr, cfg) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not name %q", err, s)
				}
			}
			if strings.Contains(err.Error()+out, "s3cret") {
				t.Errorf("the check printed the secret: %v\n%s", err, out)
			}
		})
	}
	if _, err := os.Stat(partial); err != nil {
		t.Errorf("--check-config removed a partial download of the store: %v", err)
	}
}

// The config can come as text in $REGCACHE_CONFIG_YAML (ECS on Fargate sets
// variables but mounts no files). It outranks $REGCACHE_CONFIG, which the
// image sets to its default file; with an explicit --config it is refused.
func TestServeConfigSources(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "regcache.yaml")
	os.WriteFile(file, []byte("storage: {root: "+filepath.Join(dir, "from-file")+"}\n"), 0o600)
	inline := "storage: {root: " + filepath.Join(dir, "inline") + "}\nregistries:\n  ghcr.io: {url: https://ghcr.io}\n"
	for _, tc := range []struct {
		name             string
		envFile, envYAML *string
		args             []string
		wantSource       string
		wantErr          string
	}{
		{"defaults", nil, nil, nil, "embedded defaults", ""},
		{"REGCACHE_CONFIG", &file, nil, nil, file, ""},
		{"REGCACHE_CONFIG_YAML", nil, &inline, nil, "$" + configYAMLEnv, ""},
		{"inline text over the image's REGCACHE_CONFIG", &file, &inline, nil, "$" + configYAMLEnv, ""},
		{"--config and inline text", nil, &inline, []string{"--config", file}, "", "use one"},
		{"bad inline text", nil, ptr("registries:\n  ghcr.io: {url: ghcr.io}\n"), nil, "", "registries.ghcr.io.url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for name, v := range map[string]*string{"REGCACHE_CONFIG": tc.envFile, configYAMLEnv: tc.envYAML} {
				t.Setenv(name, "")
				if v == nil {
					os.Unsetenv(name)
				} else {
					t.Setenv(name, *v)
				}
			}
			out, err := runCmd(t, "", append([]string{"serve", "--check-config"}, tc.args...)...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("err %v, want one naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !strings.Contains(out, tc.wantSource+": config OK") {
				t.Errorf("%v\n%s; want the config from %s", err, out, tc.wantSource)
			}
		})
	}
}

func ptr(s string) *string { return &s }

// log_format: json writes one JSON object per line.
func TestServeLogFormatJSON(t *testing.T) {
	addr, err := testhub.FreeAddr("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := loadServeConfigText(t, "listen: "+addr+"\nstorage: {root: "+t.TempDir()+"}\nlog_format: json\n")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	w := testhub.NewTailBuffer(0)
	go func() { done <- serve(ctx, cfg, func() (*config.Config, error) { return cfg, nil }, w) }()
	for !strings.Contains(w.String(), "regcache serving") && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(w.String()), "\n")
	for _, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Errorf("log line is not JSON: %q", l)
		}
	}
	var first struct{ Msg, Level, Addr string }
	json.Unmarshal([]byte(lines[0]), &first)
	if first.Msg != "regcache serving" || first.Level != "INFO" || first.Addr != addr {
		t.Errorf("first line %q", lines[0])
	}
}

func loadServeConfigText(t *testing.T, yaml string) (*config.Config, string, error) {
	t.Helper()
	t.Setenv("REGCACHE_CONFIG", "")
	t.Setenv(configYAMLEnv, yaml)
	return loadServeConfig("")
}
