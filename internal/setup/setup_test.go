package setup

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	gold "github.com/regcache/regcache/internal/golden"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got []byte) {
	gold.Check(t, filepath.Join("testdata", name), got, *update)
}

// renderVariants are the servers every target's output is pinned for:
// plain http, https with a certificate clients cannot verify, https with a
// private CA (--ca-file), each with and without client_auth (--username).
func renderVariants() []struct {
	name string
	opts Options
} {
	ca := filepath.Join("testdata", "ca.crt")
	return []struct {
		name string
		opts Options
	}{
		{"http", Options{Server: "http://cache.internal:5000", Registries: []string{"docker.io", "ghcr.io"}}},
		{"http-login", Options{Server: "http://cache.internal:5000", Registries: []string{"docker.io", "ghcr.io"}, Username: "ci"}},
		{"https-insecure", Options{Server: "https://regcache.example.com", Insecure: true, Registries: []string{"docker.io"}}},
		{"https-ca", Options{Server: "https://regcache.example.com", CAFile: ca}},
		{"https-ca-login", Options{Server: "https://regcache.example.com", CAFile: ca, Username: "ci", PasswordEnv: "REGCACHE_CI_PASSWORD"}},
		{"https-login", Options{Server: "https://regcache.example.com", Username: "ci"}},
	}
}

// renderTargets are the targets plus the options that change a target's
// output (docker --hosts-toml, buildkit --buildx), each under its own name.
func renderTargets() []struct {
	name  string
	tg    Target
	tweak func(*Options)
} {
	var out []struct {
		name  string
		tg    Target
		tweak func(*Options)
	}
	for _, tg := range Targets() {
		tweak := func(*Options) {}
		if tg.Name == "kind" {
			tweak = func(o *Options) { o.Path = "/srv/kind/regcache-certs.d" } // stable across machines
		}
		out = append(out, struct {
			name  string
			tg    Target
			tweak func(*Options)
		}{tg.Name, tg, tweak})
	}
	docker, _ := Lookup("docker")
	buildkit, _ := Lookup("buildkit")
	return append(out, struct {
		name  string
		tg    Target
		tweak func(*Options)
	}{"docker-hosts-toml", docker, func(o *Options) { o.HostsTOML = true }}, struct {
		name  string
		tg    Target
		tweak func(*Options)
	}{"buildkit-buildx", buildkit, func(o *Options) { o.BuildxDir = "/home/ci/.docker/buildx" }})
}

// render builds and prints one target for one variant.
func render(t *testing.T, tg Target, opts Options) (Plan, []byte) {
	t.Helper()
	p, err := tg.Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Render(&buf, p); err != nil {
		t.Fatal(err)
	}
	return p, buf.Bytes()
}

// TestRenderGolden pins the printed output of every target, for every
// variant; the docs/ci-integration.md sections are written from these.
func TestRenderGolden(t *testing.T) {
	for _, v := range renderVariants() {
		for _, rt := range renderTargets() {
			t.Run(v.name+"/"+rt.name, func(t *testing.T) {
				opts := v.opts
				rt.tweak(&opts)
				_, out := render(t, rt.tg, opts)
				golden(t, filepath.Join("render", v.name, rt.name+".golden"), out)
				if opts.Username == "" && bytes.Contains(out, []byte("PASSWORD")) {
					t.Error("output for a cache without logins mentions a password")
				}
			})
		}
	}
}

// TestMergeExisting merges into realistic existing files: unrelated keys
// and comments survive, and merging the result again changes nothing.
func TestMergeExisting(t *testing.T) {
	http := server{scheme: "http", host: "cache.internal:5000", insecure: true}
	tests := []struct {
		in      string
		merge   func([]byte) ([]byte, error)
		survive []string // text that must still be there
	}{
		{"daemon.json", func(b []byte) ([]byte, error) { return mergeDaemonJSON(b, http) },
			[]string{`"log-driver": "json-file"`, `"max-file": "3"`, `"https://mirror.gcr.io"`, `"base": "10.200.0.0/16"`, `"debug": false`}},
		{"hosts.toml", func(b []byte) ([]byte, error) { return mergeHostsTOML(b, "docker.io", http) },
			[]string{"# docker.io on this node", "# Google's public cache", "# read-only", `[host."https://mirror.gcr.io"]`}},
		{"buildkitd.toml", func(b []byte) ([]byte, error) { return mergeBuildkitd(b, []string{"docker.io", "ghcr.io"}, http) },
			[]string{"# BuildKit daemon configuration", "# keep build cache small", "gckeepstorage = 9000", "# GCR mirror first", `"mirror.gcr.io"`, "insecure = false"}},
		{"registries.conf", func(b []byte) ([]byte, error) {
			return mergeRegistriesConf(b, []string{"docker.io", "quay.io", "ghcr.io"}, http)
		}, []string{"# Registries for podman", "unqualified-search-registries", "# Docker Hub, with", `location = "mirror.internal/docker.io"`, "blocked = false"}},
		{"registries.yaml", func(b []byte) ([]byte, error) { return mergeK3s(b, []string{"docker.io"}, http) },
			[]string{"# k3s private registry configuration", "# public cache", "https://mirror.gcr.io", "username: ci"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join("testdata", "merge", tt.in+".in"))
			if err != nil {
				t.Fatal(err)
			}
			out, err := tt.merge(in)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, filepath.Join("merge", tt.in+".golden"), out)
			for _, s := range tt.survive {
				if !strings.Contains(string(out), s) {
					t.Errorf("lost %q", s)
				}
			}
			again, err := tt.merge(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, out) {
				t.Errorf("second merge changed the file:\n%s", again)
			}
			// From scratch, too.
			fresh, err := tt.merge(nil)
			if err != nil {
				t.Fatal(err)
			}
			if again, _ := tt.merge(fresh); !bytes.Equal(again, fresh) {
				t.Errorf("merge of a fresh file is not idempotent:\n%s\n---\n%s", fresh, again)
			}
		})
	}
}

