// Package warm pulls images through a regcache server so that they are in
// its cache before CI needs them: after a deploy, before a release, or
// before the day's first builds meet Docker Hub's limit.
//
// It is an ordinary registry client of the server (go-containerregistry's
// remote package), so what it caches is exactly what a client's pull would
// have cached: the tag, the manifests and every blob, digest-verified on
// both sides.
package warm

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"
)

// Options says how to reach the server and what to pull.
type Options struct {
	// Server is regcache's host[:port]; images are asked for as
	// <Server>/<registry>/<repository>.
	Server string
	// Insecure talks plain HTTP to the server.
	Insecure bool
	// Transport carries the requests (TLS roots, timeouts); nil means
	// remote.DefaultTransport.
	Transport http.RoundTripper
	// Keychain supplies the login for the server, if it needs one.
	Keychain authn.Keychain
	// Platforms selects the images of a multi-platform index; nil means
	// all of them (attestations included).
	Platforms []v1.Platform
	// Jobs bounds the blobs fetched at once per image; default 4.
	Jobs int
}

// Result is what warming one reference did.
type Result struct {
	Ref       string // as given
	Digest    string // of the top manifest or index
	Manifests int
	Layers    int // image layers, a subset of Blobs (which counts configs too)
	Blobs     int
	Bytes     int64 // blob bytes read through the server
	Duration  time.Duration
	Err       error
}

// Progress is one image's state while it is warmed. Image updates it as
// manifests are read and blob bytes arrive; a display reads it with
// Snapshot from another goroutine.
type Progress struct {
	started               atomic.Bool
	layers, layersDone    atomic.Int64
	bytesTotal, bytesDone atomic.Int64
}

// Snapshot is a consistent-enough copy of a Progress for one redraw.
type Snapshot struct {
	Started               bool
	Layers, LayersDone    int
	BytesTotal, BytesDone int64
}

// Snapshot reads p.
func (p *Progress) Snapshot() Snapshot {
	return Snapshot{Started: p.started.Load(), Layers: int(p.layers.Load()), LayersDone: int(p.layersDone.Load()),
		BytesTotal: p.bytesTotal.Load(), BytesDone: p.bytesDone.Load()}
}

// Image pulls ref (as a user writes it: node:21, ghcr.io/org/app@sha256:...)
// through the server, with every manifest and blob the selected platforms
// need. p, if not nil, follows it.
func Image(ctx context.Context, opt Options, ref string, p *Progress) Result {
	start := time.Now()
	res := Result{Ref: ref}
	if p == nil {
		p = &Progress{}
	}
	p.started.Store(true)
	w, err := newWalker(ctx, opt, ref, p)
	if err == nil {
		res.Digest, err = w.manifest(w.ref, true)
	}
	res.Manifests, res.Blobs, res.Layers, res.Bytes = int(w.manifests.Load()), int(w.blobs.Load()), int(p.layersDone.Load()), p.bytesDone.Load()
	res.Err, res.Duration = err, time.Since(start)
	return res
}

// All warms refs, at most concurrency at once (at least one), and returns
// their results in the order of refs. progress[i], if progress is not nil,
// follows refs[i]; done, if not nil, is called as each image ends (from
// the goroutine that warmed it).
func All(ctx context.Context, opt Options, refs []string, concurrency int, progress []*Progress, done func(i int, r Result)) []Result {
	results := make([]Result, len(refs))
	var g errgroup.Group
	g.SetLimit(max(concurrency, 1))
	for i, ref := range refs {
		var p *Progress
		if progress != nil {
			p = progress[i]
		}
		g.Go(func() error {
			results[i] = Image(ctx, opt, ref, p)
			if done != nil {
				done(i, results[i])
			}
			return nil
		})
	}
	_ = g.Wait()
	return results
}

type walker struct {
	ctx       context.Context
	opt       Options
	ref       name.Reference
	remote    []remote.Option
	progress  *Progress
	manifests atomic.Int64
	blobs     atomic.Int64
}

