"""What LeanMQ's documentation examples demonstrate, in this repository's own
code: each scenario is a small LeanMQ 0.2.0 program written against
``leanmq_grpc.compat`` only (LeanMQ's names, signatures and keyword
arguments; the broker comes from ``LEANMQ_GRPC_TARGET``, as a migrated
program's would), run against a real leanmqd and redis-server, and checked
for what the pattern should achieve.

``test_compat_examples.py`` runs LeanMQ's own examples when ``LEANMQ_DOCS``
names a LeanMQ checkout; these always run.

- producer/consumer on the core API (basic-messaging.md);
- request/response with a ``responses:<uuid>`` reply queue per client and a
  correlation id per request (basic-messaging.md);
- fan-out of each event to several subscriber queues (basic-messaging.md);
- a basic webhook service, one handler per path (webhook-services.md);
- the advanced service: a failing handler, DLQ monitoring through
  ``webhook.mq`` and reprocessing with ``requeue_messages`` (webhook-services.md);
- scaling: worker processes sharing paths, each message handled once
  (webhook-services.md);
- an event-driven order → payment → shipping/notification flow chained by
  webhooks, and an API gateway's request/response over webhooks
  (microservice/*.md).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from compat_broker import entries, needs_leanmqd, start, unique, xlen
from leanmq_grpc.compat import LeanMQ, LeanMQWebhook, Message, Queue, QueueInfo
from real_broker import Leanmqd, Redis
from waiting import wait_until

pytestmark = needs_leanmqd

#: Handler failures are retried this many times in all before the broker
#: dead-letters the message (kept small and fast for the advanced service).
MAX_ATTEMPTS = 2

#: LeanMQ's constructor arguments, as the programs being migrated pass them;
#: the compat layer accepts and ignores them.
REDIS = dict(redis_host="localhost", redis_port=6379, redis_db=0)


@pytest.fixture(scope="module")
def broker(workdir: Path, redis: Redis) -> Iterator[Leanmqd]:
    d = start(workdir, redis, ["--retry-min", "100ms", "--retry-max", "200ms",
                               "--max-attempts", str(MAX_ATTEMPTS)])
    yield d
    d.stop()


@pytest.fixture(autouse=True)
def broker_env(broker: Leanmqd, monkeypatch: pytest.MonkeyPatch) -> None:
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


# ------------------------------------------------------------------ (d) basic webhook service


def test_basic_webhook_service_with_handlers_per_path(redis: Redis) -> None:
    tag = uuid.uuid4().hex[:8]
    statuses, stock = Recorder(), Recorder()
    webhook = LeanMQWebhook(**REDIS, auto_start=False)

    @webhook.get(f"/shop_{tag}/order/status/")
    def on_order_status(data: Dict[str, Any]) -> None:
        statuses.add(data)

    @webhook.get(f"/shop_{tag}/inventory")
    def on_inventory(data: Dict[str, Any]) -> None:
        stock.add(data)

    service = webhook.run_service(handle_signals=False)
    try:
        assert service.is_alive()
        sent_status = [{"order_id": f"O-{i}", "status": s} for i, s in enumerate(["paid", "packed", "shipped"])]
        sent_stock = [{"sku": "SKU-1", "quantity": 7}, {"sku": "SKU-2", "quantity": 0}]
        for d in sent_status:
            webhook.send(f"/shop_{tag}/order/status", d)  # with or without the trailing slash
        for d in sent_stock:
            webhook.send(f"shop_{tag}/inventory/", d)
        assert wait_until(lambda: len(statuses) == 3 and len(stock) == 2, timeout=30)
        # Each handler got its own path's webhooks, once each, in order.
        assert [without_meta(d) for d in statuses.items] == sent_status
        assert [without_meta(d) for d in stock.items] == sent_stock
    finally:
        service.stop()
    assert not service.is_alive()
    webhook.close()
    for q in (f"shop_{tag}_order_status", f"shop_{tag}_inventory"):
        assert redis.pending(f"webhook:{q}", f"{q}-group") == 0, q
        assert xlen(redis, f"webhook:{q}:dlq") == 0, q


def test_process_messages_handles_what_was_sent_in_the_calling_thread() -> None:
    path = f"/ping_{uuid.uuid4().hex[:8]}"
    seen: List[int] = []
    handled: List[int] = []
    with LeanMQWebhook(**REDIS, auto_start=False) as webhook:
        webhook.get(path)(lambda data: seen.append(data["n"]))
        for n in range(3):
            webhook.send(path, {"n": n})

        def drain() -> bool:
            handled.append(webhook.process_messages(block=True, timeout=1, count=10))
            return sum(handled) >= 3

        assert wait_until(drain, timeout=30)
        assert seen == [0, 1, 2] and sum(handled) == 3
        assert webhook.process_messages() == 0  # nothing left


def test_auto_start_processes_in_the_background_until_close(redis: Redis) -> None:
    path = f"/auto_{uuid.uuid4().hex[:8]}"
    seen = Recorder()
    webhook = LeanMQWebhook(**REDIS, process_interval=1)  # auto_start=True, LeanMQ's default
    try:
        webhook.get(path)(lambda data: seen.add(data["n"]))
        for n in range(3):
            webhook.send(path, {"n": n})
        assert wait_until(lambda: seen.items == [0, 1, 2], timeout=30), seen.items
    finally:
        webhook.close()
    q = path.strip("/")
    assert redis.pending(f"webhook:{q}", f"{q}-group") == 0


def test_start_processing_in_a_thread_until_stop_processing(redis: Redis) -> None:
    path = f"/loop_{uuid.uuid4().hex[:8]}"
    seen = Recorder()
    webhook = LeanMQWebhook(**REDIS, auto_start=False)
    webhook.get(path)(lambda data: seen.add(data["n"]))
    loop = threading.Thread(target=webhook.start_processing, daemon=True)
    loop.start()
    try:
        assert wait_until(lambda: webhook.is_processing, timeout=10)
        for n in range(4):
            webhook.send(path, {"n": n})
        assert wait_until(lambda: seen.items == [0, 1, 2, 3], timeout=30), seen.items
    finally:
        webhook.stop_processing()
        loop.join(timeout=30)
    assert not loop.is_alive() and not webhook.is_processing
    webhook.close()


# ------------------------------------------------------------------ (e) advanced service


def test_advanced_service_failing_handler_dlq_monitoring_and_reprocessing(redis: Redis) -> None:
    tag = uuid.uuid4().hex[:8]
    orders_path, stock_path = f"/orders_{tag}/", f"/stock_{tag}/"
    stock_queue = f"stock_{tag}"
    warehouse_up = threading.Event()  # the stock handler's dependency
    attempts: Counter = Counter()
    orders, stocked = Recorder(), Recorder()
    webhook = LeanMQWebhook(**REDIS, auto_start=False)
    mq = webhook.mq  # the core API on the webhook's own prefix and channel
    assert isinstance(mq, LeanMQ) and mq.prefix == "webhook:"

    @webhook.get(orders_path)
    def on_order(data: Dict[str, Any]) -> None:
        orders.add(data["order_id"])

    @webhook.get(stock_path)
    def on_stock(data: Dict[str, Any]) -> None:
        attempts[data["sku"]] += 1
        if not warehouse_up.is_set():
            raise ConnectionError("warehouse is down")
        stocked.add(data["sku"])

    service = webhook.run_service(process_count=20, block_for_seconds=1, handle_signals=False)
    try:
        for sku in ("SKU-A", "SKU-B"):
            webhook.send(stock_path, {"sku": sku, "quantity": 3})
        webhook.send(orders_path, {"order_id": "ORD-1"})

        # Monitoring, as the guide's monitor does it: list_queues, and any
        # DLQ holding messages is looked at through get_queue(info.name).
        def dead_letters() -> List[QueueInfo]:
            return [i for i in mq.list_queues() if i.is_dlq and i.name == f"webhook:{stock_queue}:dlq"
                    and i.message_count > 0]

        assert wait_until(lambda: sum(i.message_count for i in dead_letters()) == 2, timeout=30)
        # The failing handler did not hold up the other path.
        assert wait_until(lambda: orders.items == ["ORD-1"], timeout=30)
        # Each failure was retried by the broker, then dead-lettered.
        assert attempts == Counter({"SKU-A": MAX_ATTEMPTS, "SKU-B": MAX_ATTEMPTS})
        [info] = dead_letters()
        dlq = mq.get_queue(info.name)
        assert dlq is not None and dlq.is_dlq
        assert mq.get_dead_letter_queue(stock_queue).get_info().message_count == 2  # type: ignore[union-attr]
        dlq_info = dlq.get_info()
        assert (dlq_info.name, dlq_info.is_dlq, dlq_info.message_count) == (info.name, True, 2)
        failed = dlq.get_messages(count=100)
        assert sorted(m.data["sku"] for m in failed) == ["SKU-A", "SKU-B"]
        assert all(without_meta(m.data)["quantity"] == 3 for m in failed)

        # The dependency is back: reprocess into the main queue, named as
        # the guide derives it from the DLQ's name.
        warehouse_up.set()
        main = mq.get_queue(info.name.rsplit(":dlq", 1)[0])
        assert main is not None and not main.is_dlq
        assert dlq.requeue_messages([m.id for m in failed], main) == 2
        assert wait_until(lambda: sorted(stocked.items) == ["SKU-A", "SKU-B"], timeout=30)
        assert wait_until(lambda: dead_letters() == [], timeout=10)
        assert attempts == Counter({"SKU-A": MAX_ATTEMPTS + 1, "SKU-B": MAX_ATTEMPTS + 1})
    finally:
        service.stop()
        webhook.close()
    assert xlen(redis, f"webhook:{stock_queue}:dlq") == 0
    assert redis.pending(f"webhook:{stock_queue}", f"{stock_queue}-group") == 0


# ------------------------------------------------------------------ (f) scaling

#: A worker process: LeanMQ's webhook API, handling two paths until SIGTERM,
#: printing one line per message it handled.
WORKER = r'''
import os, signal, sys
from leanmq_grpc.compat import LeanMQWebhook

tag = sys.argv[1]
me = f"w{os.getpid()}"
running = True

def stop(signum, frame):
    global running
    running = False

signal.signal(signal.SIGTERM, stop)
webhook = LeanMQWebhook(redis_host="localhost", redis_port=6379, redis_db=0, auto_start=False)

@webhook.get(f"/orders_{tag}/")
def on_order(data):
    print(f"handled {data['id']} by {me}", flush=True)

@webhook.get(f"/stock_{tag}/")
def on_stock(data):
    print(f"handled {data['id']} by {me}", flush=True)

print("ready", flush=True)
while running:
    webhook.process_messages(block=True, timeout=1, count=1)
webhook.close()
print("stopped", flush=True)
'''


class Worker:
    def __init__(self, directory: Path, n: int, tag: str) -> None:
        self.out = directory / f"worker{n}.log"
        with open(self.out, "wb") as f:
            self.proc = subprocess.Popen(
                [sys.executable, str(directory / "worker.py"), tag],
                env=dict(os.environ, PYTHONUNBUFFERED="1"), stdin=subprocess.DEVNULL,
                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    def lines(self) -> List[str]:
        return self.out.read_text(errors="replace").splitlines()

    def handled(self) -> List[Tuple[str, str]]:
        return [(p[1], p[3]) for p in (line.split() for line in self.lines()) if p[:1] == ["handled"]]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"worker did not stop:\n{self.out.read_text(errors='replace')[-2000:]}")


def test_scaling_worker_processes_share_paths_each_message_once(workdir: Path, redis: Redis) -> None:
    tag = uuid.uuid4().hex[:8]
    directory = workdir / f"scaling_{tag}"
    directory.mkdir()
    (directory / "worker.py").write_text(WORKER)
    workers = [Worker(directory, n, tag) for n in range(3)]
    try:
        assert wait_until(lambda: all("ready" in w.lines() or w.proc.poll() is not None for w in workers), 60)
        assert all(w.proc.poll() is None for w in workers), [w.lines() for w in workers]
        expected = []
        with LeanMQWebhook(**REDIS, auto_start=False) as sender:
            for i in range(40):
                mid = f"{'ORD' if i % 2 == 0 else 'SKU'}-{i}"
                sender.send(f"/orders_{tag}" if i % 2 == 0 else f"/stock_{tag}", {"id": mid})
                expected.append(mid)
        assert wait_until(lambda: sum(len(w.handled()) for w in workers) >= len(expected), timeout=60)
        codes = [w.stop() for w in workers]
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.stop()
    assert codes == [0, 0, 0], [w.lines()[-5:] for w in workers]
    handled = [h for w in workers for h in w.handled()]
    # Every message handled exactly once across the workers...
    assert sorted(i for i, _ in handled) == sorted(expected)
    # ...and the work was shared: more than one process took part.
    assert len({who for _, who in handled}) >= 2, Counter(who for _, who in handled)
    for q in (f"orders_{tag}", f"stock_{tag}"):
        assert redis.pending(f"webhook:{q}", f"{q}-group") == 0, q
        assert xlen(redis, f"webhook:{q}:dlq") == 0, q


# ------------------------------------------------------------------ (g) event-driven microservices


class Service:
    """One microservice: its own LeanMQWebhook (own connection) on the
    ``events:`` prefix, its handlers run by run_service."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.webhook = LeanMQWebhook(**REDIS, prefix="events:", auto_start=False)
        self.log = Recorder()
        self.service: Any = None

    def start(self) -> None:
        self.service = self.webhook.run_service(handle_signals=False)

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
        self.webhook.close()