// TestInstallTwice is acceptance criterion 4 for every writable target,
// for a plain-HTTP server and for an HTTPS one with --ca-file.
func TestInstallTwice(t *testing.T) {
	for _, tg := range Targets() {
		if !tg.Writable {
			continue
		}
		for _, server := range []string{"http://cache.internal:5000", "https://cache.internal:5000"} {
			t.Run(tg.Name+"/"+strings.Split(server, ":")[0], func(t *testing.T) {
				installTwice(t, tg, server)
			})
		}
	}
}

func installTwice(t *testing.T, tg Target, server string) {
	root := t.TempDir()
	opts := Options{Server: server, Root: root, Registries: []string{"docker.io", "ghcr.io"}}
	if strings.HasPrefix(server, "https") {
		opts.CAFile = filepath.Join("testdata", "ca.crt")
	}
	if tg.Name == "kind" {
		opts.Path = filepath.Join(root, "certs.d")
	}
	p, err := tg.Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	// Seed an existing file with unrelated content where the format
	// allows a comment, to see it survive.
	seed := map[string]string{
		"docker":   `{"log-driver": "journald"}`,
		"gitlab":   `{"log-driver": "journald"}`,
		"buildkit": "# ops comment\ndebug = true\n",
		"podman":   "# ops comment\nunqualified-search-registries = [\"docker.io\"]\n",
		"k3s":      "# ops comment\nconfigs: {}\n",
	}[tg.Name]
	if seed != "" {
		os.MkdirAll(filepath.Dir(p.Files[0].Path), 0o755)
		if err := os.WriteFile(p.Files[0].Path, []byte(seed), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	first, err := Install(p)
	if err != nil {
		t.Fatal(err)
	}
	snap := snapshot(t, root)
	second, err := Install(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range second {
		if a.Changed {
			t.Errorf("second install changed %s", a.Path)
		}
	}
	if after := snapshot(t, root); !equalMaps(snap, after) {
		t.Errorf("second install changed the tree")
	}
	if seed != "" {
		if first[0].Backup == "" {
			t.Fatal("no backup of the existing file")
		}
		bak, _ := os.ReadFile(first[0].Backup)
		if string(bak) != seed {
			t.Errorf("backup = %q, want the original", bak)
		}
		info, _ := os.Stat(first[0].Path)
		if info.Mode().Perm() != 0o600 {
			t.Errorf("mode = %v, want 0600 kept", info.Mode().Perm())
		}
		got, _ := os.ReadFile(first[0].Path)
		for _, keep := range []string{"journald", "# ops comment"} {
			if strings.Contains(seed, keep) && !strings.Contains(string(got), keep) {
				t.Errorf("lost %q:\n%s", keep, got)
			}
		}
	}
	if opts.CAFile != "" {
		checkCAInstalled(t, tg.Name, root, snap)
	}
}

// checkCAInstalled: every target installs a copy of the CA, and the
// configuration that names a CA path names that copy as the client sees it
// (the install path without --root); docker, podman and dind find theirs
// in certs.d/<host:port>/ without being told.
func checkCAInstalled(t *testing.T, target, root string, files map[string]string) {
	t.Helper()
	ca, err := os.ReadFile(filepath.Join("testdata", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	var copies []string
	for p, content := range files {
		if strings.HasSuffix(content, "\n"+string(ca)) {
			copies = append(copies, p)
		}
	}
	if len(copies) != 1 {
		t.Fatalf("%s: %d copies of the CA installed: %v", target, len(copies), copies)
	}
	named := strings.TrimPrefix(copies[0], root)
	switch target {
	case "docker", "podman", "gitlab":
		if !strings.HasSuffix(named, "/certs.d/cache.internal:5000/regcache-ca.crt") {
			t.Errorf("%s: CA at %s, not in certs.d/<host:port>/", target, named)
		}
		return
	case "kind":
		named = "/etc/containerd/certs.d/regcache-ca.crt" // inside the node
	}
	for p, content := range files {
		if p != copies[0] && strings.Contains(content, named) {
			return
		}
	}
	t.Errorf("%s: no installed file names the CA copy %s", target, named)
}

func snapshot(t *testing.T, root string) map[string]string {
	m := map[string]string{}
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			b, _ := os.ReadFile(p)
			m[p] = info.Mode().String() + "\n" + string(b)
		}
		return nil
	})
	return m
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestBadExistingFile: a file that does not parse is reported with its line
// and left untouched, with no backup.
func TestBadExistingFile(t *testing.T) {
	cases := map[string]struct {
		target, rel, content, wantErr string
	}{
		"json": {"docker", "etc/docker/daemon.json", "{\n  \"debug\": true,\n  \"x\": [1,\n}\n", "line 4"},
		"toml": {"buildkit", "etc/buildkit/buildkitd.toml", "debug = true\n[registry\n", "line 2"},
		"yaml": {"k3s", "etc/rancher/k3s/registries.yaml", "mirrors:\n\tdocker.io: {}\n", "line 2"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			path := filepath.Join(root, c.rel)
			os.MkdirAll(filepath.Dir(path), 0o755)
			os.WriteFile(path, []byte(c.content), 0o644)
			tg, _ := Lookup(c.target)
			p, err := tg.Build(Options{Server: "http://cache.internal:5000", Root: root})
			if err != nil {
				t.Fatal(err)
			}
			_, err = Install(p)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) || !strings.Contains(err.Error(), path) {
				t.Fatalf("err = %v, want the path and %s", err, c.wantErr)
			}
			got, _ := os.ReadFile(path)
			if string(got) != c.content {
				t.Error("file modified")
			}
			if _, err := os.Stat(path + ".bak"); err == nil {
				t.Error("backup written for a failed merge")
			}
		})
	}
}

func TestServerOption(t *testing.T) {
	tests := []struct {
		in       Options
		url      string
		insecure bool
	}{
		{Options{Server: "cache.internal:5000", Insecure: true}, "http://cache.internal:5000", true},
		{Options{Server: "cache.internal:5000"}, "https://cache.internal:5000", false},
		{Options{Server: "https://r.example.com/", Insecure: true}, "https://r.example.com", true},
		{Options{Server: "http://10.0.0.5:5000"}, "http://10.0.0.5:5000", true},
	}
	for _, tt := range tests {
		s, err := tt.in.server()
		if err != nil || s.url() != tt.url || s.insecure != tt.insecure {
			t.Errorf("%+v: got %+v, %v", tt.in, s, err)
		}
	}
	for _, bad := range []string{"", "ftp://x", "http://x/path", "http://"} {
		if _, err := (Options{Server: bad}).server(); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}

	dir := t.TempDir()
	key := filepath.Join(dir, "key.pem")
	os.WriteFile(key, []byte("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"), 0o600)
	junk := filepath.Join(dir, "junk.pem")
	os.WriteFile(junk, []byte("hello\n"), 0o600)
	ca := filepath.Join("testdata", "ca.crt")
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{Server: "http://cache:5000", CAFile: ca}, "plain http"},
		{Options{Server: "https://cache", CAFile: ca, Insecure: true}, "not both"},
		{Options{Server: "https://cache", CAFile: filepath.Join(dir, "none.pem")}, "no such file"},
		{Options{Server: "https://cache", CAFile: junk}, "no PEM certificate"},
		{Options{Server: "https://cache", CAFile: key}, "PRIVATE KEY block"},
	} {
		_, err := tc.opts.server()
		if err == nil || !strings.Contains(err.Error(), "--ca-file") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want --ca-file and %q", tc.opts, err, tc.want)
		}
	}
	if s, err := (Options{Server: "https://cache:5000", CAFile: ca}).server(); err != nil || len(s.caPEM) == 0 {
		t.Errorf("a good CA: %+v, %v", s, err)
	}
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{Server: "https://cache", Username: "c i"}, "--username"},
		{Options{Server: "https://cache", Username: "ci:x"}, "--username"},
		{Options{Server: "https://cache", Username: "ci", PasswordEnv: "A-B"}, "--password-env"},
		{Options{Server: "https://cache", PasswordEnv: "PW"}, "without --username"},
	} {
		if _, err := tc.opts.server(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want %q", tc.opts, err, tc.want)
		}
	}
	if s, err := (Options{Server: "https://cache", Username: "ci"}).server(); err != nil || s.login != (login{"ci", DefaultPasswordEnv}) {
		t.Errorf("login: %+v, %v", s.login, err)
	}
	for host, want := range map[string]bool{"http://localhost:5000": true, "http://127.0.0.2:5000": true, "http://[::1]:5000": true, "https://cache.localhost": true, "http://10.0.0.5:5000": false, "https://regcache.example.com": false} {
		if s, err := (Options{Server: host}).server(); err != nil || s.loopback() != want {
			t.Errorf("%s: loopback = %v, want %v (%v)", host, s.loopback(), want, err)
		}
	}
}
