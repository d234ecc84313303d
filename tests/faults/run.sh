#!/usr/bin/env bash
# Fault-injection suite for leanmqd with a loss ledger (see chaos.py).
#
#   tests/faults/run.sh            every scenario in --short form except soak
#   SOAK=1 tests/faults/run.sh     the soak scenario only (--short: 3 min;
#                                  SOAK_MODE=--full for 30 min;
#                                  SOAK_SECONDS=N for N s; SOAK_SAMPLES=f.csv
#                                  writes its samples, which
#                                  tests/faults/soak_chart.py draws)
#
# Needs the built binary (target/debug/leanmqd, or LEANMQD=/path) and
# redis-server. Creates tests/faults/.venv on first use. Exits non-zero when
# any scenario that promises no loss lost a message or failed a check.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.installed"

command -v redis-server >/dev/null 2>&1 || {
  echo "run.sh: redis-server not found (Debian: apt-get install redis-server)" >&2
  exit 2
}

if [ ! -f "$STAMP" ] || [ "$REPO/clients/python/pyproject.toml" -nt "$STAMP" ]; then
  [ -x "$PY" ] || python3 -m venv "$VENV"
  # Install the SDK from a copy so pip's in-tree build leaves nothing behind
  # in clients/python.
  SDK="$(mktemp -d)"
  cp -r "$REPO/clients/python/pyproject.toml" "$REPO/clients/python/README.md" \
        "$REPO/clients/python/leanmq_grpc" "$SDK/"
  rm -rf "$SDK/leanmq_grpc/__pycache__"
  "$PY" -m pip install --quiet --disable-pip-version-check \
    'grpcio>=1.76.0' 'protobuf>=6.31.1,<7' 'redis>=5' "$SDK"
  rm -rf "$SDK"
  touch "$STAMP"
fi

cd "$REPO"
if [ "${SOAK:-0}" = "1" ]; then
  exec "$PY" "$HERE/chaos.py" "${SOAK_MODE:---short}" ${SOAK_SECONDS:+--soak-seconds "$SOAK_SECONDS"} soak
fi
exec "$PY" "$HERE/chaos.py" --short "$@"
