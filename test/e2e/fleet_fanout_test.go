package e2e

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"
	"github.com/redis/go-redis/v9"

	"github.com/regcache/regcache/internal/store"
	"github.com/regcache/regcache/internal/testhub"
)

// Fan-out across replicas (issue 9): 30 clients ask three replicas at once
// for one cold 256 MiB blob from a throttled origin.
const (
	fanOutSize     = 256 << 20
	fanOutClients  = 30
	fanOutThrottle = 48 << 20 // bytes/s: the origin takes 5 s or more
	// fanOutBudget bounds each client's attempts, together; on a loaded
	// 2-core machine all 30 clients take 25-45 s, a kill and retry included.
	fanOutBudget = 3 * time.Minute
)

// fanOut is a three-replica fleet with one big cold blob on its origin.
type fanOut struct {
	*fleet
	img   testhub.Image
	layer digest.Digest
	// killed is 1 + the index of the replica killed, set before the signal
	// is sent: its clients see their connection cut before the test sees
	// the process gone, and must not retry there.
	killed atomic.Int32
}

// kill9 kills replica i, as `kill -9`.
func (e *fanOut) kill9(i int) {
	e.killed.Store(int32(i + 1))
	e.replicas[i].kill9()
}

func newFanOut(t *testing.T) *fanOut {
	t.Helper()
	w := newWorld(t)
	reg := testhub.StartRegistry(t)
	start := time.Now()
	img := reg.PushImage(t, "library/big", "1", testhub.ImageOptions{LayerSize: fanOutSize, Uncompressed: true})
	t.Logf("pushed a %d MiB layer in %v", fanOutSize>>20, time.Since(start).Round(time.Millisecond))
	f := startFleet(t, w, 3, reg, testhub.Options{})
	f.hub.SetThrottle(fanOutThrottle)
	return &fanOut{fleet: f, img: img, layer: img.Layers[0]}
}

func (e *fanOut) blobURL(r *regcache) string {
	return r.url() + "/v2/docker.io/" + e.img.Repo + "/blobs/" + e.layer.String()
}

// fanOutClient is one client's GETs of the blob: it streams the body into
// a hash, never holding it.
type fanOutClient struct {
	first    int // the replica it asks first
	received atomic.Int64
	// firstBytes is when its first attempt had its first MiB.
	firstBytes atomic.Int64
	errs       []error // failed attempts, in order
	served     []int   // the replica of each attempt
	ok         bool
}

// run GETs the blob from the client's replica; after a failure it tries
// once more, from the same replica unless that one was killed, else from
// the next one. Two failures are the end.
func (c *fanOutClient) run(ctx context.Context, e *fanOut) {
	for attempt := 0; attempt < 2; attempt++ {
		i := c.first
		if int(e.killed.Load()) == i+1 {
			i = (i + 1) % len(e.replicas)
		}
		c.served = append(c.served, i)
		err := fetchAndVerifyTo(ctx, e.blobURL(e.replicas[i]), e.layer, fanOutSize, progress{c, attempt == 0})
		if err == nil {
			c.ok = true
			return
		}
		c.errs = append(c.errs, err)
	}
}

// progress counts a client's bytes and notes its first MiB.
type progress struct {
	c     *fanOutClient
	first bool
}

func (p progress) Write(b []byte) (int, error) {
	if n := p.c.received.Add(int64(len(b))); p.first && n >= 1<<20 {
		p.c.firstBytes.CompareAndSwap(0, time.Now().UnixNano())
	}
	return len(b), nil
}

// start launches the clients, spread evenly over the replicas, each with
// at most fanOutBudget for its attempts.
func (e *fanOut) start(t *testing.T) ([]*fanOutClient, *sync.WaitGroup) {
	ctx, cancel := context.WithTimeout(t.Context(), fanOutBudget)
	t.Cleanup(cancel)
	clients := make([]*fanOutClient, fanOutClients)
	var wg sync.WaitGroup
	for i := range clients {
		clients[i] = &fanOutClient{first: i % len(e.replicas)}
		wg.Go(func() { clients[i].run(ctx, e) })
	}
	return clients, &wg
}

// checkStored checks that the bucket holds the blob, whole and verified,
// that exactly one replica committed it, and returns how many times the
// origin served it.
func (e *fanOut) checkStored(t *testing.T) int {
	t.Helper()
	ctx := t.Context()
	key := fleetS3Prefix + "/" + store.BlobPath(e.layer)
	// Clients have every byte before the blob is committed (completing a
	// 256 MiB multipart upload takes versitygw a while): wait for it.
	commits := 0
	err := waitFor(ctx, time.Minute, nil, func() error {
		if _, err := e.s3.Client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &e.s3.Bucket, Key: &key}); err != nil {
			return err
		}
		if commits = e.commits(t); commits == 0 {
			return errors.New("no replica logged the commit")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the blob is not committed under %s: %v", key, err)
	}
	if commits != 1 {
		t.Errorf("%d replicas committed the blob, want exactly 1", commits)
	}
	obj, err := e.s3.Client.GetObject(ctx, &s3.GetObjectInput{Bucket: &e.s3.Bucket, Key: &key})
	if err != nil {
		t.Fatalf("reading the blob back from the bucket: %v", err)
	}
	defer obj.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, obj.Body)
	if got := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)); err != nil || n != fanOutSize || got != e.layer {
		t.Errorf("bucket object %s: %d bytes hashing to %s (%v); want %d bytes, %s", key, n, got, err, fanOutSize, e.layer)
	}
	return e.hub.Counts().BlobGETs[e.layer]
}

