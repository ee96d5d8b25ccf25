// Package degraded is issue 12's benchmark: CI jobs pulling through a cache
// whose origin is slow (every answer 2 s late) or hangs (connections
// accepted, never answered), run side by side through CNCF Distribution v3
// in proxy mode and through regcache. It reports client pull latency
// (p50/p95/p99/max) and failures, for cached-tag pulls and cold
// official-image pulls apart, and asserts regcache's targets:
//
//   - no failed pull of a cached tag or of an official image;
//   - p99 of a cached-tag pull ≤ revalidate_wait + 0.2 s;
//   - p99 of a cold official pull ≤ hedge_delay + 1 s.
//
// The targets are asserted with a margin (-degraded.margin, default 0.5 s)
// so that a loaded machine does not fail `go test ./...`; the table says
// whether each was met without it.
//
// It is a Go test, to use internal/testhub and run regcache in process:
//
//	go test ./bench/degraded -run Degraded -v -count=1 -degraded.full   # the recorded table (~3.5 min)
//	go test ./bench/degraded -run Degraded -v -count=1                   # quick: regcache only (~25 s)
//
// The quick variant is what `go test ./...` and `make test` run: a smaller
// workload, regcache only (Distribution waits up to 15 s per pull of a hung
// origin), both origin faults, every target asserted.
//
// Flags (after the package):
//
//	-degraded.full          Distribution too, and the full workload
//	-degraded.jobs N        concurrent jobs (default 4; 8 with -degraded.full)
//	-degraded.only LIST     distribution,regcache (default: both with -degraded.full)
//	-degraded.margin D      slack on the latency targets (default 500ms)
//
// The pieces:
//   - one real registry (testhub.StartRegistry) holds the content: six tags
//     pulled before the fault (three official, one of them a multi-arch
//     index, one a Docker manifest list; three non-official) and, per job,
//     official tags pulled only while the origin is degraded (cold);
//   - each system and fault gets a fresh origin hub (testhub.NewHub) and,
//     for regcache, an ECR Public–style mirror hub carrying library/*;
//   - the jobs pull the cached tags once while the origin is healthy; the
//     tags are then left past regcache's tag_ttl (2 s), and the fault is
//     set: testhub's SetDelay(2 s), or FaultHang;
//   - each job then runs the same sequence of pulls, cached and cold mixed,
//     0.5 s apart (so that a run spans several tag_ttl periods);
//     a pull is manifest by tag, the linux/amd64 child of an index, config
//     and layers, every digest verified (bench/internal/pullclient), with a
//     60 s client timeout and no retries;
//   - Distribution is the registry binary testhub finds (v3.1.2), as
//     testhub.StartProxy configures it (proxy.remoteurl, anonymous);
//   - regcache is internal/app.New with tag_ttl 2s, revalidate_wait 1s,
//     hedge_delay 1s, the default connect (5 s) and header (10 s) timeouts,
//     tag_fallback: mirrors and the mirror for library/*.
//
// Everything listens on 127.0.0.1 only.
package degraded
