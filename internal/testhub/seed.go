package testhub

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

// ImageOptions shapes the image PushImage builds.
type ImageOptions struct {
	// Layers is the number of layers; 0 means 1.
	Layers int
	// LayerSize is the size of the random file in each layer; 0 means 1024.
	// With Uncompressed and a multiple of 512 that is at least 2048, the layer
	// blob itself is exactly LayerSize bytes (tar header and trailer included).
	LayerSize int64
	// OCI selects OCI media types instead of Docker schema 2.
	OCI bool
	// Uncompressed makes plain tar layers that are generated and hashed as a
	// stream, never held in memory and never gzipped: use it for big blobs.
	Uncompressed bool
	// Platform is "os/arch[/variant]" for the image config; default linux/amd64.
	Platform string
}

// Image describes an image that was pushed to a Registry.
type Image struct {
	Repo, Tag string
	Digest    digest.Digest
	MediaType string
	Manifest  []byte
	Config    digest.Digest
	Layers    []digest.Digest
	// Size is the sum of the layer blob sizes as listed in the manifest.
	Size int64
	// Platform is "os/arch[/variant]".
	Platform string
}

// Index describes a multi-arch index that was pushed to a Registry.
type Index struct {
	Repo, Tag string
	Digest    digest.Digest
	MediaType string
	Manifest  []byte
	// Children maps "os/arch[/variant]" to the per-platform image.
	Children map[string]Image
}

// Ref returns host/repo:tag (or host/repo@digest when untagged) for clients
// that want to talk to the registry directly.
func (r *Registry) Ref(repo, ref string) string {
	if strings.HasPrefix(ref, "sha256:") {
		return r.Host + "/" + repo + "@" + ref
	}
	return r.Host + "/" + repo + ":" + ref
}

// PushImage builds a random single-platform image and pushes it to repo:tag
// (by digest only when tag is empty).
func (r *Registry) PushImage(t testing.TB, repo, tag string, opt ImageOptions) Image {
	t.Helper()
	img, err := buildImage(opt)
	if err != nil {
		t.Fatalf("testhub: building image: %v", err)
	}
	ref, err := r.reference(repo, tag, img)
	if err != nil {
		t.Fatalf("testhub: %v", err)
	}
	if err := remote.Write(ref, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("testhub: pushing %s: %v", ref, err)
	}
	out, err := describeImage(repo, tag, platformOr(opt.Platform), img)
	if err != nil {
		t.Fatalf("testhub: %v", err)
	}
	return out
}

// PushIndex pushes a multi-arch index (Docker manifest list, or OCI index when
// oci) with one small image per platform ("linux/amd64", "linux/arm/v7", ...).
// Each child has a config with os/architecture set and valid tar+gzip layers,
// so real clients can select their platform and unpack it.
func (r *Registry) PushIndex(t testing.TB, repo, tag string, platforms []string, oci bool) Index {
	t.Helper()
	idx := v1.ImageIndex(empty.Index)
	if oci {
		idx = mutate.IndexMediaType(idx, types.OCIImageIndex)
	} else {
		idx = mutate.IndexMediaType(idx, types.DockerManifestList)
	}
	children := make(map[string]Image, len(platforms))
	var adds []mutate.IndexAddendum
	for _, p := range platforms {
		plat, err := parsePlatform(p)
		if err != nil {
			t.Fatalf("testhub: %v", err)
		}
		img, err := buildImage(ImageOptions{OCI: oci, Platform: p})
		if err != nil {
			t.Fatalf("testhub: building %s image: %v", p, err)
		}
		child, err := describeImage(repo, "", p, img)
		if err != nil {
			t.Fatalf("testhub: %v", err)
		}
		children[p] = child
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: plat}})
	}
	idx = mutate.AppendManifests(idx, adds...)
	ref, err := r.reference(repo, tag, idx)
	if err != nil {
		t.Fatalf("testhub: %v", err)
	}
	if err := remote.WriteIndex(ref, idx, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("testhub: pushing index %s: %v", ref, err)
	}
	raw, err := idx.RawManifest()
	if err != nil {
		t.Fatalf("testhub: %v", err)
	}
	mt, _ := idx.MediaType()
	return Index{
		Repo:      repo,
		Tag:       tag,
		Digest:    digest.FromBytes(raw),
		MediaType: string(mt),
		Manifest:  raw,
		Children:  children,
	}
}

// DeleteManifest deletes a manifest by digest from the backend, as happens
// when an upstream image is removed.
func (r *Registry) DeleteManifest(t testing.TB, repo string, d digest.Digest) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodDelete, r.URL+"/v2/"+repo+"/manifests/"+d.String(), nil)
	if err != nil {
		t.Fatalf("testhub: %v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("testhub: deleting %s@%s: %v", repo, d, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("testhub: deleting %s@%s: status %d", repo, d, resp.StatusCode)
	}
}

func (r *Registry) reference(repo, tag string, m interface{ Digest() (v1.Hash, error) }) (name.Reference, error) {
	if tag != "" {
		return name.NewTag(r.Host+"/"+repo+":"+tag, name.Insecure, name.StrictValidation)
	}
	h, err := m.Digest()
	if err != nil {
		return nil, err
	}
	return name.NewDigest(r.Host+"/"+repo+"@"+h.String(), name.Insecure, name.StrictValidation)
}

