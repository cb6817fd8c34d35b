# rbuild: build, example, tests, benchmarks.
#
#   make            the static binary in bin/rbuild
#   make example    build examples/hello into out/hello.tar (no registry, no network)
#   make image      rbuild's own image into out/rbuild-image.tar, built by rbuild
#   make test       everything: unit and end-to-end tests (installs Debian packages it needs)
#   make bench      benchmarks (bench-peers, bench-go, bench-rss)

SHELL     := /bin/bash
GO        ?= go
# cgo is required (libcontainer's nsenter, storage's unshare); btrfs is left
# out so no libbtrfs headers are needed; netgo/osusergo make a clean static
# link.
TAGS      := exclude_graphdriver_btrfs,netgo,osusergo
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION) -extldflags "-static"
export CGO_ENABLED := 1
export GOFLAGS := -tags=$(TAGS)

.PHONY: all build example test unit integration vet deps bench bench-peers bench-go bench-rss clean

all: build

build: bin/rbuild

# Always ask go: its build cache knows better than make what changed.
.PHONY: bin/rbuild
bin/rbuild:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/rbuild

# The example needs nothing but this machine: its program is compiled here
# and the image is FROM scratch, written as an OCI layout tar.
example: bin/rbuild
	CGO_ENABLED=0 $(GO) build -o examples/hello/hello ./examples/hello/cmd
	mkdir -p out
	./bin/rbuild build --root $(CURDIR)/out/state -t hello:latest \
		--output type=oci,dest=$(CURDIR)/out/hello.tar examples/hello
	@echo "wrote out/hello.tar (OCI image layout); inspect it with: tar -tf out/hello.tar"

# rbuild's own image (the top-level Dockerfile): FROM scratch with the
# static binary, the CA bundle and a non-root user (uid 1000), built by
# rbuild itself into an OCI image layout tar. No registry, no network. The
# context is the repository, narrowed by .dockerignore to bin/rbuild and the
# root file system staged here in out/image/rootfs. CA_BUNDLE: the
# certificates to ship (default: this machine's).
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
IMAGE_TAG ?= rbuild:latest
.PHONY: image
image: bin/rbuild
	rm -rf out/image
	install -d -m 0755 out/image/rootfs/etc/ssl/certs out/image/rootfs/home out/image/rootfs/usr/local/bin
	install -d -m 1777 out/image/rootfs/tmp
	install -m 0644 $(CA_BUNDLE) out/image/rootfs/etc/ssl/certs/ca-certificates.crt
	./bin/rbuild build --root $(CURDIR)/out/state --push=false -t $(IMAGE_TAG) \
		--label org.opencontainers.image.version=$(VERSION) \
		--output type=oci,dest=$(CURDIR)/out/rbuild-image.tar .
	@echo "wrote out/rbuild-image.tar (OCI image layout, tag $(IMAGE_TAG))"

deps:
	./scripts/test-deps.sh

vet:
	test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /integration)

integration: bin/rbuild
	RBUILD_BIN=$(CURDIR)/bin/rbuild $(GO) test -count=1 -timeout 45m -v ./integration 2>&1 | tee out-integration.log; exit $${PIPESTATUS[0]}

test: deps vet unit integration

# Benchmarks (issues 3, 4, 5). Run as root. `make bench` runs all three
# parts below; results and the commands behind them are recorded by hand in
# docs/benchmarks.md, apart from bench-peers' generated section.
#
# bench-peers: rbuild against BuildKit (docker.io), buildah and kaniko, same
# machine, same run (issue 3). It installs the Debian packages it needs,
# starts a registry and dockerd in a temporary directory and stops them at
# the end. BENCH_QUICK=1: busybox cases only, one repeat. BENCH_REPEAT,
# BENCH_CASES, BENCH_BUILDERS, BENCH_KEEP: see bench/README.md. Writes
# docs/benchmarks.md and docs/benchmarks.json.
bench: bench-peers bench-go bench-rss

bench-peers: bin/rbuild
	$(GO) run ./bench -rbuild $(CURDIR)/bin/rbuild -cases $(CURDIR)/bench/cases

# bench-go: the Go benchmarks of snapshots (issue 4) and of the layer cache
# (issue 5). BENCH_FULL=1 runs the snapshot benchmarks at full size (100k
# files, a 1 GiB layer: about 7 minutes instead of 2).
bench-go:
	$(if $(BENCH_FULL),,RBUILD_BENCH_QUICK=1) $(GO) test -run '^$$' -bench . -timeout 40m ./snapshot
	$(GO) test -run '^$$' -bench Rebuild -benchtime 5x ./builder

# bench-rss: peak RSS of a build that COPYs a 2 GiB file (issue 4: under
# 200 MB). Needs GNU time.
bench-rss: bin/rbuild
	command -v /usr/bin/time >/dev/null || apt-get install -y -qq --no-install-recommends time >/dev/null
	bench/rss.sh bin/rbuild

clean:
	rm -rf bin out examples/hello/hello
