"""Ordering keys (docs/ordering.md) against a real leanmqd: with several
handlers in flight and some messages failing once, every key's messages are
acked in send order, one at a time, and each delivery carries its key; a bad
key is refused with the broker's message. Skipped when leanmqd or
redis-server is missing."""
from __future__ import annotations

import asyncio
import threading
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from leanmq_grpc import AsyncWebhook, BatchMessage, Delivery, InvalidArgument, Webhook, queue_name
from real_broker import Leanmqd, Redis, missing_tools
from waiting import wait_until

_missing = missing_tools("redis-server", "redis-cli")
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"missing: {', '.join(_missing)}")

KEYS = ("order-a", "order-b", "order-c")
PER_KEY = 20


def new_path(label: str) -> str:
    return f"/ordering/{label}/{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def leanmqd(workdir: Path, redis: Redis) -> Iterator[Leanmqd]:
    d = Leanmqd(workdir, redis.url, ["--retry-min", "50ms", "--retry-max", "100ms"])
    yield d
    d.stop()


def pending(redis: Redis, path: str) -> int:
    q = queue_name(path)
    return redis.pending(f"webhook:{q}", f"{q}-group")


def fails_once(seq: int, attempt: int) -> bool:
    """Every 7th message (by send sequence) fails its first attempt."""
    return seq % 7 == 6 and attempt == 1


