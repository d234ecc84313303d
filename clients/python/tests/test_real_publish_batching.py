"""PublishSettings (issue #18) against a real leanmqd and redis-server: the
burst goes out at max_messages, at max_bytes, max_delay after its first
message, or on flush(); until then its messages are unanswered and unstored.
Bad settings raise. Skipped when leanmqd or redis-server is missing.

"Not answered yet" is checked only after something published or sent later
has been answered by the same broker, never after a sleep."""
from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from leanmq_grpc import AsyncWebhook, PublishSettings, Webhook, pb, queue_name
from leanmq_grpc._publish import build_publish_message
from real_broker import Leanmqd, Redis, missing_tools

_missing = missing_tools("redis-server", "redis-cli")
real = pytest.mark.skipif(bool(_missing), reason=f"missing: {', '.join(_missing)}")

LONG = 3600.0  # a max_delay no test waits for


def new_path(label: str) -> str:
    return f"/batch/{label}/{uuid.uuid4().hex[:8]}"


def xlen(redis: Redis, path: str) -> int:
    return int(redis.cli("XLEN", f"webhook:{queue_name(path)}") or 0)


@pytest.fixture()
def leanmqd(workdir: Path, redis: Redis) -> Iterator[Leanmqd]:
    d = Leanmqd(workdir, redis.url)
    yield d
    d.stop()


def answered_later(wh: Webhook, path: str) -> None:
    """A unary Send on the same channel, answered by the same broker after
    everything published before it was (or would have been) written."""
    assert wh.send(path + "/probe", b"probe")


def results(futures: List["Future[str]"]) -> List[str]:
    return [f.result(timeout=30) for f in futures]


@real
def test_max_messages_writes_the_burst_and_the_rest_waits_for_flush(leanmqd: Leanmqd, redis: Redis) -> None:
    path = new_path("count")
    with Webhook(leanmqd.target, publish_settings=PublishSettings(max_messages=10, max_delay=LONG)) as wh:
        futures = [wh.publish(path, {"n": i}) for i in range(19)]
        first, rest = futures[:10], futures[10:]
        ids = results(first)  # answered with no flush: the 10th wrote the burst
        assert len(set(ids)) == 10
        answered_later(wh, path)
        assert not any(f.done() for f in rest), "the next 9 wait for their burst"
        assert xlen(redis, path) == 10, "nothing of the waiting burst is stored"
        assert wh.flush(timeout=30)
        assert all(f.done() and f.exception() is None for f in rest)
        assert len(set(results(futures))) == 19
    assert xlen(redis, path) == 19


@real
def test_max_delay_writes_a_lone_message_without_flush(leanmqd: Leanmqd, redis: Redis) -> None:
    path = new_path("delay")
    with Webhook(leanmqd.target, publish_settings=PublishSettings(max_delay=0.005)) as wh:
        assert wh.publish(path, {"alone": True}).result(timeout=30)
        # and after a burst that was written by the timer, the next one is timed too
        assert wh.publish(path, {"alone": 2}).result(timeout=30)
    assert xlen(redis, path) == 2


@real
def test_the_default_settings_answer_a_lone_message_without_flush(leanmqd: Leanmqd, redis: Redis) -> None:
    path = new_path("default")
    with Webhook(leanmqd.target) as wh:
        assert wh.publish_settings == PublishSettings(max_delay=0.005, max_messages=100, max_bytes=1 << 20)
        assert wh.publish(path, b"x").result(timeout=30)
    assert xlen(redis, path) == 1


def request_size(path: str, data: Any, sequence: int) -> int:
    """The serialized size of the PublishRequest the SDK builds (its own
    idempotency key has a fixed length)."""
    return pb.PublishRequest(sequence=sequence, message=build_publish_message(path, data)).ByteSize()


@real
def test_max_bytes_writes_the_burst(leanmqd: Leanmqd, redis: Redis) -> None:
    path = new_path("bytes")
    payload = b"b" * 1000
    size = request_size(path, payload, 1)
    assert all(request_size(path, payload, n) == size for n in range(1, 6))
    settings = PublishSettings(max_bytes=3 * size, max_messages=100, max_delay=LONG)
    with Webhook(leanmqd.target, publish_settings=settings) as wh:
        futures = [wh.publish(path, payload) for _ in range(5)]
        results(futures[:3])  # the 3rd reached max_bytes
        answered_later(wh, path)
        assert not any(f.done() for f in futures[3:])
        assert xlen(redis, path) == 3
        # One that would take the burst past max_bytes goes in the next burst:
        # the waiting two are written without it, and it waits.
        big = wh.publish(path, b"B" * (2 * size))
        results(futures[3:])
        answered_later(wh, path)
        assert not big.done()
        assert xlen(redis, path) == 5
        assert wh.flush(timeout=30) and big.result()
    assert xlen(redis, path) == 6


