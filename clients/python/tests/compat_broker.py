"""Shared pieces of the compat-layer tests: a real leanmqd serving LeanMQ's
prefixes, a private redis-server, and helpers to look at what landed in Redis."""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pytest

from real_broker import Leanmqd, Redis, missing_tools

#: Every prefix LeanMQ programs and LeanMQ's own examples use.
PREFIXES: Sequence[str] = ("webhook:", "mq:", "example:", "calc:", "events:", "api-gateway:")

_missing = missing_tools("redis-server", "redis-cli")
needs_leanmqd = pytest.mark.skipif(bool(_missing), reason=f"missing: {', '.join(_missing)}")


def prefix_args(prefixes: Sequence[str] = PREFIXES) -> List[str]:
    out: List[str] = []
    for p in prefixes:
        out += ["--prefix", p]
    return out


def start(workdir: Path, redis: Redis, extra: Sequence[str] = ()) -> Leanmqd:
    return Leanmqd(workdir, redis.url, [*prefix_args(), *extra])


def unique(label: str) -> str:
    """A queue name of its own for one test."""
    return f"{label}_{uuid.uuid4().hex[:8]}"


def entries(redis: Redis, key: str) -> List[Dict[str, Any]]:
    """The `data` JSON of every entry of a stream, oldest first."""
    raw = redis.cli("XRANGE", key, "-", "+").splitlines()
    data = []
    for i, line in enumerate(raw):
        if line == "data" and i + 1 < len(raw):
            data.append(json.loads(raw[i + 1]))
    return data


def xlen(redis: Redis, key: str) -> int:
    out = redis.cli("XLEN", key)
    return int(out) if out.lstrip("-").isdigit() else -1
