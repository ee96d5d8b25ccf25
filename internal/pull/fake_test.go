package pull

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regcache/regcache/internal/pull/index"
	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
	"github.com/regcache/regcache/internal/store/storetest"
	"github.com/regcache/regcache/internal/upstream"
)

// fakeSource is a registry and its mirrors in memory: tags, manifests and
// blobs, a fault switch for the origin, and a count of every call.
type fakeSource struct {
	mu        sync.Mutex
	tags      map[string]digest.Digest // repo:tag
	manifests map[digest.Digest][]byte
	blobs     map[digest.Digest][]byte
	mirror    map[digest.Digest]bool // what the mirror has, by digest
	mirrorTag map[string]digest.Digest
	lists     map[string][]upstream.List // repo → pages
	originErr error                      // every origin call fails with it
	below     bool                       // BelowReserve
	calls     map[string]int
	// gate, when set, blocks blob bodies until closed.
	gate chan struct{}
	// hold, when set, stalls every origin call until it is closed or the
	// call's context ends: a slow or hanging origin. held counts the calls
	// it has stalled.
	hold chan struct{}
	held int
}

func newFakeSource() *fakeSource {
	return &fakeSource{
		tags: map[string]digest.Digest{}, manifests: map[digest.Digest][]byte{}, blobs: map[digest.Digest][]byte{},
		mirror: map[digest.Digest]bool{}, mirrorTag: map[string]digest.Digest{}, lists: map[string][]upstream.List{},
		calls: map[string]int{},
	}
}

func (f *fakeSource) count(call string) {
	f.mu.Lock()
	f.calls[call]++
	f.mu.Unlock()
}

func (f *fakeSource) n(call string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[call]
}

func (f *fakeSource) setOriginErr(err error) {
	f.mu.Lock()
	f.originErr = err
	f.mu.Unlock()
}

// push adds an image manifest naming one blob, tagged repo:tag, and
// returns the manifest's and the blob's digests.
func (f *fakeSource) push(repo, tag string, blob []byte) (digest.Digest, digest.Digest) {
	bd := digest.FromBytes(blob)
	m, _ := json.Marshal(ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: bd, Size: int64(len(blob))},
		Layers:    []ocispec.Descriptor{},
	})
	md := digest.FromBytes(m)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tags[repo+":"+tag] = md
	f.manifests[md] = m
	f.blobs[bd] = blob
	return md, bd
}

// origin is what every origin call meets first: the hold, then the fault.
func (f *fakeSource) origin(ctx context.Context) error {
	f.mu.Lock()
	hold := f.hold
	if hold != nil {
		f.held++
	}
	f.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			// What the upstream client says when a deadline passes.
			return &regerr.Error{Kind: regerr.Unavailable, Registry: "docker.io", Message: "no answer", Err: ctx.Err()}
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.originErr
}

// stall makes the origin hang from now on; the returned function lets every
// held call go on (and is safe to call twice).
func (f *fakeSource) stall() (release func()) {
	ch := make(chan struct{})
	f.mu.Lock()
	f.hold = ch
	f.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			f.hold = nil
			f.mu.Unlock()
			close(ch)
		})
	}
}

// nHeld is how many origin calls the hold has stalled.
func (f *fakeSource) nHeld() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held
}

func (f *fakeSource) manifest(d digest.Digest, source string) upstream.Manifest {
	f.mu.Lock()
	defer f.mu.Unlock()
	data := f.manifests[d]
	return upstream.Manifest{Descriptor: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: int64(len(data))}, Data: data, Source: source}
}

func notFound() error { return &regerr.Error{Kind: regerr.NotFound, Registry: "docker.io"} }

func (f *fakeSource) HeadManifest(ctx context.Context, repo ref.Repo, m ref.Manifest, _ []string) (ocispec.Descriptor, error) {
	f.count("HEAD manifest")
	if err := f.origin(ctx); err != nil {
		return ocispec.Descriptor{}, err
	}
	d := m.Digest
	f.mu.Lock()
	if d == "" {
		d = f.tags[repo.Path()+":"+m.Tag.String()]
	}
	_, ok := f.manifests[d]
	f.mu.Unlock()
	if !ok {
		return ocispec.Descriptor{}, notFound()
	}
	return ocispec.Descriptor{Digest: d, MediaType: ocispec.MediaTypeImageManifest}, nil
}

func (f *fakeSource) ManifestByTag(ctx context.Context, repo ref.Repo, tag ref.Tag, _ []string) (upstream.Manifest, error) {
	f.count("GET manifest by tag")
	if err := f.origin(ctx); err != nil {
		return upstream.Manifest{}, err
	}
	f.mu.Lock()
	d, ok := f.tags[repo.Path()+":"+tag.String()]
	f.mu.Unlock()
	if !ok {
		return upstream.Manifest{}, notFound()
	}
	return f.manifest(d, upstream.SourceOrigin), nil
}

