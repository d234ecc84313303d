#!/usr/bin/env bash
# Cross-language end-to-end and LeanMQ interop suite for leanmqd.
#
#   bash tests/e2e/run.sh [pytest args...]
#
# Uses an already-built leanmqd: $LEANMQD (default target/debug/leanmqd,
# relative to the repository root). Never runs cargo. Prepares the three
# SDKs' e2e agents, a venv in tests/e2e/.venv (pytest, the Python SDK,
# leanmq==0.2.0, redis), then runs pytest on tests/e2e.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
E2E="$ROOT/tests/e2e"
cd "$ROOT"

log() { printf '[e2e] %s\n' "$*" >&2; }
die() { printf '[e2e] error: %s\n' "$*" >&2; exit 1; }
# Run a noisy set-up command; show its output only when it fails.
quiet() {
  local out
  out="$(mktemp)"
  if ! "$@" >"$out" 2>&1; then
    cat "$out" >&2
    rm -f "$out"
    die "failed: $*"
  fi
  rm -f "$out"
}

# --- the broker under test -------------------------------------------------
LEANMQD="${LEANMQD:-target/debug/leanmqd}"
case "$LEANMQD" in /*) ;; *) LEANMQD="$ROOT/$LEANMQD" ;; esac
[ -x "$LEANMQD" ] || die "leanmqd binary not found or not executable at $LEANMQD
  build it first (cargo build --bin leanmqd) or point LEANMQD at one"
export LEANMQD

for tool in redis-server python3 go node npm make; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (needed by the e2e suite)"
done

# --- SDK set-ups -----------------------------------------------------------
log "python SDK: make -C clients/python setup"
make -s -C clients/python setup

# `make setup` in clients/node is `npm ci`, which wipes and reinstalls
# node_modules; do it only when the install or the built agent is missing,
# and rebuild dist/ when a source file is newer than it.
NODE_AGENT="$ROOT/clients/node/dist/e2e-agent.js"
if [ ! -f clients/node/node_modules/.package-lock.json ] || [ ! -f "$NODE_AGENT" ]; then
  log "node SDK: make -C clients/node setup"
  make -s -C clients/node setup
elif [ -n "$(find clients/node/src clients/node/package.json clients/node/tsconfig.json -newer "$NODE_AGENT" -type f -print -quit)" ]; then
  log "node SDK: sources changed, npm run build"
  (cd clients/node && npm run -s build)
fi
[ -f "$NODE_AGENT" ] || die "node agent missing after setup: $NODE_AGENT"
export E2E_NODE_AGENT="$NODE_AGENT"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/leanmq-e2e.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
log "go agent: go build ./cmd/e2e-agent"
(cd clients/go && go build -o "$TMP/go-e2e-agent" ./cmd/e2e-agent)
export E2E_GO_AGENT="$TMP/go-e2e-agent"

# --- the test venv ---------------------------------------------------------
VENV="$E2E/.venv"
VPY="$VENV/bin/python"
# The trace-context test adds an OTLP collector (opentelemetry-proto) and a
# producer span (opentelemetry-sdk); the stamp names the list, so a venv
# made for an older list is rebuilt.
# The push tests verify signatures with PyPI's standardwebhooks (and npm's,
# installed below into tests/e2e/push-receiver).
DEPS="pytest pytest-timeout leanmq==0.2.0 redis opentelemetry-sdk opentelemetry-proto standardwebhooks==1.3.0"
DEPS_STAMP="$VENV/.deps-$(echo "$DEPS" | sha256sum | cut -c1-12)"
if [ ! -f "$DEPS_STAMP" ]; then
  log "creating $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  quiet "$VPY" -m pip install -q --upgrade pip
  # shellcheck disable=SC2086 # DEPS is a list of requirement words
  quiet "$VPY" -m pip install -q $DEPS
  touch "$DEPS_STAMP"
fi
# (Re)install the Python SDK whenever its sources changed.
SDK_HASH="$(cd clients/python && find pyproject.toml leanmq_grpc -type f \
  -not -path '*/__pycache__/*' -not -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$VENV/.sdk-hash" 2>/dev/null || true)" != "$SDK_HASH" ]; then
  log "installing the Python SDK into $VENV"
  # From a copy, so the build leaves nothing in clients/python.
  mkdir -p "$TMP/python-sdk"
  tar -C clients/python --exclude=./.venv --exclude=./build --exclude=./dist \
    --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$TMP/python-sdk" -xf -
  quiet "$VPY" -m pip install -q "$TMP/python-sdk"
  quiet "$VPY" -m pip install -q --force-reinstall --no-deps "$TMP/python-sdk"
  echo "$SDK_HASH" >"$VENV/.sdk-hash"
fi

# The push tests' Node receiver verifies with npm's standardwebhooks (locked).
PUSH_RX="$E2E/push-receiver"
if [ ! -f "$PUSH_RX/node_modules/.package-lock.json" ] || [ "$PUSH_RX/package-lock.json" -nt "$PUSH_RX/node_modules/.package-lock.json" ]; then
  log "push receiver: npm ci"
  (cd "$PUSH_RX" && quiet npm ci --no-audit --no-fund)
fi

log "leanmqd: $LEANMQD"
start=$SECONDS
set +e
"$VPY" -m pytest -q tests/e2e "$@"
rc=$?
set -e
log "pytest finished in $((SECONDS - start)) s (exit $rc)"
exit $rc