@real
def test_close_writes_the_waiting_burst(leanmqd: Leanmqd, redis: Redis) -> None:
    path = new_path("close")
    wh = Webhook(leanmqd.target, publish_settings=PublishSettings(max_messages=50, max_delay=LONG))
    futures = [wh.publish(path, {"n": i}) for i in range(7)]
    wh.close()
    assert all(f.done() and f.exception() is None for f in futures)
    assert xlen(redis, path) == 7


@real
def test_async_max_messages_and_flush(leanmqd: Leanmqd, redis: Redis) -> None:
    path = new_path("aio")

    async def main() -> None:
        settings = PublishSettings(max_messages=10, max_delay=LONG)
        async with AsyncWebhook(leanmqd.target, publish_settings=settings) as wh:
            tasks = [asyncio.create_task(wh.publish(path, {"n": i})) for i in range(19)]
            ids = await asyncio.wait_for(asyncio.gather(*tasks[:10]), 30)
            assert len(set(ids)) == 10
            assert await wh.send(path + "/probe", b"probe")
            assert not any(t.done() for t in tasks[10:]), "the next 9 wait for their burst"
            assert xlen(redis, path) == 10
            await asyncio.wait_for(wh.flush(), 30)
            assert all(t.done() and t.exception() is None for t in tasks[10:])
            assert len(set(await asyncio.gather(*tasks))) == 19
            # max_delay: a lone message with a short delay goes on its own
        async with AsyncWebhook(leanmqd.target, publish_settings=PublishSettings(max_delay=0.005)) as wh:
            assert await asyncio.wait_for(wh.publish(path, b"alone"), 30)

    asyncio.run(main())
    assert xlen(redis, path) == 20


@real
def test_a_window_smaller_than_max_messages_writes_the_burst_when_full(workdir: Path, redis: Redis) -> None:
    path = new_path("window")
    d = Leanmqd(workdir, redis.url, args=["--publish-window", "4"])
    try:
        with Webhook(d.target, publish_settings=PublishSettings(max_messages=100, max_delay=LONG)) as wh:
            assert wh.flush(timeout=30)
            wh.publish(path, b"first")  # learns the window
            assert wh.flush(timeout=30)
            # Each publish that fills the window writes the burst, so none
            # blocks for ever on its own unwritten messages.
            futures = [wh.publish(path, {"n": i}) for i in range(40)]
            # The last few may have joined a buffer the answers had drained
            # below the window: they wait for max_delay (LONG) or flush().
            assert wh.flush(timeout=30)
            assert len(set(results(futures))) == 40
    finally:
        d.stop()
    assert xlen(redis, path) == 41


# ------------------------------------------------------------ validation (no broker)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_delay": 0}, ValueError, "max_delay must be a positive"),
        ({"max_delay": -1.0}, ValueError, "max_delay must be a positive"),
        ({"max_delay": float("nan")}, ValueError, "max_delay must be a positive"),
        ({"max_delay": float("inf")}, ValueError, "max_delay must be a positive"),
        ({"max_delay": "5ms"}, TypeError, "max_delay must be a number"),
        ({"max_messages": 0}, ValueError, "max_messages must be >= 1"),
        ({"max_messages": 10_001}, ValueError, "max_messages must be <= 10000"),
        ({"max_messages": 2.5}, TypeError, "max_messages must be an int"),
        ({"max_messages": True}, TypeError, "max_messages must be an int"),
        ({"max_bytes": 0}, ValueError, "max_bytes must be >= 1"),
        ({"max_bytes": -5}, ValueError, "max_bytes must be >= 1"),
        ({"max_bytes": None}, TypeError, "max_bytes must be an int"),
    ],
)
def test_bad_settings_raise(kwargs: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        PublishSettings(**kwargs)


@pytest.mark.parametrize("cls", [Webhook, AsyncWebhook])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"concurrency": 0}, "concurrency must be >= 1"),
        ({"ack_deadline": 0.05}, "ack_deadline must be between 0.1 s and 12 h"),
        ({"ack_deadline": 12 * 3600 + 1}, "ack_deadline must be between 0.1 s and 12 h"),
    ],
)
def test_both_constructors_bound_the_consumer_settings(cls: Any, kwargs: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls("127.0.0.1:1", **kwargs)


def test_settings_are_checked_by_the_constructors() -> None:
    with pytest.raises(TypeError, match="PublishSettings"):
        Webhook("127.0.0.1:1", publish_settings={"max_messages": 10})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="PublishSettings"):
        AsyncWebhook("127.0.0.1:1", publish_settings={"max_messages": 10})  # type: ignore[arg-type]
    edge = PublishSettings(max_delay=1e-6, max_messages=10_000, max_bytes=1)
    with Webhook("127.0.0.1:1", publish_settings=edge) as wh:
        assert wh.publish_settings is edge
