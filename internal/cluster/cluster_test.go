package cluster

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/testhub"
)

var secret = bytes.Repeat([]byte("s"), 32)

func newCoord(t *testing.T, r *testhub.Redis, self string) *Coordinator {
	t.Helper()
	// A loaded CI machine can take longer than the default 250 ms to get
	// an answer from a healthy Redis; these tests are about what the
	// answers are, not how fast they come.
	c, err := New(Config{Redis: r.Addr, Self: self, Secret: secret, Prefix: "test:", OpTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{Redis: "x:1", Secret: secret}, "cluster.advertise"},
		{Config{Redis: "x:1", Self: "http://a", Secret: []byte("short")}, "cluster.secret_file"},
		{Config{Redis: "redis://u:hunter2@[::1", Self: "http://a", Secret: secret}, "cluster.redis"},
	}
	for _, tc := range tests {
		_, err := New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("New(%+v) = %v, want an error naming %s and no password", tc.cfg.Redis, err, tc.want)
		}
	}
}

// One replica holds a job; the others learn who, and take it once it is
// released or lapses.
func TestLeases(t *testing.T) {
	r := testhub.StartRedis(t)
	a, b := newCoord(t, r, "http://a:5000"), newCoord(t, r, "http://b:5000")
	ctx := context.Background()

	la, err := a.Acquire(ctx, "blob:x", time.Second)
	if err != nil || !la.Held || la.Holder != "http://a:5000" {
		t.Fatalf("a: %+v %v", la, err)
	}
	lb, err := b.Acquire(ctx, "blob:x", time.Second)
	if err != nil || lb.Held || lb.Holder != "http://a:5000" {
		t.Fatalf("b while a holds it: %+v %v", lb, err)
	}
	// Renewed while held: still a's after twice its ttl.
	time.Sleep(2100 * time.Millisecond)
	if h, _ := b.HolderOf(ctx, "blob:x"); h != "http://a:5000" {
		t.Fatalf("holder after 2 ttl = %q: the lease was not renewed", h)
	}
	la.Release()
	lb, err = b.Acquire(ctx, "blob:x", 300*time.Millisecond)
	if err != nil || !lb.Held {
		t.Fatalf("b after a released: %+v %v", lb, err)
	}
	// A replica that dies stops renewing: simulate by stopping b's
	// renewal without releasing, and wait for the lapse.
	close(lb.stop)
	lb.wg.Wait()
	time.Sleep(600 * time.Millisecond)
	if h, _ := a.HolderOf(ctx, "blob:x"); h != "" {
		t.Fatalf("a dead holder's lease did not lapse: %q", h)
	}
	// Releasing someone else's lease does nothing.
	la2, _ := a.Acquire(ctx, "blob:y", time.Minute)
	stale := &Lease{Held: true, c: b, key: la2.key, value: "http://b:5000 other", stop: make(chan struct{})}
	stale.Release()
	if h, _ := a.HolderOf(ctx, "blob:y"); h != "http://a:5000" {
		t.Fatal("a release with a stale value dropped the holder's lease")
	}
	la2.Release()
}

