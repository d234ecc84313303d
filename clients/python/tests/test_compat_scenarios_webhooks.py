"""What LeanMQ's webhook documentation examples demonstrate, in this
repository's own code (see ``test_compat_scenarios.py`` for the approach),
each against a real leanmqd and redis-server:

- a basic webhook service, one handler per path; process_messages,
  auto_start and start_processing (webhook-services.md);
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
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from compat_broker import entries, needs_leanmqd, xlen
from leanmq_grpc.compat import LeanMQ, LeanMQWebhook, QueueInfo
from real_broker import Leanmqd, Redis
from scenario_kit import MAX_ATTEMPTS, REDIS, Recorder, point_at, start_broker, without_meta
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
