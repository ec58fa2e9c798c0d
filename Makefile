GO ?= go
BIN := bin

.PHONY: all build test test-short fuzz bench bench-docker bench-cluster vet clean

all: build

build:
	@mkdir -p $(BIN)
	@if [ -d cmd ]; then $(GO) build -o $(BIN)/ ./cmd/...; fi

# The whole suite: unit tests, privileged integration tests (each in fresh network
# namespaces; needs root) and a short fuzz run of every fuzz target.
test: vet
	$(GO) test -race -count=1 ./...
	$(MAKE) fuzz FUZZTIME=30000x

vet:
	$(GO) vet ./...

# An execution count (Nx), not a duration: Go 1.26's fuzz coordinator can fail a
# target with a bare "context deadline exceeded" when a -fuzztime duration expires
# mid-call on a loaded machine (golang/go#75804, fixed in Go 1.27).
FUZZTIME ?= 200000x
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; \
	    $(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./...

# pier side by side with the Docker engine (docs/benchmarks.md). Needs root; installs
# docker.io, dnsperf, iperf3, busybox-static (apt) if missing; ~10-15 min; report on
# stdout and in bench/results/<date>.md. Not part of `make test`. Flags for pierbench
# go in BENCHFLAGS, e.g. make bench-docker BENCHFLAGS='-only dns,throughput'.
bench-docker:
	bash bench/run.sh $(BENCHFLAGS)

# pier's 3-host cluster (pier lab) beside a 3-host Docker swarm and a raw VXLAN pair
# (docs/benchmarks.md). Needs root; installs docker.io, iperf3, busybox-static,
# etcd-server (apt) if missing; ~10 min; report on stdout and in
# bench/results/<date>-cluster.md. Flags in BENCHFLAGS, e.g. BENCHFLAGS='-only throughput'.
bench-cluster:
	bash bench/cluster.sh $(BENCHFLAGS)

clean:
	rm -rf $(BIN)

# Build and start pierd in the foreground with its defaults (/var/lib/pier, /run/pier,
# unix:///run/pier/pier.sock). Needs root. Stop it with Ctrl-C; state is kept.
.PHONY: run
run: build
	$(BIN)/pierd
