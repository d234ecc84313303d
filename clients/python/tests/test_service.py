"""run_service (Subscribe streams): outcomes, concurrency, lease extension,
reconnect, graceful stop, signals, fatal errors."""
from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest

from leanmq_grpc import DeadLetter, RetryAfter, Webhook
from leanmq_grpc._common import to_duration


def test_outcomes_through_service(server, broker) -> None:
    wh = Webhook(server.target, concurrency=4)

    @wh.get("/order/status/")
    def handle(data):
        mode = data["mode"]
        if mode == "fail":
            raise KeyError("missing")
        if mode == "dead":
            raise DeadLetter("bad order")
        if mode == "retry":
            raise RetryAfter(7)

    svc = wh.run_service(handle_signals=False)
    try:
        for mode in ["ok", "fail", "dead", "retry"]:
            wh.send("/order/status/", {"mode": mode})
        assert broker.wait_for(lambda: len(broker.acked) + len(broker.nacks) == 4)
    finally:
        assert svc.stop()
        wh.close()
    assert [broker.payload_of(r)["mode"] for r in broker.acked] == ["ok"]
    nacks = {broker.payload_of(n.receipt)["mode"]: n for n in broker.nacks}
    assert nacks["fail"].reason == "KeyError('missing')" and not nacks["fail"].dead_letter
    assert not nacks["fail"].HasField("delay")
    assert nacks["dead"].dead_letter and nacks["dead"].reason == "bad order"
    assert nacks["retry"].delay == to_duration(7) and not nacks["retry"].dead_letter
    sub = broker.subscribes[0]
    assert sub.path == "/order/status" and sub.max_in_flight == 4 and sub.group == ""
    assert sub.ack_deadline == to_duration(30)


@pytest.mark.parametrize("broker_enforces_limit", [True, False], ids=["broker-limit", "client-limit"])
def test_concurrency_never_exceeds_limit(server, broker, broker_enforces_limit) -> None:
    broker.ignore_max_in_flight = not broker_enforces_limit
    wh = Webhook(server.target, concurrency=3)
    cond = threading.Condition()
    state = {"running": 0, "peak": 0}
    release = threading.Event()

    @wh.get("/jobs")
    def handle(data):
        with cond:
            state["running"] += 1
            state["peak"] = max(state["peak"], state["running"])
            cond.notify_all()
        assert release.wait(10)
        with cond:
            state["running"] -= 1
            cond.notify_all()

    wh.send_batch([("/jobs", {"i": i}) for i in range(9)])
    svc = wh.run_service(handle_signals=False)
    try:
        with cond:
            assert cond.wait_for(lambda: state["running"] == 3, 10)
        if broker_enforces_limit:
            # The broker holds back the rest: only max_in_flight are leased.
            assert broker.wait_for(lambda: len(broker.leases) == 3 and len(broker.queues["jobs"]) == 6)
        else:
            # Everything was pushed; the SDK still runs only three at once.
            assert broker.wait_for(lambda: len(broker.leases) >= 4)
        with cond:
            assert state["running"] == 3
        release.set()
        assert broker.wait_for(lambda: len(broker.acked) == 9)
    finally:
        release.set()
        svc.stop()
        wh.close()
    assert state["peak"] == 3
    assert broker.subscribes[0].max_in_flight == 3


def test_extends_lease_while_handler_runs(server, broker) -> None:
    wh = Webhook(server.target, ack_deadline=0.4)
    receipts = []

    @wh.get("/slow", raw=True)
    def handle(delivery):
        receipts.append(delivery.receipt)
        assert broker.wait_for(lambda: len(broker.extends) >= 3, 10)

    svc = wh.run_service(handle_signals=False)
    try:
        wh.send("/slow", {"x": 1})
        assert broker.wait_for(lambda: len(broker.acked) == 1)
    finally:
        svc.stop()
        wh.close()
    assert broker.nacks == []
    assert {e.receipt for e in broker.extends} == set(receipts)
    assert all(e.extension == to_duration(0.4) for e in broker.extends)
    assert broker.subscribes[0].ack_deadline == to_duration(0.4)


