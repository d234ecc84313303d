#!/usr/bin/env bash
# Python scenario of the benchmarks: leanmq_grpc through a release leanmqd
# against LeanMQ 0.2.0 on the same Redis (bench/python_vs_leanmq.py).
# Uses the e2e venv, which has both packages (tests/e2e/run.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=tests/e2e/.venv/bin/python
[ -x "$PY" ] || { echo "run 'make test-e2e' once to create $PY"; exit 2; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
R=$(port); P=$(port); DIR=$(mktemp -d)
redis-server --port "$R" --save "" --appendonly no --dir "$DIR" --daemonize no >/dev/null &
RPID=$!
RUST_LOG=warn target/release/leanmqd --listen "127.0.0.1:$P" --redis-url "redis://127.0.0.1:$R" >/dev/null 2>&1 &
LPID=$!
trap 'kill $LPID $RPID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$P") 2>/dev/null && break; sleep 0.1; done
# The SDK from this checkout (ahead of whatever copy the venv installed).
PYTHONPATH="$PWD/clients/python" "$PY" bench/python_vs_leanmq.py --leanmqd "127.0.0.1:$P" --redis-port "$R" --n "${N:-5000}" | tee target/bench/python.md
