package testhub

import (
	"archive/tar"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

func TestPushImage(t *testing.T) {
	reg := StartRegistry(t)
	tests := []struct {
		name      string
		opt       ImageOptions
		mediaType types.MediaType
		layerType types.MediaType
		layers    int
		blobSize  int64 // exact layer blob size, 0 = don't check
	}{
		{"docker default", ImageOptions{}, types.DockerManifestSchema2, types.DockerLayer, 1, 0},
		{"oci two layers", ImageOptions{OCI: true, Layers: 2}, types.OCIManifestSchema1, types.OCILayer, 2, 0},
		{"docker uncompressed", ImageOptions{Uncompressed: true, LayerSize: 64 << 10}, types.DockerManifestSchema2, types.DockerUncompressedLayer, 1, 64 << 10},
		{"oci uncompressed odd size", ImageOptions{OCI: true, Uncompressed: true, LayerSize: 1000}, types.OCIManifestSchema1, types.OCIUncompressedLayer, 1, 0},
		{"arm64", ImageOptions{Platform: "linux/arm64"}, types.DockerManifestSchema2, types.DockerLayer, 1, 0},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			repo := "library/img" + string(rune('a'+i))
			got := reg.PushImage(t, repo, "v1", tc.opt)
			if got.MediaType != string(tc.mediaType) || len(got.Layers) != tc.layers {
				t.Fatalf("PushImage = %s with %d layers, want %s with %d", got.MediaType, len(got.Layers), tc.mediaType, tc.layers)
			}
			if got.Digest != digest.FromBytes(got.Manifest) {
				t.Errorf("Digest %s does not match Manifest bytes", got.Digest)
			}

			ref, err := name.ParseReference(reg.Ref(repo, "v1"), name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			desc, err := remote.Get(ref, remote.WithContext(t.Context()))
			if err != nil {
				t.Fatalf("remote.Get: %v", err)
			}
			if desc.Digest.String() != got.Digest.String() || string(desc.Manifest) != string(got.Manifest) {
				t.Errorf("registry serves %s, PushImage reported %s", desc.Digest, got.Digest)
			}
			img, err := desc.Image()
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if p := cfg.OS + "/" + cfg.Architecture; p != platformOr(tc.opt.Platform) {
				t.Errorf("config platform %s, want %s", p, platformOr(tc.opt.Platform))
			}
			layers, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}
			var sum int64
			for _, l := range layers {
				mt, _ := l.MediaType()
				size, _ := l.Size()
				sum += size
				if mt != tc.layerType {
					t.Errorf("layer media type %s, want %s", mt, tc.layerType)
				}
				if tc.blobSize != 0 && size != tc.blobSize {
					t.Errorf("layer size %d, want %d", size, tc.blobSize)
				}
				checkTar(t, l)
			}
			if sum != got.Size {
				t.Errorf("Size = %d, layers sum to %d", got.Size, sum)
			}
		})
	}
}

// checkTar reads the layer from the registry the way a client unpacking it
// would, which also verifies its digest and diff ID.
func checkTar(t *testing.T, l v1.Layer) {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	files := 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("layer is not a valid tar: %v", err)
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			t.Fatalf("reading %s: %v", hdr.Name, err)
		}
		files++
	}
	if files != 1 {
		t.Errorf("layer has %d files, want 1", files)
	}
}

func TestPushIndex(t *testing.T) {
	reg := StartRegistry(t)
	platforms := []string{"linux/amd64", "linux/arm64", "linux/arm/v7"}
	tests := []struct {
		name      string
		oci       bool
		indexType types.MediaType
		childType types.MediaType
	}{
		{"docker manifest list", false, types.DockerManifestList, types.DockerManifestSchema2},
		{"oci index", true, types.OCIImageIndex, types.OCIManifestSchema1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			repo := "library/multi-" + strings.ReplaceAll(tc.name, " ", "-")
			got := reg.PushIndex(t, repo, "latest", platforms, tc.oci)
			if got.MediaType != string(tc.indexType) || len(got.Children) != len(platforms) {
				t.Fatalf("PushIndex = %s with %d children", got.MediaType, len(got.Children))
			}
			ref, err := name.ParseReference(reg.Ref(repo, "latest"), name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			idx, err := remote.Index(ref, remote.WithContext(t.Context()))
			if err != nil {
				t.Fatalf("remote.Index: %v", err)
			}
			if d, _ := idx.Digest(); d.String() != got.Digest.String() {
				t.Errorf("registry serves %s, PushIndex reported %s", d, got.Digest)
			}
			for _, p := range platforms {
				plat, _ := parsePlatform(p)
				img, err := remote.Image(ref, remote.WithContext(t.Context()), remote.WithPlatform(*plat))
				if err != nil {
					t.Fatalf("remote.Image(%s): %v", p, err)
				}
				d, _ := img.Digest()
				mt, _ := img.MediaType()
				child := got.Children[p]
				if d.String() != child.Digest.String() || mt != tc.childType {
					t.Errorf("%s resolves to %s (%s), want %s (%s)", p, d, mt, child.Digest, tc.childType)
				}
				cfg, err := img.ConfigFile()
				if err != nil {
					t.Fatal(err)
				}
				if cfg.OS != plat.OS || cfg.Architecture != plat.Architecture || cfg.Variant != plat.Variant {
					t.Errorf("%s config says %s/%s/%s", p, cfg.OS, cfg.Architecture, cfg.Variant)
				}
				layers, err := img.Layers()
				if err != nil {
					t.Fatal(err)
				}
				for _, l := range layers {
					checkTar(t, l)
				}
			}
		})
	}
}

// TestCraneReads checks the seeded manifests with an independent client.
func TestCraneReads(t *testing.T) {
	crane, err := exec.LookPath("crane")
	if err != nil {
		t.Skip("crane not installed")
	}
	reg := StartRegistry(t)
	img := reg.PushImage(t, "library/alpine", "3.19", ImageOptions{})
	idx := reg.PushIndex(t, "library/node", "21", []string{"linux/amd64", "linux/arm64"}, true)
	for _, tc := range []struct {
		ref  string
		want []byte
	}{
		{reg.Ref("library/alpine", "3.19"), img.Manifest},
		{reg.Ref("library/node", "21"), idx.Manifest},
		{reg.Ref("library/node", idx.Children["linux/arm64"].Digest.String()), idx.Children["linux/arm64"].Manifest},
	} {
		out, err := exec.CommandContext(t.Context(), crane, "manifest", "--insecure", tc.ref).Output()
		if err != nil {
			t.Fatalf("crane manifest %s: %v", tc.ref, err)
		}
		if string(out) != string(tc.want) {
			t.Errorf("crane manifest %s differs from pushed manifest", tc.ref)
		}
	}
}

func TestDeleteManifest(t *testing.T) {
	reg := StartRegistry(t)
	img := reg.PushImage(t, "library/gone", "x", ImageOptions{})
	reg.DeleteManifest(t, "library/gone", img.Digest)
	ref, _ := name.ParseReference(reg.Ref("library/gone", img.Digest.String()), name.Insecure)
	if _, err := remote.Head(ref, remote.WithContext(t.Context())); err == nil {
		t.Fatal("manifest still there after DeleteManifest")
	}
}
