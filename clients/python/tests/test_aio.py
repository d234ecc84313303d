"""AsyncWebhook (grpc.aio): send, process_messages, run() outcomes, cancellation,
concurrency, lease extension, reconnect."""
from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

from leanmq_grpc import AsyncWebhook, DeadLetter, RetryAfter
from leanmq_grpc._common import to_duration


async def until(broker, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Wait on the fake broker's condition without blocking the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, broker.wait_for, predicate, timeout)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_async_send_and_process_messages(server, broker) -> None:
    async def main() -> None:
        got = []
        async with AsyncWebhook(server.target) as wh:

            @wh.get("/order/status/")
            async def handle(data):
                got.append(data)
                if data == b"bad":
                    raise DeadLetter("bytes rejected")

            @wh.get("/sync/")
            def handle_sync(data):  # plain functions run in the executor
                got.append(("sync", data))

            mid = await wh.send("/order/status/", {"order_id": "ORD-1"})
            assert mid
            ids = await wh.send_batch([("/order/status/", b"bad"), ("/sync/", [1, 2])])
            assert len(ids) == 2
            assert await wh.process_messages(block=True, timeout=0.5) == 2
            assert await wh.process_messages() == 0
        assert got == [{"order_id": "ORD-1"}, b"bad", ("sync", [1, 2])]
        assert broker.sent[0].content_type == "application/json"
        assert broker.sent[1].content_type == "application/octet-stream"
        assert len(broker.nacks) == 1 and broker.nacks[0].dead_letter
        assert broker.nacks[0].reason == "bytes rejected"
        assert broker.receives[0].wait == to_duration(0.5)

    run(main())


def test_async_run_outcomes_and_cancellation(server, broker) -> None:
    async def main() -> None:
        hang_started = asyncio.Event()
        async with AsyncWebhook(server.target, concurrency=2) as wh:

            @wh.get("/a")
            async def handle(data):
                mode = data["mode"]
                if mode == "fail":
                    raise ValueError("boom")
                if mode == "dead":
                    raise DeadLetter("dead")
                if mode == "retry":
                    raise RetryAfter(3)
                if mode == "hang":
                    hang_started.set()
                    await asyncio.Event().wait()

            task = asyncio.ensure_future(wh.run(shutdown_timeout=0.3))
            assert await wh.wait_ready(10)
            for mode in ["ok", "fail", "dead", "retry", "hang"]:
                await wh.send("/a", {"mode": mode})
            assert await until(broker, lambda: len(broker.acked) + len(broker.nacks) == 4)
            await asyncio.wait_for(hang_started.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert [broker.payload_of(r)["mode"] for r in broker.acked] == ["ok"]
        nacks = {broker.payload_of(n.receipt)["mode"]: n for n in broker.nacks}
        assert nacks["fail"].reason == "ValueError('boom')" and not nacks["fail"].HasField("delay")
        assert nacks["dead"].dead_letter
        assert nacks["retry"].delay == to_duration(3)
        assert "shutdown" in nacks["hang"].reason  # unfinished at cancel → nacked
        assert await until(broker, lambda: broker.active_streams == 0)

    run(main())


def test_async_concurrency_extend_and_stop(server, broker) -> None:
    async def main() -> None:
        state = {"running": 0, "peak": 0}
        release = asyncio.Event()
        broker.ignore_max_in_flight = True  # the client must enforce the limit itself
        async with AsyncWebhook(server.target, concurrency=2, ack_deadline=0.4) as wh:

            @wh.get("/c")
            async def handle(data):
                state["running"] += 1
                state["peak"] = max(state["peak"], state["running"])
                await release.wait()
                state["running"] -= 1

            await wh.send_batch([("/c", {"i": i}) for i in range(6)])
            task = asyncio.ensure_future(wh.run())
            # Two handlers block past half their lease: the SDK extends both.
            assert await until(broker, lambda: len({e.receipt for e in broker.extends}) == 2)
            assert state["running"] == 2
            release.set()
            assert await until(broker, lambda: len(broker.acked) == 6)
            wh.stop()
            await asyncio.wait_for(task, 10)  # stop() makes run() return normally
        assert state["peak"] == 2
        assert all(e.extension == to_duration(0.4) for e in broker.extends)
        assert broker.subscribes[0].max_in_flight == 2

    run(main())


def test_async_reconnects(server, broker) -> None:
    async def main() -> None:
        broker.fail_subscribes = 1
        seen = []
        async with AsyncWebhook(server.target) as wh:

            @wh.get("/r")
            async def handle(data):
                seen.append(data["n"])

            task = asyncio.ensure_future(wh.run())
            assert await wh.wait_ready(10)
            await wh.send("/r", {"n": 1})
            assert await until(broker, lambda: len(broker.acked) == 1)
            broker.break_streams()
            assert await until(broker, lambda: len(broker.subscribes) == 3 and broker.active_streams == 1)
            await wh.send("/r", {"n": 2})
            assert await until(broker, lambda: len(broker.acked) == 2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert seen == [1, 2]

    run(main())
