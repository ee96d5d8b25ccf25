package server

import (
	"net/url"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
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
// it is for, however the client spelled it, and what it names there. It is
// where names become types: nothing below validates them again.
type Route struct {
	Kind Kind
	Repo ref.Repo
	// Manifest is the tag or digest of a manifest request.
	Manifest ref.Manifest
	// Digest is the blob, or the subject of a referrers request.
	Digest digest.Digest
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

func routeErr(k regerr.Kind, code, msg string) *regerr.Error {
	return &regerr.Error{Kind: k, Code: code, Message: msg}
}

// Parse parses the path and query of a /v2/ request.
func (rt *Router) Parse(path string, query url.Values) (Route, error) {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		if path == "/v2" {
			return Route{Kind: KindBase}, nil
		}
		return Route{}, routeErr(regerr.NotFound, "NOT_FOUND", "not a registry API path")
	}
	if rest == "" {
		return Route{Kind: KindBase}, nil
	}
	segs := strings.Split(rest, "/")
	n := len(segs)
	var r Route
	var nameSegs []string
	var refSeg string
	switch {
	case n >= 3 && segs[n-2] == "tags" && segs[n-1] == "list":
		r.Kind, nameSegs = KindTags, segs[:n-2]
	case n >= 3 && segs[n-2] == "manifests":
		r.Kind, refSeg, nameSegs = KindManifest, segs[n-1], segs[:n-2]
	case n >= 3 && segs[n-2] == "blobs" && segs[n-1] == "uploads",
		n >= 4 && segs[n-3] == "blobs" && segs[n-2] == "uploads":
		return Route{Kind: KindUpload}, routeErr(regerr.Unsupported, "", "regcache is a read-only cache: pushes are not accepted")
	case n >= 3 && segs[n-2] == "blobs":
		r.Kind, refSeg, nameSegs = KindBlob, segs[n-1], segs[:n-2]
	case n >= 3 && segs[n-2] == "referrers":
		r.Kind, refSeg, nameSegs = KindReferrers, segs[n-1], segs[:n-2]
	case rest == "_catalog":
		return Route{}, routeErr(regerr.Unsupported, "", "the catalog of a pull-through cache is not available")
	default:
		return Route{}, routeErr(regerr.NotFound, "NOT_FOUND", "not a registry API path")
	}
	r.Name = strings.Join(nameSegs, "/")
	r.NS = query.Get("ns")

	var registry string
	switch {
	case len(nameSegs) > 1 && looksLikeHost(nameSegs[0]):
		// Host in the path: podman registries.conf mirrors and BuildKit
		// path mirrors send /v2/<host>/<repo>/...
		reg, ok := rt.Lookup(nameSegs[0])
		if !ok {
			return Route{}, errRegistryUnknown(nameSegs[0])
		}
		registry, nameSegs = reg, nameSegs[1:]
	case r.NS != "":
		// containerd and BuildKit name the original registry in ?ns=.
		reg, ok := rt.Lookup(r.NS)
		if !ok {
			return Route{}, errRegistryUnknown(r.NS)
		}
		registry = reg
	default:
		// dockerd registry-mirrors: a bare name means the default registry.
		if rt.DefaultRegistry == "" {
			return Route{}, routeErr(regerr.NameUnknown, "", "no registry in the path or ?ns=, and no default_registry is configured")
		}
		registry = rt.DefaultRegistry
	}
	path = strings.Join(nameSegs, "/")
	if registry == "docker.io" && len(nameSegs) == 1 {
		path = "library/" + path
	}
	repo, err := ref.NewRepo(registry, path)
	if err != nil {
		return Route{}, routeErr(regerr.Invalid, "NAME_INVALID", "invalid repository name "+ref.Quote(path))
	}
	r.Repo = repo

	switch r.Kind {
	case KindManifest:
		m, err := ref.ParseManifest(refSeg)
		switch {
		case err == nil:
			r.Manifest = m
		case strings.Contains(refSeg, ":"):
			return Route{}, routeErr(regerr.Invalid, "DIGEST_INVALID", "invalid digest "+ref.Quote(refSeg))
		default:
			// No manifest can have a name outside the tag grammar: the
			// spec's answer for it is "manifest unknown", not 400.
			return Route{}, routeErr(regerr.NotFound, "", "no manifest is tagged "+ref.Quote(refSeg)+": not a valid tag")
		}
	case KindBlob, KindReferrers:
		d, err := digest.Parse(refSeg)
		if err != nil {
			return Route{}, routeErr(regerr.Invalid, "DIGEST_INVALID", "invalid digest "+ref.Quote(refSeg))
		}
		r.Digest = d
	}
	return r, nil
}

func errRegistryUnknown(host string) error {
	return routeErr(regerr.NameUnknown, "", "registry "+ref.Quote(host)+" is not configured in regcache; add it under registries: to cache it")
}

// looksLikeHost applies the rule docker uses to tell a registry host from
// the first path component of a repository.
func looksLikeHost(s string) bool {
	return strings.ContainsAny(s, ".:") || s == "localhost"
}
