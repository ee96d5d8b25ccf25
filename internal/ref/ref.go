// Package ref holds the names a pull request is about, parsed once at the
// edge (the router) into types: a repository at a configured registry, a
// tag, and a digest (go-digest's type). Code below the router takes these
// types and never validates a name again; a value of type Repo or Tag can
// only be made by the parsers here, so it is always valid.
//
// The grammar is the OCI distribution spec's, the same as
// github.com/distribution/reference; the checks are hand-written because
// they run on every request (ref_test.go checks them against that package).
package ref

import (
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Repo is a repository at a configured registry, e.g. docker.io +
// library/alpine.
type Repo struct {
	registry string
	path     string
}

// ErrInvalidName is returned for a repository path outside the grammar.
var ErrInvalidName = errors.New("invalid repository name")

// ErrInvalidTag is returned for a tag outside the grammar.
var ErrInvalidTag = errors.New("invalid tag")

// NewRepo checks path against the repository grammar. registry is the
// configured name the caller looked up, and is not checked here.
func NewRepo(registry, path string) (Repo, error) {
	if !ValidPath(path) {
		return Repo{}, fmt.Errorf("%w %s", ErrInvalidName, Quote(path))
	}
	return Repo{registry: registry, path: path}, nil
}

// Registry is the configured registry name, e.g. "docker.io".
func (r Repo) Registry() string { return r.registry }

// Path is the repository at that registry, e.g. "library/alpine".
func (r Repo) Path() string { return r.path }

// String is registry/path.
func (r Repo) String() string { return r.registry + "/" + r.path }

// IsZero reports whether r was never set.
func (r Repo) IsZero() bool { return r.path == "" }

// Tag is a manifest tag such as "3.19".
type Tag struct{ s string }

// NewTag checks s against [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
func NewTag(s string) (Tag, error) {
	if !validTag(s) {
		return Tag{}, fmt.Errorf("%w %s", ErrInvalidTag, Quote(s))
	}
	return Tag{s: s}, nil
}

func (t Tag) String() string { return t.s }

// IsZero reports whether t was never set.
func (t Tag) IsZero() bool { return t.s == "" }

// Manifest names a manifest by tag or by digest; exactly one is set.
type Manifest struct {
	Tag    Tag
	Digest digest.Digest
}

// ParseManifest reads the reference part of a manifest path: a digest when
// it contains ':' (tags cannot), else a tag.
func ParseManifest(s string) (Manifest, error) {
	if strings.Contains(s, ":") {
		d, err := digest.Parse(s)
		if err != nil {
			return Manifest{}, fmt.Errorf("invalid digest %s: %w", Quote(s), err)
		}
		return Manifest{Digest: d}, nil
	}
	t, err := NewTag(s)
	if err != nil {
		return Manifest{}, err
	}
	return Manifest{Tag: t}, nil
}

func (m Manifest) String() string {
	if m.Digest != "" {
		return m.Digest.String()
	}
	return m.Tag.String()
}

// ValidPath checks a repository path against the distribution reference
// grammar: components of [a-z0-9] runs joined by ".", "_", "__" or "-"+,
// separated by "/", at most 255 bytes.
func ValidPath(repo string) bool {
	if len(repo) == 0 || len(repo) > 255 {
		return false
	}
	for comp := range strings.SplitSeq(repo, "/") {
		if !validComponent(comp) {
			return false
		}
	}
	return true
}

func validComponent(c string) bool {
	if c == "" || !alnum(c[0]) || !alnum(c[len(c)-1]) {
		return false
	}
	for i := 1; i < len(c); i++ {
		switch ch := c[i]; {
		case alnum(ch):
		case ch == '.':
			if !alnum(c[i-1]) || !alnum(c[i+1]) {
				return false
			}
		case ch == '_':
			// "_" or "__" between alphanumerics.
			j := i
			for j < len(c) && c[j] == '_' {
				j++
			}
			if j-i > 2 || !alnum(c[i-1]) || !alnum(c[j]) {
				return false
			}
			i = j - 1
		case ch == '-':
			j := i
			for j < len(c) && c[j] == '-' {
				j++
			}
			if !alnum(c[i-1]) || !alnum(c[j]) {
				return false
			}
			i = j - 1
		default:
			return false
		}
	}
	return true
}

func alnum(c byte) bool { return ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') }

func validTag(tag string) bool {
	if tag == "" || len(tag) > 128 {
		return false
	}
	for i := 0; i < len(tag); i++ {
		c := tag[i]
		word := ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || c == '_'
		if !word && (i == 0 || (c != '.' && c != '-')) {
			return false
		}
	}
	return true
}

// Quote quotes a client-supplied name for a message, cut to 200 bytes.
func Quote(s string) string {
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return fmt.Sprintf("%q", s)
}
