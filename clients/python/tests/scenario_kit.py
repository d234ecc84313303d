"""Pieces shared by the compat scenario tests: LeanMQ's constructor
arguments, a leanmqd with fast retries, the broker address in the
environment (as a migrated program finds it), and a thread-safe recorder."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest

from compat_broker import start
from real_broker import Leanmqd, Redis

#: Handler failures are retried this many times in all before the broker
#: dead-letters the message (kept small and fast for the advanced service).
MAX_ATTEMPTS = 2

#: LeanMQ's constructor arguments, as the programs being migrated pass them;
#: the compat layer accepts and ignores them.
REDIS: Dict[str, Any] = dict(redis_host="localhost", redis_port=6379, redis_db=0)


def start_broker(workdir: Path, redis: Redis) -> Leanmqd:
    return start(workdir, redis, ["--retry-min", "100ms", "--retry-max", "200ms",
                                  "--max-attempts", str(MAX_ATTEMPTS)])


def point_at(broker: Leanmqd, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a migrated program finds its broker: the environment, not code."""
    monkeypatch.setenv("LEANMQ_GRPC_TARGET", broker.target)
    monkeypatch.delenv("LEANMQ_GRPC_TOKEN", raising=False)


def without_meta(data: Dict[str, Any]) -> Dict[str, Any]:
    """A webhook payload without LeanMQ's ``_leanmq`` metadata."""
    return {k: v for k, v in data.items() if k != "_leanmq"}


class Recorder:
    """What handlers running on other threads saw, safe to read from the test."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: List[Any] = []

    def add(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)

    @property
    def items(self) -> List[Any]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        return len(self.items)
