"""Acks are batched: process_messages (sync and asyncio) acks a received
batch with one Ack call, the push path (WebhookService) coalesces acks in a
per-webhook batcher. Outcomes stay per message. Against the fake broker."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, List

import pytest

from leanmq_grpc import AsyncWebhook, Delivery, Webhook, pb
from waiting import wait_until


def stale_logs(caplog: Any) -> List[str]:
    return [r.getMessage() for r in caplog.records if "was stale" in r.getMessage()]


# ------------------------------------------------------------------ process_messages (threads)


def test_batch_is_acked_with_one_call(server, broker) -> None:
    with Webhook(server.target) as wh:
        seen = []
        wh.add_handler("/batch", seen.append)
        wh.send_batch([("/batch", {"i": i}) for i in range(50)])
        assert wh.process_messages(count=50) == 50
        assert len(broker.receives) == 1
        assert len(broker.ack_calls) == 1 and len(broker.ack_calls[0]) == 50
        assert sorted(broker.acked) == sorted(broker.ack_calls[0])
        assert [d["i"] for d in seen] == list(range(50))
        assert not wh._keeper._due  # every lease released once acked


def test_failures_nacked_one_by_one_successes_acked_together(server, broker) -> None:
    with Webhook(server.target) as wh:

        @wh.get("/mixed")
        def handle(data):
            if data["i"] % 3 == 0:
                raise RuntimeError("nope")

        wh.send_batch([("/mixed", {"i": i}) for i in range(10)])
        assert wh.process_messages() == 6
        assert sorted(broker.payload_of(n.receipt)["i"] for n in broker.nacks) == [0, 3, 6, 9]
        assert len(broker.ack_calls) == 1
        assert sorted(broker.payload_of(r)["i"] for r in broker.ack_calls[0]) == [1, 2, 4, 5, 7, 8]


def test_stale_receipt_among_fresh_is_reported_alone(server, broker, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="leanmq_grpc")
    stale: List[Delivery] = []
    with Webhook(server.target) as wh:

        @wh.get("/stale", raw=True)
        def handle(d: Delivery):
            if d.json()["i"] == 2:
                stale.append(d)
                broker.stale_receipts.add(d.receipt)  # its lease "expired" meanwhile

        wh.send_batch([("/stale", {"i": i}) for i in range(5)])
        assert wh.process_messages() == 4
    assert len(broker.ack_calls) == 1 and len(broker.ack_calls[0]) == 5
    assert len(broker.acked) == 4 and stale[0].receipt not in broker.acked
    logs = stale_logs(caplog)
    assert len(logs) == 1 and stale[0].message_id in logs[0]


def test_leases_extended_until_the_batch_ack_returns(server, broker) -> None:
    broker.ack_delay = 0.8  # the Ack call outlasts half the lease
    with Webhook(server.target, ack_deadline=0.4) as wh:
        receipts: List[str] = []
        wh.add_handler("/lease", lambda d: receipts.append(d.receipt), raw=True)
        wh.send_batch([("/lease", {"i": i}) for i in range(3)])
        assert wh.process_messages() == 3
        # The handlers returned at once: the extensions happened while the
        # batch waited for its Ack, so no lease was dropped before it.
        assert {e.receipt for e in broker.extends} == set(receipts)
        assert not wh._keeper._due
        n = len(broker.extends)
        time.sleep(0.5)
        assert len(broker.extends) == n  # and none after it


def test_keyboard_interrupt_acks_the_handled_then_propagates(server, broker) -> None:
    with Webhook(server.target) as wh:

        @wh.get("/kbd")
        def handle(data):
            if data["i"] == 2:
                raise KeyboardInterrupt

        wh.send_batch([("/kbd", {"i": i}) for i in range(5)])
        with pytest.raises(KeyboardInterrupt):
            wh.process_messages()
        assert len(broker.ack_calls) == 1
        assert sorted(broker.payload_of(r)["i"] for r in broker.acked) == [0, 1]
        assert [broker.payload_of(n.receipt)["i"] for n in broker.nacks] == [2]
        assert len(broker.leases) == 2  # 3 and 4 never ran: left to their leases
        assert not wh._keeper._due


def test_more_than_the_ack_limit_is_split(server, broker) -> None:
    from leanmq_grpc._common import MAX_ACK_RECEIPTS

    with Webhook(server.target) as wh:
        wh.send_batch([("/big", {"i": i}) for i in range(MAX_ACK_RECEIPTS + 5)])
        resp = wh._stub.Receive(pb.ReceiveRequest(path="/big", max_messages=1000))
        resp2 = wh._stub.Receive(pb.ReceiveRequest(path="/big", max_messages=1000))
        deliveries = [Delivery.from_proto(d) for d in [*resp.deliveries, *resp2.deliveries]]
        assert len(deliveries) == MAX_ACK_RECEIPTS + 5
        assert wh._ack(deliveries) == [True] * len(deliveries)
    assert [len(c) for c in broker.ack_calls] == [MAX_ACK_RECEIPTS, 5]


# ------------------------------------------------------------------ push path: the ack batcher


def test_service_coalesces_acks(server, broker) -> None:
    broker.ack_delay = 0.05
    wh = Webhook(server.target, concurrency=10)
    done = threading.Semaphore(0)
    wh.add_handler("/push", lambda data: done.release())
    wh.send_batch([("/push", {"i": i}) for i in range(50)])
    svc = wh.run_service(handle_signals=False)
    try:
        assert broker.wait_for(lambda: len(broker.acked) == 50, 20)
    finally:
        assert svc.stop()
        wh.close()
    assert sum(len(c) for c in broker.ack_calls) == 50
    assert len(broker.ack_calls) < 25, [len(c) for c in broker.ack_calls]
    assert max(len(c) for c in broker.ack_calls) > 1


def test_service_acks_a_lone_message_at_once(server, broker) -> None:
    wh = Webhook(server.target)
    wh.add_handler("/lone", lambda data: None)
    svc = wh.run_service(handle_signals=False)
    try:
        assert svc.wait_ready(10)
        for i in range(3):
            wh.send("/lone", {"i": i})
            assert broker.wait_for(lambda: len(broker.acked) == i + 1, 5)
        assert [len(c) for c in broker.ack_calls] == [1, 1, 1]
        assert wait_until(lambda: not wh._keeper._due, 5)  # released once the Ack returned
    finally:
        assert svc.stop()
        wh.close()


def test_service_stop_flushes_pending_acks(server, broker) -> None:
    broker.ack_delay = 0.3
    wh = Webhook(server.target, concurrency=10)
    handled = []
    lock = threading.Lock()

    def handle(data):
        with lock:
            handled.append(data["i"])

    wh.add_handler("/flush", handle)
    wh.send_batch([("/flush", {"i": i}) for i in range(20)])
    svc = wh.run_service(handle_signals=False)
    try:
        deadline = time.monotonic() + 20
        while len(handled) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(handled) == 20
    finally:
        assert svc.stop()
    # stop() returned: every handled message is acked, none was left for redelivery.
    assert len(broker.acked) == 20 and not broker.nacks and not broker.leases
    wh.close()


def test_service_stale_outcome_is_per_message(server, broker, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="leanmq_grpc")
    wh = Webhook(server.target, concurrency=5)
    stale: List[Delivery] = []

    @wh.get("/pstale", raw=True)
    def handle(d: Delivery):
        if d.json()["i"] == 3:
            stale.append(d)
            broker.stale_receipts.add(d.receipt)

    wh.send_batch([("/pstale", {"i": i}) for i in range(10)])
    svc = wh.run_service(handle_signals=False)
    try:
        assert broker.wait_for(lambda: sum(len(c) for c in broker.ack_calls) == 10, 10)
    finally:
        assert svc.stop()
        wh.close()
    assert len(broker.acked) == 9 and stale[0].receipt not in broker.acked
    logs = stale_logs(caplog)
    assert len(logs) == 1 and stale[0].message_id in logs[0]


def test_batcher_futures_carry_each_outcome(server, broker) -> None:
    broker.ack_delay = 0.05
    with Webhook(server.target) as wh:
        wh.send_batch([("/fut", {"i": i}) for i in range(6)])
        resp = wh._stub.Receive(pb.ReceiveRequest(path="/fut", max_messages=10))
        deliveries = [Delivery.from_proto(d) for d in resp.deliveries]
        broker.stale_receipts.add(deliveries[4].receipt)
        for d in deliveries:
            wh._keeper.add(d)
        futures = [wh._acker.submit(d) for d in deliveries]
        assert [f.result(10) for f in futures] == [True, True, True, True, False, True]
        assert len(broker.ack_calls) < 6  # the first call's 50 ms let the rest queue up
        assert wh._acker.flush(1) and not wh._keeper._due


# ------------------------------------------------------------------ asyncio process_messages


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_async_batch_is_acked_with_one_call(server, broker, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="leanmq_grpc")

    async def main() -> None:
        async with AsyncWebhook(server.target) as wh:
            stale: List[Delivery] = []

            @wh.get("/abatch", raw=True)
            async def handle(d: Delivery):
                i = d.json()["i"]
                if i == 7:
                    raise RuntimeError("nope")
                if i == 11:
                    stale.append(d)
                    broker.stale_receipts.add(d.receipt)

            await wh.send_batch([("/abatch", {"i": i}) for i in range(30)])
            assert await wh.process_messages(count=30) == 28
            assert len(broker.ack_calls) == 1 and len(broker.ack_calls[0]) == 29
            assert [broker.payload_of(n.receipt)["i"] for n in broker.nacks] == [7]
            logs = stale_logs(caplog)
            assert len(logs) == 1 and stale[0].message_id in logs[0]

    run(main())


def test_async_leases_extended_until_the_batch_ack_returns(server, broker) -> None:
    broker.ack_delay = 0.8

    async def main() -> None:
        async with AsyncWebhook(server.target, ack_deadline=0.4) as wh:
            receipts: List[str] = []

            @wh.get("/alease", raw=True)
            async def handle(d: Delivery):
                receipts.append(d.receipt)

            await wh.send_batch([("/alease", {"i": i}) for i in range(3)])
            assert await wh.process_messages() == 3
            assert {e.receipt for e in broker.extends} == set(receipts)
            n = len(broker.extends)
            await asyncio.sleep(0.5)
            assert len(broker.extends) == n

    run(main())


def test_async_cancel_acks_the_handled_first(server, broker) -> None:
    async def main() -> None:
        async with AsyncWebhook(server.target) as wh:
            blocked = asyncio.Event()

            @wh.get("/acancel")
            async def handle(data):
                if data["i"] == 2:
                    blocked.set()
                    await asyncio.sleep(60)

            await wh.send_batch([("/acancel", {"i": i}) for i in range(5)])
            task = asyncio.ensure_future(wh.process_messages())
            await blocked.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert len(broker.ack_calls) == 1
            assert sorted(broker.payload_of(r)["i"] for r in broker.acked) == [0, 1]
            assert [broker.payload_of(n.receipt)["i"] for n in broker.nacks] == [2]
            assert [n.reason for n in broker.nacks] == ["cancelled"]

    run(main())
