// Package storm is the CI storm benchmark of issue 3: a fleet of CI jobs
// pulling from a Docker Hub–like origin that allows 10 anonymous pulls per
// window, run side by side straight at the origin, through CNCF
// Distribution v3 in proxy mode, and through regcache.
//
// It is a Go test so it can use internal/testhub and build regcache in
// process:
//
//	go test ./bench/storm -run Storm -v -count=1
//
// prints the comparison table (Markdown, recorded in BENCHMARKS.md under
// "CI storm") and asserts regcache's acceptance criteria 1 and 5 of issue 3,
// and issue 9's for three replicas. The full workload (500 pulls, 8 jobs)
// is the default; it takes 30-80 s on a 2-core machine (the fleet's run
// about 10-15 s of it, plus building the binary), so it also runs as part
// of `go test ./...`. -short skips it.
//
// Flags (after the package, e.g. `go test ./bench/storm -run Storm -v
// -storm.only=regcache`):
//
//	-storm.pulls N    client pulls in all (default 500; the table uses 500)
//	-storm.jobs N     concurrent jobs (default 8)
//	-storm.only LIST  direct,distribution,regcache,fleet (default all)
//
// The pieces:
//   - one real registry (testhub.StartRegistry) holds the 20 tags and the
//     content four of them move to;
//   - each system gets a fresh origin hub (testhub.NewHub, AnonymousLimit
//     10) behind a counting reverse proxy (originTap) that adds the manifest
//     bytes the hub does not count; regcache also gets an ECR Public–style
//     mirror hub serving docker/library/*;
//   - Distribution is the registry binary testhub finds (v3.1.2 from `go
//     install`), configured with proxy.remoteurl only (anonymous);
//   - regcache is internal/app.New with tag_ttl 0s (every pull revalidates
//     with a HEAD), reserve 1, and the mirror for library/*;
//   - the fleet (issue 9) is three processes of the regcache binary (built
//     with go build) with the same config plus a shared S3 bucket
//     (versitygw) and Redis (redis-server), behind an in-process balancer
//     that sends each request to the next replica; with its own origin and
//     mirror hubs, it must fail no pull, spend as many counted pulls as the
//     single regcache, and fetch each blob once (1.00× the distinct blobs'
//     bytes);
//   - the clients (bench/internal/pullclient) pull like docker: manifest
//     by tag with all four manifest types accepted, the linux/amd64 child of
//     an index by digest, then config and layers, verifying every digest;
//     they never retry.
//
// Everything listens on 127.0.0.1 only.
package storm
