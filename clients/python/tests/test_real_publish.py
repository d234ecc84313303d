"""Webhook.publish / AsyncWebhook.publish against a real leanmqd and
redis-server: ids for every message and each stored, flush waits, a refusal
on its future, and a leanmqd restart mid-publish resends without storing
anything twice. Skipped when leanmqd or redis-server is missing."""
from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Iterator, Set

import pytest

from leanmq_grpc import AsyncWebhook, InvalidArgument, Webhook, queue_name
from real_broker import Leanmqd, Redis, missing_tools

_missing = missing_tools("redis-server", "redis-cli")
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"missing: {', '.join(_missing)}")


def new_path(label: str) -> str:
    return f"/publish/{label}/{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def leanmqd(workdir: Path, redis: Redis) -> Iterator[Leanmqd]:
    d = Leanmqd(workdir, redis.url)
    yield d
    d.stop()


def stored_ids(redis: Redis, path: str) -> Set[str]:
    out = redis.cli("XRANGE", f"webhook:{queue_name(path)}", "-", "+").splitlines()
    # redis-cli prints each entry's id, then its fields and values, one a line.
    return {line for line in out if line[:1].isdigit() and "-" in line and line.replace("-", "").isdigit()}


def xlen(redis: Redis, path: str) -> int:
    return int(redis.cli("XLEN", f"webhook:{queue_name(path)}") or 0)


def test_a_thousand_publishes_give_a_thousand_stored_ids(leanmqd: Leanmqd, redis: Redis) -> None:
    path = new_path("many")
    with Webhook(leanmqd.target) as wh:
        futures = [wh.publish(path, {"n": i}) for i in range(1000)]
        assert wh.flush(timeout=60)
        assert all(f.done() for f in futures), "flush waits for every future"
        ids = [f.result() for f in futures]
    assert len(set(ids)) == 1000
    assert set(ids) == stored_ids(redis, path)


def test_an_error_arrives_on_its_future_and_the_rest_go_on(leanmqd: Leanmqd, redis: Redis) -> None:
    path = new_path("errors")
    with Webhook(leanmqd.target) as wh:
        good = wh.publish(path, b"ok")
        bad = wh.publish("/", b"no queue")
        bad_key = wh.publish(path, b"bad key", ordering_key="x" * 300)
        after = wh.publish(path, b"still ok")
        with pytest.raises(InvalidArgument):
            bad.result(timeout=20)
        with pytest.raises(InvalidArgument):
            bad_key.result(timeout=20)
        assert good.result(timeout=20) and after.result(timeout=20)
    assert xlen(redis, path) == 2


def test_close_waits_for_every_future(leanmqd: Leanmqd) -> None:
    path = new_path("close")
    wh = Webhook(leanmqd.target)
    futures = [wh.publish(path, {"n": i}) for i in range(200)]
    wh.close()
    assert all(f.done() and f.exception() is None for f in futures)


def test_a_restart_mid_publish_resends_without_duplicates(workdir: Path, redis: Redis) -> None:
    path = new_path("restart")
    d = Leanmqd(workdir, redis.url)
    port = d.port
    total = 3000
    futures = []
    with Webhook(d.target) as wh:
        published = threading.Event()

        def produce() -> None:
            for i in range(total):
                futures.append(wh.publish(path, {"n": i}))
                if i == total // 3:
                    published.set()

        t = threading.Thread(target=produce)
        t.start()
        assert published.wait(30)
        d.stop()  # drains: answers what it read, ends the stream UNAVAILABLE
        d2 = Leanmqd(workdir, redis.url, port=port)
        try:
            t.join(60)
            assert wh.flush(timeout=60)
            ids = [f.result() for f in futures]
        finally:
            d2.stop()
    assert len(ids) == total
    assert len(set(ids)) == total, "each message has its own id"
    assert xlen(redis, path) == total, "nothing stored twice, nothing lost"
    assert set(ids) == stored_ids(redis, path)


def test_async_publish_returns_the_id(leanmqd: Leanmqd, redis: Redis) -> None:
    path = new_path("aio")

    async def main() -> list:
        async with AsyncWebhook(leanmqd.target) as wh:
            ids = await asyncio.gather(*(wh.publish(path, {"n": i}) for i in range(300)))
            await wh.flush()
            return list(ids)

    ids = asyncio.run(main())
    assert len(set(ids)) == 300
    assert set(ids) == stored_ids(redis, path)
