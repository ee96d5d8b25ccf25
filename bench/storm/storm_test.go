package storm

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/bench/internal/pullclient"
	"github.com/regcache/regcache/bench/internal/systems"
	"github.com/regcache/regcache/internal/testhub"
)

var (
	flagPulls = flag.Int("storm.pulls", 500, "client pulls in all (the recorded table uses 500)")
	flagJobs  = flag.Int("storm.jobs", 8, "concurrent CI jobs (the recorded table uses 8)")
	flagOnly  = flag.String("storm.only", "", "comma-separated systems to run: direct,distribution,regcache,fleet (default all)")
)

// The origin's anonymous budget: 10 counted pulls per (6 h) window.
const originLimit = 10

// pullRecord is the outcome of one client pull.
type pullRecord struct {
	idx     int
	spec    *seeded
	got     pullclient.Pulled
	err     error
	elapsed time.Duration
}

// result is one system's row.
type result struct {
	name     string
	pulls    int
	failures int
	classes  map[string]int
	examples []string

	origin     testhub.Counts
	tapMBytes  int64 // manifest body bytes from the origin (GET 200)
	tapBBytes  int64 // blob body bytes from the origin, as the tap counted them
	mirror     *testhub.Counts
	mirrorMan  int64
	oldAfter   int // pulls of a moved tag after the move that got the old digest
	newAfter   int
	nonOffDigs map[digest.Digest]bool
	okByTag    map[string]int
	// client-side totals: GETs sent, body bytes received by successful pulls
	manifestReqs, blobReqs int64
	clientBytes            int64
	// offManifests are the distinct official manifests (indexes and
	// linux/amd64 children) clients received.
	offManifests map[digest.Digest]bool
	// oldAfterOfficial counts, per moved official tag, pulls after the
	// move that got the old digest.
	oldAfterOfficial map[string]int
	wall             time.Duration
	p50, p95         time.Duration
	// originBlobs and mirrorBlobs are the blob traffic from each upstream.
	originBlobs, mirrorBlobs blobTraffic
}

func (r *result) countedOfficial() int {
	n := 0
	for repo, c := range r.origin.ManifestGETsByRepo {
		if strings.HasPrefix(repo, "library/") {
			n += c
		}
	}
	return n
}

func TestStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("CI storm benchmark skipped in -short mode")
	}
	pulls, jobs := *flagPulls, *flagJobs
	if pulls < 2 || jobs < 1 {
		t.Fatalf("need -storm.pulls >= 2 and -storm.jobs >= 1")
	}
	only := map[string]bool{}
	for _, s := range strings.Split(*flagOnly, ",") {
		if s = strings.TrimSpace(s); s != "" {
			only[s] = true
		}
	}
	want := func(name string) bool { return len(only) == 0 || only[name] }

	start := time.Now()
	backend := testhub.StartRegistry(t)
	work := seedWorkload(t, backend)
	seq, moveAt := sequence(pulls, jobs)
	t.Logf("workload: %s", describeWorkload(pulls, jobs))
	t.Logf("seeded %d tags (+%d moved-to manifests) in %v", len(work), countMoves(work), time.Since(start).Round(time.Millisecond))

	var results []*result

	if want("direct") {
		hub := testhub.NewHub(t, backend, testhub.Options{AnonymousLimit: originLimit})
		tap := newOriginTap(t, hub)
		r := runStorm(t, "origin directly", tap.URL, backend, work, seq, moveAt, jobs)
		r.origin, r.tapMBytes, r.tapBBytes = hub.Counts(), tap.manifestBytes.Load(), tap.blobBytes.Load()
		results = append(results, r)
	}

	if want("distribution") {
		hub := testhub.NewHub(t, backend, testhub.Options{AnonymousLimit: originLimit})
		tap := newOriginTap(t, hub)
		d := systems.StartDistribution(t, tap.URL)
		hub.ResetCounts() // startup pings are not part of the storm
		r := runStorm(t, systems.DistributionName(), d.URL, backend, work, seq, moveAt, jobs)
		r.origin, r.tapMBytes, r.tapBBytes = hub.Counts(), tap.manifestBytes.Load(), tap.blobBytes.Load()
		results = append(results, r)
		if r.failures > 0 {
			t.Logf("distribution log (tail):\n%s", tail(d.Output(), 3000))
		}
	}

	var rc *systems.Regcache
	var rcRes *result
	var rcHub, rcMirror *testhub.Hub
	if want("regcache") {
		rcHub = testhub.NewHub(t, backend, testhub.Options{AnonymousLimit: originLimit})
		tap := newOriginTap(t, rcHub)
		rcMirror = testhub.NewHub(t, backend, testhub.Options{RepoPrefix: "docker/", Service: "public.ecr.aws", Scope: "aws"})
		rc = startRegcache(t, tap.URL, rcMirror.URL)
		rcRes = runStorm(t, "regcache", rc.URL, backend, work, seq, moveAt, jobs)
		rcRes.origin, rcRes.tapMBytes, rcRes.tapBBytes = rcHub.Counts(), tap.manifestBytes.Load(), tap.blobBytes.Load()
		m := rcMirror.Counts()
		rcRes.mirror = &m
		rcRes.originBlobs, rcRes.mirrorBlobs = blobTrafficOf(rcHub), blobTrafficOf(rcMirror)
		results = append(results, rcRes)
	}

	var fl *regcacheFleet
	var flRes *result
	if want("fleet") {
		hub := testhub.NewHub(t, backend, testhub.Options{AnonymousLimit: originLimit})
		tap := newOriginTap(t, hub)
		mirror := testhub.NewHub(t, backend, testhub.Options{RepoPrefix: "docker/", Service: "public.ecr.aws", Scope: "aws"})
		fl = startRegcacheFleet(t, fleetReplicas, tap.URL, mirror.URL)
		flRes = runStorm(t, fmt.Sprintf("regcache ×%d (S3, Redis)", fleetReplicas), fl.URL, backend, work, seq, moveAt, jobs)
		flRes.origin, flRes.tapMBytes, flRes.tapBBytes = hub.Counts(), tap.manifestBytes.Load(), tap.blobBytes.Load()
		m := mirror.Counts()
		flRes.mirror = &m
		flRes.originBlobs, flRes.mirrorBlobs = blobTrafficOf(hub), blobTrafficOf(mirror)
		results = append(results, flRes)
	}

	t.Logf("\n%s", table(results))
	for _, r := range results {
		t.Logf("%s: failures by class %v; first failures: %s", r.name, r.classes, strings.Join(r.examples, " | "))
		t.Logf("%s: origin saw %d requests, %d tokens, %d manifest HEADs, counted pulls by repo %v, %d blob GETs (%d distinct), %d blob bytes; successful pulls by tag %v",
			r.name, r.origin.Requests, r.origin.TokenRequests, r.origin.ManifestHEADs, r.origin.ManifestGETsByRepo,
			sumBlobGETs(&r.origin), len(r.origin.BlobGETs), r.origin.BlobBytes, r.okByTag)
		if r.tapBBytes != r.origin.BlobBytes {
			t.Errorf("%s: tap counted %d origin blob bytes, hub %d", r.name, r.tapBBytes, r.origin.BlobBytes)
		}
	}
	if fl != nil {
		t.Run("fleet", func(t *testing.T) { fleetAcceptance(t, fl, flRes, rcRes) })
		t.Run("fleet_official_moved_tags_fresh", func(t *testing.T) { officialFresh(t, flRes) })
	}
	if rc != nil {
		t.Run("acceptance1", func(t *testing.T) { acceptance1(t, rcRes, results) })
		t.Run("acceptance5", func(t *testing.T) { acceptance5(t, rc, rcRes, rcHub) })
		t.Run("official_moved_tags_fresh", func(t *testing.T) { officialFresh(t, rcRes) })
		if t.Failed() {
			t.Logf("regcache log (tail):\n%s", tail(rc.Logs.String(), 6000))
		}
	}
	t.Logf("total time %v", time.Since(start).Round(time.Millisecond))
}

