"""Checks deploy/'s monitoring files against the metrics leanmqd really exports.

    python3 tests/deploy/check_deploy.py

The metric names come from src/observe.rs (every `counter!`, `gauge!` and
`histogram!` there; histograms also as `_bucket`, `_sum`, `_count`). Fails
when:
- the Grafana dashboard is not valid JSON, a panel lacks a query or an id is
  repeated, or a query names no metric or one leanmqd does not export;
- the dashboard misses one of the panels operators need (queue depth, DLQ
  depth, pending, lag, oldest unacked age, the message rates, RPC latency,
  Redis errors and latency, open streams);
- alerts.yml names a metric leanmqd does not export, or an alert operators
  need is missing;
- docs/operations.md does not list every metric.

promtool (run by `make test-deploy`) checks the rules' syntax and their
unit tests; this script checks what promtool cannot know.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "leanmqd-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
OBSERVE = ROOT / "src" / "observe.rs"

# A token that looks like one of leanmqd's metrics.
METRIC_TOKEN = re.compile(r"\b(?:leanmq|grpc_server)_[a-z_]+\b")

# What the dashboard must show (issue: queue depth, DLQ depth, pending, lag,
# oldest unacked age, send/deliver/ack/nack/dead-letter rates, RPC latency,
# Redis errors and latency, open streams).
DASHBOARD_MUST_USE = [
    "leanmq_queue_depth",
    "leanmq_queue_dead_letters",
    "leanmq_queue_pending",
    "leanmq_group_lag",
    "leanmq_queue_oldest_unacked_seconds",
    "leanmq_messages_sent_total",
    "leanmq_deliveries_total",
    "leanmq_acks_total",
    "leanmq_nacks_total",
    "leanmq_dead_lettered_total",
    "grpc_server_handling_seconds_bucket",
    "leanmq_redis_errors_total",
    "leanmq_redis_duration_seconds_bucket",
    "leanmq_open_streams",
]

# Alerts operators need, by the metric each watches.
ALERTS_MUST_USE = {
    "LeanmqDeadLetters": "leanmq_queue_dead_letters",
    "LeanmqDeadLettersGrowing": "leanmq_dead_lettered_total",
    "LeanmqOldestUnackedTooOld": "leanmq_queue_oldest_unacked_seconds",
    "LeanmqConsumerLagGrowing": "leanmq_group_lag",
    "LeanmqNotServing": "leanmq_serving",
    "LeanmqLoadShedding": "leanmq_load_shed_total",
}


def exported_metrics() -> tuple[set[str], set[str]]:
    """(base names, every name a query may use)."""
    src = OBSERVE.read_text()
    found = re.findall(r'\b(counter|gauge|histogram)!\(\s*"([a-z_]+)"', src)
    if not found:
        raise SystemExit(f"no metrics found in {OBSERVE}: has the recording code moved?")
    base = {name for _, name in found}
    usable = set(base)
    for kind, name in found:
        if kind == "histogram":
            usable |= {name + "_bucket", name + "_sum", name + "_count"}
    return base, usable


def dashboard_queries(dash: dict, errors: list[str]) -> list[tuple[str, str]]:
    """(where, expr) of every panel query and templating query."""
    out: list[tuple[str, str]] = []
    ids: set[int] = set()

    def walk(panels: list) -> None:
        for p in panels:
            pid = p.get("id")
            where = f"panel {pid} {p.get('title')!r}"
            if not isinstance(pid, int):
                errors.append(f"{where}: no integer id")
            elif pid in ids:
                errors.append(f"{where}: id repeated")
            else:
                ids.add(pid)
            if "gridPos" not in p:
                errors.append(f"{where}: no gridPos")
            if p.get("type") == "row":
                walk(p.get("panels", []))
                continue
            targets = p.get("targets") or []
            if not targets:
                errors.append(f"{where}: no query")
            for t in targets:
                expr = t.get("expr", "")
                if not expr.strip():
                    errors.append(f"{where}: empty expr")
                out.append((where, expr))

    walk(dash.get("panels", []))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var.get("query")
            q = q.get("query", "") if isinstance(q, dict) else (q or "")
            out.append((f"variable {var.get('name')!r}", q))
    return out


def main() -> int:
    base, usable = exported_metrics()
    errors: list[str] = []

    try:
        dash = json.loads(DASHBOARD.read_text())
    except ValueError as e:
        print(f"{DASHBOARD}: not valid JSON: {e}", file=sys.stderr)
        return 1
    if not dash.get("title") or not dash.get("uid"):
        errors.append("dashboard: needs a title and a uid")
    used: set[str] = set()
    queries = dashboard_queries(dash, errors)
    for where, expr in queries:
        names = set(METRIC_TOKEN.findall(expr))
        if not names:
            errors.append(f"dashboard {where}: query names no leanmqd metric: {expr}")
        for n in sorted(names - usable):
            errors.append(f"dashboard {where}: {n} is not a metric leanmqd exports")
        used |= names
    for n in DASHBOARD_MUST_USE:
        if n not in used:
            errors.append(f"dashboard: no panel shows {n}")

    alerts = ALERTS.read_text()
    for n in sorted(set(METRIC_TOKEN.findall(alerts)) - usable):
        errors.append(f"alerts.yml: {n} is not a metric leanmqd exports")
    for alert, metric in ALERTS_MUST_USE.items():
        block = re.search(rf"- alert: {alert}\n(.*?)(?=\n\s*- alert:|\Z)", alerts, re.S)
        if not block:
            errors.append(f"alerts.yml: no {alert} alert")
        elif metric not in block.group(1):
            errors.append(f"alerts.yml: {alert} does not watch {metric}")

    ops = OPERATIONS.read_text()
    for n in sorted(base):
        if f"`{n}`" not in ops:
            errors.append(f"docs/operations.md: metric {n} is not listed")

    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        return 1
    print(
        f"check_deploy: dashboard {len(queries)} queries, alerts and docs agree with "
        f"the {len(base)} metrics of src/observe.rs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
