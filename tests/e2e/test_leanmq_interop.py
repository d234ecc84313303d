"""LeanMQ 0.2.0 (the real Python package) and the leanmq-grpc SDKs on one Redis."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any, Dict, List, Tuple

from leanmq import LeanMQWebhook
from leanmq_grpc import Webhook

from harness import normalized, payload_of, pending_count, queue_name, unique_path, wait_until

DOC: Dict[str, Any] = {
    "order_id": "ORD-LMQ-1",
    "status": "shipped",
    "updated_at": 1732800000.25,
    "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1}],
    "customer": {"name": "Zoë", "vip": True, "note": None},
}


def leanmq(redis_server) -> LeanMQWebhook:
    return LeanMQWebhook(redis_host="127.0.0.1", redis_port=redis_server.port, auto_start=False)


def test_leanmq_send_reaches_go_and_python_sdk_handlers(broker, redis_server, agents):
    path = unique_path("from-leanmq")
    common = ["--target", broker.target, "--path", path, "--count", "1", "--timeout", "60"]
    go = agents.go("consume", *common, "--group", "go")
    py = agents.python("consume", *common, "--group", "py")
    go.wait_ready()
    py.wait_ready()

    lw = leanmq(redis_server)
    try:
        message_id = lw.send(path, DOC)
    finally:
        lw.close()

    for agent in (go, py):
        rc = agent.wait_exit(30)
        assert rc == 0, agent.describe()
        assert len(agent.deliveries) == 1, agent.describe()
        d = agent.deliveries[0]
        assert d["message_id"] == message_id
        assert d["content_type"] == "application/json"
        assert json.loads(payload_of(d)) == DOC
        assert d["path"] == normalized(path)
        assert d["attempt"] == 1
        assert d["headers"].get("leanmq-id"), d["headers"]


def test_grpc_send_reaches_a_leanmq_handler(broker, redis_server):
    path = unique_path("to-leanmq")
    q = queue_name(path)
    lw = leanmq(redis_server)
    got: List[Dict[str, Any]] = []
    try:

        @lw.get(path)
        def handler(data: Dict[str, Any]) -> None:
            got.append(data)

        with Webhook(broker.target) as wh:
            wh.send(path, DOC)

        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            lw.process_messages(block=True, timeout=1, count=10)
    finally:
        lw.close()

    assert len(got) == 1, got
    data = dict(got[0])
    meta = data.pop("_leanmq")
    assert data == DOC
    assert meta["webhook"]["path"] == normalized(path)
    r = redis_server.client()
    assert pending_count(r, f"webhook:{q}", f"{q}-group") == 0


# Simulated work per message in both handlers, so that each consumer is busy
# part of the time and the other gets a share (not synchronization).
WORK_SECONDS = 0.02


def _split(broker, redis_server, path: str, n: int) -> Tuple[List[int], List[int]]:
    """A LeanMQ consumer and a leanmq-grpc consumer on the default group of
    one path, both running, then n messages sent in one atomic batch."""
    cond = threading.Condition()
    by_leanmq: List[int] = []
    by_grpc: List[int] = []

    lw = leanmq(redis_server)

    @lw.get(path)
    def leanmq_handler(data: Dict[str, Any]) -> None:
        time.sleep(WORK_SECONDS)
        with cond:
            by_leanmq.append(data["i"])
            cond.notify_all()

    wh = Webhook(broker.target, group="", concurrency=1)

    @wh.get(path)
    def grpc_handler(data: Dict[str, Any]) -> None:
        time.sleep(WORK_SECONDS)
        with cond:
            by_grpc.append(data["i"])
            cond.notify_all()

    stop = threading.Event()
    loop_errors: List[str] = []

    def leanmq_loop() -> None:
        try:
            while not stop.is_set():
                lw.process_messages(block=True, timeout=1, count=1)
        except Exception as e:  # noqa: BLE001
            loop_errors.append(repr(e))

    service = wh.run_service(handle_signals=False)
    t = threading.Thread(target=leanmq_loop, daemon=True)
    try:
        assert service.wait_ready(15), f"gRPC consumer not subscribed: {service.error}"
        t.start()
        with Webhook(broker.target) as sender:
            sender.send_batch([(path, {"i": i}) for i in range(n)])
        with cond:
            ok = cond.wait_for(lambda: len(set(by_leanmq) | set(by_grpc)) >= n, timeout=60)
        assert ok, f"not all {n} handled within 60 s (leanmq {sorted(by_leanmq)}, grpc {sorted(by_grpc)})"
        q = queue_name(path)
        r = redis_server.client()
        wait_until(lambda: pending_count(r, f"webhook:{q}", f"{q}-group") == 0, 15, "the shared group fully acked")
    finally:
        stop.set()
        t.join(10)
        service.stop()
        wh.close()
        lw.close()
    assert not loop_errors, loop_errors
    with cond:
        return list(by_leanmq), list(by_grpc)


def test_leanmq_and_grpc_consumers_split_one_group(broker, redis_server, summary):
    rounds = []
    for n in (40, 120):
        path = unique_path(f"split{n}")
        by_leanmq, by_grpc = _split(broker, redis_server, path, n)
        both = by_leanmq + by_grpc
        dups = sorted(i for i, c in Counter(both).items() if c > 1)
        assert not dups, f"delivered to both or twice: {dups}"
        assert sorted(both) == list(range(n)), "lost messages"
        rounds.append(f"{n} messages: leanmq {len(by_leanmq)}, grpc {len(by_grpc)}")
        if by_leanmq and by_grpc:
            break
    line = "split: " + "; ".join(rounds)
    print(line)
    summary.append(line)
    assert by_leanmq and by_grpc, f"one consumer took every message: {rounds}"
