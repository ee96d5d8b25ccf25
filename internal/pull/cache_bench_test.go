package pull

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regcache/regcache/internal/store"
	"github.com/regcache/regcache/internal/upstream"
)

// refusingUpstream fails the benchmark if the hot path goes upstream.
type refusingUpstream struct{ b *testing.B }

func (u refusingUpstream) Name() string { return "docker.io" }
func (u refusingUpstream) HeadManifest(context.Context, string, string, []string) (ocispec.Descriptor, error) {
	u.b.Fatal("upstream HEAD on a cache hit")
	return ocispec.Descriptor{}, nil
}
func (u refusingUpstream) GetManifest(context.Context, string, string, []string) (upstream.Manifest, error) {
	u.b.Fatal("upstream GET on a cache hit")
	return upstream.Manifest{}, nil
}
func (u refusingUpstream) GetBlobUnverified(context.Context, string, digest.Digest) (upstream.Blob, error) {
	u.b.Fatal("upstream blob GET on a cache hit")
	return upstream.Blob{}, nil
}
func (u refusingUpstream) HeadBlob(context.Context, string, digest.Digest) (ocispec.Descriptor, error) {
	u.b.Fatal("upstream blob HEAD on a cache hit")
	return ocispec.Descriptor{}, nil
}
func (u refusingUpstream) ResolveTagAtMirror(context.Context, string, string, []string) (upstream.Manifest, error) {
	u.b.Fatal("mirror on a cache hit")
	return upstream.Manifest{}, nil
}
func (u refusingUpstream) BelowReserve() bool { return false }
func (u refusingUpstream) GetMirroredManifest(context.Context, string, digest.Digest, []string) (upstream.Manifest, error) {
	u.b.Fatal("mirror on a cache hit")
	return upstream.Manifest{}, nil
}
func (u refusingUpstream) Do(context.Context, string, string, string, url.Values, http.Header) (*http.Response, error) {
	u.b.Fatal("upstream request on a cache hit")
	return nil, nil
}

// BenchmarkManifestHit measures the cached-manifest path, hot (in memory)
// and cold (first read from the store after a restart).
func BenchmarkManifestHit(b *testing.B) {
	ctx := context.Background()
	st, err := store.OpenFS(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	data := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	d := digest.FromBytes(data)
	seed := New(Options{Store: st, Upstreams: map[string]Upstream{"docker.io": refusingUpstream{b}}, TagTTL: time.Hour})
	if err := seed.storeManifest(ctx, d, ocispec.MediaTypeImageManifest, data); err != nil {
		b.Fatal(err)
	}
	seed.link(ctx, "docker.io", "library/alpine", d)
	seed.saveTag(ctx, tagRef{"docker.io", "library/alpine", "3.19", AcceptAll}, tagRecord{Digest: d, MediaType: ocispec.MediaTypeImageManifest, Checked: time.Now()})

	for _, tc := range []struct{ name, ref string }{{"tag", "3.19"}, {"digest", d.String()}} {
		b.Run("hot/"+tc.name, func(b *testing.B) {
			c := New(Options{Store: st, Upstreams: map[string]Upstream{"docker.io": refusingUpstream{b}}, TagTTL: time.Hour})
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Manifest(ctx, "docker.io", "library/alpine", tc.ref, AcceptAll); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("from-store/"+tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				c := New(Options{Store: st, Upstreams: map[string]Upstream{"docker.io": refusingUpstream{b}}, TagTTL: time.Hour})
				b.StartTimer()
				if _, err := c.Manifest(ctx, "docker.io", "library/alpine", tc.ref, AcceptAll); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkParseAccept(b *testing.B) {
	h := []string{"application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*"}
	b.ReportAllocs()
	for b.Loop() {
		ParseAccept(h)
	}
}
