package upstream

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/regerr"
	"github.com/regcache/regcache/internal/testhub"
)

// hubPair is Docker Hub and an ECR Public–style mirror (docker/ prefix, its
// own token service and the fixed "aws" scope) in front of one real registry.
type hubPair struct {
	backend *testhub.Registry
	origin  *testhub.Hub
	mirror  *testhub.Hub
	image   testhub.Image
}

func startHubs(t *testing.T, originOpts testhub.Options) hubPair {
	t.Helper()
	backend := testhub.StartRegistry(t)
	img := backend.PushImage(t, "library/node", "22", testhub.ImageOptions{Layers: 2})
	return hubPair{
		backend: backend,
		origin:  testhub.NewHub(t, backend, originOpts),
		mirror: testhub.NewHub(t, backend, testhub.Options{
			RepoPrefix: "docker/",
			Service:    "public.ecr.aws",
			Scope:      "aws",
		}),
		image: img,
	}
}

func (h hubPair) registry(t *testing.T, auth authn.Authenticator) *Registry {
	t.Helper()
	r, err := New(Config{
		Name: "docker.io",
		URL:  h.origin.URL,
		Auth: auth,
		Mirrors: []MirrorConfig{{
			Name:         "ecr",
			URL:          h.mirror.URL,
			RepoPrefix:   "docker/",
			Repositories: []string{"library/*"},
		}},
		Reserve: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// readHubBlob reads b to its end, which Blob verifies, and checks the
// bytes once more here.
func readHubBlob(t *testing.T, b *Blob, want digest.Digest) {
	t.Helper()
	data, err := readBlob(b)
	if err != nil {
		t.Fatalf("blob %s from %s: %v", want, b.Source, err)
	}
	if digest.FromBytes(data) != want {
		t.Fatalf("blob %s from %s does not verify", want, b.Source)
	}
}

func TestHubPullThroughMirrorCostsNoPull(t *testing.T) {
	h := startHubs(t, testhub.Options{AnonymousLimit: 10})
	r := h.registry(t, nil)
	ctx := context.Background()

	node := repo(t, "library/node")
	// The cache's path for a tag: the origin's free HEAD, then the digest
	// from wherever is cheapest.
	desc, err := r.HeadManifest(ctx, node, byTag(t, "22"), nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := r.Manifest(ctx, node, desc.Digest, AnySource)
	if err != nil {
		t.Fatal(err)
	}
	if m.Source != "ecr" || m.Digest != h.image.Digest || string(m.Data) != string(h.image.Manifest) || m.MediaType != h.image.MediaType {
		t.Errorf("got %s (%s) from %q; want %s (%s) from the mirror", m.Digest, m.MediaType, m.Source, h.image.Digest, h.image.MediaType)
	}
	for _, d := range append([]digest.Digest{h.image.Config}, h.image.Layers...) {
		b, err := r.Blob(ctx, node, d, -1)
		if err != nil {
			t.Fatal(err)
		}
		if b.Source != "ecr" {
			t.Errorf("blob %s from %q, want the mirror", d, b.Source)
		}
		readHubBlob(t, b, d)
	}
	oc := h.origin.Counts()
	if oc.ManifestGETs != 0 || oc.ManifestHEADs != 1 || len(oc.BlobGETs) != 0 {
		t.Errorf("origin: %d counted GETs, %d HEADs, %d blob GETs; want 0, 1, 0", oc.ManifestGETs, oc.ManifestHEADs, len(oc.BlobGETs))
	}
	if mc := h.mirror.Counts(); mc.ManifestGETsByRepo["docker/library/node"] != 1 {
		t.Errorf("mirror manifest GETs by repo: %v", mc.ManifestGETsByRepo)
	}
	b := r.Budget()
	if !b.Known || b.Limit != 10 || b.Remaining != 10 || b.Window == 0 {
		t.Errorf("Budget() = %+v; want the hub's 10 per window, none spent", b)
	}
}

func TestHubMirrorFailuresFallBackToOrigin(t *testing.T) {
	tests := []struct {
		name  string
		fault testhub.Fault
	}{
		{"500", testhub.Fault500},
		{"429", testhub.Fault429},
		{"dropped", testhub.FaultDrop},
		{"corrupt", testhub.FaultCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startHubs(t, testhub.Options{AnonymousLimit: 10})
			h.mirror.SetFaultFor(tt.fault, testhub.ScopeManifests)
			r := h.registry(t, nil)
			m, err := r.Manifest(context.Background(), repo(t, "library/node"), h.image.Digest, AnySource)
			if err != nil {
				t.Fatal(err)
			}
			if m.Source != SourceOrigin || string(m.Data) != string(h.image.Manifest) {
				t.Errorf("got %s from %q; want the origin's bytes", m.Digest, m.Source)
			}
			if got := h.origin.Counts().ManifestGETs; got != 1 {
				t.Errorf("origin counted GETs = %d, want 1", got)
			}
		})
	}
}

func TestHubAuthAndCDN(t *testing.T) {
	const password = "hub-Pa55word-1"
	h := startHubs(t, testhub.Options{
		Users:        map[string]string{"alice": password},
		UserLimit:    5,
		BlobRedirect: true,
	})
	ctx := context.Background()

	// Without mirrors, so blobs come from the origin and its CDN.
	r, err := New(Config{Name: "docker.io", URL: h.origin.URL, Auth: authn.FromConfig(authn.AuthConfig{Username: "alice", Password: password})})
	if err != nil {
		t.Fatal(err)
	}
	node := repo(t, "library/node")
	m, err := r.ManifestByTag(ctx, node, tag(t, "22"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Digest != h.image.Digest {
		t.Errorf("digest %s, want %s", m.Digest, h.image.Digest)
	}
	b, err := r.Blob(ctx, node, h.image.Layers[0], -1)
	if err != nil {
		t.Fatal(err)
	}
	readHubBlob(t, b, h.image.Layers[0])
	c := h.origin.Counts()
	if c.CDNRequests == 0 || c.CDNAuthHeaders != 0 {
		t.Errorf("CDN requests %d, Authorization headers seen by the CDN %d; want >0 and 0", c.CDNRequests, c.CDNAuthHeaders)
	}
	if bud := r.Budget(); !bud.Known || bud.Limit != 5 || bud.Remaining != 4 || bud.Source == "" {
		t.Errorf("Budget() = %+v; want 5 per window, 4 left, a source", bud)
	}

	wrong, err := New(Config{Name: "docker.io", URL: h.origin.URL, Auth: authn.FromConfig(authn.AuthConfig{Username: "alice", Password: "not-" + password})})
	if err != nil {
		t.Fatal(err)
	}
	_, err = wrong.HeadManifest(ctx, node, byTag(t, "22"), nil)
	if e := asError(t, err); e.Kind != regerr.Denied || strings.Contains(e.Error(), password) || strings.Contains(e.ClientMessage(), password) {
		t.Errorf("wrong password: err %v", err)
	}
}

func TestHubOriginPullLimit(t *testing.T) {
	h := startHubs(t, testhub.Options{AnonymousLimit: 1})
	other := h.backend.PushImage(t, "library/redis", "7", testhub.ImageOptions{})
	// No mirrors: every GET is a counted pull at the origin.
	r, err := New(Config{Name: "docker.io", URL: h.origin.URL, Reserve: 0})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	node, redis := repo(t, "library/node"), repo(t, "library/redis")
	if _, err := r.ManifestByTag(ctx, node, tag(t, "22"), nil); err != nil {
		t.Fatal(err)
	}
	if !r.BelowReserve() {
		t.Errorf("BelowReserve false with %+v", r.Budget())
	}
	_, err = r.ManifestByTag(ctx, redis, tag(t, "7"), nil)
	if e := asError(t, err); e.Kind != regerr.RateLimited || e.Status != 429 || !regerr.Transient(err) {
		t.Fatalf("want 429, got %v", err)
	}
	// Asked again within Retry-After: refused here, the hub sees nothing.
	before := h.origin.Counts().Requests
	_, err = r.ManifestByTag(ctx, redis, tag(t, "7"), nil)
	if !regerr.Is(err, regerr.RateLimited) || !isNotSent(err) {
		t.Fatalf("want an immediate refusal, got %v", err)
	}
	if after := h.origin.Counts().Requests; after != before {
		t.Errorf("a GET was sent during Retry-After (%d requests)", after-before)
	}
	// Resolving tags with HEAD still works: it is not counted.
	desc, err := r.HeadManifest(ctx, redis, byTag(t, "7"), nil)
	if err != nil || desc.Digest != other.Digest {
		t.Errorf("HEAD during the pull limit: %+v, %v", desc, err)
	}
	// What ratelimit.Check reports: a HEAD, then the budget it read.
	if _, err := r.HeadManifest(ctx, node, byTag(t, "22"), nil); err != nil {
		t.Errorf("budget probe: %v", err)
	}
	if b := r.Budget(); !b.Known || b.Remaining != 0 || b.RetryUntil.IsZero() {
		t.Errorf("Budget() after the probe = %+v", b)
	}
}