// When the holder cannot do its job (it died; its lease has not lapsed),
// the replicas that notice race to take it over: exactly one wins, and the
// others are told the winner, not the dead holder.
func TestTakeOver(t *testing.T) {
	r := testhub.StartRedis(t)
	dead := newCoord(t, r, "http://dead:5000")
	ctx := context.Background()
	ld, err := dead.Acquire(ctx, "blob:z", time.Minute)
	if err != nil || !ld.Held {
		t.Fatalf("dead: %+v %v", ld, err)
	}
	close(ld.stop) // it dies: no renewal, no release
	ld.wg.Wait()

	names := []string{"http://a:5000", "http://b:5000", "http://c:5000"}
	seen := make([]*Lease, len(names))
	for i, n := range names {
		c := newCoord(t, r, n)
		if seen[i], err = c.Acquire(ctx, "blob:z", time.Minute); err != nil || seen[i].Held || seen[i].Holder != "http://dead:5000" {
			t.Fatalf("%s while the dead replica holds it: %+v %v", n, seen[i], err)
		}
	}
	got := make([]*Lease, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i := range names {
		wg.Go(func() { got[i], errs[i] = seen[i].TakeOver(ctx, time.Minute) })
	}
	wg.Wait()
	var winner string
	for i, l := range got {
		if errs[i] != nil {
			t.Fatalf("%s: %v", names[i], errs[i])
		}
		if l.Held {
			if winner != "" {
				t.Fatalf("both %s and %s took the job over", winner, names[i])
			}
			winner = names[i]
			defer l.Release()
		}
	}
	if winner == "" {
		t.Fatal("nobody took the job over")
	}
	for i, l := range got {
		if !l.Held && l.Holder != winner {
			t.Errorf("%s follows %q, want the new holder %s", names[i], l.Holder, winner)
		}
	}
	if h, _ := dead.HolderOf(ctx, "blob:z"); h != winner {
		t.Errorf("Redis names %q, want %s", h, winner)
	}
	// The old holder's release, should it come back, does not drop it.
	old := &Lease{Held: true, c: dead, key: ld.key, value: ld.value, stop: make(chan struct{})}
	old.Release()
	if h, _ := dead.HolderOf(ctx, "blob:z"); h != winner {
		t.Errorf("the old holder's release dropped the new lease: holder %q", h)
	}
}

func TestRecords(t *testing.T) {
	r := testhub.StartRedis(t)
	a, b := newCoord(t, r, "http://a"), newCoord(t, r, "http://b")
	ctx := context.Background()
	if _, ok, err := b.Get(ctx, "tag:k"); ok || err != nil {
		t.Fatalf("missing record: %v %v", ok, err)
	}
	if err := a.Set(ctx, "tag:k", []byte("v1"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := b.Get(ctx, "tag:k"); !ok || err != nil || string(v) != "v1" {
		t.Fatalf("b reads %q %v %v", v, ok, err)
	}
	a.Delete(ctx, "tag:k")
	if _, ok, _ := b.Get(ctx, "tag:k"); ok {
		t.Fatal("deleted record read back")
	}
}

// A budget one replica publishes reaches the others, as it happens and,
// for a replica that starts later, when it subscribes.
func TestBudgetsShared(t *testing.T) {
	r := testhub.StartRedis(t)
	a, b := newCoord(t, r, "http://a"), newCoord(t, r, "http://b")
	got := make(chan string, 4)
	b.OnBudget("docker.io", func(m []byte) { got <- string(m) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.Run(ctx)
	a.OnBudget("docker.io", func(m []byte) { t.Errorf("a heard its own budget: %s", m) })
	go a.Run(ctx)
	// The subscription is asynchronous: publish until b hears.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := a.PublishBudget(ctx, "docker.io", []byte(`{"Remaining":3}`)); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-got:
			if m != `{"Remaining":3}` {
				t.Fatalf("b heard %s", m)
			}
			goto late
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("b never heard the budget")
		}
	}
late:
	c := newCoord(t, r, "http://c")
	gotC := make(chan string, 1)
	c.OnBudget("docker.io", func(m []byte) { gotC <- string(m) })
	go c.Run(ctx)
	select {
	case m := <-gotC:
		if m != `{"Remaining":3}` {
			t.Fatalf("c heard %s", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a replica that starts later did not get the last budget")
	}
}

// Redis down: every call fails fast with ErrUnavailable, Health says so,
// and the coordinator recovers by itself when Redis is back.
func TestCoordinatorDown(t *testing.T) {
	r := testhub.StartRedis(t)
	c := newCoord(t, r, "http://a")
	ctx := context.Background()
	if _, err := c.Acquire(ctx, "x", time.Second); err != nil || !c.Health().Up {
		t.Fatalf("with redis up: %v %+v", err, c.Health())
	}
	r.Stop()
	for i := range 3 {
		_, err := c.Acquire(ctx, "y", time.Second)
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("call %d with redis down: %v", i, err)
		}
	}
	if h := c.Health(); h.Up || h.LastErr == "" {
		t.Fatalf("health with redis down: %+v", h)
	}
	r.Start()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := c.Acquire(ctx, "z", time.Second); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the coordinator did not recover after redis came back")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !c.Health().Up {
		t.Fatal("health not restored")
	}
}

// The peer endpoint takes only signed requests, and a peer's stream is
// verified like an upstream's.
func TestPeerStreams(t *testing.T) {
	r := testhub.StartRedis(t)
	blob := []byte("a layer from the replica downloading it")
	d := digest.FromBytes(blob)
	var serve atomic.Value
	serve.Store(blob)
	var verifier *Coordinator
	holder := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := verifier.VerifyPeer(r); err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(serve.Load().([]byte))
	}))
	defer holder.Close()
	verifier = newCoord(t, r, holder.URL)
	follower := newCoord(t, r, "http://follower")
	ctx := context.Background()

	body, _, err := follower.OpenPeer(ctx, holder.URL, d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(body)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("peer stream: %q %v", got, err)
	}
	serve.Store([]byte("tampered bytes from a bad peer"))
	body, _, _ = follower.OpenPeer(ctx, holder.URL, d)
	if _, err := io.ReadAll(body); err == nil {
		t.Fatal("a peer's wrong bytes read as good")
	}
	stranger, _ := New(Config{Redis: r.Addr, Self: "http://x", Secret: bytes.Repeat([]byte("z"), 32)})
	if _, _, err := stranger.OpenPeer(ctx, holder.URL, d); !errors.Is(err, ErrPeerNotFound) {
		t.Fatalf("an unsigned (wrongly signed) request: %v", err)
	}
	req := httptest.NewRequest("GET", PeerPath+d.String(), nil)
	req.Header.Set(PeerHeader, follower.sign("GET", PeerPath+d.String(), time.Now().Add(-2*peerSkew)))
	if verifier.VerifyPeer(req) == nil {
		t.Fatal("an old signature was accepted (replay)")
	}
	req.Header.Set(PeerHeader, follower.sign("GET", PeerPath+"sha256:other", time.Now()))
	if verifier.VerifyPeer(req) == nil {
		t.Fatal("a signature for another path was accepted")
	}
}

// Many replicas racing for one job: exactly one holds it.
func TestOneHolderUnderContention(t *testing.T) {
	r := testhub.StartRedis(t)
	var held atomic.Int32
	var wg sync.WaitGroup
	for i := range 10 {
		c := newCoord(t, r, "http://r"+string(rune('a'+i)))
		wg.Go(func() {
			if l, err := c.Acquire(context.Background(), "blob:contended", time.Minute); err == nil && l.Held {
				held.Add(1)
			}
		})
	}
	wg.Wait()
	if n := held.Load(); n != 1 {
		t.Fatalf("%d replicas hold the job", n)
	}
}
