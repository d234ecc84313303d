"""Batched acks against a real leanmqd: nothing stays pending in Redis, the
Ack RPCs (counted with a client interceptor) are far fewer than the
messages, and a stale receipt among fresh ones is reported alone.
Skipped when leanmqd or redis-server is missing."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, List

import grpc
import grpc.aio
import pytest

from leanmq_grpc import AsyncWebhook, Delivery, Webhook, pb, pb_grpc, queue_name
from real_broker import Leanmqd, Redis, missing_tools

_missing = missing_tools("redis-server", "redis-cli")
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"missing: {', '.join(_missing)}")


class CountCalls(grpc.UnaryUnaryClientInterceptor):
    """Counts unary calls per method name ("Ack", "Receive", ...)."""

    def __init__(self) -> None:
        self.calls: Counter = Counter()
        self._lock = threading.Lock()

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        with self._lock:
            self.calls[details.method.rsplit("/", 1)[-1]] += 1
        return continuation(details, request)


class AsyncCountCalls(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.calls: Counter = Counter()

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        self.calls[method.rsplit("/", 1)[-1]] += 1
        return await continuation(details, request)


def new_path(label: str) -> str:
    return f"/batch/{label}/{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def leanmqd(workdir: Path, redis: Redis) -> Iterator[Leanmqd]:
    d = Leanmqd(workdir, redis.url, ["--retry-min", "100ms", "--retry-max", "200ms"])
    yield d
    d.stop()


def pending(redis: Redis, path: str) -> int:
    q = queue_name(path)
    return redis.pending(f"webhook:{q}", f"{q}-group")


def test_process_messages_acks_fifty_with_one_call(leanmqd: Leanmqd, redis: Redis) -> None:
    path = new_path("pull")
    counter = CountCalls()
    channel = grpc.intercept_channel(grpc.insecure_channel(leanmqd.target), counter)
    try:
        got: List[int] = []
        with Webhook(channel) as wh:
            wh.add_handler(path, lambda data: got.append(data["i"]))
            wh.send_batch([(path, {"i": i}) for i in range(50)])
            processed = 0
            deadline = time.monotonic() + 20
            while processed < 50 and time.monotonic() < deadline:
                processed += wh.process_messages(block=True, timeout=1, count=100)
        assert processed == 50 and sorted(got) == list(range(50))
        assert pending(redis, path) == 0
        # One Ack per Receive that returned messages (normally both are 1).
        assert 1 <= counter.calls["Ack"] <= counter.calls["Receive"] <= 3, counter.calls
        assert counter.calls["Nack"] == 0
    finally:
        channel.close()


def test_stale_receipt_among_fresh_is_reported_alone(leanmqd: Leanmqd, redis: Redis, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="leanmq_grpc")
    path = new_path("stale")
    side = grpc.insecure_channel(leanmqd.target)
    stub = pb_grpc.BrokerStub(side)
    counter = CountCalls()
    channel = grpc.intercept_channel(grpc.insecure_channel(leanmqd.target), counter)
    stale: List[Delivery] = []
    attempts: List[int] = []
    try:
        with Webhook(channel) as wh:

            @wh.get(path, raw=True)
            def handle(d: Delivery):
                if d.json()["i"] == 3:
                    attempts.append(d.attempt)
                    if d.attempt == 1:
                        # Someone else settles this delivery behind the SDK's back:
                        # the message is parked for retry and this receipt is stale.
                        stale.append(d)
                        stub.Nack(pb.NackRequest(receipt=d.receipt, reason="test"), timeout=10)

            wh.send_batch([(path, {"i": i}) for i in range(10)])
            assert wh.process_messages(count=10) == 9  # the stale one is not counted
            assert counter.calls["Ack"] == 1
            logs = [r.getMessage() for r in caplog.records if "was stale" in r.getMessage()]
            assert len(logs) == 1 and stale[0].message_id in logs[0]
            assert pending(redis, path) == 1  # only the stale one, waiting for its retry
            # Redelivered after the retry delay, handled and acked.
            processed = 0
            deadline = time.monotonic() + 20
            while processed < 1 and time.monotonic() < deadline:
                processed += wh.process_messages(block=True, timeout=1)
            assert processed == 1 and attempts == [1, 2]
        assert pending(redis, path) == 0
    finally:
        channel.close()
        side.close()


def test_service_acks_coalesce(leanmqd: Leanmqd, redis: Redis) -> None:
    path = new_path("push")
    counter = CountCalls()
    channel = grpc.intercept_channel(grpc.insecure_channel(leanmqd.target), counter)
    done = threading.Semaphore(0)
    try:
        wh = Webhook(channel, concurrency=10)

        @wh.get(path)
        def handle(data):
            time.sleep(0.002)
            done.release()

        wh.send_batch([(path, {"i": i}) for i in range(100)])
        svc = wh.run_service(handle_signals=False)
        try:
            for _ in range(100):
                assert done.acquire(timeout=20)
        finally:
            assert svc.stop()  # flushes the acks still queued
        wh.close()
        assert pending(redis, path) == 0
        assert counter.calls["Ack"] < 100, counter.calls
        assert counter.calls["Nack"] == 0
    finally:
        channel.close()


def test_async_process_messages_acks_with_one_call(leanmqd: Leanmqd, redis: Redis) -> None:
    path = new_path("aio")

    async def main() -> Counter:
        counter = AsyncCountCalls()
        channel = grpc.aio.insecure_channel(leanmqd.target, interceptors=[counter])
        try:
            async with AsyncWebhook(channel) as wh:
                got: List[int] = []

                @wh.get(path)
                async def handle(data):
                    got.append(data["i"])

                await wh.send_batch([(path, {"i": i}) for i in range(50)])
                processed = 0
                deadline = time.monotonic() + 20
                while processed < 50 and time.monotonic() < deadline:
                    processed += await wh.process_messages(block=True, timeout=1, count=100)
                assert processed == 50 and sorted(got) == list(range(50))
        finally:
            await channel.close()
        return counter.calls

    calls = asyncio.run(asyncio.wait_for(main(), 60))
    assert pending(redis, path) == 0
    assert 1 <= calls["Ack"] <= calls["Receive"] <= 3, calls
