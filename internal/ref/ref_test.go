package ref

import (
	"errors"
	"strings"
	"testing"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

func TestValidPathMatchesReference(t *testing.T) {
	cases := []string{
		"library/alpine", "a", "a/b/c", "foo.bar/baz", "a_b", "a__b", "a___b", "a-b", "a--b", "a.b",
		"a..b", "a.-b", "-a", "a-", "_a", "a_", ".a", "a.", "A", "a/B", "a//b", "/a", "a/", "",
		"a_-b", "a-_b", "9", "x/9-9/0.0", "ns/re_po--x", "a" + strings.Repeat("b", 300), "ä", "a b", "a:b", "a@b",
	}
	for _, c := range cases {
		if got, want := ValidPath(c), referenceSaysPath(c); got != want {
			t.Errorf("ValidPath(%q) = %v, reference says %v", c, got, want)
		}
	}
}

func referenceSaysPath(c string) bool {
	named, err := reference.ParseNamed("regcache.invalid/" + c)
	return err == nil && reference.Path(named) == c
}

func TestNewTagMatchesReference(t *testing.T) {
	for _, c := range []string{"latest", "3.19", "v1.0-rc1", "_x", "A_b.c-d", strings.Repeat("a", 128), strings.Repeat("a", 129), "", "-a", ".a", "a/b", "a:b", "a b"} {
		want := reference.TagRegexp.FindString(c) == c && c != ""
		_, err := NewTag(c)
		if got := err == nil; got != want {
			t.Errorf("NewTag(%q) ok = %v, want %v", c, got, want)
		}
	}
}

func TestParseManifest(t *testing.T) {
	const dg = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	tests := []struct {
		in      string
		tag     string
		dig     digest.Digest
		wantErr error
	}{
		{"latest", "latest", "", nil},
		{"3.19", "3.19", "", nil},
		{dg, "", dg, nil},
		{"sha256:12", "", "", digest.ErrDigestInvalidLength},
		{"sha256:zz", "", "", digest.ErrDigestInvalidLength},
		{"sha256:" + strings.Repeat("z", 64), "", "", digest.ErrDigestInvalidFormat},
		{"-bad", "", "", ErrInvalidTag},
		{"", "", "", ErrInvalidTag},
	}
	for _, tc := range tests {
		m, err := ParseManifest(tc.in)
		if tc.wantErr != nil {
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("ParseManifest(%q) error = %v, want %v", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || m.Tag.String() != tc.tag || m.Digest != tc.dig || m.String() != tc.in {
			t.Errorf("ParseManifest(%q) = %+v, %v", tc.in, m, err)
		}
	}
}

func TestNewRepo(t *testing.T) {
	r, err := NewRepo("docker.io", "library/alpine")
	if err != nil || r.Registry() != "docker.io" || r.Path() != "library/alpine" || r.String() != "docker.io/library/alpine" {
		t.Fatalf("NewRepo = %+v, %v", r, err)
	}
	if _, err := NewRepo("docker.io", "../etc"); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("NewRepo(../etc) error = %v", err)
	}
}

func FuzzValidPath(f *testing.F) {
	for _, s := range []string{"library/alpine", "a__b", "a-.b", "x/y_z", "a//b", "A/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, c string) {
		if got, want := ValidPath(c), referenceSaysPath(c); got != want {
			t.Errorf("ValidPath(%q) = %v, reference says %v", c, got, want)
		}
	})
}

func FuzzParseManifest(f *testing.F) {
	for _, s := range []string{"latest", "3.19", "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "sha256:zz", "-x", "a/b", "sha512:" + strings.Repeat("0", 128)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseManifest(s)
		if err != nil {
			return
		}
		if m.String() != s {
			t.Fatalf("ParseManifest(%q).String() = %q", s, m.String())
		}
		if (m.Digest == "") == m.Tag.IsZero() {
			t.Fatalf("ParseManifest(%q) = %+v: exactly one of tag and digest must be set", s, m)
		}
		if m.Digest != "" && m.Digest.Validate() != nil {
			t.Fatalf("ParseManifest(%q) accepted an invalid digest", s)
		}
		if !m.Tag.IsZero() && reference.TagRegexp.FindString(s) != s {
			t.Fatalf("ParseManifest(%q) accepted a tag that reference refuses", s)
		}
	})
}
