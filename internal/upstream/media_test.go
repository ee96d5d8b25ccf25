package upstream

import (
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regcache/regcache/internal/ref"
)

func TestManifestMediaType(t *testing.T) {
	tests := []struct {
		name, ct, body string
		want           string
		ok             bool
	}{
		{"oci manifest header", ocispec.MediaTypeImageManifest, `{}`, ocispec.MediaTypeImageManifest, true},
		{"docker list with charset", ref.MediaTypeDockerManifestList + "; charset=utf-8", `{}`, ref.MediaTypeDockerManifestList, true},
		{"generic type, document names it", "application/octet-stream", `{"schemaVersion":2,"mediaType":"` + ref.MediaTypeDockerManifest + `"}`, ref.MediaTypeDockerManifest, true},
		{"no type, oci index by shape", "", `{"schemaVersion":2,"manifests":[]}`, ocispec.MediaTypeImageIndex, true},
		{"no type, oci manifest by shape", "text/plain", `{"schemaVersion":2,"config":{},"layers":[]}`, ocispec.MediaTypeImageManifest, true},
		{"schema1", "", `{"schemaVersion":1,"fsLayers":[]}`, mediaTypeDockerSchema1, true},
		{"html with a script", "text/html", `<html><script>alert(1)</script></html>`, "", false},
		{"html claiming a manifest in json", "text/html", `{"schemaVersion":2,"mediaType":"text/html"}`, "text/html", false},
		{"json without schemaVersion", "application/json", `{"mediaType":"` + ocispec.MediaTypeImageManifest + `"}`, "", false},
		{"schema 3", "", `{"schemaVersion":3,"layers":[]}`, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := ManifestMediaType(tc.ct, []byte(tc.body))
			if ok != tc.ok || (ok && got != tc.want) {
				t.Fatalf("ManifestMediaType(%q, %s) = %q, %v; want %q, %v", tc.ct, tc.body, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func FuzzManifestMediaType(f *testing.F) {
	f.Add(ocispec.MediaTypeImageManifest, []byte(`{}`))
	f.Add("text/html", []byte(`<script>`))
	f.Add("", []byte(`{"schemaVersion":2,"manifests":[]}`))
	f.Add("application/json; charset=utf-8", []byte(`{"schemaVersion":2,"mediaType":"x"}`))
	f.Fuzz(func(t *testing.T, ct string, body []byte) {
		mt, ok := ManifestMediaType(ct, body)
		if ok && !manifestTypes[mt] {
			t.Fatalf("ManifestMediaType(%q, %q) = %q: accepted a type that is not a manifest type", ct, body, mt)
		}
	})
}
