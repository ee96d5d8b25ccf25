package storm

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/testhub"
)

// fleetReplicas is how many regcache processes the fleet run has.
const fleetReplicas = 3

// regcacheFleet is regcache as a cluster (issue 9): processes of the real
// binary, each with the storm's config plus one S3 bucket (versitygw) as
// the store and one Redis (redis-server) as the coordinator, behind a
// round-robin balancer that sends each request to the next replica.
type regcacheFleet struct {
	URL      string // the balancer
	replicas []*replicaProc
}

type replicaProc struct {
	url  string
	logs *testhub.TailBuffer
	cmd  *exec.Cmd
	done chan struct{}
}

func startRegcacheFleet(t testing.TB, n int, origin, mirror string) *regcacheFleet {
	t.Helper()
	bin := buildRegcache(t)
	s3 := testhub.StartS3(t)
	rds := testhub.StartRedis(t)
	dir := t.TempDir()
	var key [32]byte
	_, _ = rand.Read(key[:])
	secret := filepath.Join(dir, "cluster-secret")
	if err := os.WriteFile(secret, []byte(hex.EncodeToString(key[:])), 0o600); err != nil {
		t.Fatal(err)
	}
	fl := &regcacheFleet{}
	for i := range n {
		root := filepath.Join(dir, fmt.Sprintf("replica%d", i+1))
		storage := fmt.Sprintf("{root: %s, s3: {bucket: %s, endpoint: %s, path_style: true, prefix: storm}}", root, s3.Bucket, s3.Endpoint)
		var r *replicaProc
		var err error
		// A port found free can be taken before regcache binds it.
		for attempt := 0; attempt < 3; attempt++ {
			var addr string
			if addr, err = testhub.FreeAddr("127.0.0.1"); err != nil {
				continue
			}
			yaml := fmt.Sprintf(regcacheConfig, addr, storage, origin, regcacheReserve, mirror) +
				fmt.Sprintf("cluster: {redis: %s, advertise: http://%s, secret_file: %s}\n", rds.Addr, addr, secret)
			cfg := filepath.Join(dir, fmt.Sprintf("replica%d.yaml", i+1))
			if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			if r, err = startReplica(bin, cfg, "http://"+addr, s3.Env()); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("replica%d: %v", i+1, err)
		}
		t.Cleanup(r.stop)
		fl.replicas = append(fl.replicas, r)
	}
	var backends []*url.URL
	for _, r := range fl.replicas {
		u, _ := url.Parse(r.url)
		backends = append(backends, u)
	}
	fl.URL = roundRobin(t, backends)
	return fl
}

// buildRegcache builds cmd/regcache, as the fleet runs the real binary.
func buildRegcache(t testing.TB) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "regcache")
	start := time.Now()
	if out, err := exec.Command(goBin, "build", "-o", bin, "github.com/regcache/regcache/cmd/regcache").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/regcache: %v\n%s", err, out)
	}
	t.Logf("built regcache in %v", time.Since(start).Round(time.Millisecond))
	return bin
}