func describeImage(repo, tag, platform string, img v1.Image) (Image, error) {
	raw, err := img.RawManifest()
	if err != nil {
		return Image{}, err
	}
	m, err := img.Manifest()
	if err != nil {
		return Image{}, err
	}
	out := Image{
		Repo:      repo,
		Tag:       tag,
		Digest:    digest.FromBytes(raw),
		MediaType: string(m.MediaType),
		Manifest:  raw,
		Config:    digest.Digest(m.Config.Digest.String()),
		Platform:  platform,
	}
	for _, l := range m.Layers {
		out.Layers = append(out.Layers, digest.Digest(l.Digest.String()))
		out.Size += l.Size
	}
	return out, nil
}

func platformOr(p string) string {
	if p == "" {
		return "linux/amd64"
	}
	return p
}

func parsePlatform(s string) (*v1.Platform, error) {
	parts := strings.Split(platformOr(s), "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return nil, fmt.Errorf("platform %q: want os/arch[/variant]", s)
	}
	p := &v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

func buildImage(opt ImageOptions) (v1.Image, error) {
	if opt.Layers <= 0 {
		opt.Layers = 1
	}
	if opt.LayerSize <= 0 {
		opt.LayerSize = 1024
	}
	plat, err := parsePlatform(opt.Platform)
	if err != nil {
		return nil, err
	}
	base := v1.Image(empty.Image)
	if opt.OCI {
		base = mutate.MediaType(base, types.OCIManifestSchema1)
		base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	}
	cfg, err := base.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture, cfg.Variant = plat.OS, plat.Architecture, plat.Variant
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if base, err = mutate.ConfigFile(base, cfg); err != nil {
		return nil, err
	}

	adds := make([]mutate.Addendum, 0, opt.Layers)
	for i := range opt.Layers {
		var l v1.Layer
		if opt.Uncompressed {
			l, err = newStreamLayer(opt.LayerSize, opt.OCI)
		} else {
			l, err = newGzipLayer(opt.LayerSize, opt.OCI)
		}
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.Addendum{
			Layer:   l,
			History: v1.History{CreatedBy: fmt.Sprintf("testhub layer %d", i)},
		})
	}
	return mutate.Append(base, adds...)
}

// newGzipLayer builds, in memory, a gzipped tar holding one random file.
func newGzipLayer(size int64, oci bool) (v1.Layer, error) {
	g := newGenerator(size)
	level := gzip.BestSpeed
	if size > 1<<20 {
		// Random bytes do not compress; stored blocks are still valid gzip
		// and avoid burning CPU on large layers.
		level = gzip.NoCompression
	}
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, level)
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(zw, g.open()); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	mt := types.DockerLayer
	if oci {
		mt = types.OCILayer
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(mt))
}

// tarGenerator deterministically regenerates a tar stream with one file of
// seeded pseudo-random content, so a layer of any size costs no memory.
type tarGenerator struct {
	seed    [32]byte
	header  []byte
	content int64
	size    int64 // whole tar stream
}

func newGenerator(size int64) *tarGenerator {
	g := &tarGenerator{content: size}
	_, _ = crand.Read(g.seed[:])
	if size >= 2048 && size%512 == 0 {
		// Header and end-of-archive trailer take 1536 bytes; shrinking the
		// file makes the blob exactly the requested size.
		g.content = size - 1536
	}
	var hb bytes.Buffer
	tw := tar.NewWriter(&hb)
	_ = tw.WriteHeader(&tar.Header{
		Typeflag: tar.TypeReg,
		Name:     "testhub/" + hex.EncodeToString(g.seed[:8]),
		Mode:     0o644,
		Size:     g.content,
		Format:   tar.FormatUSTAR,
	})
	g.header = hb.Bytes()
	g.size = int64(len(g.header)) + g.content + pad512(g.content) + 1024
	return g
}

func pad512(n int64) int64 { return (512 - n%512) % 512 }

func (g *tarGenerator) open() io.ReadCloser {
	rng := rand.NewChaCha8(g.seed)
	return io.NopCloser(io.MultiReader(
		bytes.NewReader(g.header),
		io.LimitReader(rng, g.content),
		io.LimitReader(zeroReader{}, pad512(g.content)+1024),
	))
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// streamLayer is an uncompressed layer whose bytes are regenerated on every
// read; its digest is computed once by hashing the stream.
type streamLayer struct {
	gen *tarGenerator
	h   v1.Hash
	mt  types.MediaType
}

func newStreamLayer(size int64, oci bool) (*streamLayer, error) {
	g := newGenerator(size)
	hasher := sha256.New()
	if _, err := io.Copy(hasher, g.open()); err != nil {
		return nil, err
	}
	mt := types.DockerUncompressedLayer
	if oci {
		mt = types.OCIUncompressedLayer
	}
	return &streamLayer{
		gen: g,
		h:   v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(hasher.Sum(nil))},
		mt:  mt,
	}, nil
}

func (l *streamLayer) Digest() (v1.Hash, error)             { return l.h, nil }
func (l *streamLayer) DiffID() (v1.Hash, error)             { return l.h, nil }
func (l *streamLayer) Compressed() (io.ReadCloser, error)   { return l.gen.open(), nil }
func (l *streamLayer) Uncompressed() (io.ReadCloser, error) { return l.gen.open(), nil }
func (l *streamLayer) Size() (int64, error)                 { return l.gen.size, nil }
func (l *streamLayer) MediaType() (types.MediaType, error)  { return l.mt, nil }