def test_reconnects_after_stream_breaks(server, broker) -> None:
    broker.fail_subscribes = 2  # the broker is "down" for the first two attempts
    wh = Webhook(server.target)
    seen = []
    first_started = threading.Event()
    release_first = threading.Event()

    @wh.get("/r")
    def handle(data):
        seen.append(data["n"])
        if data["n"] == 1:
            first_started.set()
            assert release_first.wait(10)

    svc = wh.run_service(handle_signals=False)
    try:
        assert svc.wait_ready(10)
        assert len(broker.subscribes) == 3
        wh.send("/r", {"n": 1})
        assert first_started.wait(10)
        broker.break_streams()  # server restart: the stream ends with UNAVAILABLE
        assert broker.wait_for(lambda: len(broker.subscribes) == 4 and broker.active_streams == 1)
        release_first.set()  # the delivery from the old stream is acked after the reconnect
        assert broker.wait_for(lambda: len(broker.acked) == 1)
        wh.send("/r", {"n": 2})
        assert broker.wait_for(lambda: len(broker.acked) == 2)
        assert svc.is_alive()
    finally:
        release_first.set()
        svc.stop()
        wh.close()
    assert seen == [1, 2]
    assert broker.nacks == []


def test_graceful_stop_waits_then_nacks_unfinished(server, broker) -> None:
    wh = Webhook(server.target, concurrency=2)
    cond = threading.Condition()
    started = []
    finish_quick = threading.Event()
    unstick = threading.Event()

    @wh.get("/g")
    def handle(data):
        with cond:
            started.append(data["kind"])
            cond.notify_all()
        if data["kind"] == "quick":
            assert finish_quick.wait(10)
        else:
            unstick.wait(10)  # stuck past worker_thread_timeout

    wh.send_batch([("/g", {"kind": "quick"}), ("/g", {"kind": "stuck"})])
    svc = wh.run_service(handle_signals=False, worker_thread_timeout=1.5)
    try:
        with cond:
            assert cond.wait_for(lambda: len(started) == 2, 10)
        svc.request_stop()
        assert not svc.is_alive()
        # stop takes no new work: the stream is cancelled at once
        assert broker.wait_for(lambda: broker.active_streams == 0)
        wh.send("/g", {"kind": "late"})
        finish_quick.set()  # a running handler that finishes in time is acked
        t0 = time.monotonic()
        assert svc.stop()
        assert time.monotonic() - t0 < 5
    finally:
        unstick.set()
        wh.close()
    assert [broker.payload_of(r)["kind"] for r in broker.acked] == ["quick"]
    assert [broker.payload_of(n.receipt)["kind"] for n in broker.nacks] == ["stuck"]
    assert "shutdown" in broker.nacks[0].reason
    assert started == ["quick", "stuck"]  # "late" was never taken
    assert len(broker.queues["g"]) == 1


def test_sigterm_stops_service(server, broker) -> None:
    wh = Webhook(server.target)
    wh.add_handler("/sig", lambda data: None)
    before = signal.getsignal(signal.SIGTERM)
    svc = wh.run_service(handle_signals=True)
    try:
        assert svc.wait_ready(10)
        assert signal.getsignal(signal.SIGTERM) != before
        os.kill(os.getpid(), signal.SIGTERM)
        assert svc.wait(10)
        assert not svc.is_alive()
    finally:
        svc.stop()
        wh.close()
    assert signal.getsignal(signal.SIGTERM) == before


def test_fatal_stream_error_stops_service(server, broker) -> None:
    broker.fail_subscribes = 1
    broker.subscribe_error = grpc.StatusCode.INVALID_ARGUMENT
    wh = Webhook(server.target)
    wh.add_handler("/bad", lambda data: None)
    svc = wh.run_service(handle_signals=False)
    try:
        assert svc.wait(10)
    finally:
        svc.stop()
        wh.close()
    assert not svc.is_alive()
    assert svc.error is not None and svc.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(broker.subscribes) == 1


def test_request_stop_from_handler_and_context_manager(server, broker) -> None:
    box = {}
    with Webhook(server.target) as wh:

        @wh.get("/once")
        def handle(data):
            box["svc"].stop()  # inside a handler: only requests the stop

        box["svc"] = svc = wh.run_service(handle_signals=False)
        wh.send("/once", {"x": 1})
        assert svc.wait(10)
    assert len(broker.acked) == 1
    assert broker.wait_for(lambda: broker.active_streams == 0)


def test_run_service_without_handlers_fails(server) -> None:
    with Webhook(server.target) as wh:
        with pytest.raises(RuntimeError):
            wh.run_service(handle_signals=False)
