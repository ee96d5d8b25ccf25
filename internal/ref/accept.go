package ref

import (
	"strconv"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Manifest media types regcache knows. The Docker ones have no constants in
// image-spec.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// AcceptMask is the set of the four manifest media types a client accepts,
// parsed from its Accept header once, at the edge, like names. A registry
// may answer a tag differently per set (an index for clients that
// accept one, a single platform's manifest for those that don't), so tag
// answers are cached per mask.
type AcceptMask uint8

const (
	AcceptDockerManifest AcceptMask = 1 << iota
	AcceptDockerList
	AcceptOCIManifest
	AcceptOCIIndex

	// AcceptAll is what regcache sends when fetching by digest: the digest
	// fixes the content, so any type must be acceptable.
	AcceptAll = AcceptDockerManifest | AcceptDockerList | AcceptOCIManifest | AcceptOCIIndex
)

var maskTypes = []struct {
	bit AcceptMask
	mt  string
}{
	{AcceptOCIIndex, ocispec.MediaTypeImageIndex},
	{AcceptDockerList, MediaTypeDockerManifestList},
	{AcceptOCIManifest, ocispec.MediaTypeImageManifest},
	{AcceptDockerManifest, MediaTypeDockerManifest},
}

// ParseAccept reduces Accept header values to a mask. Wildcards and unknown
// types add nothing: what a registry does for them is its own choice, and
// the mask (0 included) keys that choice. It runs on every manifest request,
// so it scans the header instead of using mime.ParseMediaType.
func ParseAccept(values []string) AcceptMask {
	var m AcceptMask
	for _, v := range values {
		for part := range strings.SplitSeq(v, ",") {
			mt, params, _ := strings.Cut(part, ";")
			mt = strings.TrimSpace(mt)
			if zeroQuality(params) {
				continue
			}
			for _, t := range maskTypes {
				if strings.EqualFold(mt, t.mt) {
					m |= t.bit
				}
			}
		}
	}
	return m
}

// zeroQuality reports a "q=0" parameter: the client refuses the type.
func zeroQuality(params string) bool {
	for p := range strings.SplitSeq(params, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), "q") {
			if q, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && q == 0 {
				return true
			}
		}
	}
	return false
}

// Values returns the Accept header values that express the mask, richest
// type first.
func (m AcceptMask) Values() []string {
	var out []string
	for _, t := range maskTypes {
		if m&t.bit != 0 {
			out = append(out, t.mt)
		}
	}
	return out
}

// Allows reports whether a response of media type mt suits the mask. A zero
// mask states no preference.
func (m AcceptMask) Allows(mt string) bool {
	if m == 0 {
		return true
	}
	for _, t := range maskTypes {
		if mt == t.mt {
			return m&t.bit != 0
		}
	}
	// Types outside the four (schema1, artifacts) are not ours to refuse.
	return true
}