def test_event_driven_order_payment_shipping_notification(redis: Redis) -> None:
    tag = uuid.uuid4().hex[:8]
    p = {k: f"/{k}_{tag}" for k in ("payments", "shipping", "notify", "order_events")}
    orders, payment, shipping, notification = (Service(n) for n in ("orders", "payment", "shipping", "notify"))
    status: Dict[str, str] = {}
    status_lock = threading.Lock()

    # order service: tracks every order's status from the events it gets back.
    @orders.webhook.get(p["order_events"])
    def order_event(data: Dict[str, Any]) -> None:
        orders.log.add((data["event"], data["order_id"]))
        with status_lock:
            status[data["order_id"]] = data["event"]

    # payment service: charges orders up to 1000, declines the rest.
    @payment.webhook.get(p["payments"])
    def charge(data: Dict[str, Any]) -> None:
        payment.log.add(data["order_id"])
        if data["total"] <= 1000:
            event = {"event": "payment_processed", "order_id": data["order_id"], "amount": data["total"]}
            # The order hears of the payment before shipping can answer.
            payment.webhook.send(p["order_events"], event)
            payment.webhook.send(p["shipping"], event)
        else:
            event = {"event": "payment_declined", "order_id": data["order_id"]}
            payment.webhook.send(p["order_events"], event)
        payment.webhook.send(p["notify"], {**event, "user": data["user"]})

    # shipping service: ships what was paid for.
    @shipping.webhook.get(p["shipping"])
    def ship(data: Dict[str, Any]) -> None:
        shipping.log.add(data["order_id"])
        event = {"event": "order_shipped", "order_id": data["order_id"], "tracking": f"TRK-{data['order_id']}"}
        shipping.webhook.send(p["order_events"], event)
        shipping.webhook.send(p["notify"], event)

    # notification service: tells the customer about each step.
    @notification.webhook.get(p["notify"])
    def notify(data: Dict[str, Any]) -> None:
        notification.log.add((data["event"], data["order_id"]))

    services = [orders, payment, shipping, notification]
    for s in services:
        s.start()
    try:
        placed = {"A": 20.0, "B": 5000.0, "C": 999.5}
        for order_id, total in placed.items():
            orders.webhook.send(p["payments"], {"order_id": order_id, "total": total, "user": f"u-{order_id}"})
            with status_lock:
                status[order_id] = "created"
        final = {"A": "order_shipped", "B": "payment_declined", "C": "order_shipped"}

        def settled() -> bool:
            with status_lock:
                done = status == final
            return done and len(notification.log) == 5
        assert wait_until(settled, timeout=60), (status, notification.log.items)
    finally:
        for s in services:
            s.stop()
    # Each step happened once per order, in the order of the chain.
    assert sorted(payment.log.items) == ["A", "B", "C"]
    assert sorted(shipping.log.items) == ["A", "C"]
    assert Counter(orders.log.items) == Counter(
        {("payment_processed", "A"): 1, ("order_shipped", "A"): 1, ("payment_declined", "B"): 1,
         ("payment_processed", "C"): 1, ("order_shipped", "C"): 1})
    for oid in ("A", "C"):
        mine = [e for e, o in orders.log.items if o == oid]
        assert mine == ["payment_processed", "order_shipped"], oid
    assert Counter(notification.log.items) == Counter(
        {("payment_processed", "A"): 1, ("order_shipped", "A"): 1, ("payment_declined", "B"): 1,
         ("payment_processed", "C"): 1, ("order_shipped", "C"): 1})
    for path in p.values():
        q = path.strip("/")
        assert redis.pending(f"events:{q}", f"{q}-group") == 0, q
        assert xlen(redis, f"events:{q}:dlq") == 0, q
    # What the payment service told the notification service carries the user.
    notes = {(e["event"], e["order_id"]): e for e in entries(redis, f"events:notify_{tag}")}
    assert notes[("payment_declined", "B")]["user"] == "u-B"
    assert notes[("order_shipped", "C")]["tracking"] == "TRK-C"


