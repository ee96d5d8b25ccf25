package server

import (
	"net/url"
	"testing"
)

func BenchmarkRouterParse(b *testing.B) {
	rt := testRouter()
	paths := []struct {
		name, path string
		q          url.Values
	}{
		{"bare", "/v2/library/alpine/manifests/3.19", nil},
		{"ns", "/v2/library/alpine/manifests/3.19", url.Values{"ns": {"docker.io"}}},
		{"host-in-path-blob", "/v2/docker.io/library/alpine/blobs/sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", nil},
	}
	for _, p := range paths {
		b.Run(p.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := rt.Parse(p.path, p.q); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