func newWalker(ctx context.Context, opt Options, ref string, p *Progress) (*walker, error) {
	w := &walker{ctx: ctx, opt: opt, progress: p}
	named, err := reference.ParseNormalizedNamed(strings.TrimSpace(ref))
	if err != nil {
		return w, fmt.Errorf("%q is not an image reference: %w", ref, err)
	}
	path := strings.TrimRight(opt.Server, "/") + "/" + reference.Domain(named) + "/" + reference.Path(named)
	switch r := reference.TagNameOnly(named).(type) {
	case reference.Digested:
		path += "@" + r.Digest().String()
	case reference.Tagged:
		path += ":" + r.Tag()
	}
	var nopts []name.Option
	if opt.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	if w.ref, err = name.ParseReference(path, nopts...); err != nil {
		return w, fmt.Errorf("%s: %w", path, err)
	}
	kc := opt.Keychain
	if kc == nil {
		kc = authn.NewMultiKeychain()
	}
	w.remote = []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(kc)}
	if opt.Transport != nil {
		w.remote = append(w.remote, remote.WithTransport(opt.Transport))
	}
	return w, nil
}

// manifest fetches a manifest or index and everything below it, and returns
// its digest. top says it is the reference itself, not a child.
func (w *walker) manifest(ref name.Reference, top bool) (string, error) {
	desc, err := remote.Get(ref, w.remote...)
	if err != nil {
		return "", err
	}
	w.manifests.Add(1)
	if desc.MediaType.IsIndex() {
		var idx v1.IndexManifest
		if err := json.Unmarshal(desc.Manifest, &idx); err != nil {
			return "", fmt.Errorf("index %s: %w", desc.Digest, err)
		}
		matched := 0
		for _, m := range idx.Manifests {
			if !w.wanted(m.Platform) {
				continue
			}
			matched++
			if _, err := w.manifest(ref.Context().Digest(m.Digest.String()), false); err != nil {
				return "", err
			}
		}
		if top && matched == 0 && len(w.opt.Platforms) > 0 {
			return "", fmt.Errorf("index %s has no image for the platforms asked for", desc.Digest)
		}
		return desc.Digest.String(), nil
	}
	if !desc.MediaType.IsImage() {
		return "", fmt.Errorf("%s: unsupported manifest type %q", desc.Digest, desc.MediaType)
	}
	var m v1.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		return "", fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	g, _ := errgroup.WithContext(w.ctx)
	jobs := w.opt.Jobs
	if jobs <= 0 {
		jobs = 4
	}
	g.SetLimit(jobs)
	w.progress.layers.Add(int64(len(m.Layers)))
	w.progress.bytesTotal.Add(m.Config.Size)
	for _, l := range m.Layers {
		w.progress.bytesTotal.Add(l.Size)
	}
	g.Go(func() error { return w.blob(ref.Context().Digest(m.Config.Digest.String()), false) })
	for _, d := range m.Layers {
		g.Go(func() error { return w.blob(ref.Context().Digest(d.Digest.String()), true) })
	}
	return desc.Digest.String(), g.Wait()
}

// blob reads one blob to the end, counting its bytes as they arrive;
// go-containerregistry checks its digest.
func (w *walker) blob(d name.Digest, layer bool) error {
	l, err := remote.Layer(d, w.remote...)
	if err != nil {
		return err
	}
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	if _, err := io.Copy(counter{&w.progress.bytesDone}, rc); err != nil {
		return fmt.Errorf("blob %s: %w", d.DigestStr(), err)
	}
	w.blobs.Add(1)
	if layer {
		w.progress.layersDone.Add(1)
	}
	return nil
}

// counter discards what it is given and counts it.
type counter struct{ n *atomic.Int64 }

func (c counter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	return len(p), nil
}

func (w *walker) wanted(p *v1.Platform) bool {
	if len(w.opt.Platforms) == 0 {
		return true
	}
	if p == nil {
		return false
	}
	for _, want := range w.opt.Platforms {
		if p.Satisfies(want) {
			return true
		}
	}
	return false
}
