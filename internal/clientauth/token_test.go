package clientauth

import (
	"strings"
	"testing"
	"time"
)

func TestTokens(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	i := NewIssuer()
	i.now = func() time.Time { return now }
	other := NewIssuer()

	user, ttl := i.Issue(Claims{User: "ci", Stamp: "s1"})
	anonymous, _ := i.Issue(Claims{})
	foreign, _ := other.Issue(Claims{User: "ci"})
	payload, sig, _ := strings.Cut(user, ".")
	forged, _ := i.Issue(Claims{User: "ops"})
	forgedPayload, _, _ := strings.Cut(forged, ".")

	if ttl != TokenTTL {
		t.Errorf("ttl %v", ttl)
	}
	for _, tc := range []struct {
		name string
		tok  string
		at   time.Duration
		want Claims
		ok   bool
	}{
		{"user", user, 0, Claims{User: "ci", Stamp: "s1"}, true},
		{"anonymous", anonymous, 0, Claims{}, true},
		{"just before expiry", user, TokenTTL - time.Second, Claims{User: "ci", Stamp: "s1"}, true},
		{"expired", user, TokenTTL, Claims{}, false},
		{"another server's", foreign, 0, Claims{}, false},
		{"payload swapped", forgedPayload + "." + sig, 0, Claims{}, false},
		{"no signature", payload, 0, Claims{}, false},
		{"garbage", "not a token", 0, Claims{}, false},
	} {
		now := now.Add(tc.at)
		i.now = func() time.Time { return now }
		c, err := i.Verify(tc.tok)
		c.Expiry = 0
		if (err == nil) != tc.ok || c != tc.want {
			t.Errorf("%s: %+v, %v; want %+v, ok=%v", tc.name, c, err, tc.want, tc.ok)
		}
	}
}

func TestSharedSecretTokens(t *testing.T) {
	secret := []byte(strings.Repeat("s", MinKeySecret))
	a, err := NewIssuerWithSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewIssuerWithSecret(append([]byte(nil), secret...))
	other, _ := NewIssuerWithSecret([]byte(strings.Repeat("o", MinKeySecret)))
	tok, _ := a.Issue(Claims{User: "ci"})
	if c, err := b.Verify(tok); err != nil || c.User != "ci" {
		t.Errorf("a replica with the same secret refused the token: %+v %v", c, err)
	}
	if _, err := other.Verify(tok); err == nil {
		t.Error("a replica with another secret accepted the token")
	}
	if _, err := NewIssuerWithSecret([]byte("short")); err == nil || !strings.Contains(err.Error(), "at least 32") {
		t.Errorf("a short secret: %v", err)
	}
}
