"""What LeanMQ's core-API documentation examples demonstrate, in this
repository's own code: each scenario is a small LeanMQ 0.2.0 program written
against ``leanmq_grpc.compat`` only (LeanMQ's names, signatures and keyword
arguments; the broker comes from ``LEANMQ_GRPC_TARGET``, as a migrated
program's would), run against a real leanmqd and redis-server, and checked
for what the pattern should achieve (basic-messaging.md):

- producer/consumer on the core API;
- request/response with a ``responses:<uuid>`` reply queue per client and a
  correlation id per request;
- fan-out of each event to several subscriber queues.

The webhook examples are in ``test_compat_scenarios_webhooks.py``.
``test_compat_examples.py`` runs LeanMQ's own examples when ``LEANMQ_DOCS``
names a LeanMQ checkout; these always run.
"""
from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from compat_broker import entries, needs_leanmqd, unique, xlen
from leanmq_grpc.compat import LeanMQ, Message, Queue, QueueInfo
from real_broker import Leanmqd, Redis
from scenario_kit import REDIS, Recorder, point_at, start_broker
from waiting import wait_until

pytestmark = needs_leanmqd


@pytest.fixture(scope="module")
def broker(workdir: Path, redis: Redis) -> Iterator[Leanmqd]:
    d = start_broker(workdir, redis)
    yield d
    d.stop()


@pytest.fixture(autouse=True)
def broker_env(broker: Leanmqd, monkeypatch: pytest.MonkeyPatch) -> None:
    point_at(broker, monkeypatch)


# ------------------------------------------------------------------ (a) producer/consumer


def test_producer_consumer_on_the_core_api(redis: Redis) -> None:
    name = unique("jobs")
    producer = LeanMQ(**REDIS, prefix="example:")
    jobs, jobs_dlq = producer.create_queue_pair(name)
    sent: List[Tuple[str, int]] = []
    for n in range(6):
        sent.append((jobs.send_message({"job": f"job-{n}", "n": n}), n))
    producer.close()
    assert [e["n"] for e in entries(redis, f"example:{name}")] == list(range(6))

    # The consumer is another program: it finds the queues by name.
    with LeanMQ(**REDIS, prefix="example:") as consumer:
        queue = consumer.get_queue(name)
        dlq = consumer.get_dead_letter_queue(name)
        assert isinstance(queue, Queue) and isinstance(dlq, Queue) and dlq.is_dlq
        done: List[Message] = []
        failed: List[Message] = []

        def consume() -> bool:
            for m in queue.get_messages(count=4, block_for_seconds=1, consumer_id="worker-1"):
                if m.data["n"] == 3:  # this one cannot be processed
                    assert queue.move_to_dlq([m.id], "Processing error: n is 3", dlq) == 1
                    failed.append(m)
                else:
                    assert queue.acknowledge_messages([m.id]) == 1
                    done.append(m)
            return len(done) + len(failed) == 6

        assert wait_until(consume, timeout=30)
        # Each job exactly once, in the order sent, under the id send_message gave.
        assert [(m.id, m.data["n"]) for m in done] == [s for s in sent if s[1] != 3]
        assert [(m.id, m.data["n"]) for m in failed] == [s for s in sent if s[1] == 3]
        assert queue.get_messages(count=10) == []
        # An id this consumer never handed out is not acknowledged, as LeanMQ counts it.
        assert queue.acknowledge_messages([sent[0][0]]) == 0

        info = queue.get_info()
        assert isinstance(info, QueueInfo)
        assert (info.name, info.is_dlq, info.consumer_group, info.pending_messages) == (
            f"example:{name}", False, f"{name}-group", 0)
        dead = dlq.get_messages(count=10)
        assert [m.data["n"] for m in dead] == [3]
    assert redis.pending(f"example:{name}", f"{name}-group") == 0
    [dl] = entries(redis, f"example:{name}:dlq")
    assert dl["job"] == "job-3"