// acceptance1: regcache has 0 client failures; its counted origin pulls are
// at most the number of distinct non-official manifest digests its clients
// fetched; official images cost 0 counted pulls.
func acceptance1(t *testing.T, rc *result, all []*result) {
	if rc.failures != 0 {
		t.Errorf("regcache: %d client pull failures (%v), want 0: %s", rc.failures, rc.classes, strings.Join(rc.examples, " | "))
	}
	if got, max := rc.origin.ManifestGETs, len(rc.nonOffDigs); got > max {
		t.Errorf("regcache: %d counted origin pulls, more than the %d distinct non-official manifest digests clients fetched", got, max)
	}
	if got := rc.countedOfficial(); got != 0 {
		t.Errorf("regcache: official images cost %d counted origin pulls, want 0 (by repo: %v)", got, rc.origin.ManifestGETsByRepo)
	}
	if rc.origin.RateLimited != 0 {
		t.Errorf("regcache: the origin refused %d manifest GETs with 429", rc.origin.RateLimited)
	}
	// The comparison must be meaningful: the same workload straight at the
	// origin fails (it only has 10 pulls for 500).
	for _, r := range all {
		if r.name == "origin directly" && r.pulls >= 2*originLimit && r.failures == 0 {
			t.Errorf("direct pulls had no failures: the workload does not exhaust the origin budget")
		}
	}
}

// acceptance5: /metrics after the storm shows the counted-pull, stale,
// mirror-hit and shared-fetch counters, and they agree with the hubs.
func acceptance5(t *testing.T, rc *systems.Regcache, res *result, hub *testhub.Hub) {
	m := scrape(t, rc.URL)
	t.Logf("regcache /metrics after the storm:\n  %s", strings.Join(m.lines(
		"regcache_upstream_counted_pulls_total", "regcache_stale_served_total", "regcache_mirror_hits_total",
		"regcache_shared_fetches_total", "regcache_requests_total", "regcache_served_bytes_total", "regcache_upstream_fetched_bytes_total",
		"regcache_tag_revalidations_total", "regcache_tag_fallbacks_total", "regcache_digest_mismatches_total"), "\n  "))

	origin := hub.Counts()
	counted, ok := m.sum("regcache_upstream_counted_pulls_total", `registry="docker.io"`)
	if !ok {
		t.Errorf("regcache_upstream_counted_pulls_total missing")
	}
	if int(counted) != origin.ManifestGETs {
		t.Errorf("counted pulls: metric %v, hub ManifestGETs %d", counted, origin.ManifestGETs)
	}
	// The workload keeps one pull in reserve and moves two non-official
	// tags: at least one moved tag must be served stale (reason reserve).
	stale, ok := m.sum("regcache_stale_served_total", `registry="docker.io"`)
	if !ok || stale == 0 {
		t.Errorf("regcache_stale_served_total missing or 0 (%v)", stale)
	}
	if res.oldAfter == 0 {
		t.Errorf("no client got a stale digest after the move, but the reserve should have kept one")
	}
	checkServed(t, m, res)
	// regcache_stale_served_total counts stale decisions (one per shared
	// revalidation); requests_total{result="stale"} counts the responses,
	// which must be exactly the pulls that got a moved tag's old digest.
	staleResp, _ := m.sum("regcache_requests_total", `kind="manifest"`, `result="stale"`)
	if int(staleResp) != res.oldAfter {
		t.Errorf("requests_total{result=\"stale\"} = %v, but %d client pulls got a moved tag's old digest", staleResp, res.oldAfter)
	}
	if stale > staleResp {
		t.Errorf("stale_served_total %v > stale responses %v", stale, staleResp)
	}
	// Every job pulls the hot tag at the same moment: concurrent requests
	// must join one upstream fetch.
	if shared, ok := m.sum("regcache_shared_fetches_total"); !ok || shared == 0 {
		t.Errorf("regcache_shared_fetches_total missing or 0")
	}
	// ... so no blob is fetched upstream twice, from the origin or the
	// mirror, and the mirror serves each official manifest exactly once.
	for src, c := range map[string]*testhub.Counts{"origin": &origin, "mirror": res.mirror} {
		for d, n := range c.BlobGETs {
			if n != 1 {
				t.Errorf("%s: blob %s fetched %d times", src, d, n)
			}
		}
	}
	if want := len(res.offManifests); res.mirror.ManifestGETs != want {
		t.Errorf("mirror served %d manifest GETs for the %d distinct official manifests clients received, want each once", res.mirror.ManifestGETs, want)
	}
	// Mirror hits against the mirror hub: regcache counts a hit per
	// manifest or blob it fetched from the mirror successfully; the mirror
	// hub counts manifest GETs answered 200 and every authorized blob GET.
	// With a healthy mirror every request regcache sends it succeeds, so
	// the figures are equal.
	mirror := res.mirror
	mh, ok := m.sum("regcache_mirror_hits_total", `kind="manifest"`)
	if !ok || int(mh) != mirror.ManifestGETs {
		t.Errorf("mirror manifest hits: metric %v, mirror hub ManifestGETs %d", mh, mirror.ManifestGETs)
	}
	bh, _ := m.sum("regcache_mirror_hits_total", `kind="blob"`)
	if blobGETs := sumBlobGETs(mirror); int(bh) != blobGETs {
		t.Errorf("mirror blob hits: metric %v, mirror hub blob GETs %d", bh, blobGETs)
	}
	mb, _ := m.sum("regcache_upstream_fetched_bytes_total", `kind="blob"`, `!source="origin"`)
	if int64(mb) != mirror.BlobBytes {
		t.Errorf("bytes fetched from the mirror: metric %v, mirror hub BlobBytes %d", mb, mirror.BlobBytes)
	}
	ob, _ := m.sum("regcache_upstream_fetched_bytes_total", `kind="blob"`, `source="origin"`)
	if int64(ob) != origin.BlobBytes {
		t.Errorf("blob bytes fetched from the origin: metric %v, hub BlobBytes %d", ob, origin.BlobBytes)
	}
	om, _ := m.sum("regcache_upstream_fetched_bytes_total", `kind="manifest"`, `source="origin"`)
	if int64(om) != res.tapMBytes {
		t.Errorf("manifest bytes fetched from the origin: metric %v, tap %d", om, res.tapMBytes)
	}
	if mirror.ManifestGETs > 0 && len(mirror.ManifestGETsByRepo) > 0 {
		for repo := range mirror.ManifestGETsByRepo {
			if !strings.HasPrefix(repo, "docker/library/") {
				t.Errorf("mirror asked for %s, which the config does not route to it", repo)
			}
		}
	}
}

