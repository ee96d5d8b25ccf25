package clientauth

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func hash(t *testing.T, password string) string {
	t.Helper()
	b, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// withCost returns hash as if it had been made at cost: bcrypt hashes name
// their cost in their text. Checking a password against it does that
// cost's work and matches nothing, which tests use only through a fake
// compare.
func withCost(hash string, cost int) string {
	return hash[:4] + fmt.Sprintf("%02d", cost) + hash[6:]
}

func TestParseErrors(t *testing.T) {
	good := hash(t, "pw")
	for _, tc := range []struct {
		name, file, want string
	}{
		{"no colon", "alice\n", "users.htpasswd:1: want user:bcrypt-hash"},
		{"empty hash", "# ci users\n\nalice:\n", "users.htpasswd:3: want user:bcrypt-hash"},
		{"md5 apr1", "alice:" + good + "\nbob:$apr1$Vh1cZ/1Z$k2g9N0Yq7a0xV2o0b8u6Z/\n", `users.htpasswd:2: user "bob": only bcrypt hashes are supported`},
		{"sha1", "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", `users.htpasswd:1: user "alice": only bcrypt`},
		{"plain text", "alice:hunter2\n", `users.htpasswd:1: user "alice": only bcrypt`},
		{"duplicate", "alice:" + good + "\nalice:" + good + "\n", `users.htpasswd:2: user "alice" is listed twice`},
		{"no users", "# nobody\n", "users.htpasswd: no users"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.file), "users.htpasswd")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "$2") || strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error shows a hash or password: %v", err)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	file := fmt.Sprintf("# CI fleet\nci:%s\n\n  ops:%s  \n", hash(t, "ci-secret"), hash(t, "ops:secret"))
	h, err := Parse([]byte(file), "test")
	if err != nil {
		t.Fatal(err)
	}
	if h.Users() != 2 {
		t.Fatalf("%d users, want 2", h.Users())
	}
	for _, tc := range []struct {
		user, password string
		want           bool
	}{
		{"ci", "ci-secret", true},
		{"ops", "ops:secret", true}, // a colon belongs to the password
		{"ci", "ci-secret ", false},
		{"ci", "", false},
		{"ops", "ci-secret", false},
		{"nobody", "ci-secret", false},
		{"", "", false},
		{"ci", strings.Repeat("x", 100), false},
	} {
		if got := h.check(tc.user, tc.password); got != tc.want {
			t.Errorf("check(%q, %q) = %v, want %v", tc.user, tc.password, got, tc.want)
		}
	}
}

// Every check does the work of one bcrypt check at the file's highest
// cost, whether the user exists, whether the password is right, and
// whatever the user's own cost: the rounds of the comparisons it runs add
// up to 2^max. Counted through the compare seam, not timed.
func TestCheckCostDoesNotDependOnTheUser(t *testing.T) {
	base := hash(t, "x")
	for _, tc := range []struct {
		name  string
		costs map[string]int // user → cost of their hash
		max   int
	}{
		{"one user", map[string]int{"ci": 10}, 10},
		{"same costs", map[string]int{"ci": 12, "ops": 12}, 12},
		{"mixed costs", map[string]int{"ci": 5, "ops": 13, "old": 4}, 13},
		{"minimum cost", map[string]int{"ci": 4}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var file strings.Builder
			passwords := map[string]string{} // hash → password
			for user, cost := range tc.costs {
				hs := withCost(base, cost)
				hs = hs[:len(hs)-len(user)] + user // distinct hashes per user
				passwords[hs] = user + "-pw"
				fmt.Fprintf(&file, "%s:%s\n", user, hs)
			}
			h, err := Parse([]byte(file.String()), "test")
			if err != nil {
				t.Fatal(err)
			}
			var rounds int64
			var calls int
			h.compare = func(hs, pw []byte) error {
				cost, err := bcrypt.Cost(hs)
				if err != nil {
					t.Fatalf("compared against a non-bcrypt hash: %v", err)
				}
				rounds += 1 << cost
				calls++
				if p, ok := passwords[string(hs)]; ok && p == string(pw) {
					return nil
				}
				return bcrypt.ErrMismatchedHashAndPassword
			}
			type attempt struct{ user, password string }
			attempts := []attempt{{"nobody", "x"}, {"", ""}}
			for user := range tc.costs {
				attempts = append(attempts, attempt{user, user + "-pw"}, attempt{user, "wrong"})
			}
			for _, a := range attempts {
				rounds, calls = 0, 0
				ok := h.check(a.user, a.password)
				if want := a.password == a.user+"-pw"; ok != want {
					t.Errorf("check(%q) = %v, want %v", a.user, ok, want)
				}
				if rounds != 1<<tc.max {
					t.Errorf("check(%q, %q) ran %d rounds in %d comparisons, want 2^%d = %d", a.user, a.password, rounds, calls, tc.max, 1<<tc.max)
				}
			}
		})
	}
}

// writeFile writes an htpasswd file of MinCost users and opens it.
func writeFile(t *testing.T, users map[string]string) (*File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "htpasswd")
	rewrite(t, path, users)
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return f, path
}

// rewrite replaces the file, keeping the hash of every user whose password
// stays. Its size differs with every call (a comment line changes), so
// Reload sees the change even within one mtime tick.
func rewrite(t *testing.T, path string, users map[string]string) {
	t.Helper()
	old, _ := os.ReadFile(path)
	kept := map[string]string{}
	for _, line := range strings.Split(string(old), "\n") {
		if u, h, ok := strings.Cut(line, ":"); ok && bcrypt.CompareHashAndPassword([]byte(h), []byte(users[u])) == nil {
			kept[u] = h
		}
	}
	var b strings.Builder
	b.WriteString("#" + strings.Repeat("#", len(old)%7+1) + "\n")
	for u, pw := range users {
		h := kept[u]
		if h == "" {
			h = hash(t, pw)
		}
		b.WriteString(u + ":" + h + "\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestFileValid(t *testing.T) {
	f, path := writeFile(t, map[string]string{"ci": "pw1", "ops": "pw2"})
	ci, ops := f.current.Load().stamps["ci"], f.current.Load().stamps["ops"]
	if ci == "" || ci == ops {
		t.Fatalf("stamps %q %q", ci, ops)
	}
	rewrite(t, path, map[string]string{"ci": "pw1-new", "dev": "pw3"})
	if changed, err := f.Reload(); !changed || err != nil {
		t.Fatalf("reload: %v %v", changed, err)
	}
	for _, tc := range []struct {
		user, stamp string
		want        bool
	}{
		{"ci", ci, false},   // new password
		{"ops", ops, false}, // removed
		{"ci", f.current.Load().stamps["ci"], true},
		{"dev", f.current.Load().stamps["dev"], true},
		{"dev", "", false},
		{"nobody", "", false},
	} {
		if got := f.Valid(tc.user, tc.stamp); got != tc.want {
			t.Errorf("Valid(%q, %q) = %v, want %v", tc.user, tc.stamp, got, tc.want)
		}
	}
}
