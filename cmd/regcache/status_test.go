package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/regcache/regcache/internal/testhub"
)

// With client_auth the status page needs a login: regcache status sends
// one from --username and --password-stdin or REGCACHE_PASSWORD, and says
// what is missing when it has none. The password never shows in its output.
func TestStatusCommandLogsIn(t *testing.T) {
	backend := testhub.StartRegistry(t)
	hash, err := bcrypt.GenerateFromPassword([]byte("ops-secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("ops:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, srv := startApp(t, fmt.Sprintf("storage: {root: %s}\nregistries:\n  private.example: {url: %s}\nclient_auth: {htpasswd: %s}\n",
		t.TempDir(), backend.URL, htpasswd))
	for _, tc := range []struct {
		name, stdin, env string
		args             []string
		want             string // in the output, or in the error
		ok               bool
	}{
		{"no login", "", "", nil, "log in with --username and --password-stdin", false},
		{"password on stdin", "ops-secret\n", "", []string{"--username", "ops", "--password-stdin"}, "private.example", true},
		{"password in the environment", "", "ops-secret", []string{"-u", "ops"}, "private.example", true},
		{"wrong password", "nope\n", "", []string{"-u", "ops", "--password-stdin"}, "401", false},
		{"no password", "", "", []string{"-u", "ops"}, "REGCACHE_PASSWORD", false},
		{"empty stdin", "\n", "", []string{"-u", "ops", "--password-stdin"}, "no password for ops", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("REGCACHE_PASSWORD", tc.env)
			out, err := runCmd(t, tc.stdin, append([]string{"status", "--server", srv.URL}, tc.args...)...)
			got := out
			if err != nil {
				got += err.Error()
			}
			if (err == nil) != tc.ok || !strings.Contains(got, tc.want) {
				t.Fatalf("err %v, output %q; want ok=%v and %q", err, out, tc.ok, tc.want)
			}
			if strings.Contains(got, "ops-secret") {
				t.Error("the password appears in the output")
			}
		})
	}
}
