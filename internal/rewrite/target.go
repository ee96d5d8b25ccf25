package rewrite

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
)

// ECRPublicPrefix is where ECR Public mirrors Docker Official Images. The
// "library/" segment is part of the path: public.ecr.aws/docker/node would
// be a different (non-existent or foreign) repository.
const ECRPublicPrefix = "public.ecr.aws/docker/"

// Target says where references are sent.
type Target struct {
	// Server is the regcache host[:port]; empty when ECRPublic is set.
	Server string
	// ECRPublic rewrites Docker Official Images to ECR Public.
	ECRPublic bool
	// Registries limits a Server rewrite to these source registries
	// (docker.io, ghcr.io, ...). Empty means all.
	Registries []string
}

// ParseTarget parses the --to value: "ecr-public" or a server address
// (host[:port], an http:// or https:// prefix is accepted and dropped).
func ParseTarget(to string, registries []string) (Target, error) {
	if to == "ecr-public" {
		return Target{ECRPublic: true}, nil
	}
	host := strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(to, "https://"), "http://"), "/")
	if host == "" || strings.Contains(host, "/") {
		return Target{}, fmt.Errorf("--to %q: want ecr-public or a server host[:port]", to)
	}
	// The server must be usable as the registry part of a reference.
	n, err := reference.ParseNormalizedNamed(host + "/docker.io/library/x")
	if err != nil || reference.Domain(n) != host {
		return Target{}, fmt.Errorf("--to %q: not a registry host[:port]", to)
	}
	return Target{Server: host, Registries: registries}, nil
}

// Outcome of mapping one reference.
type Outcome int

const (
	// Unchanged: nothing to do (other registry, already rewritten).
	Unchanged Outcome = iota
	// Changed: New holds the replacement.
	Changed
	// Refused: the reference is left alone and Reason says why.
	Refused
)

// Map computes the replacement for text, a literal name[:tag][@digest] (or
// just a name when the tag is a variable).
func (t Target) Map(text string) (newText string, out Outcome, reason string) {
	named, err := reference.ParseNormalizedNamed(text)
	if err != nil {
		return text, Refused, "not a valid reference: " + err.Error()
	}
	domain, path := reference.Domain(named), reference.Path(named)
	suffix := ""
	if tagged, ok := named.(reference.Tagged); ok {
		suffix += ":" + tagged.Tag()
	}
	if dg, ok := named.(reference.Digested); ok {
		suffix += "@" + dg.Digest().String()
	}
	var name string
	switch {
	case t.ECRPublic:
		if domain != "docker.io" {
			return text, Unchanged, ""
		}
		if !strings.HasPrefix(path, "library/") || strings.Count(path, "/") != 1 {
			return text, Refused, "not a Docker Official Image; ECR Public only mirrors docker.io/library/*"
		}
		name = ECRPublicPrefix + path
	default:
		if domain == t.Server {
			return text, Unchanged, "" // already goes through the server
		}
		if len(t.Registries) > 0 && !contains(t.Registries, domain) {
			return text, Unchanged, ""
		}
		name = t.Server + "/" + domain + "/" + path
	}
	newText = name + suffix
	// Never write something that is not a valid reference (e.g. a source
	// registry with a port cannot be a path component).
	check, err := reference.ParseNormalizedNamed(newText)
	if err != nil || check.String() != newText {
		return text, Refused, "the rewritten reference " + newText + " would not be valid"
	}
	return newText, Changed, ""
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// relevant reports whether references of registry are this target's
// business, so that skipping one deserves a warning.
func (t Target) relevant(registry string) bool {
	if t.ECRPublic {
		return registry == "docker.io"
	}
	return registry != t.Server && (len(t.Registries) == 0 || contains(t.Registries, registry))
}
