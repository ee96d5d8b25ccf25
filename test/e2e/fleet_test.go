package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

// Issue 9, "Proof, with real parts": several regcache processes on one S3
// bucket (versitygw) and one Redis (Debian's redis-server) behave as one
// cache.

// fleetS3Prefix is the key prefix the replicas keep the cache under.
const fleetS3Prefix = "fleet"

// fleet is n regcache processes in front of one credentialed fake hub,
// sharing a bucket and a Redis.
type fleet struct {
	w        *world
	hub      *testhub.Hub
	s3       *testhub.S3Server
	redis    *testhub.Redis
	replicas []*regcache
}

// startFleet starts the hub in front of reg, the S3 server, Redis and n
// replicas, each on its own port and data dir, all with one config but
// for the address each advertises to the others.
func startFleet(t *testing.T, w *world, n int, reg *testhub.Registry, opts testhub.Options) *fleet {
	t.Helper()
	password := randomSecret(t)
	opts.Users = map[string]string{"ci-user": password}
	f := &fleet{w: w, hub: testhub.NewHub(t, reg, opts), s3: testhub.StartS3(t), redis: testhub.StartRedis(t)}
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		t.Fatal(err)
	}
	secret := hex.EncodeToString(key[:])
	w.addSecret("cluster", secret)
	secretFile := filepath.Join(w.mkdir("cluster-etc"), "secret")
	if err := os.WriteFile(secretFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	shared := &replicaConfig{s3: f.s3, redis: f.redis, secretFile: secretFile}
	for i := range n {
		f.replicas = append(f.replicas, startRegcache(t, w, regcacheConfig{name: fmt.Sprintf("replica%d", i+1),
			upstreamURL: f.hub.URL, user: "ci-user", password: password, replica: shared}))
	}
	return f
}

func (f *fleet) hosts() []string {
	var hs []string
	for _, r := range f.replicas {
		hs = append(hs, r.host())
	}
	return hs
}

// requestsServed scrapes each live replica's regcache_requests_total.
func (f *fleet) requestsServed(t *testing.T) []int {
	t.Helper()
	var out []int
	for _, r := range f.replicas {
		if r.proc.exited() {
			out = append(out, -1)
			continue
		}
		out = append(out, int(r.metric(t, "regcache_requests_total")))
	}
	return out
}

// startHAProxy puts Debian's haproxy in front of backends (host:port):
// HTTP mode, round robin per request, health-checked on /readyz so a dead
// replica leaves the rotation. It returns the balancer's host:port.
func startHAProxy(t *testing.T, w *world, backends []string) string {
	t.Helper()
	bin := requireBinary(t, "haproxy", "haproxy")
	port := freePort(t)
	var servers strings.Builder
	for i, b := range backends {
		fmt.Fprintf(&servers, "  server replica%d %s check inter 500ms fall 2 rise 1\n", i+1, b)
	}
	cfg := fmt.Sprintf(`global
  log stderr format raw local0 info
  maxconn 2000

defaults
  mode http
  log global
  option httplog
  timeout connect 5s
  timeout client 5m
  timeout server 5m

frontend registry
  bind 127.0.0.1:%d
  default_backend replicas

backend replicas
  balance roundrobin
  option httpchk GET /readyz
%s`, port, servers.String())
	cfgPath := filepath.Join(w.mkdir("haproxy"), "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "haproxy", w.logFile("haproxy"), w.baseEnv(), bin, "-db", "-f", cfgPath)
	t.Cleanup(func() { p.stop(5 * time.Second) })
	host := fmt.Sprintf("127.0.0.1:%d", port)
	err := waitFor(t.Context(), 30*time.Second, p, func() error {
		code, err := httpGetStatus(t.Context(), http.DefaultClient, "http://"+host+"/v2/")
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("GET /v2/ through haproxy: %d", code)
		}
		return err
	})
	if err != nil {
		t.Fatalf("haproxy did not come up: %v", err)
	}
	return host
}

// TestFleetClientsPullThroughBalancer: three replicas behind haproxy, and
// skopeo, crane, ctr (hosts.toml) and podman (registries.conf) pull the
// four manifest types through the balancer at once. Every digest is the
// upstream's, every replica answered some of the requests, and the origin
// served each blob once and each manifest once across all of it.
func TestFleetClientsPullThroughBalancer(t *testing.T) {
	w := newWorld(t)
	reg := testhub.StartRegistry(t)
	images := seedImages(t, reg)
	f := startFleet(t, w, 3, reg, testhub.Options{})
	lb := startHAProxy(t, w, f.hosts())
	var clients []realClient
	for _, c := range realClients() {
		if slices.Contains([]string{"skopeo", "crane", "ctr", "podman"}, c.name) {
			clients = append(clients, c)
		}
	}
	before := f.requestsServed(t)
	start := time.Now()
	t.Run("pull", func(t *testing.T) { pullWithClients(t, w, clients, lb, true, images) })
	t.Logf("%d clients pulled %d images each through haproxy in %v", len(clients), len(images), time.Since(start).Round(time.Millisecond))

	after := f.requestsServed(t)
	for i := range after {
		n := after[i] - before[i]
		t.Logf("replica%d answered %d requests", i+1, n)
		if n == 0 {
			t.Errorf("replica%d answered no request: haproxy did not spread the pulls", i+1)
		}
	}
	c := f.hub.Counts()
	t.Logf("origin: %d manifest GETs %v, %d manifest HEADs, %d blob GETs of %d blobs, %d blob bytes",
		c.ManifestGETs, c.ManifestGETsByRepo, c.ManifestHEADs, sumCounts(c.BlobGETs), len(c.BlobGETs), c.BlobBytes)
	for d, n := range c.BlobGETs {
		if n != 1 {
			t.Errorf("the origin served blob %s %d times, want once fleet-wide", d, n)
		}
	}
	// The indexes' children: skopeo copies every platform.
	want := map[string]int{}
	for _, img := range images {
		want[img.repo]++
	}
	for _, img := range []string{"library/alpine", "library/redis"} {
		want[img] += 2
	}
	for repo, n := range c.ManifestGETsByRepo {
		if n > want[repo] {
			t.Errorf("the origin served %d manifest GETs (counted pulls) of %s, which has %d manifests: some were fetched twice", n, repo, want[repo])
		}
	}
}

func sumCounts[K comparable](m map[K]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