// commits counts the replicas' "blob cached" lines for the blob.
func (e *fanOut) commits(t *testing.T) int {
	n := 0
	for _, r := range e.replicas {
		for _, line := range strings.Split(readFile(t, r.proc.log), "\n") {
			if strings.Contains(line, "blob cached") && strings.Contains(line, e.layer.String()) {
				n++
			}
		}
	}
	return n
}

// TestFleetFanOut: 30 concurrent cold GETs of one 256 MiB blob, ten on
// each replica. The origin serves it once; every client gets the right
// bytes, and gets them as they arrive (its first MiB before the origin has
// finished sending), whichever replica it asked.
func TestFleetFanOut(t *testing.T) {
	e := newFanOut(t)
	start := time.Now()
	clients, wg := e.start(t)
	wg.Wait()
	elapsed := time.Since(start)

	var originEnd time.Time
	for _, tr := range e.hub.Transfers() {
		if tr.Digest == e.layer {
			originEnd = tr.End
			t.Logf("the origin sent %d MiB in %v", tr.Bytes>>20, tr.End.Sub(tr.Start).Round(time.Millisecond))
		}
	}
	for i, c := range clients {
		switch {
		case !c.ok || len(c.errs) > 0:
			t.Errorf("client %d (replica%d): failed attempts %v", i, c.first+1, c.errs)
		case time.Unix(0, c.firstBytes.Load()).After(originEnd):
			t.Errorf("client %d (replica%d) had no byte before the origin finished: it waited for the whole download", i, c.first+1)
		}
	}
	t.Logf("%d clients got %d MiB each, verified, in %v (%.0f MiB/s to the clients in all)",
		len(clients), fanOutSize>>20, elapsed.Round(time.Millisecond), float64(fanOutClients*fanOutSize>>20)/elapsed.Seconds())
	if n := e.checkStored(t); n != 1 {
		t.Errorf("the origin served the blob %d times, want once", n)
	}
}

// TestFleetFanOutReplicaKilled: the same, and the replica downloading the
// blob from the origin is killed with SIGKILL half-way. Every client
// streaming through another replica completes, or fails once and succeeds
// on a retry from that replica; the killed replica's clients succeed on a
// retry from another one. The blob is committed once, whole and verified,
// and the origin serves it once more, not once per surviving replica.
func TestFleetFanOutReplicaKilled(t *testing.T) {
	e := newFanOut(t)
	start := time.Now()
	clients, wg := e.start(t)

	holder := e.leaseHolder(t)
	t.Logf("replica%d holds the download", holder+1)
	err := waitFor(t.Context(), 2*time.Minute, e.replicas[holder].proc, func() error {
		var most int64
		for _, c := range clients {
			if c.first == holder {
				most = max(most, c.received.Load())
			}
		}
		if most < fanOutSize/2 {
			return fmt.Errorf("its clients have %d MiB at most", most>>20)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("waiting for the download to be half-way: %v", err)
	}
	if done := completedTransfers(e.hub, e.layer); done != 0 {
		t.Fatalf("the origin finished the blob %d times before the kill", done)
	}
	e.kill9(holder)
	t.Logf("kill -9 replica%d %v after the start", holder+1, time.Since(start).Round(time.Millisecond))
	wg.Wait()
	t.Logf("every client done %v after the start", time.Since(start).Round(time.Millisecond))

	retried := make([]int, len(e.replicas))
	for i, c := range clients {
		if !c.ok {
			t.Errorf("client %d (replica%d, then replica%d): failed twice: %v", i, c.first+1, c.served[len(c.served)-1]+1, c.errs)
			continue
		}
		if len(c.errs) > 0 {
			if retried[c.first]++; retried[c.first] == 1 {
				t.Logf("for one: client %d (replica%d) failed once (%v), then succeeded through replica%d", i, c.first+1, c.errs[0], c.served[1]+1)
			}
		}
		if c.first == holder && len(c.errs) == 0 {
			t.Errorf("client %d was streaming from the killed replica and still got the whole blob", i)
		}
	}
	t.Logf("clients that needed a retry, by replica asked first: %v", retried)
	if n := e.checkStored(t); n != 2 {
		t.Errorf("the origin served the blob %d times: want 2 (the killed download, then one replica taking it over)", n)
	}
}

// leaseHolder asks Redis which replica holds the blob's download.
func (e *fanOut) leaseHolder(t *testing.T) int {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: e.redis.Addr})
	defer rdb.Close()
	holder := -1
	err := waitFor(t.Context(), 30*time.Second, nil, func() error {
		v, err := rdb.Get(t.Context(), "regcache:lease:blob:"+e.layer.String()).Result()
		if err != nil {
			return err
		}
		url, _, _ := strings.Cut(v, " ")
		for i, r := range e.replicas {
			if r.url() == url {
				holder = i
				return nil
			}
		}
		return fmt.Errorf("lease held by %q, not a replica", v)
	})
	if err != nil {
		t.Fatalf("finding the replica that downloads the blob: %v", err)
	}
	return holder
}