# ------------------------------------------------------------------ (b) request/response


class Calculator:
    """A server answering requests on one queue, each to the reply queue the
    request names, tagged with the request's correlation id."""

    def __init__(self, requests: str) -> None:
        self.mq = LeanMQ(**REDIS, prefix="calc:")
        self.requests, self.requests_dlq = self.mq.create_queue_pair(requests)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _answer(self, req: Dict[str, Any]) -> Dict[str, Any]:
        a, b, op = req["a"], req["b"], req["op"]
        if op == "add":
            return {"result": a + b}
        if op == "mul":
            return {"result": a * b}
        if op == "div":
            if b == 0:
                raise ZeroDivisionError("division by zero")
            return {"result": a / b}
        raise ValueError(f"unknown operation {op}")

    def _serve(self) -> None:
        while self.running:
            for m in self.requests.get_messages(count=5, block_for_seconds=1, consumer_id="calc-server"):
                reply, _ = self.mq.create_queue_pair(m.data["reply_to"])
                try:
                    answer = self._answer(m.data)
                except Exception as e:
                    reply.send_message({"correlation_id": m.data["correlation_id"], "error": str(e)})
                    self.requests.move_to_dlq([m.id], f"Processing error: {e}", self.requests_dlq)
                    continue
                reply.send_message({"correlation_id": m.data["correlation_id"], **answer})
                self.requests.acknowledge_messages([m.id])

    def stop(self) -> None:
        self.running = False
        self.thread.join(timeout=30)
        self.mq.close()


class CalcClient:
    """A client with a reply queue of its own, ``responses:<uuid>``."""

    def __init__(self, requests: str) -> None:
        self.mq = LeanMQ(**REDIS, prefix="calc:")
        self.reply_name = f"responses:{uuid.uuid4()}"
        self.requests, _ = self.mq.create_queue_pair(requests)
        self.replies, _ = self.mq.create_queue_pair(self.reply_name)
        self.answers: Dict[str, Dict[str, Any]] = {}

    def ask(self, op: str, a: float, b: float) -> str:
        correlation_id = str(uuid.uuid4())
        self.requests.send_message(
            {"correlation_id": correlation_id, "reply_to": self.reply_name, "op": op, "a": a, "b": b})
        return correlation_id

    def collect(self, wanted: int) -> bool:
        for m in self.replies.get_messages(count=10, block_for_seconds=1, consumer_id="calc-client"):
            self.answers[m.data["correlation_id"]] = m.data
            assert self.replies.acknowledge_messages([m.id]) == 1
        return len(self.answers) >= wanted


def test_request_response_with_reply_queue_and_correlation_id(redis: Redis) -> None:
    requests = unique("requests")
    server = Calculator(requests)
    alice, bob = CalcClient(requests), CalcClient(requests)
    try:
        asked = {
            alice.ask("add", 2, 3): {"result": 5},
            alice.ask("div", 1, 0): {"error": "division by zero"},
            alice.ask("pow", 2, 8): {"error": "unknown operation pow"},
        }
        bobs = {bob.ask("mul", 6, 7): {"result": 42}, bob.ask("div", 9, 2): {"result": 4.5}}
        assert wait_until(lambda: alice.collect(len(asked)), timeout=30), alice.answers
        assert wait_until(lambda: bob.collect(len(bobs)), timeout=30), bob.answers
        # Each client got exactly its own answers, matched by correlation id.
        assert {c: {k: v for k, v in d.items() if k != "correlation_id"} for c, d in alice.answers.items()} == asked
        assert {c: {k: v for k, v in d.items() if k != "correlation_id"} for c, d in bob.answers.items()} == bobs

        # The reply queues are queues like any other: listed under their
        # names (':' and '-' in them), and found again by those names.
        listed = {i.name: i for i in alice.mq.list_queues()}
        for client in (alice, bob):
            info = listed[f"calc:{client.reply_name}"]
            assert not info.is_dlq and info.message_count == len(client.answers)
            again = alice.mq.get_queue(info.name)
            assert again is not None and again.get_info().pending_messages == 0
    finally:
        server.stop()
        alice.mq.close()
        bob.mq.close()
    for client in (alice, bob):
        assert redis.pending(f"calc:{client.reply_name}", f"{client.reply_name}-group") == 0
    # The two failed requests were dead-lettered, the others acknowledged.
    assert sorted(e["op"] for e in entries(redis, f"calc:{requests}:dlq")) == ["div", "pow"]
    assert redis.pending(f"calc:{requests}", f"{requests}-group") == 0


