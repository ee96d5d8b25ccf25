package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaults(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":5000" || c.Storage.Root != "./regcache-data" || c.DefaultRegistry != "docker.io" || c.TagTTL.D() != 5*time.Minute || c.LogFormat != "text" {
		t.Fatalf("unexpected defaults: %+v", c)
	}
	for _, r := range []string{"docker.io", "ghcr.io", "quay.io", "gcr.io", "registry.k8s.io", "public.ecr.aws"} {
		if _, ok := c.Registries[r]; !ok {
			t.Errorf("default registry %s missing", r)
		}
	}
	if c.Registries["docker.io"].URL != "https://registry-1.docker.io" {
		t.Errorf("docker.io url = %s", c.Registries["docker.io"].URL)
	}
	if name, ok := c.Lookup("index.docker.io"); !ok || name != "docker.io" {
		t.Errorf("alias lookup = %q %v", name, ok)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantSub []string // all must appear in the error
	}{
		{"unknown top-level key", "listen: :5000\nlisten_addr: x\n", []string{"unknown key listen_addr", "line 2"}},
		{"unknown nested key", "registries:\n  ghcr.io:\n    url: https://ghcr.io\n    urls: x\n", []string{"unknown key urls"}},
		{"bad duration", "tag_ttl: 5 minutes\n", []string{"5 minutes", "not a duration"}},
		{"negative duration", "tag_ttl: -1s\n", []string{"negative"}},
		{"bad url", "registries:\n  ghcr.io:\n    url: ghcr.io\n", []string{"registries.ghcr.io.url"}},
		{"missing url", "registries:\n  ghcr.io: {}\n", []string{"registries.ghcr.io.url"}},
		{"url with credentials", "registries:\n  ghcr.io:\n    url: https://u:p@ghcr.io\n", []string{"registries.ghcr.io.url", "credentials"}},
		{"two password sources", "registries:\n  docker.io:\n    url: https://registry-1.docker.io\n    auth: {username: u, password_env: A, password_file: /x}\n", []string{"registries.docker.io.auth", "only one"}},
		{"no username", "registries:\n  docker.io:\n    url: https://registry-1.docker.io\n    auth: {password_env: A}\n", []string{"registries.docker.io.auth.username"}},
		{"default not configured", "default_registry: quay.io\nregistries:\n  ghcr.io:\n    url: https://ghcr.io\n", []string{"default_registry", "quay.io"}},
		{"bad mirror url", "registries:\n  docker.io:\n    url: https://registry-1.docker.io\n    mirrors:\n      - url: nope\n", []string{"registries.docker.io.mirrors[0].url"}},
		{"bad log level", "log_level: loud\n", []string{"log_level"}},
		{"bad log format", "log_format: logfmt\n", []string{"log_format", "text, json"}},
		{"bad size", "storage: {max_size: lots}\n", []string{"lots", "not a size"}},
		{"bad size unit", "storage: {max_size: 5 parsecs}\n", []string{"unknown unit"}},
		{"client_auth without htpasswd", "client_auth: {anonymous_registries: [docker.io]}\n", []string{"client_auth.htpasswd"}},
		{"anonymous registry not configured", "client_auth: {htpasswd: /x, anonymous_registries: [example.org]}\n", []string{"client_auth.anonymous_registries", "example.org"}},
		{"unknown client_auth key", "client_auth: {htpasswd: /x, users: [a]}\n", []string{"unknown key users"}},
		{"client_auth.metrics neither open nor login", "client_auth: {htpasswd: /x, metrics: closed}\n", []string{"client_auth.metrics", `"closed"`, "open, login"}},
		{"tls without key", "tls: {certificate: /c.pem}\n", []string{"tls.key"}},
		{"tls without certificate", "tls: {key: /k.pem}\n", []string{"tls.certificate"}},
		{"s3 without bucket", "storage: {s3: {region: eu-west-1}}\n", []string{"storage.s3.bucket", "must be set"}},
		{"s3 bad bucket", "storage: {s3: {bucket: My_Bucket}}\n", []string{"storage.s3.bucket", "My_Bucket"}},
		{"s3 bad endpoint", "storage: {s3: {bucket: cache, endpoint: minio:9000}}\n", []string{"storage.s3.endpoint"}},
		{"s3 bad prefix", "storage: {s3: {bucket: cache, prefix: a//b}}\n", []string{"storage.s3.prefix"}},
		{"s3 redirect expiry too long", "storage: {s3: {bucket: cache, redirect: true, redirect_expiry: 200h}}\n", []string{"storage.s3.redirect_expiry"}},
		{"s3 unknown key", "storage: {s3: {bucket: cache, access_key: x}}\n", []string{"unknown key access_key"}},
		{"duplicate alias", "registries:\n  docker.io:\n    url: https://a.example\n    aliases: [ghcr.io]\n  ghcr.io:\n    url: https://ghcr.io\n", []string{"aliases", "ghcr.io"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), "test.yaml")
			if err == nil {
				t.Fatal("no error")
			}
			for _, s := range append(tc.wantSub, "test.yaml") {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

// A value in the wrong place may be a password: errors name the line, the
// key and the types, never the value.
func TestParseErrorsHideMisplacedValues(t *testing.T) {
	const reg = "registries:\n  docker.io:\n    url: https://r.example\n"
	tests := []struct {
		name    string
		yaml    string
		secret  string
		wantSub []string
	}{
		{"scalar where a mapping goes", reg + "    auth: s3cr3tpw\n", "s3cr3tpw", []string{"line 4", "!!str", "config.Auth", "value not shown"}},
		{"backquote in the value", reg + "    auth: s3cr`et into x\n", "s3cr", []string{"line 4", "config.Auth"}},
		{"no space after the colon", reg + "    auth: {username: u, password:hunter2}\n", "hunter2", []string{"line 4", "unknown key password", "no space after the colon"}},
		{"anchor before a scalar", "&password:0000000", "0000000", []string{"line 1", "config.Config"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), "test.yaml")
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), tc.secret) {
				t.Errorf("error %q shows the value %q", err, tc.secret)
			}
			for _, s := range tc.wantSub {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

func TestParseOverridesAndReplacesRegistries(t *testing.T) {
	c, err := Parse([]byte("tag_ttl: 0s\nregistries:\n  docker.io:\n    url: http://127.0.0.1:5001\n"), "x")
	if err != nil {
		t.Fatal(err)
	}
	if c.TagTTL.D() != 0 || c.Listen != ":5000" {
		t.Fatalf("got %+v", c)
	}
	if len(c.Registries) != 1 {
		t.Fatalf("a file's registries must replace the defaults, got %d", len(c.Registries))
	}
	if c, err := Parse(nil, "empty"); err != nil || len(c.Registries) != 6 || c.DefaultRegistry != "docker.io" {
		t.Fatalf("empty file: %v, %+v", err, c)
	}
	if c, err := Parse([]byte("registries:\n  ghcr.io: {url: https://ghcr.io}\n"), "x"); err != nil || c.DefaultRegistry != "" {
		t.Fatalf("ghcr.io only: %v, default %q", err, c.DefaultRegistry)
	}
}

func TestSecret(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "hub")
	os.WriteFile(good, []byte("s3cret\n"), 0o600)
	t.Setenv("RC_TEST_PW", "fromenv")
	tests := []struct {
		name    string
		auth    Auth
		want    string
		wantSub string
	}{
		{"inline", Auth{Username: "u", Password: "p"}, "p", ""},
		{"env", Auth{Username: "u", PasswordEnv: "RC_TEST_PW"}, "fromenv", ""},
		{"env missing", Auth{Username: "u", PasswordEnv: "RC_TEST_MISSING"}, "", "registries.x.auth.password_env: environment variable RC_TEST_MISSING"},
		{"file", Auth{Username: "u", PasswordFile: good}, "s3cret", ""},
		{"file unreadable", Auth{Username: "u", PasswordFile: filepath.Join(dir, "nope")}, "", "registries.x.auth.password_file: cannot read " + filepath.Join(dir, "nope")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.auth.Secret("registries.x.auth")
			if tc.wantSub != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantSub) {
					t.Fatalf("err = %v, want %q", err, tc.wantSub)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Secret = %q, %v", got, err)
			}
		})
	}
}

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{
		{"0", 0}, {"1024", 1024}, {"500MiB", 500 << 20}, {"50GB", 50e9}, {"1.5 GiB", 3 << 29}, {"2TiB", 2 << 40}, {"10k", 10240},
	}
	for _, tc := range tests {
		got, err := ParseByteSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestParseS3Storage(t *testing.T) {
	c, err := Parse([]byte("storage:\n  s3:\n    bucket: regcache-cache\n    endpoint: http://127.0.0.1:7070\n    path_style: true\n    prefix: eu/\n    redirect: true\n"), "x")
	if err != nil {
		t.Fatal(err)
	}
	s := c.Storage.S3
	if s == nil || s.Bucket != "regcache-cache" || !s.PathStyle || s.Prefix != "eu/" || !s.Redirect || s.RedirectExpiry.D() != 20*time.Minute {
		t.Fatalf("got %+v", s)
	}
	if d := Default(); d.Storage.S3 != nil {
		t.Fatal("the embedded default is not the filesystem store")
	}
}
