# softphone-gateway. `make run` starts everything on embedded defaults; `make test` runs every
# test (the real redis-server, nginx+Nchan and SIPp must be installed: see .ci/run).

GO      ?= go
BIN     ?= bin
# Addresses `make run` uses (override on the command line or in the environment).
SOFTPHONE_LISTEN     ?= :8088
SOFTPHONE_ADMIN      ?= localhost:2019
SOFTPHONE_DATA_DIR   ?= ./data
SOFTPHONE_USERS_FILE ?= examples/users.json
SOFTPHONE_REDIS_URL  ?=
SOFTPHONE_NCHAN_URL  ?=
export SOFTPHONE_LISTEN SOFTPHONE_ADMIN SOFTPHONE_DATA_DIR SOFTPHONE_USERS_FILE SOFTPHONE_REDIS_URL SOFTPHONE_NCHAN_URL

.PHONY: all build caddy sipsidecar run test vet fuzz bench clean

all: build

build: caddy sipsidecar

caddy:
	./xcaddy.sh $(BIN)/caddy

sipsidecar:
	@if [ -f sipsidecar/main.go ]; then echo "building $(BIN)/sipsidecar"; $(GO) build -o $(BIN)/sipsidecar ./sipsidecar; fi

run: build
	@./examples/run.sh

vet:
	$(GO) vet ./...

test: vet
	$(GO) test -count=1 -timeout 20m ./...

# Short fuzz runs of every fuzz target (FUZZTIME each).
FUZZTIME ?= 15s
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzzing $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s $$pkg; \
		done; \
	done

# Measurements (bench/RESULTS.md); minutes, not part of make test (its smoke mode is).
bench:
	bench/run.sh

clean:
	rm -rf $(BIN)
