package upstream

import (
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
)

const testManifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`

func mustRegistry(t *testing.T, host string) name.Registry {
	t.Helper()
	reg, err := name.NewRegistry(host)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// repo names a repository of docker.io; upstream uses only its path.
func repo(t testing.TB, path string) ref.Repo {
	t.Helper()
	r, err := ref.NewRepo("docker.io", path)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func tag(t testing.TB, s string) ref.Tag {
	t.Helper()
	tg, err := ref.NewTag(s)
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// byTag is a manifest reference by tag, for HeadManifest.
func byTag(t testing.TB, s string) ref.Manifest { return ref.Manifest{Tag: tag(t, s)} }

// byDigest is a manifest reference by digest, for HeadManifest.
func byDigest(d digest.Digest) ref.Manifest { return ref.Manifest{Digest: d} }

// asError returns err's *regerr.Error, failing the test when there is none.
func asError(t testing.TB, err error) *regerr.Error {
	t.Helper()
	var re *regerr.Error
	if !errors.As(err, &re) {
		t.Fatalf("want a *regerr.Error, got %#v", err)
	}
	return re
}

// readBlob reads b to its end and closes it. A nil error means the body
// verified: Blob returns io.EOF only after the digest and size check.
func readBlob(b *Blob) ([]byte, error) {
	defer b.Close()
	return io.ReadAll(b)
}

func credsFor(f *fakeRegistry) authn.Authenticator { return credsForUser(f.user, f.pass) }

func credsForUser(user, password string) authn.Authenticator {
	return authn.FromConfig(authn.AuthConfig{Username: user, Password: password})
}

// newTestRegistry is a client for f named test.io, on the real clock.
func newTestRegistry(t *testing.T, f *fakeRegistry, auth authn.Authenticator) *Registry {
	t.Helper()
	r, err := New(Config{Name: "test.io", URL: f.srv.URL, Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// newRegistryT builds a client (named docker.io unless cfg says otherwise)
// on a fake clock.
func newRegistryT(t *testing.T, cfg Config, clock *fakeClock) *Registry {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "docker.io"
	}
	r, err := newRegistry(cfg, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// fakeClock drives breakers and Retry-After without sleeping.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 11, 23, 13, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
