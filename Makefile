# regcache: the commands a developer and CI need.
SHELL   := /bin/bash
GO      ?= go
GOBIN   ?= $(shell $(GO) env GOPATH)/bin
export PATH := $(GOBIN):$(PATH)

.PHONY: build run test unit fuzz e2e vet bench deps image manifests modules

# `regcache version` tells what was built: git describe and the commit.
BUILDINFO := github.com/regcache/regcache/internal/buildinfo
LDFLAGS   := -X $(BUILDINFO).version=$(shell git describe --tags --always --dirty 2>/dev/null || echo '(devel)') \
             -X $(BUILDINFO).commit=$(shell git rev-parse HEAD 2>/dev/null) \
             -X $(BUILDINFO).dirty=$(shell test -z "$$(git status --porcelain --untracked-files=no 2>/dev/null)" && echo false || echo true)

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/regcache ./cmd/regcache

# The container image, built offline without a daemon: static binaries for
# linux/amd64 and linux/arm64 in a FROM-scratch OCI index, written to the OCI
# layout bin/image; PUSH=host/repo:tag also pushes it (docker config login).
image:
	$(GO) run ./tools/mkimage -out bin/image $(if $(PUSH),-push $(PUSH))

# deploy/kubernetes/regcache.yaml: the Helm chart's defaults as plain
# manifests, for kustomize (a test checks that it is up to date).
manifests:
	helm template regcache deploy/helm/regcache --namespace regcache > deploy/kubernetes/regcache.yaml

run: build
	./bin/regcache serve

# The test command in the README and in .ci/run: vet, unit and integration
# tests (race detector on), every fuzz target for a few seconds, then the
# real-client end-to-end tests. Everything that runs a server or a client
# runs in a private network namespace with only loopback up (tools/netns;
# the e2e and adversarial suites enter their own), so nothing can reach or
# fall back to a public registry; the module cache is filled first, and the
# builds inside work from it alone (GOPROXY=off). Needs root and the tools
# `make deps` installs.
test: deps vet unit fuzz e2e

NETNS := ./tools/netns env GOPROXY=off

vet: modules
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...

unit: modules
	$(NETNS) $(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... | grep -v /test/e2e)

# Every e2e test's logs (and the dashboard's screenshot) are kept here.
E2E_LOGS ?= $(CURDIR)/e2e-logs

e2e:
	@set -o pipefail; REGCACHE_E2E_KEEP_LOGS=$(E2E_LOGS) $(GO) test -count=1 -timeout 30m -v ./test/e2e/ 2>&1 | tee e2e.log | grep -E '^\s*(--- |PASS|FAIL|ok|panic)' \
	  || { echo "e2e failed; last lines of e2e.log:"; tail -n 150 e2e.log; \
	       echo "==== e2e failures (from e2e.log, without the log dumps) ===="; \
	       grep -E -- '--- FAIL|^panic:|^\s+[a-z0-9_]+_test\.go:[0-9]+: ' e2e.log \
	         | grep -vE ' ==== |secret scan:|logs kept in' | tail -n 80; exit 1; }

bench: deps modules
	$(NETNS) $(GO) run ./bench

# Each fuzz target for FUZZTIME (default 8s); see .ci/fuzz.
fuzz: modules
	$(NETNS) ./.ci/fuzz

# Fills the module cache, for the builds in the network namespace.
modules:
	$(GO) mod download

# Installs what the tests need on Debian (as root): real clients and servers.
deps:
	./.ci/deps
