# regcache: the commands a developer and CI need.
SHELL   := /bin/bash
GO      ?= go
GOBIN   ?= $(shell $(GO) env GOPATH)/bin
export PATH := $(GOBIN):$(PATH)

.PHONY: build run test unit e2e vet bench deps

build:
	$(GO) build -o bin/regcache ./cmd/regcache

run: build
	./bin/regcache serve

# The test command in the README and in .ci/run: vet, unit and integration
# tests (race detector on), then the real-client end-to-end tests, which run
# in a private network namespace (needs root and the tools `make deps` installs).
test: deps vet unit e2e

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... | grep -v /test/e2e)

e2e:
	@set -o pipefail; $(GO) test -count=1 -timeout 30m -v ./test/e2e/ 2>&1 | tee e2e.log | grep -E '^\s*(--- |PASS|FAIL|ok|panic)' \
	  || { echo "e2e failed; last lines of e2e.log:"; tail -n 150 e2e.log; \
	       echo "==== e2e failures (from e2e.log, without the log dumps) ===="; \
	       grep -E -- '--- FAIL|^panic:|^\s+[a-z0-9_]+_test\.go:[0-9]+: ' e2e.log \
	         | grep -vE ' ==== |secret scan:|logs kept in' | tail -n 80; exit 1; }

bench: deps
	$(GO) run ./bench

# Installs what the tests need on Debian (as root): real clients and servers.
deps:
	./.ci/deps
