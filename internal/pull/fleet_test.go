package pull

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/cluster"
	"github.com/regcache/regcache/internal/store/storetest"
)

// fakeFleet is the coordinator in memory, shared by the caches of a test:
// leases that never lapse, shared records, and peers that are other caches.
type fakeFleet struct {
	mu      sync.Mutex
	leases  map[string]string
	records map[string][]byte
	peers   map[string]*Cache
	down    bool
}

func newFakeFleet() *fakeFleet {
	return &fakeFleet{leases: map[string]string{}, records: map[string][]byte{}, peers: map[string]*Cache{}}
}

// member is one replica's view of the fleet.
type member struct {
	f    *fakeFleet
	self string
}

func (m member) Self() string { return m.self }

func (m member) Claim(_ context.Context, name string, _ time.Duration) (cluster.Claim, error) {
	m.f.mu.Lock()
	defer m.f.mu.Unlock()
	if m.f.down {
		return cluster.Claim{Release: func() {}}, cluster.ErrUnavailable
	}
	if h, ok := m.f.leases[name]; ok {
		return cluster.Claim{Holder: h, Release: func() {}, TakeOver: func(context.Context, time.Duration) (cluster.Claim, error) {
			m.f.mu.Lock()
			defer m.f.mu.Unlock()
			if m.f.leases[name] != h {
				return cluster.Claim{Holder: m.f.leases[name], Release: func() {}}, nil
			}
			m.f.leases[name] = m.self
			return cluster.Claim{Held: true, Holder: m.self, Release: func() { m.f.release(name) }}, nil
		}}, nil
	}
	m.f.leases[name] = m.self
	return cluster.Claim{Held: true, Holder: m.self, Release: func() { m.f.release(name) }}, nil
}

// release drops a lease, as its holder does when the job is done.
func (f *fakeFleet) release(name string) {
	f.mu.Lock()
	delete(f.leases, name)
	f.mu.Unlock()
}

func (m member) HolderOf(_ context.Context, name string) (string, error) {
	m.f.mu.Lock()
	defer m.f.mu.Unlock()
	return m.f.leases[name], nil
}

func (m member) Get(_ context.Context, key string) ([]byte, bool, error) {
	m.f.mu.Lock()
	defer m.f.mu.Unlock()
	v, ok := m.f.records[key]
	return v, ok, nil
}

func (m member) Set(_ context.Context, key string, value []byte, _ time.Duration) error {
	m.f.mu.Lock()
	defer m.f.mu.Unlock()
	m.f.records[key] = value
	return nil
}

func (m member) Delete(_ context.Context, key string) error {
	m.f.mu.Lock()
	defer m.f.mu.Unlock()
	delete(m.f.records, key)
	return nil
}

func (m member) OpenPeer(ctx context.Context, holder string, d digest.Digest) (io.ReadCloser, int64, error) {
	m.f.mu.Lock()
	peer, ok := m.f.peers[holder]
	m.f.mu.Unlock()
	if !ok {
		return nil, 0, errors.New("peer unreachable")
	}
	b, err := peer.PeerBlob(ctx, d)
	if err != nil {
		return nil, 0, cluster.ErrPeerNotFound
	}
	if b.Content != nil {
		return b.Content, b.Size, nil
	}
	return b.Stream, b.Size, nil
}

// fleetHarness is n caches on one store, one source and one fake fleet.
func fleetHarness(t *testing.T, n int) ([]*Cache, *fakeSource, *fakeFleet) {
	t.Helper()
	src, st, f := newFakeSource(), storetest.New(), newFakeFleet()
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	var caches []*Cache
	for i := range n {
		self := "http://replica" + string(rune('a'+i))
		c := New(Options{Store: st, Sources: map[string]Source{"docker.io": src}, TagTTL: time.Minute, FetchTimeout: 5 * time.Second,
			SpoolDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return now },
			Fleet: member{f, self}})
		f.peers[self] = c
		caches = append(caches, c)
		t.Cleanup(func() { c.Close(context.Background()) })
	}
	return caches, src, f
}

