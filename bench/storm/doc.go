// Package storm is the CI storm benchmark of issue 3: a fleet of CI jobs
// pulling through a cache from a Docker Hub–like origin that allows 10
// anonymous pulls per window, run side by side against the origin directly,
// CNCF Distribution v3 in proxy mode, and regcache.
//
// It is a Go test so it can use internal/testhub and build regcache in
// process:
//
//	go test ./bench/storm -run Storm -v -count=1
//
// prints the comparison table (Markdown) and asserts regcache's acceptance
// criteria. The full workload (500 pulls, 8 jobs) is the default; it takes
// well under a minute on a 2-core machine, so it also runs as part of
// `go test ./...`. -storm.pulls and -storm.jobs shrink it; the table in
// BENCHMARKS.md is always the full workload. -short skips the benchmark.
//
// Everything listens on 127.0.0.1 only.
package storm
