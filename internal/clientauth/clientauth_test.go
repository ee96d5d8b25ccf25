package clientauth

import (
	"fmt"
	"strings"
	"testing"
	"time"

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
	} {
		// Twice: the second answer may come from the verified set.
		for i := range 2 {
			if got := h.Check(tc.user, tc.password); got != tc.want {
				t.Errorf("Check(%q, %q) #%d = %v, want %v", tc.user, tc.password, i, got, tc.want)
			}
		}
	}
}

func TestVerifiedSetExpiresAndIsBounded(t *testing.T) {
	h, err := Parse([]byte("ci:"+hash(t, "pw")+"\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	h.now = func() time.Time { return now }
	if !h.Check("ci", "pw") || len(h.verified) != 1 {
		t.Fatalf("a good check was not remembered: %d entries", len(h.verified))
	}
	// A wrong password is never remembered.
	h.Check("ci", "wrong")
	if len(h.verified) != 1 {
		t.Fatalf("a failed check was remembered: %d entries", len(h.verified))
	}
	now = now.Add(verifiedTTL)
	// Expired: the check goes to bcrypt again and still succeeds.
	if !h.Check("ci", "pw") {
		t.Fatal("good password refused after the remembered check expired")
	}
	// Fill the set past its bound with entries only this test can make.
	for i := range verifiedMax + 10 {
		var id [32]byte
		copy(id[:], fmt.Sprint(i))
		h.mu.Lock()
		if len(h.verified) < verifiedMax {
			h.verified[id] = now.Add(verifiedTTL)
		}
		h.mu.Unlock()
	}
	now = now.Add(time.Second)
	if !h.Check("ci", "pw") {
		t.Fatal("good password refused with a full set")
	}
	if n := len(h.verified); n > verifiedMax {
		t.Errorf("verified set holds %d entries, bound %d", n, verifiedMax)
	}
}
