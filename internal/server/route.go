package server

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Kind is what a /v2/ request asks for.
type Kind string

const (
	KindBase      Kind = "base"
	KindManifest  Kind = "manifest"
	KindBlob      Kind = "blob"
	KindTags      Kind = "tags"
	KindReferrers Kind = "referrers"
	KindUpload    Kind = "upload"
)

// Route is a parsed /v2/ request: which configured registry and repository
// it is for, however the client spelled it.
type Route struct {
	Kind     Kind
	Registry string // configured registry name, e.g. docker.io
	Repo     string // repository at that registry, e.g. library/alpine
	Ref      string // tag or digest (manifests), digest (blobs, referrers)
	// Name is the repository name as the client sent it in the path, for
	// building links back to this server.
	Name string
	// NS is the ?ns= query value, echoed back as OCI-Namespace.
	NS string
}

// Router maps client paths to configured registries. It never invents an
// upstream: a registry not in the config is an error, so regcache cannot be
// used as an open proxy.
type Router struct {
	// Lookup resolves a registry host or alias to its configured name.
	Lookup          func(host string) (string, bool)
	DefaultRegistry string
}

// Parse parses the path and query of a /v2/ request.
func (rt *Router) Parse(path string, query url.Values) (Route, *Error) {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		if path == "/v2" {
			return Route{Kind: KindBase}, nil
		}
		return Route{}, errNotFound("not a registry API path")
	}
	if rest == "" {
		return Route{Kind: KindBase}, nil
	}
	segs := strings.Split(rest, "/")
	n := len(segs)
	var r Route
	var nameSegs []string
	switch {
	case n >= 3 && segs[n-2] == "tags" && segs[n-1] == "list":
		r.Kind, nameSegs = KindTags, segs[:n-2]
	case n >= 3 && segs[n-2] == "manifests":
		r.Kind, r.Ref, nameSegs = KindManifest, segs[n-1], segs[:n-2]
	case n >= 3 && segs[n-2] == "blobs" && segs[n-1] == "uploads",
		n >= 4 && segs[n-3] == "blobs" && segs[n-2] == "uploads":
		return Route{Kind: KindUpload}, errUnsupported("regcache is a read-only cache: pushes are not accepted")
	case n >= 3 && segs[n-2] == "blobs":
		r.Kind, r.Ref, nameSegs = KindBlob, segs[n-1], segs[:n-2]
	case n >= 3 && segs[n-2] == "referrers":
		r.Kind, r.Ref, nameSegs = KindReferrers, segs[n-1], segs[:n-2]
	case rest == "_catalog":
		return Route{}, errUnsupported("the catalog of a pull-through cache is not available")
	default:
		return Route{}, errNotFound("not a registry API path")
	}
	r.Name = strings.Join(nameSegs, "/")
	r.NS = query.Get("ns")

	switch {
	case len(nameSegs) > 1 && looksLikeHost(nameSegs[0]):
		// Host in the path: podman registries.conf mirrors and BuildKit
		// path mirrors send /v2/<host>/<repo>/...
		reg, ok := rt.Lookup(nameSegs[0])
		if !ok {
			return Route{}, errRegistryUnknown(nameSegs[0])
		}
		r.Registry, nameSegs = reg, nameSegs[1:]
	case r.NS != "":
		// containerd and BuildKit name the original registry in ?ns=.
		reg, ok := rt.Lookup(r.NS)
		if !ok {
			return Route{}, errRegistryUnknown(r.NS)
		}
		r.Registry = reg
	default:
		// dockerd registry-mirrors: a bare name means the default registry.
		if rt.DefaultRegistry == "" {
			return Route{}, &Error{Status: http.StatusNotFound, Code: "NAME_UNKNOWN",
				Message: "no registry in the path or ?ns=, and no default_registry is configured"}
		}
		r.Registry = rt.DefaultRegistry
	}
	repo := strings.Join(nameSegs, "/")
	if r.Registry == "docker.io" && len(nameSegs) == 1 {
		repo = "library/" + repo
	}
	if !validRepo(repo) {
		return Route{}, &Error{Status: http.StatusBadRequest, Code: "NAME_INVALID", Message: "invalid repository name " + quote(repo)}
	}
	r.Repo = repo

	switch r.Kind {
	case KindManifest:
		if strings.Contains(r.Ref, ":") {
			if _, err := digest.Parse(r.Ref); err != nil {
				return Route{}, &Error{Status: http.StatusBadRequest, Code: "DIGEST_INVALID", Message: "invalid digest " + quote(r.Ref)}
			}
		} else if !anchoredTag(r.Ref) {
			// No manifest can have a tag that does not parse, so the
			// answer is the spec's "manifest does not exist". TAG_INVALID
			// is for a push whose tag does not match the manifest.
			return Route{}, &Error{Status: http.StatusNotFound, Code: "MANIFEST_UNKNOWN", Message: "manifest unknown: " + quote(r.Ref) + " is not a valid tag"}
		}
	case KindBlob, KindReferrers:
		if _, err := digest.Parse(r.Ref); err != nil {
			return Route{}, &Error{Status: http.StatusBadRequest, Code: "DIGEST_INVALID", Message: "invalid digest " + quote(r.Ref)}
		}
	}
	return r, nil
}

// looksLikeHost applies the rule docker uses to tell a registry host from
// the first path component of a repository.
func looksLikeHost(s string) bool {
	return strings.ContainsAny(s, ".:") || s == "localhost"
}

// validRepo checks a repository path against the distribution reference
// grammar: components of [a-z0-9] runs joined by ".", "_", "__" or "-"+,
// separated by "/", at most 255 bytes. It is hand-written because it runs
// on every request; TestValidRepoMatchesReference checks it against
// github.com/distribution/reference.
func validRepo(repo string) bool {
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

// anchoredTag checks [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
func anchoredTag(tag string) bool {
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

func quote(s string) string {
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return `"` + s + `"`
}
