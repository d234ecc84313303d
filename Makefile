# leanmq-grpc — every entry point a person or CI needs.
#   make run    start leanmqd on 127.0.0.1:50051 with an embedded redis-server
#   make test   run every test (installs what it needs first)

SHELL := /bin/bash
CARGO ?= cargo
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: fuzz fuzz-short layout run test test-rust test-console console-screenshots chromium test-clients test-deploy test-packages test-e2e test-faults soak soak-short bench bench-short setup redis venv lint fmt clippy ci clean

# `make run ARGS=...` replaces the defaults (console on, on loopback).
ARGS ?= --console-listen 127.0.0.1:8080

run: redis
	$(CARGO) run --release --bin leanmqd -- $(ARGS)

# Every test: the server's, each client's (unit tests + generated-code
# staleness), and the cross-language suite.
test: setup test-rust test-console test-clients test-deploy test-packages test-e2e test-faults

test-rust: setup
	$(CARGO) test --workspace --all-targets -- --test-threads=$${TEST_THREADS:-4}

# The web console in headless Chromium (Debian's chromium + chromedriver):
# queues page, a queue's dead letters, requeue one, delivered again.
test-console: setup chromium
	$(CARGO) test --test console_browser -- --ignored

# Screenshots of each console page, for the README (docs/console/).
console-screenshots: setup chromium
	CONSOLE_SCREENSHOTS=docs/console $(CARGO) test --test console_browser -- --ignored

# chromium and chromedriver from Debian's packages, when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  echo "installing chromium and chromium-driver"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

test-clients:
	$(MAKE) -C clients/python setup test check-gen
	$(MAKE) -C clients/go setup test check-gen
	$(MAKE) -C clients/node setup test check-gen

# deploy/'s monitoring: the alert rules (syntax and their unit tests), the
# compose Prometheus config, and the dashboard/alerts/docs against the
# metrics src/observe.rs exports. promtool comes from Debian's `prometheus`.
test-deploy:
	@command -v promtool >/dev/null 2>&1 || { echo "promtool is required (apt-get install prometheus)"; exit 1; }
	promtool check rules deploy/prometheus/alerts.yml
	cd deploy/prometheus && promtool test rules alerts.test.yml
	cd deploy/prometheus && promtool check config prometheus.yml
	python3 tests/deploy/check_deploy.py

# The SDKs as their users get them: a Python wheel installed into a clean
# venv, the Node tarball of `npm pack` required (CJS) and imported (ESM).
test-packages:
	$(MAKE) -C clients/python check-wheel
	$(MAKE) -C clients/node check-pack

# Cross-language end-to-end and LeanMQ interop through the three SDKs,
# against a real leanmqd and redis-server.
test-e2e: setup
	$(CARGO) build --bin leanmqd
	LEANMQD=target/debug/leanmqd bash tests/e2e/run.sh

# Fault injection with a loss ledger (docs/reliability.md): real processes,
# real signals; prints accepted/delivered/lost/duplicates per scenario.
test-faults: setup
	$(CARGO) build --bin leanmqd
	LEANMQD=target/debug/leanmqd bash tests/faults/run.sh

# Soak: 30 minutes at a moderate rate with 1% nacks and subscriber churn,
# sampling RSS, fds and Redis; soak-short is CI's 3-minute form.
soak: redis
	$(CARGO) build --release --bin leanmqd
	SOAK=1 SOAK_MODE=--full LEANMQD=target/release/leanmqd bash tests/faults/run.sh

soak-short: redis
	$(CARGO) build --release --bin leanmqd
	SOAK=1 SOAK_MODE=--short LEANMQD=target/release/leanmqd bash tests/faults/run.sh

# Benchmarks (docs/benchmarks.md): every figure is a ratio to a baseline
# measured in the same run. bench-short is CI's quick form.
bench: redis
	$(CARGO) build --release --workspace --bins
	LEANMQD=target/release/leanmqd target/release/leanmq-bench --out target/bench
	bash bench/python.sh

# A structure-aware fuzz run against a real server and Redis (tests/fuzz.rs):
# random and mutated requests for every RPC, mutated bodies, raw frames; no
# panic, only documented statuses, Redis invariants afterwards. fuzz-short is
# CI's ~2 minutes; fuzz is the nightly half hour. FUZZ_SEED=… replays a run.
fuzz-short: setup
	FUZZ_SECS=$${FUZZ_SECS:-100} $(CARGO) test --test fuzz -- --ignored --nocapture

fuzz: setup
	FUZZ_SECS=$${FUZZ_SECS:-1800} $(CARGO) test --test fuzz -- --ignored --nocapture

bench-short: redis
	$(CARGO) build --release --workspace --bins
	LEANMQD=target/release/leanmqd target/release/leanmq-bench --short --out target/bench

setup: redis venv

# redis-server from Debian's packages, when missing.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server redis-tools >/dev/null; }
	@redis-server --version

# The Python venv the LeanMQ interop tests drive (the real leanmq==0.2.0).
venv: $(VENV)/.ok
$(VENV)/.ok:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q leanmq==0.2.0
	touch $@

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# OTLP export is a default feature; keep the build without it lint-clean too.
	$(CARGO) clippy --all-targets --no-default-features -- -D warnings

# src/ stays navigable: no file over 700 lines, no function over 90.
layout:
	python3 scripts/check_layout.py src

lint: fmt clippy layout

ci: lint test soak-short fuzz-short bench-short

clean:
	$(CARGO) clean
	rm -rf $(VENV) leanmqd-data
