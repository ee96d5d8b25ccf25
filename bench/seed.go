package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

const (
	mtDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	mtDockerConfig   = "application/vnd.docker.container.image.v1+json"
	mtDockerLayerTar = "application/vnd.docker.image.rootfs.diff.tar"
	// acceptAll is what containerd sends when resolving a tag.
	acceptAll = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
)

// blobFile is random (incompressible) content kept in a file, so that big
// blobs are never held in memory.
type blobFile struct {
	path   string
	digest string
	size   int64
}

// randomFile returns a file of size random bytes under dir/files, creating
// it on the first run and reusing it after (the digest is kept beside it).
// The content is a ChaCha8 stream from a fixed seed: incompressible, and the
// same on every machine.
func randomFile(dir, name string, size int64, seed uint64) (blobFile, error) {
	p := filepath.Join(dir, "files", fmt.Sprintf("%s-%d.bin", name, size))
	if b, err := os.ReadFile(p + ".sha256"); err == nil {
		if st, err := os.Stat(p); err == nil && st.Size() == size {
			return blobFile{path: p, digest: strings.TrimSpace(string(b)), size: size}, nil
		}
	}
	mustMkdir(filepath.Dir(p))
	f, err := os.Create(p + ".tmp")
	if err != nil {
		return blobFile{}, err
	}
	defer f.Close()
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	r := rand.NewChaCha8(s)
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := int64(len(buf))
		if n > left {
			n = left
		}
		_, _ = r.Read(buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			return blobFile{}, err
		}
		left -= n
	}
	if err := w.Flush(); err != nil {
		return blobFile{}, err
	}
	if err := f.Close(); err != nil {
		return blobFile{}, err
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		return blobFile{}, err
	}
	d := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if err := os.WriteFile(p+".sha256", []byte(d+"\n"), 0o644); err != nil {
		return blobFile{}, err
	}
	return blobFile{path: p, digest: d, size: size}, nil
}

// pushBlob uploads content to the origin registry in one monolithic PUT.
func pushBlob(base, repo, dgst string, size int64, body io.Reader) error {
	resp, err := http.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("start upload: %s", resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return err
	}
	b, _ := url.Parse(base + "/")
	u := b.ResolveReference(loc)
	q := u.Query()
	q.Set("digest", dgst)
	u.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, u.String(), body)
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("upload %s: %s %s", dgst, resp.Status, msg)
	}
	return nil
}

func pushBlobFile(base, repo string, bf blobFile) error {
	f, err := os.Open(bf.path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pushBlob(base, repo, bf.digest, bf.size, f)
}

func pushBytes(base, repo string, data []byte) (string, error) {
	d := digestOf(data)
	return d, pushBlob(base, repo, d, int64(len(data)), bytes.NewReader(data))
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

type descriptor struct {
	MediaType string `json:"mediaType"`
	Size      int64  `json:"size"`
	Digest    string `json:"digest"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

// image is a pushed image: its manifest and the blobs a pull fetches.
type image struct {
	repo, tag string
	digest    string
	manifest  []byte
	size      int64 // config + layers
	blobs     []descriptor
}

// buildManifest makes a Docker schema 2 manifest whose layers are the given
// blobs (uncompressed "tar" layers: a pull client that does not unpack
// never looks inside).
func buildManifest(layers []descriptor) (manifest []byte, config []byte) {
	diffIDs := make([]string, len(layers))
	for i, l := range layers {
		diffIDs[i] = l.Digest
	}
	cfg, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Cmd": []string{"/bin/true"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     mtDockerManifest,
		"config":        descriptor{MediaType: mtDockerConfig, Size: int64(len(cfg)), Digest: digestOf(cfg)},
		"layers":        layers,
	}
	mb, _ := json.MarshalIndent(m, "", "   ")
	return mb, cfg
}

// pushImage pushes an image made of the given layer files.
func pushImage(base, repo, tag string, layers []blobFile) (image, error) {
	img := image{repo: repo, tag: tag}
	var descs []descriptor
	for _, l := range layers {
		if err := pushBlobFile(base, repo, l); err != nil {
			return img, err
		}
		descs = append(descs, descriptor{MediaType: mtDockerLayerTar, Size: l.size, Digest: l.digest})
	}
	m, cfg := buildManifest(descs)
	cd, err := pushBytes(base, repo, cfg)
	if err != nil {
		return img, err
	}
	req, _ := http.NewRequest(http.MethodPut, base+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(m))
	req.Header.Set("Content-Type", mtDockerManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return img, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return img, fmt.Errorf("push manifest %s:%s: %s", repo, tag, resp.Status)
	}
	img.digest = digestOf(m)
	img.manifest = m
	img.blobs = append([]descriptor{{MediaType: mtDockerConfig, Size: int64(len(cfg)), Digest: cd}}, descs...)
	for _, b := range img.blobs {
		img.size += b.Size
	}
	return img, nil
}
