package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const unitFile = "systemd/regcache.service"

// The unit passes systemd-analyze verify with no warning at all (verify
// exits 0 on an unknown key or a value it cannot parse, and only says so),
// and systemd-analyze security rates its sandbox at most 2.0 ("OK").
func TestSystemdUnit(t *testing.T) {
	analyze := requireTool(t, "systemd-analyze")
	unit, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"DynamicUser=yes", "StateDirectory=regcache", "ProtectSystem=strict", "NoNewPrivileges=yes",
		"ExecStart=/usr/local/bin/regcache serve", "ExecStartPre=/usr/local/bin/regcache serve --check-config",
		"ExecReload=/bin/kill -HUP $MAINPID"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want) + `$`).Match(unit) {
			t.Errorf("%s has no line %q", unitFile, want)
		}
	}
	root := systemdRoot(t, unit)
	out, err := run(t, root, analyze, "verify", "--root="+root, "regcache.service")
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err = run(t, root, analyze, "security", "--offline=true", "--root="+root, "--threshold=20", "regcache.service")
	if err != nil {
		t.Errorf("systemd-analyze security: exposure above 2.0 (%v)\n%s", err, lastLines(out, 3))
	}
	if m := regexp.MustCompile(`Overall exposure level for regcache.service: (\S+)`).FindStringSubmatch(out); m != nil {
		t.Logf("systemd-analyze security: exposure %s", m[1])
	}
}

// A broken unit fails the same check: the test can tell.
func TestSystemdVerifyCatchesBrokenUnits(t *testing.T) {
	analyze := requireTool(t, "systemd-analyze")
	unit, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, old, new string }{
		{"misspelt key", "ProtectSystem=strict", "ProtectSytem=strict"},
		{"bad value", "ProtectSystem=strict", "ProtectSystem=bogus"},
		{"bad boolean", "DynamicUser=yes", "DynamicUser=perhaps"},
		{"binary elsewhere", "ExecStart=/usr/local/bin/regcache", "ExecStart=/usr/bin/regcache"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			broken := strings.Replace(string(unit), tc.old, tc.new, 1)
			root := systemdRoot(t, []byte(broken))
			out, err := run(t, root, analyze, "verify", "--root="+root, "regcache.service")
			if err == nil && strings.TrimSpace(out) == "" {
				t.Errorf("systemd-analyze verify accepted the unit with %s", tc.name)
			}
		})
	}
}

// systemdRoot lays out a root for systemd-analyze --root: the unit, the
// distribution's own units (verify loads the dependencies of
// multi-user.target), and an executable at the unit's binary path.
func systemdRoot(t *testing.T, unit []byte) string {
	t.Helper()
	root := t.TempDir()
	dst := filepath.Join(root, "usr", "lib", "systemd", "system")
	if err := os.CopyFS(dst, os.DirFS("/usr/lib/systemd/system")); err != nil {
		t.Fatalf("copying /usr/lib/systemd/system (from Debian's systemd package): %v", err)
	}
	etc := filepath.Join(root, "etc", "systemd", "system")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(etc, "regcache.service"), unit, 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "usr", "local", "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	installRegcache(t, bin)
	// ExecReload's kill, as it is on the host.
	kill, err := os.ReadFile("/bin/kill")
	if err != nil {
		t.Fatalf("reading /bin/kill (from Debian's procps): %v", err)
	}
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "kill"), kill, 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
