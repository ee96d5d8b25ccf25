package clientauth

import (
	"strings"
	"testing"
)

// Tokens come from strangers: Verify must never panic, and must never
// accept a token it did not sign.
func FuzzVerify(f *testing.F) {
	i := NewIssuer()
	good, _ := i.Issue(Claims{User: "alice"})
	f.Add(good)
	f.Add(strings.Replace(good, "a", "b", 1))
	f.Add("")
	f.Add(".")
	f.Add("eyJ.eyJ.sig")
	other := NewIssuer()
	foreign, _ := other.Issue(Claims{User: "alice"})
	f.Add(foreign)
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := i.Verify(tok)
		if err == nil && tok != good {
			// Accepting another encoding of the same signed payload is
			// fine; accepting anything else is not.
			if c.User != "alice" {
				t.Fatalf("Verify(%q) accepted a forged token: %+v", tok, c)
			}
		}
		if _, err := i.Verify(foreign); err == nil {
			t.Fatal("a token signed by another key was accepted")
		}
	})
}