# ------------------------------------------------------------------ (c) fan-out


class Subscriber:
    """One service's own queue of the events it cares about."""

    def __init__(self, name: str, wants: Optional[List[str]]) -> None:
        self.mq = LeanMQ(**REDIS, prefix="events:")
        self.queue, self.dlq = self.mq.create_queue_pair(name)
        self.wants = wants
        self.handled = Recorder()
        self.skipped = Recorder()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.running:
            for m in self.queue.get_messages(count=5, block_for_seconds=1, consumer_id="sub"):
                target = self.handled if self.wants is None or m.data["type"] in self.wants else self.skipped
                target.add(m.data["event_id"])
                self.queue.acknowledge_messages([m.id])

    def stop(self) -> None:
        self.running = False
        self.thread.join(timeout=30)
        self.mq.close()


def test_fan_out_to_several_queues(redis: Redis) -> None:
    tag = uuid.uuid4().hex[:8]
    subs = {
        f"audit_{tag}": Subscriber(f"audit_{tag}", None),
        f"orders_{tag}": Subscriber(f"orders_{tag}", ["order_created", "order_updated"]),
        f"users_{tag}": Subscriber(f"users_{tag}", ["user_created"]),
    }
    for s in subs.values():
        s.thread.start()
    publisher = LeanMQ(**REDIS, prefix="events:")
    outbox = [publisher.get_queue(name) for name in subs]
    assert all(q is not None for q in outbox)
    events = [
        {"event_id": str(uuid.uuid4()), "type": t, "data": {"n": i}}
        for i, t in enumerate(["order_created", "user_created", "order_updated", "invoice_sent"])
    ]
    try:
        for e in events:
            # One event, every subscriber's copy appended atomically.
            with publisher.transaction() as tx:
                for q in outbox:
                    tx.send_message(q, e)
        everything = [e["event_id"] for e in events]
        assert wait_until(lambda: all(len(s.handled) + len(s.skipped) == len(events) for s in subs.values()), 30)
    finally:
        for s in subs.values():
            s.stop()
        publisher.close()
    # Every subscriber saw every event exactly once, in publication order,
    # and handled just the types it asked for.
    for name, s in subs.items():
        wanted = [e["event_id"] for e in events if s.wants is None or e["type"] in s.wants]
        assert s.handled.items == wanted, name
        assert sorted(s.handled.items + s.skipped.items) == sorted(everything), name
        assert [x["event_id"] for x in entries(redis, f"events:{name}")] == everything, name
        assert redis.pending(f"events:{name}", f"{name}-group") == 0, name
        assert xlen(redis, f"events:{name}:dlq") == 0, name


def test_a_failed_transaction_fans_out_nothing(redis: Redis) -> None:
    names = [unique("fan"), unique("fan")]
    with LeanMQ(**REDIS, prefix="events:") as mq:
        queues = [mq.create_queue_pair(n)[0] for n in names]
        with pytest.raises(RuntimeError):
            with mq.transaction() as tx:
                for q in queues:
                    tx.send_message(q, {"event_id": "never"})
                raise RuntimeError("the publisher fails before the block ends")
        assert [xlen(redis, f"events:{n}") for n in names] == [0, 0]
