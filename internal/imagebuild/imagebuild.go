// Package imagebuild assembles regcache's own container image as data, with
// go-containerregistry and no daemon: a multi-platform OCI index whose
// images are FROM scratch, each with two layers:
//
//	base    /etc/passwd, /etc/group (user regcache, 65532), /etc/regcache/
//	        regcache.yaml (the image's default config), the CA bundle at
//	        /etc/ssl/certs/ca-certificates.crt, /var/lib/regcache (the
//	        store's volume, owned by 65532) and /tmp; the same bytes, so the
//	        same digest, on every platform
//	binary  /usr/bin/regcache, a static binary for that platform
//
// Every timestamp in the tars and configs is Spec.Created (the commit's
// time), so the same sources give the same digests on every machine.
// tools/mkimage is the command around it (`make image`); the Dockerfile
// builds the same image for those who build with a daemon.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// What the image runs as and where things are. The Dockerfile repeats these
// (a test checks that it does).
const (
	UID        = 65532
	BinaryPath = "/usr/bin/regcache"
	StoreDir   = "/var/lib/regcache"
	ConfigPath = "/etc/regcache/regcache.yaml"
	CAPath     = "/etc/ssl/certs/ca-certificates.crt"
	Port       = "5000/tcp"
)

// Spec is everything an image is made from.
type Spec struct {
	// Binaries maps a platform ("linux/arm64") to its static regcache binary.
	Binaries map[string]string
	// RootFS is a directory copied into the base layer as is (deploy/image/
	// rootfs: passwd, group, the default config).
	RootFS string
	// CABundle is the PEM bundle installed at CAPath.
	CABundle string
	// Created stamps every file and config; use the commit's time.
	Created time.Time
	// Version, Revision and Source become the org.opencontainers.image.*
	// labels and annotations.
	Version, Revision, Source string
}

// Config is the runtime config of every image in the index.
func Config(labels map[string]string) v1.Config {
	return v1.Config{
		User:         fmt.Sprintf("%d:%d", UID, UID),
		Entrypoint:   []string{BinaryPath},
		Cmd:          []string{"serve"},
		WorkingDir:   StoreDir,
		Env:          []string{"PATH=/usr/bin", "REGCACHE_CONFIG=" + ConfigPath},
		ExposedPorts: map[string]struct{}{Port: {}},
		Volumes:      map[string]struct{}{StoreDir: {}},
		Labels:       labels,
	}
}

// Labels are the org.opencontainers.image.* labels of spec's images.
func (s Spec) Labels() map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       "regcache",
		"org.opencontainers.image.description": "A pull-through caching container registry that keeps CI pulls working under Docker Hub rate limits",
		"org.opencontainers.image.version":     s.Version,
		"org.opencontainers.image.revision":    s.Revision,
		"org.opencontainers.image.source":      s.Source,
		"org.opencontainers.image.url":         s.Source,
		"org.opencontainers.image.created":     s.Created.UTC().Format(time.RFC3339),
		"org.opencontainers.image.base.name":   "scratch",
	}
}

// Build makes the index: one image per platform in spec.Binaries, in
// platform order.
func Build(spec Spec) (v1.ImageIndex, error) {
	if len(spec.Binaries) == 0 {
		return nil, errors.New("imagebuild: no binaries")
	}
	base, err := baseLayer(spec)
	if err != nil {
		return nil, err
	}
	platforms := make([]string, 0, len(spec.Binaries))
	for p := range spec.Binaries {
		platforms = append(platforms, p)
	}
	sort.Strings(platforms)
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range platforms {
		plat, err := v1.ParsePlatform(p)
		if err != nil || plat.OS == "" || plat.Architecture == "" {
			return nil, fmt.Errorf("imagebuild: platform %q: want os/arch", p)
		}
		img, err := platformImage(spec, base, *plat, spec.Binaries[p])
		if err != nil {
			return nil, fmt.Errorf("imagebuild: %s: %w", p, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: plat}})
	}
	out, ok := mutate.Annotations(idx, spec.annotations()).(v1.ImageIndex)
	if !ok {
		return nil, errors.New("imagebuild: annotating the index did not give an index")
	}
	return out, nil
}

