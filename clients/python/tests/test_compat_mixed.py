"""A mixed deployment during a migration: one service still on the real
LeanMQ 0.2.0 (straight on Redis), one on the compat layer (through
leanmqd), sharing a queue, its prefix and its consumer group. Nothing may be
lost or handled twice."""
from __future__ import annotations

import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

leanmq = pytest.importorskip("leanmq", reason="the real leanmq==0.2.0 (a dev extra)")

from compat_broker import entries, needs_leanmqd, start, xlen  # noqa: E402
from leanmq_grpc import compat  # noqa: E402
from real_broker import Leanmqd, Redis  # noqa: E402
from waiting import wait_until  # noqa: E402

pytestmark = needs_leanmqd

N = 100  # messages from each side


@pytest.fixture(scope="module")
def broker(workdir: Path, redis: Redis) -> Iterator[Leanmqd]:
    d = start(workdir, redis)
    yield d
    d.stop()


def test_webhook_services_on_leanmq_and_compat_share_a_path(broker: Leanmqd, redis: Redis) -> None:
    path = f"/mixed/orders_{uuid.uuid4().hex[:8]}"
    senders = {
        "leanmq": leanmq.LeanMQWebhook(redis_host="127.0.0.1", redis_port=redis.port, auto_start=False),
        "compat": compat.LeanMQWebhook(target=broker.target, auto_start=False),
    }
    q = senders["leanmq"]._path_to_queue_name(senders["leanmq"]._normalize_path(path))
    handled: List[Tuple[str, str, int]] = []
    payloads: Dict[Tuple[str, int], Dict[str, Any]] = {}
    lock = threading.Lock()

    def serve(who: str):
        if who == "leanmq":
            hook = leanmq.LeanMQWebhook(redis_host="127.0.0.1", redis_port=redis.port, auto_start=False)
        else:
            hook = compat.LeanMQWebhook(target=broker.target, auto_start=False)

        @hook.get(path)
        def handle(data: Dict[str, Any]) -> None:
            with lock:
                handled.append((who, data["from"], data["n"]))
                payloads[(data["from"], data["n"])] = data

        return hook, hook.run_service(process_count=10, block_for_seconds=1, handle_signals=False)

    def phase(workers: Tuple[str, ...], first: int) -> None:
        """Run these services on the shared group, send N from each sender,
        and wait until every message is handled and nothing is pending."""
        running = [serve(who) for who in workers]
        try:
            for i in range(first, first + N // 2):
                for src, hook in senders.items():
                    hook.send(path, {"from": src, "n": i})
            want = 2 * (first + N // 2)
            assert wait_until(lambda: len(handled) >= want, timeout=60), len(handled)
            assert wait_until(lambda: redis.pending(f"webhook:{q}", f"{q}-group") == 0, timeout=30)
        finally:
            for hook, service in running:
                service.stop()
                hook.close()

    try:
        # Each side alone handles what both sides sent (so each one's part
        # of the work is certain, not left to which worker reads first)...
        phase(("compat",), 0)
        assert {who for who, _, _ in handled} == {"compat"}
        phase(("leanmq",), N // 2)
        assert {who for who, _, _ in handled[N:]} == {"leanmq"}
        # ...and both together on one group share it without a duplicate.
        phase(("leanmq", "compat"), N)
    finally:
        for hook in senders.values():
            hook.close()
    # Exactly once each, whoever sent it and whoever handled it.
    total = N + N // 2
    counts = Counter((src, n) for _, src, n in handled)
    assert set(counts) == {(src, n) for src in ("leanmq", "compat") for n in range(total)}
    assert max(counts.values()) == 1, [k for k, v in counts.items() if v > 1]
    assert xlen(redis, f"webhook:{q}") == 2 * total and xlen(redis, f"webhook:{q}:dlq") == 0
    # Each handler saw the same data LeanMQ gives handlers: the user's keys
    # plus `_leanmq` with the normalized path.
    for (src, n), data in payloads.items():
        assert data["from"] == src and data["n"] == n
        assert data["_leanmq"]["webhook"]["path"] == path


def test_core_queue_consumers_on_leanmq_and_compat_share_a_group(broker: Leanmqd, redis: Redis) -> None:
    name = f"jobs_{uuid.uuid4().hex[:8]}"
    real = leanmq.LeanMQ(redis_host="127.0.0.1", redis_port=redis.port, prefix="mq:")
    ours = compat.LeanMQ(target=broker.target, prefix="mq:")
    rq, _ = real.create_queue_pair(name)
    oq, _ = ours.create_queue_pair(name)  # the same pair: idempotent on both sides
    assert (rq.name, rq.consumer_group) == (oq.name, oq.consumer_group)
    got: List[Tuple[str, str, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def take(who: str, q: Any) -> int:
        batch = q.get_messages(count=7, block_for_seconds=1, consumer_id=f"{who}-1")
        for m in batch:
            with lock:
                got.append((who, m.data["from"], m.data["n"]))
            assert q.acknowledge_messages([m.id]) == 1
        return len(batch)

    def consume(who: str, q: Any) -> None:
        while not stop.is_set():
            take(who, q)

    def send(numbers: range) -> None:
        for i in numbers:
            rq.send_message({"from": "leanmq", "n": i})
            oq.send_message({"from": "compat", "n": i})

    # Half is waiting before the consumers start, and each side first takes
    # one batch of it on its own, so both surely do part of the work (left
    # to a race, a LeanMQ consumer blocked in XREADGROUP can win every new
    # entry: a latency edge, not a delivery difference). The other half is
    # sent while both consume.
    send(range(N // 2))
    assert take("compat", oq) > 0 and take("leanmq", rq) > 0
    threads = [threading.Thread(target=consume, args=w, daemon=True) for w in (("leanmq", rq), ("compat", oq))]
    for t in threads:
        t.start()
    try:
        send(range(N // 2, N))
        assert wait_until(lambda: len(got) >= 2 * N, timeout=60), len(got)
        assert wait_until(lambda: redis.pending(f"mq:{name}", f"{name}-group") == 0, timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        real.close()
        ours.close()
    counts = Counter((src, n) for _, src, n in got)
    assert set(counts) == {(src, n) for src in ("leanmq", "compat") for n in range(N)}
    assert max(counts.values()) == 1
    by = Counter(who for who, _, _ in got)
    assert by["leanmq"] > 0 and by["compat"] > 0, by
    # A compat send is LeanMQ's core envelope: no `_leanmq` key for LeanMQ's readers.
    assert all("_leanmq" not in e for e in entries(redis, f"mq:{name}"))


def test_a_leanmq_dead_letter_is_requeued_by_the_compat_and_handled_by_leanmq(broker: Leanmqd, redis: Redis) -> None:
    name = f"dl_{uuid.uuid4().hex[:8]}"
    real = leanmq.LeanMQ(redis_host="127.0.0.1", redis_port=redis.port, prefix="mq:")
    ours = compat.LeanMQ(target=broker.target, prefix="mq:")
    try:
        rq, rdlq = real.create_queue_pair(name)
        rq.send_message({"order": "A-1"})
        [m] = rq.get_messages(count=1)
        assert rq.move_to_dlq([m.id], "Processing error: flaky", rdlq) == 1
        # The compat sees LeanMQ's dead letter with its failure record...
        odlq = ours.get_dead_letter_queue(name)
        assert odlq is not None
        [dead] = odlq.get_messages(count=10)
        assert dead.data["order"] == "A-1" and dead.data["_failures"][0]["reason"] == "Processing error: flaky"
        assert [q.message_count for q in ours.list_queues() if q.name == f"mq:{name}:dlq"] == [1]
        # ...and requeues it atomically; LeanMQ's consumer gets it back.
        assert odlq.requeue_messages([dead.id]) == 1
        assert xlen(redis, f"mq:{name}:dlq") == 0
        [back] = rq.get_messages(count=1, block_for_seconds=2)
        assert back.data["order"] == "A-1" and back.data["_requeues"][0]["to_queue"] == f"mq:{name}"
        assert rq.acknowledge_messages([back.id]) == 1
        assert redis.pending(f"mq:{name}", f"{name}-group") == 0
    finally:
        real.close()
        ours.close()