// checkServed: requests and bytes served agree with what the clients sent
// and got (every pull succeeded, so every byte served was received).
func checkServed(t *testing.T, m promSamples, res *result) {
	if got, _ := m.sum("regcache_requests_total", `kind="manifest"`); int64(got) != res.manifestReqs {
		t.Errorf("requests_total{kind=manifest} = %v, clients sent %d manifest GETs", got, res.manifestReqs)
	}
	if got, _ := m.sum("regcache_requests_total", `kind="blob"`); int64(got) != res.blobReqs {
		t.Errorf("requests_total{kind=blob} = %v, clients sent %d blob GETs", got, res.blobReqs)
	}
	if got, _ := m.sum("regcache_served_bytes_total"); int64(got) != res.clientBytes {
		t.Errorf("served_bytes_total = %v, clients received %d bytes", got, res.clientBytes)
	}
}

// officialFresh: a moved official tag costs no counted pull (the mirror
// has the new digest), so the pull reserve is no reason to serve its old
// digest.
func officialFresh(t *testing.T, res *result) {
	if len(res.oldAfterOfficial) > 0 {
		t.Errorf("moved official tags served with their old digest after the move, pulls by tag: %v; "+
			"the mirror has the new digest, which costs no counted pull", res.oldAfterOfficial)
	}
}

func sumBlobGETs(c *testhub.Counts) int {
	n := 0
	for _, v := range c.BlobGETs {
		n += v
	}
	return n
}