def test_gateway_request_response_over_webhooks(redis: Redis) -> None:
    """An API gateway asks a service over one path and gets the answer back
    on its own responses path, matched by request id."""
    tag = uuid.uuid4().hex[:8]
    ask_path, reply_path = f"/orders_{tag}/create", f"/gateway_{tag}/responses"
    gateway, orders = Service("gateway"), Service("orders")
    answers: Dict[str, Dict[str, Any]] = {}
    answered = threading.Condition()

    @gateway.webhook.get(reply_path)
    def on_reply(data: Dict[str, Any]) -> None:
        with answered:
            answers[data["request_id"]] = without_meta(data)
            answered.notify_all()

    @orders.webhook.get(ask_path)
    def on_create(data: Dict[str, Any]) -> None:
        orders.log.add(data["request_id"])
        if not data.get("items"):
            reply = {"request_id": data["request_id"], "error": "an order needs items"}
        else:
            reply = {"request_id": data["request_id"], "status": "created", "order_id": f"order-{data['user']}"}
        orders.webhook.send(data["reply_to"], reply)

    for s in (gateway, orders):
        s.start()
    try:
        requests = {str(uuid.uuid4()): body for body in (
            {"user": "ann", "items": ["book"]}, {"user": "bo", "items": []}, {"user": "cy", "items": ["pen", "ink"]})}
        for rid, body in requests.items():
            gateway.webhook.send(ask_path, {"request_id": rid, "reply_to": reply_path, **body})
        with answered:
            assert answered.wait_for(lambda: len(answers) == len(requests), timeout=30), answers
    finally:
        for s in (gateway, orders):
            s.stop()
    assert sorted(orders.log.items) == sorted(requests)  # each request handled once
    for rid, body in requests.items():
        if body["items"]:
            assert answers[rid] == {"request_id": rid, "status": "created", "order_id": f"order-{body['user']}"}
        else:
            assert answers[rid] == {"request_id": rid, "error": "an order needs items"}
    for path in (ask_path, reply_path):
        q = path.strip("/").replace("/", "_")
        assert redis.pending(f"events:{q}", f"{q}-group") == 0, q
        assert xlen(redis, f"events:{q}") == len(requests), q