// startReplica runs `regcache serve` and waits until it answers /v2/.
func startReplica(bin, cfg, u string, env []string) (*replicaProc, error) {
	r := &replicaProc{url: u, logs: testhub.NewTailBuffer(256 << 10), done: make(chan struct{})}
	r.cmd = exec.Command(bin, "serve", "--config", cfg)
	r.cmd.Env = append(os.Environ(), env...)
	r.cmd.Stdout, r.cmd.Stderr = r.logs, r.logs
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { r.cmd.Wait(); close(r.done) }()
	for deadline := time.Now().Add(30 * time.Second); ; {
		select {
		case <-r.done:
			return nil, fmt.Errorf("regcache exited: %s", r.logs.String())
		default:
		}
		if resp, err := http.Get(u + "/v2/"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r, nil
			}
		}
		if time.Now().After(deadline) {
			r.stop()
			return nil, fmt.Errorf("regcache did not answer on %s: %s", u, r.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the replica as its service manager would: SIGTERM, then
// SIGKILL after a grace period.
func (r *replicaProc) stop() {
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(15 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

// roundRobin is a load balancer that sends each request to the next
// backend in turn, and streams responses as they arrive.
func roundRobin(t testing.TB, backends []*url.URL) string {
	t.Helper()
	var next atomic.Uint64
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(backends[(next.Add(1)-1)%uint64(len(backends))])
			pr.Out.Host = pr.In.Host
		},
		Transport:     &http.Transport{Proxy: nil, DisableCompression: true, MaxIdleConnsPerHost: 64},
		FlushInterval: -1,
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	return srv.URL
}

// fleetAcceptance is issue 9's storm across replicas: 0 client failures;
// the origin's counted pulls equal to the single-replica run's (single;
// nil when that run was left out, and then at most the distinct
// non-official digests, as acceptance1 asks of it); every blob fetched
// once, from the origin or the mirror, its bytes 1.00× the distinct
// blobs'. The replicas' summed metrics agree with the hubs and clients.
func fleetAcceptance(t *testing.T, fl *regcacheFleet, res, single *result) {
	if res.failures != 0 {
		t.Errorf("%d client pull failures (%v), want 0: %s", res.failures, res.classes, strings.Join(res.examples, " | "))
	}
	if single != nil && res.origin.ManifestGETs != single.origin.ManifestGETs {
		t.Errorf("%d counted origin pulls (%v), the single replica spent %d (%v)",
			res.origin.ManifestGETs, res.origin.ManifestGETsByRepo, single.origin.ManifestGETs, single.origin.ManifestGETsByRepo)
	}
	if got, max := res.origin.ManifestGETs, len(res.nonOffDigs); got > max {
		t.Errorf("%d counted origin pulls, more than the %d distinct non-official manifest digests clients fetched", got, max)
	}
	if got := res.countedOfficial(); got != 0 {
		t.Errorf("official images cost %d counted origin pulls, want 0", got)
	}
	if res.origin.RateLimited != 0 {
		t.Errorf("the origin refused %d manifest GETs with 429", res.origin.RateLimited)
	}
	for src, tr := range map[string]blobTraffic{"origin": res.originBlobs, "mirror": res.mirrorBlobs} {
		ratio := tr.ratio()
		t.Logf("%s: %d blob GETs of %d distinct blobs, %d bytes for %d distinct: %.2f×", src, tr.gets, len(tr.sizes), tr.bytes, tr.distinctBytes(), ratio)
		if tr.gets != len(tr.sizes) || fmt.Sprintf("%.2f", ratio) != "1.00" {
			t.Errorf("%s served %d blob GETs for %d distinct blobs, %.2f× their bytes: want each once, 1.00×", src, tr.gets, len(tr.sizes), ratio)
		}
	}
	if want := len(res.offManifests); res.mirror.ManifestGETs != want {
		t.Errorf("the mirror served %d manifest GETs (%v) for the %d distinct official manifests clients received, want each once",
			res.mirror.ManifestGETs, res.mirror.ManifestGETsByRepo, want)
	}
	if single != nil && res.originBlobs.distinctBytes() != single.originBlobs.distinctBytes() {
		t.Errorf("the origin sent %d distinct blob bytes, %d to the single replica", res.originBlobs.distinctBytes(), single.originBlobs.distinctBytes())
	}

	var total promSamples = map[string]float64{}
	for _, r := range fl.replicas {
		for k, v := range scrape(t, r.url) {
			total[k] += v
		}
	}
	t.Logf("the replicas' /metrics, summed:\n  %s", strings.Join(total.lines(
		"regcache_upstream_counted_pulls_total", "regcache_shared_fetches_total", "regcache_requests_total",
		"regcache_served_bytes_total", "regcache_cluster_coordinator_up"), "\n  "))
	if up, _ := total.sum("regcache_cluster_coordinator_up"); int(up) != len(fl.replicas) {
		t.Errorf("%v of %d replicas report their coordinator up", up, len(fl.replicas))
	}
	if counted, _ := total.sum("regcache_upstream_counted_pulls_total", `registry="docker.io"`); int(counted) != res.origin.ManifestGETs {
		t.Errorf("counted pulls: metrics %v, hub ManifestGETs %d", counted, res.origin.ManifestGETs)
	}
	checkServed(t, total, res)
	if t.Failed() {
		for i, r := range fl.replicas {
			t.Logf("replica%d log (tail):\n%s", i+1, tail(r.logs.String(), 4000))
		}
	}
}

// blobTraffic is what one upstream sent of blobs: GETs, body bytes, and
// the size of each distinct blob (its longest complete transfer).
type blobTraffic struct {
	gets  int
	bytes int64
	sizes map[digest.Digest]int64
}

func blobTrafficOf(hub *testhub.Hub) blobTraffic {
	c := hub.Counts()
	tr := blobTraffic{gets: sumBlobGETs(&c), bytes: c.BlobBytes, sizes: map[digest.Digest]int64{}}
	for _, x := range hub.Transfers() {
		tr.sizes[x.Digest] = max(tr.sizes[x.Digest], x.Bytes)
	}
	return tr
}

func (b blobTraffic) distinctBytes() int64 {
	var n int64
	for _, s := range b.sizes {
		n += s
	}
	return n
}

// ratio is the bytes sent per distinct blob byte: 1 when each was sent
// once, whole.
func (b blobTraffic) ratio() float64 {
	if d := b.distinctBytes(); d > 0 {
		return float64(b.bytes) / float64(d)
	}
	if b.bytes == 0 {
		return 1
	}
	return 0
}