func (s Spec) annotations() map[string]string {
	a := s.Labels()
	delete(a, "org.opencontainers.image.description")
	return a
}

func platformImage(spec Spec, base v1.Layer, plat v1.Platform, binary string) (v1.Image, error) {
	bin, err := os.ReadFile(binary)
	if err != nil {
		return nil, err
	}
	binLayer, err := layer(spec.Created, []entry{dir("usr/", 0o755, 0), dir("usr/bin/", 0o755, 0), file(strings.TrimPrefix(BinaryPath, "/"), 0o755, bin)})
	if err != nil {
		return nil, err
	}
	created := v1.Time{Time: spec.Created.UTC()}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.Append(img,
		mutate.Addendum{Layer: base, MediaType: types.OCILayer, History: v1.History{Created: created, CreatedBy: "imagebuild: passwd, group, default config, CA bundle, " + StoreDir, Comment: "base"}},
		mutate.Addendum{Layer: binLayer, MediaType: types.OCILayer, History: v1.History{Created: created, CreatedBy: "imagebuild: " + BinaryPath + " (CGO_ENABLED=0, " + plat.String() + ")", Comment: "binary"}},
	)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Created, cf.OS, cf.Architecture, cf.Variant = created, plat.OS, plat.Architecture, plat.Variant
	cf.Author = "regcache"
	cf.Config = Config(spec.Labels())
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	out, ok := mutate.Annotations(img, spec.annotations()).(v1.Image)
	if !ok {
		return nil, errors.New("annotating the image did not give an image")
	}
	return out, nil
}

// baseLayer holds everything but the binary.
func baseLayer(spec Spec) (v1.Layer, error) {
	ca, err := os.ReadFile(spec.CABundle)
	if err != nil {
		return nil, fmt.Errorf("imagebuild: CA bundle: %w", err)
	}
	if !bytes.Contains(ca, []byte("-----BEGIN CERTIFICATE-----")) {
		return nil, fmt.Errorf("imagebuild: CA bundle %s has no PEM certificate", spec.CABundle)
	}
	entries := []entry{
		dir("etc/", 0o755, 0), dir("etc/ssl/", 0o755, 0), dir("etc/ssl/certs/", 0o755, 0),
		file(strings.TrimPrefix(CAPath, "/"), 0o644, ca),
		dir("tmp/", 0o1777, 0),
		dir("var/", 0o755, 0), dir("var/lib/", 0o755, 0),
		dir(strings.TrimPrefix(StoreDir, "/")+"/", 0o755, UID),
	}
	// The rootfs tree, walked in lexical order so the tar is the same on
	// every machine.
	err = filepath.WalkDir(spec.RootFS, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(spec.RootFS, p)
		if err != nil || rel == "." {
			return err
		}
		name := filepath.ToSlash(rel)
		if d.IsDir() {
			if name != "etc" {
				entries = append(entries, dir(name+"/", 0o755, 0))
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: only regular files and directories go into the image", p)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		entries = append(entries, file(name, 0o644, b))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("imagebuild: rootfs: %w", err)
	}
	return layer(spec.Created, entries)
}

type entry struct {
	hdr  tar.Header
	body []byte
}

func dir(name string, mode int64, owner int) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: owner, Gid: owner}}
}

func file(name string, mode int64, body []byte) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))}, body: body}
}

// layer writes entries, parents first, into a gzipped OCI layer.
func layer(mtime time.Time, entries []entry) (v1.Layer, error) {
	sort.SliceStable(entries, func(i, j int) bool {
		return path.Clean(entries[i].hdr.Name) < path.Clean(entries[j].hdr.Name)
	})
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		h.ModTime, h.Format = mtime.UTC().Truncate(time.Second), tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// WriteLayout writes idx to dir as an OCI image layout whose index.json
// names it tag (org.opencontainers.image.ref.name), replacing whatever dir
// held: `skopeo copy oci:DIR:TAG`, `podman pull oci:DIR:TAG` and `crane
// push DIR` read it.
func WriteLayout(dir, tag string, idx v1.ImageIndex) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag}))
}
