package upstream

import (
	"encoding/json"
	"mime"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regcache/regcache/internal/ref"
)

// Manifest media types beyond the four of ref's Accept mask.
const (
	mediaTypeDockerSchema1    = "application/vnd.docker.distribution.manifest.v1+json"
	mediaTypeDockerSchema1Sig = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	mediaTypeOCIArtifact      = "application/vnd.oci.artifact.manifest.v1+json"
)

// manifestTypes are the types regcache serves a manifest as. Anything else
// an upstream claims (text/html, say) is not passed on: a client, or a
// browser, must never be handed attacker-chosen content types.
var manifestTypes = map[string]bool{
	ocispec.MediaTypeImageManifest:  true,
	ocispec.MediaTypeImageIndex:     true,
	ref.MediaTypeDockerManifest:     true,
	ref.MediaTypeDockerManifestList: true,
	mediaTypeDockerSchema1:          true,
	mediaTypeDockerSchema1Sig:       true,
	mediaTypeOCIArtifact:            true,
}

// ManifestMediaType decides the media type a manifest is served as: the
// upstream's Content-Type when it is a manifest type, else the type the
// document names in its mediaType field, else one inferred from its shape
// (an OCI manifest or index may omit mediaType). ok is false when the bytes
// are not a manifest at all.
func ManifestMediaType(contentType string, data []byte) (mt string, ok bool) {
	if ct := bareType(contentType); manifestTypes[ct] {
		return ct, true
	}
	var doc struct {
		SchemaVersion *int            `json:"schemaVersion"`
		MediaType     string          `json:"mediaType"`
		Manifests     json.RawMessage `json:"manifests"`
		Layers        json.RawMessage `json:"layers"`
		Config        json.RawMessage `json:"config"`
		FSLayers      json.RawMessage `json:"fsLayers"`
	}
	if json.Unmarshal(data, &doc) != nil || doc.SchemaVersion == nil {
		return "", false
	}
	switch {
	case doc.MediaType != "":
		return doc.MediaType, manifestTypes[doc.MediaType]
	case *doc.SchemaVersion == 1 && doc.FSLayers != nil:
		return mediaTypeDockerSchema1, true
	case *doc.SchemaVersion != 2:
		return "", false
	case doc.Manifests != nil:
		return ocispec.MediaTypeImageIndex, true
	case doc.Config != nil || doc.Layers != nil:
		return ocispec.MediaTypeImageManifest, true
	}
	return "", false
}

// bareType strips parameters ("; charset=utf-8"): descriptors carry the
// bare type.
func bareType(ct string) string {
	if ct == "" {
		return ""
	}
	if mt, _, err := mime.ParseMediaType(ct); err == nil {
		return mt
	}
	return strings.ToLower(strings.TrimSpace(ct))
}