class Record:
    """What the handlers saw, checked under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: Dict[str, List[int]] = defaultdict(list)
        self.in_flight: Set[str] = set()
        self.overlaps: List[Tuple[str, int]] = []
        self.wrong_keys: List[Tuple[str, str]] = []
        self.failed: List[int] = []
        self.retried: List[int] = []
        self.most_in_flight = 0

    def start(self, d: Delivery) -> Tuple[str, int, int]:
        body = d.json()
        key, i, seq = body["key"], body["i"], body["seq"]
        with self.lock:
            if d.ordering_key != key:
                self.wrong_keys.append((d.ordering_key, key))
            if key in self.in_flight:  # a key's next came before its previous was settled
                self.overlaps.append((key, i))
            self.in_flight.add(key)
            self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
            if d.attempt > 1:
                self.retried.append(seq)
        return key, i, seq

    def finish(self, key: str, i: int, seq: int, ok: bool) -> None:
        with self.lock:
            self.in_flight.discard(key)
            if ok:
                self.acked[key].append(i)
            else:
                self.failed.append(seq)

    def total_acked(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.acked.values())

    def check(self) -> None:
        with self.lock:
            assert not self.wrong_keys, self.wrong_keys
            assert not self.overlaps, self.overlaps
            for key in KEYS:
                assert self.acked[key] == list(range(PER_KEY)), (key, self.acked[key])
            should_fail = [s for s in range(len(KEYS) * PER_KEY) if fails_once(s, 1)]
            assert sorted(self.failed) == should_fail
            assert sorted(self.retried) == should_fail
            # The three keys' heads were handled at the same time.
            assert self.most_in_flight == len(KEYS)


def messages() -> List[Tuple[str, int, int]]:
    """(key, i, seq): the keys interleaved, in send order."""
    return [(key, i, i * len(KEYS) + n) for i in range(PER_KEY) for n, key in enumerate(KEYS)]


def test_keys_are_acked_in_send_order_with_handlers_in_flight(leanmqd: Leanmqd, redis: Redis) -> None:
    path = new_path("sync")
    rec = Record()
    # Each key's first message waits until all three are being handled: the
    # keys do not wait for each other, and several handlers run at once.
    heads = threading.Barrier(len(KEYS), timeout=30)
    wh = Webhook(leanmqd.target, concurrency=8)
    try:

        @wh.get(path, raw=True)
        def handle(d: Delivery) -> None:
            key, i, seq = rec.start(d)
            ok = False
            try:
                if i == 0 and d.attempt == 1:
                    heads.wait()
                if fails_once(seq, d.attempt):
                    raise RuntimeError("fails once")
                ok = True
            finally:
                rec.finish(key, i, seq, ok)

        # Half one by one, half in one batch; the group exists first (docs/ordering.md).
        svc = wh.run_service(handle_signals=False)
        try:
            assert svc.wait_ready(timeout=20)
            msgs = messages()
            half = len(msgs) // 2
            for key, i, seq in msgs[:half]:
                wh.send(path, {"key": key, "i": i, "seq": seq}, ordering_key=key)
            wh.send_batch(
                [BatchMessage(path, {"key": key, "i": i, "seq": seq}, ordering_key=key) for key, i, seq in msgs[half:]]
            )
            assert wait_until(lambda: rec.total_acked() == len(msgs), timeout=60), rec.acked
        finally:
            assert svc.stop()
        rec.check()
        assert wait_until(lambda: pending(redis, path) == 0, timeout=10)
    finally:
        wh.close()


def test_async_keys_are_acked_in_send_order_with_handlers_in_flight(leanmqd: Leanmqd, redis: Redis) -> None:
    path = new_path("aio")
    rec = Record()

    async def main() -> None:
        heads_seen = 0
        all_heads = asyncio.Event()
        done = asyncio.Event()
        async with AsyncWebhook(leanmqd.target, concurrency=8) as wh:

            @wh.get(path, raw=True)
            async def handle(d: Delivery) -> None:
                nonlocal heads_seen
                key, i, seq = rec.start(d)
                ok = False
                try:
                    if i == 0 and d.attempt == 1:
                        heads_seen += 1
                        if heads_seen == len(KEYS):
                            all_heads.set()
                        await asyncio.wait_for(all_heads.wait(), 30)
                    if fails_once(seq, d.attempt):
                        raise RuntimeError("fails once")
                    ok = True
                finally:
                    rec.finish(key, i, seq, ok)
                    if rec.total_acked() == len(KEYS) * PER_KEY:
                        done.set()

            runner = asyncio.ensure_future(wh.run())
            try:
                assert await wh.wait_ready(timeout=20)
                msgs = messages()
                half = len(msgs) // 2
                for key, i, seq in msgs[:half]:
                    await wh.send(path, {"key": key, "i": i, "seq": seq}, ordering_key=key)
                await wh.send_batch(
                    [BatchMessage(path, {"key": key, "i": i, "seq": seq}, ordering_key=key) for key, i, seq in msgs[half:]]
                )
                await asyncio.wait_for(done.wait(), 60)
            finally:
                wh.stop()
                await asyncio.wait_for(runner, 30)

    asyncio.run(asyncio.wait_for(main(), 120))
    rec.check()
    assert wait_until(lambda: pending(redis, path) == 0, timeout=10)


def test_a_bad_ordering_key_is_invalid_argument(leanmqd: Leanmqd, redis: Redis) -> None:
    path = new_path("bad")
    stream = f"webhook:{queue_name(path)}"
    with Webhook(leanmqd.target) as wh:
        with pytest.raises(InvalidArgument) as e:
            wh.send(path, {"x": 1}, ordering_key="k" * 257)
        assert "ordering_key is 257 bytes; it must be at most 256 bytes" in e.value.details()
        with pytest.raises(InvalidArgument) as e:
            wh.send(path, {"x": 1}, ordering_key="a\nb")
        assert "without control characters" in e.value.details()
        with pytest.raises(InvalidArgument) as e:
            wh.send_batch([BatchMessage(path, {"x": 1}, ordering_key="ok"), BatchMessage(path, {"x": 2}, ordering_key="k" * 257)])
        assert "messages[1]" in e.value.details() and "ordering_key is 257 bytes" in e.value.details()
        assert redis.cli("XLEN", stream) == "0"
        # 256 bytes is the limit, and an empty key means unordered.
        wh.send(path, {"x": 1}, ordering_key="k" * 256)
        wh.send(path, {"x": 2}, ordering_key="")
        wh.send_batch([(path, {"x": 3}), (path, {"x": 4}, {"h": "v"})])
        assert redis.cli("XLEN", stream) == "4"


def test_an_unordered_delivery_has_an_empty_key(leanmqd: Leanmqd) -> None:
    path = new_path("plain")
    with Webhook(leanmqd.target) as wh:
        got: List[Delivery] = []
        wh.add_handler(path, got.append, raw=True)
        wh.send(path, {"x": 1})
        wh.send(path, {"x": 2}, ordering_key="k")
        assert wait_until(lambda: (wh.process_messages(block=True, timeout=1, count=10) or True) and len(got) == 2, 20)
    assert sorted((d.json()["x"], d.ordering_key) for d in got) == [(1, ""), (2, "k")]