// A replica that does not hold a blob's download streams it from the one
// that does; the upstream serves it once.
func TestFleetFollowerStreamsFromHolder(t *testing.T) {
	caches, src, _ := fleetHarness(t, 2)
	data := bytes.Repeat([]byte("shared layer "), 30_000)
	_, bd := src.push("library/go", "1", data)
	src.gate = make(chan struct{}) // the holder's download waits
	r := repo(t, "library/go")
	hb, err := caches[0].Blob(context.Background(), r, bd)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan []byte)
	go func() { got, _ := io.ReadAll(streamOf(hb)); hb.Close(); done <- got }()
	fb, err := caches[1].Blob(context.Background(), r, bd)
	if err != nil {
		t.Fatal(err)
	}
	if fb.Source != "peer" {
		t.Errorf("the follower's blob came from %q, want peer", fb.Source)
	}
	close(src.gate)
	got, err := io.ReadAll(streamOf(fb))
	fb.Close()
	if err != nil || !bytes.Equal(got, data) || !bytes.Equal(<-done, data) {
		t.Fatalf("follower: %d bytes, %v", len(got), err)
	}
	if n := src.n("GET blob"); n != 1 {
		t.Errorf("upstream blob GETs = %d, want 1", n)
	}
}

// A holder that cannot serve (it died) does not stop the follower: it
// downloads the blob itself.
func TestFleetFollowerTakesOver(t *testing.T) {
	caches, src, f := fleetHarness(t, 2)
	data := []byte("a layer whose holder died")
	_, bd := src.push("library/go", "1", data)
	f.leases["blob:"+bd.String()] = "http://dead-replica"
	b, err := caches[1].Blob(context.Background(), repo(t, "library/go"), bd)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(streamOf(b))
	b.Close()
	if err != nil || !bytes.Equal(got, data) || b.Source == "peer" {
		t.Fatalf("takeover: %q from %s, %v", got, b.Source, err)
	}
}

// A tag revalidated by one replica is not revalidated by another within
// tag_ttl, and a manifest GET is spent once.
func TestFleetTagOnce(t *testing.T) {
	caches, src, _ := fleetHarness(t, 3)
	src.push("library/alpine", "3.19", []byte("config"))
	for i, c := range caches {
		m, err := c.ManifestByTag(context.Background(), tagKey(t, "library/alpine", "3.19"))
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		if i > 0 && m.Result != Hit {
			t.Errorf("replica %d: %s, want a hit from the fleet's answer", i, m.Result)
		}
	}
	if h, g := src.n("HEAD manifest"), src.n("GET manifest by digest"); h != 1 || g != 1 {
		t.Fatalf("HEADs %d, GETs %d; want 1 and 1 for three replicas", h, g)
	}
}

// While another replica holds a manifest's GET, the others wait for it and
// spend none; when the holder lets go without storing it, one does.
func TestFleetManifestOnce(t *testing.T) {
	caches, src, f := fleetHarness(t, 2)
	md, _ := src.push("library/alpine", "3.19", []byte("config"))
	f.leases["manifest:"+md.String()] = "http://replicaa"
	got := make(chan error, 1)
	go func() {
		_, err := caches[1].ManifestByDigest(context.Background(), repo(t, "library/alpine"), md)
		got <- err
	}()
	if _, err := caches[0].ManifestByDigest(context.Background(), repo(t, "library/alpine"), md); err != nil {
		t.Fatal(err)
	}
	f.release("manifest:" + md.String())
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if n := src.n("GET manifest by digest"); n > 2 {
		t.Fatalf("GETs = %d", n)
	}
}

// With the coordinator down, every replica does every job itself.
func TestFleetCoordinatorDown(t *testing.T) {
	caches, src, f := fleetHarness(t, 2)
	f.down = true
	data := []byte("fetched alone")
	_, bd := src.push("library/go", "1", data)
	for i, c := range caches {
		b, err := c.Blob(context.Background(), repo(t, "library/go"), bd)
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		io.Copy(io.Discard, streamOf(b))
		b.Close()
		c.Drain(context.Background())
	}
}
