# Flynn: build, install OS dependencies, test.
# Test packages run one at a time (-p 1): several start real clusters,
# containers and builds, and share the machine's two cores.
#   make          build bin/flynn, bin/flynn-host, bin/flynn-supervisor (job
#                 supervisors), bin/flynn-control and bin/flynn-data (what
#                 the system components' jobs run: the components on etcd,
#                 and the others); flynn-host finds these in its own directory
#   make deps     install the OS packages Flynn needs (root)
#   make test     deps + build + vet + the whole test suite (root)
#   make up/down  run / stop a cluster on this machine (HOSTS=N: N hosts,
#                 each in its own network namespace; default 1)
#   make bench    the speed benchmarks in one table (root, quiet machine)

GO        ?= go
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/flynnrebuilt/flynn/internal/version.Version=$(VERSION)
GOFLAGS   ?=
TESTFLAGS ?= -count=1 -p 1 -timeout 45m

export CGO_ENABLED = 0

.PHONY: all build deps test test-short vet fmt up down clean bench

all: build

build:
	$(GO) build $(GOFLAGS) -trimpath -ldflags '$(LDFLAGS)' -o bin/flynn ./cmd/flynn
	$(GO) build $(GOFLAGS) -trimpath -ldflags '$(LDFLAGS)' -o bin/flynn-host ./cmd/flynn-host
	$(GO) build $(GOFLAGS) -trimpath -ldflags '$(LDFLAGS)' -o bin/flynn-supervisor ./cmd/flynn-supervisor
	$(GO) build $(GOFLAGS) -trimpath -ldflags '$(LDFLAGS)' -o bin/flynn-control ./cmd/flynn-control
	$(GO) build $(GOFLAGS) -trimpath -ldflags '$(LDFLAGS)' -o bin/flynn-data ./cmd/flynn-data

deps:
	@bash scripts/deps.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# scripts/testsum runs go test -json and prints each package's result, the
# output of failed tests and a summary (packages, tests, time) at the end.
test: deps build vet
	GO=$(GO) $(GO) run ./scripts/testsum $(TESTFLAGS) ./...

test-short: build
	GO=$(GO) $(GO) run ./scripts/testsum -short ./...

# make bench runs every speed benchmark (router vs nginx and HAProxy, job
# start vs runc, push, scale, idle memory) and prints one table; on a quiet
# machine, as root. Not part of make test.
bench: deps build
	GO=$(GO) bash bench/run.sh

# make up HOSTS=N runs N hosts (up to 5), each in its own network namespace.
# make up BACKUP=FILE restores a backup (flynn cluster backup) on a new cluster.
up: build
	bin/flynn-host up $(if $(HOSTS),--hosts $(HOSTS)) $(if $(BACKUP),--from-backup $(BACKUP))

down:
	@test -x bin/flynn-host || $(MAKE) build
	bin/flynn-host down

clean:
	rm -rf bin