func (f *fakeSource) Manifest(ctx context.Context, _ ref.Repo, d digest.Digest, from upstream.From) (upstream.Manifest, error) {
	f.mu.Lock()
	atMirror := f.mirror[d]
	f.mu.Unlock()
	if atMirror {
		f.count("GET manifest at mirror")
		return f.manifest(d, "mirror"), nil
	}
	if from == upstream.MirrorsOnly {
		return upstream.Manifest{}, notFound()
	}
	f.count("GET manifest by digest")
	if err := f.origin(ctx); err != nil {
		return upstream.Manifest{}, err
	}
	f.mu.Lock()
	_, ok := f.manifests[d]
	f.mu.Unlock()
	if !ok {
		return upstream.Manifest{}, notFound()
	}
	return f.manifest(d, upstream.SourceOrigin), nil
}

func (f *fakeSource) TagAtMirror(_ context.Context, repo ref.Repo, tag ref.Tag, _ []string) (upstream.Manifest, error) {
	f.count("tag at mirror")
	f.mu.Lock()
	d, ok := f.mirrorTag[repo.Path()+":"+tag.String()]
	f.mu.Unlock()
	if !ok {
		return upstream.Manifest{}, notFound()
	}
	return f.manifest(d, "mirror"), nil
}

func (f *fakeSource) BelowReserve() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.below
}

func (f *fakeSource) Blob(ctx context.Context, _ ref.Repo, d digest.Digest, _ int64) (*upstream.Blob, error) {
	f.count("GET blob")
	if err := f.origin(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	data, ok := f.blobs[d]
	gate := f.gate
	f.mu.Unlock()
	if !ok {
		return nil, notFound()
	}
	var r io.Reader = bytes.NewReader(data)
	if gate != nil {
		r = io.MultiReader(gatedReader{gate}, r)
	}
	return &upstream.Blob{ReadCloser: io.NopCloser(r), Size: int64(len(data)), Source: upstream.SourceOrigin}, nil
}

type gatedReader struct{ gate chan struct{} }

func (g gatedReader) Read([]byte) (int, error) { <-g.gate; return 0, io.EOF }

func (f *fakeSource) StatBlob(ctx context.Context, _ ref.Repo, d digest.Digest) (ocispec.Descriptor, error) {
	f.count("HEAD blob")
	if err := f.origin(ctx); err != nil {
		return ocispec.Descriptor{}, err
	}
	f.mu.Lock()
	data, ok := f.blobs[d]
	f.mu.Unlock()
	if !ok {
		return ocispec.Descriptor{}, notFound()
	}
	return ocispec.Descriptor{Digest: d, Size: int64(len(data))}, nil
}

func (f *fakeSource) List(ctx context.Context, repo ref.Repo, req upstream.ListRequest) (upstream.List, error) {
	f.count("GET list")
	if err := f.origin(ctx); err != nil {
		return upstream.List{}, err
	}
	f.mu.Lock()
	pages := f.lists[repo.Path()]
	f.mu.Unlock()
	if len(pages) == 0 {
		return upstream.List{}, notFound()
	}
	page := 0
	if last := req.Query.Get("last"); last != "" {
		for i, p := range pages {
			if bytes.Contains(p.Body, []byte(`"`+last+`"`)) {
				page = i + 1
			}
		}
	}
	return pages[page], nil
}

// clock is a settable time for TTL tests.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type harness struct {
	cache *Cache
	src   *fakeSource
	store *storetest.Mem
	clock *clock
}

func newHarness(t *testing.T, mod func(*Options)) *harness {
	t.Helper()
	h := &harness{src: newFakeSource(), store: storetest.New(), clock: &clock{now: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)}}
	opt := Options{
		Store: h.store, Sources: map[string]Source{"docker.io": h.src},
		TagTTL: time.Minute, TagFallback: true, ListTTL: 30 * time.Second, FetchTimeout: 10 * time.Second,
		SpoolDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler), Now: h.clock.Now,
	}
	if mod != nil {
		mod(&opt)
	}
	h.cache = New(opt)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.cache.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return h
}

func repo(t *testing.T, path string) ref.Repo {
	t.Helper()
	r, err := ref.NewRepo("docker.io", path)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func tagKey(t *testing.T, path, tag string) index.TagKey {
	t.Helper()
	tg, err := ref.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	return index.TagKey{Repo: repo(t, path), Tag: tg, Mask: ref.AcceptAll}
}