// runStorm resets the moving tags, then runs the sequence with `jobs`
// concurrent workers against base. All pulls before moveAt finish before
// the tags move; then the second half runs.
func runStorm(t *testing.T, name, base string, reg *testhub.Registry, work []*seeded, seq []int, moveAt, jobs int) (r *result) {
	t.Helper()
	resetTags(t, reg, work)
	p := pullclient.New(base, 60*time.Second)
	defer p.Close()
	defer func() { r.manifestReqs, r.blobReqs = p.ManifestReqs.Load(), p.BlobReqs.Load() }()
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()

	records := make([]pullRecord, len(seq))
	phase := func(from, to int) {
		next := make(chan int)
		var wg sync.WaitGroup
		for j := 0; j < jobs; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					s := work[seq[i]]
					t0 := time.Now()
					got, err := p.Pull(ctx, s.repo, s.tag)
					records[i] = pullRecord{idx: i, spec: s, got: got, err: err, elapsed: time.Since(t0)}
				}
			}()
		}
		for i := from; i < to; i++ {
			next <- i
		}
		close(next)
		wg.Wait()
	}
	t0 := time.Now()
	phase(0, moveAt)
	moveTags(t, reg, work)
	phase(moveAt, len(seq))
	wall := time.Since(t0)

	r = &result{name: name, pulls: len(seq), classes: map[string]int{}, nonOffDigs: map[digest.Digest]bool{}, okByTag: map[string]int{}, wall: wall,
		offManifests: map[digest.Digest]bool{}, oldAfterOfficial: map[string]int{}}
	var lat []time.Duration
	for _, rec := range records {
		lat = append(lat, rec.elapsed)
		if rec.err != nil {
			r.failures++
			class := "other"
			var pe *pullclient.Error
			if errors.As(rec.err, &pe) {
				class = pe.Class
			}
			r.classes[class]++
			if len(r.examples) < 3 {
				r.examples = append(r.examples, fmt.Sprintf("#%d %s: %v", rec.idx, rec.spec.name(), rec.err))
			}
			continue
		}
		s, d := rec.spec, rec.got.Digest
		valid := d == s.orig.digest || (s.move && d == s.next.digest)
		if !valid {
			r.failures++
			r.classes["unknown digest"]++
			if len(r.examples) < 3 {
				r.examples = append(r.examples, fmt.Sprintf("#%d %s: got %s, which the tag never named", rec.idx, s.name(), d))
			}
			continue
		}
		r.okByTag[s.name()]++
		r.clientBytes += rec.got.Bytes
		if s.official() {
			r.offManifests[d] = true
			if rec.got.Child != "" {
				r.offManifests[rec.got.Child] = true
			}
		} else {
			r.nonOffDigs[d] = true
		}
		if s.move && rec.idx >= moveAt {
			if d == s.orig.digest {
				r.oldAfter++
				if s.official() {
					r.oldAfterOfficial[s.name()]++
				}
			} else {
				r.newAfter++
			}
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r.p50, r.p95 = lat[len(lat)/2], lat[len(lat)*95/100]
	t.Logf("%s: %d pulls, %d failed, wall %v", name, len(seq), r.failures, wall.Round(time.Millisecond))
	return r
}

func table(rs []*result) string {
	var b strings.Builder
	b.WriteString("| System | Client pulls | Failed pulls | Counted origin pulls (library/*) | Origin 429s | Bytes from origin: manifests + blobs | Mirror: manifests / blob bytes | Moved tags after the move: new / old digest | Wall time | Pull p50 / p95 |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rs {
		mirror := "–"
		if r.mirror != nil {
			mirror = fmt.Sprintf("%d / %s", r.mirror.ManifestGETs, size(r.mirror.BlobBytes))
		}
		fmt.Fprintf(&b, "| %s | %d | **%d** | %d (%d) | %d | %s + %s = %s | %s | %d / %d | %v | %v / %v |\n",
			r.name, r.pulls, r.failures, r.origin.ManifestGETs, r.countedOfficial(), r.origin.RateLimited,
			size(r.tapMBytes), size(r.origin.BlobBytes), size(r.tapMBytes+r.origin.BlobBytes), mirror,
			r.newAfter, r.oldAfter, r.wall.Round(10*time.Millisecond), r.p50.Round(100*time.Microsecond), r.p95.Round(100*time.Microsecond))
	}
	return b.String()
}

// size prints a byte count in KiB or MiB.
func size(n int64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%.1f KiB", float64(n)/1024)
	}
	return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
}

func countMoves(w []*seeded) int {
	n := 0
	for _, s := range w {
		if s.move {
			n++
		}
	}
	return n
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

func sortStrings(s []string) { sort.Strings(s) }
