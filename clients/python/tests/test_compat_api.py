"""One test per row of the compat table in the README (LeanMQ call → RPC →
difference), against a real leanmqd and redis-server."""
from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import grpc
import pytest

import leanmq_grpc.compat as compat
from compat_broker import entries, needs_leanmqd, start, unique, xlen
from leanmq_grpc.compat import (
    LeanMQ,
    LeanMQWebhook,
    Message,
    Queue,
    QueueInfo,
    Transaction,
    WebhookRoute,
    WebhookService,
)
from real_broker import SDK_TOKEN, Leanmqd, Redis, self_signed_cert, write_tokens_file
from waiting import wait_until

pytestmark = needs_leanmqd


@pytest.fixture(scope="module")
def broker(workdir: Path, redis: Redis) -> Iterator[Leanmqd]:
    d = start(workdir, redis, ["--retry-min", "100ms", "--retry-max", "200ms", "--max-attempts", "3"])
    yield d
    d.stop()


@pytest.fixture
def mq(broker: Leanmqd) -> Iterator[LeanMQ]:
    m = LeanMQ(target=broker.target)
    yield m
    m.close()


# ------------------------------------------------------------------ names and shapes


def test_exports_leanmqs_public_names_and_exceptions() -> None:
    leanmq = pytest.importorskip("leanmq", reason="the real leanmq==0.2.0 (Python >= 3.11)")
    import leanmq.exceptions as lx

    for name in leanmq.__all__:
        assert hasattr(compat, name), name
    for name in ("LeanMQError", "ConnectionError", "QueueError", "MessageError", "TransactionError",
                 "QueueNotFoundError", "DeadLetterQueueNotFoundError"):
        ours, theirs = getattr(compat, name), getattr(lx, name)
        assert [c.__name__ for c in ours.__mro__][:-2] == [c.__name__ for c in theirs.__mro__][:-2], name
    assert compat.WebhookRoute is WebhookRoute


def test_signatures_match_leanmq_0_2_0() -> None:
    """Every LeanMQ parameter exists here with the same name, order and default
    (the compat adds keyword-only extras after them)."""
    import inspect

    leanmq = pytest.importorskip("leanmq", reason="the real leanmq==0.2.0 (Python >= 3.11)")
    from leanmq.webhook import WebhookRoute as TheirRoute

    pairs = [
        (leanmq.LeanMQ, LeanMQ), (leanmq.Queue, Queue), (leanmq.LeanMQWebhook, LeanMQWebhook),
        (leanmq.WebhookService, WebhookService), (leanmq.Transaction, Transaction), (TheirRoute, WebhookRoute),
    ]
    for theirs, ours in pairs:
        for name, fn in inspect.getmembers(theirs, inspect.isfunction):
            if name.startswith("_") and name != "__init__":
                continue
            assert hasattr(ours, name), f"{theirs.__name__}.{name}"
            tp = [p for p in inspect.signature(fn).parameters.values()]
            op = [p for p in inspect.signature(getattr(ours, name)).parameters.values()
                  if p.kind != inspect.Parameter.KEYWORD_ONLY]
            theirs_sig = [(p.name, p.default) for p in tp]
            if (theirs.__name__, name) == ("Queue", "requeue_messages"):
                # The one intended difference: LeanMQ's guide calls it without a destination.
                theirs_sig[-1] = ("destination_queue", None)
            assert theirs_sig == [(p.name, p.default) for p in op], f"{theirs.__name__}.{name}"
    for dc_theirs, dc_ours in ((leanmq.Message, Message), (leanmq.QueueInfo, QueueInfo)):
        assert list(dc_theirs.__dataclass_fields__) == list(dc_ours.__dataclass_fields__)


# ------------------------------------------------------------------ LeanMQ


def test_connection_from_keywords_env_and_redis_args_ignored(
    broker: Leanmqd, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LEANMQ_GRPC_TARGET", broker.target)
    with caplog.at_level(logging.INFO, logger="leanmq_grpc.compat"):
        m = LeanMQ(redis_host="redis.invalid", redis_port=1, redis_db=7, redis_password="x", prefix="mq:")
    lines = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(lines) == 1 and broker.target in lines[0] and "'mq:'" in lines[0]
    q, _ = m.create_queue_pair(unique("envq"))
    assert q.send_message({"a": 1})
    m.close()
    # target= wins over the environment.
    monkeypatch.setenv("LEANMQ_GRPC_TARGET", "127.0.0.1:1")
    with LeanMQ(target=broker.target) as m2:
        assert m2.create_queue_pair(unique("kw"))[0].send_message({"b": 2})
    # The default target is 127.0.0.1:50051.
    monkeypatch.delenv("LEANMQ_GRPC_TARGET")
    assert compat.config.resolve(None, None)[0] == "127.0.0.1:50051"


def test_token_from_keyword_and_env(workdir: Path, redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = write_tokens_file(workdir / "compat-tokens.toml")
    d = start(workdir, redis, ["--auth-tokens", str(tokens)])
    try:
        # The SDK token may send to and subscribe to /sdk/>: queue names sdk_* read as /sdk/*.
        name = unique("sdk")
        with pytest.raises(compat.QueueError, match="PERMISSION_DENIED|UNAUTHENTICATED"):
            LeanMQ(target=d.target).create_queue_pair(name)
        m = LeanMQ(target=d.target, token=SDK_TOKEN)
        q, _ = m.create_queue_pair(name)
        q.send_message({"x": 1})
        monkeypatch.setenv("LEANMQ_GRPC_TOKEN", SDK_TOKEN)
        m2 = LeanMQ(target=d.target)
        msgs = m2._main(name).get_messages(count=1, block_for_seconds=2)
        assert [x.data for x in msgs] == [{"x": 1}]
        m.close()
        m2.close()
    finally:
        d.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificate")
def test_tls_ca_and_token_from_the_environment(workdir: Path, redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    tls_dir = workdir / "compat-tls"
    tls_dir.mkdir()
    cert, key = self_signed_cert(tls_dir)
    tokens = write_tokens_file(workdir / "compat-tls-tokens.toml")
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    d = Leanmqd(tls_dir, redis.url, ["--prefix", "mq:", "--tls-cert", str(cert), "--tls-key", str(key),
                                     "--auth-tokens", str(tokens)], credentials=creds)
    try:
        monkeypatch.setenv("LEANMQ_GRPC_TARGET", d.target)
        monkeypatch.setenv("LEANMQ_GRPC_TOKEN", SDK_TOKEN)
        monkeypatch.setenv("LEANMQ_GRPC_CA", str(cert))
        with LeanMQ() as m:
            q, _ = m.create_queue_pair(unique("sdk"))
            q.send_message({"secure": True})
            assert [x.data for x in q.get_messages(count=1, block_for_seconds=2)] == [{"secure": True}]
        # Without the CA the client speaks plaintext to a TLS port: ConnectionError.
        monkeypatch.delenv("LEANMQ_GRPC_CA")
        with LeanMQ() as plain:
            with pytest.raises(compat.ConnectionError):
                plain.create_queue_pair(unique("sdk"))
        monkeypatch.setenv("LEANMQ_GRPC_CA", str(tls_dir / "missing.pem"))
        with pytest.raises(compat.ConnectionError, match="LEANMQ_GRPC_CA"):
            LeanMQ()
    finally:
        d.stop()


def test_create_queue_pair_makes_leanmqs_keys_and_groups(mq: LeanMQ, redis: Redis) -> None:
    name = f"responses:{unique('x')}-b1"  # ':' and '-' as in LeanMQ's request/response example
    q, dlq = mq.create_queue_pair(name)
    assert (q.name, q.consumer_group, q.is_dlq) == (f"mq:{name}", f"{name}-group", False)
    assert (dlq.name, dlq.consumer_group, dlq.is_dlq) == (f"mq:{name}:dlq", f"{name}-group-dlq", True)
    assert redis.cli("HGET", f"mq:{name}:metadata", "consumer_group") == f"{name}-group"
    assert redis.cli("HGET", f"mq:{name}:dlq:metadata", "is_dlq") == "true"
    assert f"mq:{name}" in redis.cli("SMEMBERS", "mq:registry").splitlines()
    assert redis.pending(f"mq:{name}", f"{name}-group") == 0  # the group exists
    # Idempotent, and names that are another queue's keys are refused.
    mq.create_queue_pair(name)
    with pytest.raises(compat.QueueError, match="INVALID_ARGUMENT"):
        mq.create_queue_pair(f"{name}:dlq")


def test_send_message_with_message_id_and_ttl(mq: LeanMQ, redis: Redis) -> None:
    q, _ = mq.create_queue_pair(unique("send"))
    first = q.send_message({"n": 1}, message_id="order-1", ttl=60)
    again = q.send_message({"n": 1}, message_id="order-1")
    assert again == first  # the id is the idempotency key
    other = q.send_message({"n": 2})
    [e1, e2] = entries(redis, q.name)
    assert e1["n"] == 1 and e1["_metadata"]["ttl"] == 60 and "_leanmq" not in e1
    assert e2["_metadata"]["ttl"] is None
    assert redis.cli("ZSCORE", f"{q.name}:expiry", first) != ""
    assert other != first
    with pytest.raises(compat.MessageError):
        q.send_message(["not", "a", "dict"])  # type: ignore[arg-type]


def test_get_messages_uses_receive_and_waits(mq: LeanMQ) -> None:
    q, _ = mq.create_queue_pair(unique("get"))
    assert q.get_messages(count=5) == []
    sent = [q.send_message({"i": i}) for i in range(3)]
    got = q.get_messages(count=2, consumer_id="worker-1")
    assert [m.id for m in got] == sent[:2]
    assert [m.data for m in got] == [{"i": 0}, {"i": 1}]
    assert all(m.delivery_count == 1 and m.timestamp > 0 for m in got)
    assert [m.id for m in q.get_messages(count=10)] == sent[2:]
    # A blocked read returns as soon as a message arrives.
    threading.Timer(0.3, lambda: q.send_message({"late": True})).start()
    t0 = time.monotonic()
    late = q.get_messages(count=1, block_for_seconds=10)
    assert [m.data for m in late] == [{"late": True}] and time.monotonic() - t0 < 9


def test_acknowledge_messages_by_id_with_kept_receipts(mq: LeanMQ, redis: Redis) -> None:
    q, dlq = mq.create_queue_pair(unique("ack"))
    a, b = q.send_message({"a": 1}), q.send_message({"b": 2})
    got = q.get_messages(count=2)
    assert redis.pending(q.name, q.consumer_group) == 2
    assert q.acknowledge_messages([a, "1-1", "not-an-id"]) == 1  # never handed out: not acknowledged
    assert q.acknowledge_messages([a]) == 0  # twice: as XACK counts it
    assert q.acknowledge_messages([m.id for m in got if m.id == b]) == 1
    assert redis.pending(q.name, q.consumer_group) == 0
    assert dlq.acknowledge_messages([a]) == 0  # a DLQ: LeanMQ refuses too
    # Another Queue object for the same queue settles what this one received.
    c = q.send_message({"c": 3})
    q.get_messages(count=1)
    again = mq.get_queue(q.name)
    assert again is not None and again is not q
    assert again.acknowledge_messages([c]) == 1


def test_held_messages_keep_their_lease_until_acked(broker: Leanmqd, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow LeanMQ consumer is not raced by a redelivery (LeanMQ has no
    leases); here with a 1 s lease extended every 0.2 s."""
    monkeypatch.setattr(compat.config, "LEASE_SECONDS", 1.0)
    monkeypatch.setattr(compat.config, "EXTEND_EVERY", 0.2)
    with LeanMQ(target=broker.target) as slow, LeanMQ(target=broker.target) as other:
        q, _ = slow.create_queue_pair(unique("lease"))
        mid = q.send_message({"slow": True})
        assert [m.id for m in q.get_messages(count=1)] == [mid]
        rival = other.get_queue(q.name)
        assert rival is not None
        # Three lease lengths pass; the other consumer never gets the message.
        assert not wait_until(lambda: rival.get_messages(count=1) != [], timeout=3)
        assert q.acknowledge_messages([mid]) == 1
    # A consumer that goes away without acking: its message comes back.
    gone = LeanMQ(target=broker.target)
    q2, _ = gone.create_queue_pair(unique("gone"))
    mid2 = q2.send_message({"x": 1})
    assert [m.id for m in q2.get_messages(count=1)] == [mid2]
    gone.close()
    with LeanMQ(target=broker.target) as after:
        back = after.get_queue(q2.name)
        assert back is not None
        got: List[Message] = []
        assert wait_until(lambda: bool(got.extend(back.get_messages(count=1)) or got), timeout=10)
        assert got[0].id == mid2 and got[0].delivery_count == 2


def test_move_to_dlq_uses_nack_dead_letter(mq: LeanMQ, redis: Redis) -> None:
    q, dlq = mq.create_queue_pair(unique("dlq"))
    mid = q.send_message({"bad": True})
    q.get_messages(count=1)
    assert q.move_to_dlq([mid], "Processing error: boom", q) == 0  # not a DLQ: as LeanMQ
    assert q.move_to_dlq([mid], "Processing error: boom", dlq) == 1
    assert q.move_to_dlq([mid], "again", dlq) == 0
    [dead] = entries(redis, dlq.name)
    assert dead["bad"] is True and dead["_failures"][-1]["reason"] == "Processing error: boom"
    assert redis.pending(q.name, q.consumer_group) == 0


def test_dlq_get_messages_lists_dead_letters_once(mq: LeanMQ) -> None:
    q, dlq = mq.create_queue_pair(unique("dlqread"))
    ids = [q.send_message({"i": i}) for i in range(2)]
    q.get_messages(count=2)
    q.move_to_dlq(ids, "why", dlq)
    got = dlq.get_messages(count=10)
    assert [m.data["i"] for m in got] == [0, 1]
    assert got[0].data["_failures"][0]["reason"] == "why"
    assert dlq.get_messages(count=10) == []  # each once per Queue object


def test_requeue_messages_with_and_without_destination(mq: LeanMQ, redis: Redis) -> None:
    q, dlq = mq.create_queue_pair(unique("rq"))
    other, _ = mq.create_queue_pair(unique("rqother"))
    ids = [q.send_message({"i": i}) for i in range(3)]
    q.get_messages(count=3)
    q.move_to_dlq(ids, "x", dlq)
    dead = [m.id for m in dlq.get_messages(count=10)]
    assert q.requeue_messages(dead, q) == 0  # not a DLQ
    assert dlq.requeue_messages(dead[:1], dlq) == 0  # into a DLQ
    assert dlq.requeue_messages(dead[:1]) == 1  # as LeanMQ's guide calls it
    assert dlq.requeue_messages(dead[1:2], q) == 1  # as LeanMQ's signature wants it
    assert dlq.requeue_messages(dead[2:], other) == 1  # another queue: copy, then delete
    assert xlen(redis, dlq.name) == 0
    back = q.get_messages(count=10)
    assert sorted(m.data["i"] for m in back) == [0, 1]
    assert back[0].data["_requeues"][0]["from_dlq"]
    assert [m.data for m in other.get_messages(count=10)] == [{"i": 2}]
    assert dlq.requeue_messages(dead) == 0  # gone already


def test_delete_messages_on_dlq_and_queue(mq: LeanMQ, redis: Redis) -> None:
    q, dlq = mq.create_queue_pair(unique("del"))
    a, b = q.send_message({"a": 1}), q.send_message({"b": 1})
    q.get_messages(count=2)
    q.move_to_dlq([a], "x", dlq)
    [dead] = [m.id for m in dlq.get_messages(count=10)]
    assert dlq.delete_messages([dead]) == 1 and xlen(redis, dlq.name) == 0
    assert q.delete_messages([b]) == 1  # settled for good
    assert redis.pending(q.name, q.consumer_group) == 0
    assert q.get_messages(count=10) == []
    assert q.delete_messages(["1-0"]) == 0


def test_purge_queue_and_dlq(mq: LeanMQ, redis: Redis) -> None:
    q, dlq = mq.create_queue_pair(unique("purge"))
    ids = [q.send_message({"i": i}) for i in range(4)]
    q.get_messages(count=1)
    q.move_to_dlq(ids[:1], "x", dlq)
    assert dlq.purge() == 1
    assert q.purge() == 4
    assert xlen(redis, q.name) == 0
    q.send_message({"after": True})
    assert [m.data for m in q.get_messages(count=10)] == [{"after": True}]


def test_get_info_never_crashes(mq: LeanMQ) -> None:
    q, dlq = mq.create_queue_pair(unique("info"))
    q.send_message({"a": 1})
    q.send_message({"b": 1})
    q.get_messages(count=1)
    info = q.get_info()
    assert (info.name, info.is_dlq, info.message_count, info.consumer_group, info.pending_messages) == (
        q.name, False, 2, q.consumer_group, 1)
    assert info.created_at and info.created_at > 0
    assert dlq.get_info().message_count == 0 and dlq.get_info().is_dlq
    ghost = Queue(mq.client, "mq:never_created", "never_created-group")
    assert ghost.get_info().message_count == 0  # LeanMQ 0.2.0 raises here


def test_list_queues_and_get_queue_accept_listed_names(mq: LeanMQ) -> None:
    name = unique("list")
    q, dlq = mq.create_queue_pair(name)
    q.send_message({"a": 1})
    q.get_messages(count=1)
    infos = {i.name: i for i in mq.list_queues()}
    main, dead = infos[f"mq:{name}"], infos[f"mq:{name}:dlq"]
    assert (main.is_dlq, main.message_count, main.consumer_group, main.pending_messages) == (False, 1, f"{name}-group", 1)
    assert (dead.is_dlq, dead.message_count, dead.consumer_group) == (True, 0, f"{name}-group-dlq")
    assert main.created_at and dead.created_at
    # The names list_queues returns go back into get_queue (LeanMQ 0.2.0 prefixes them twice).
    for listed in (main.name, name):
        got = mq.get_queue(listed)
        assert got is not None and (got.name, got.is_dlq) == (q.name, False)
    got_dlq = mq.get_queue(dead.name)
    assert got_dlq is not None and (got_dlq.name, got_dlq.is_dlq) == (dlq.name, True)
    for listed in (main.name, name):
        d = mq.get_dead_letter_queue(listed)
        assert d is not None and d.name == dlq.name
    assert mq.get_queue(unique("missing")) is None
    assert mq.get_dead_letter_queue(unique("missing")) is None
    # Another prefix's queues are not listed.
    with LeanMQ(target=mq.client.conn.target, prefix="example:") as ex:
        assert f"mq:{name}" not in {i.name for i in ex.list_queues()}


def test_list_queues_follows_every_page(mq: LeanMQ) -> None:
    # More queues than leanmqd's default ListQueues page (100).
    names = [unique("paged") for _ in range(150)]
    for name in names:
        mq.create_queue_pair(name)
    listed = {i.name for i in mq.list_queues()}
    missing = [n for n in names if f"mq:{n}" not in listed or f"mq:{n}:dlq" not in listed]
    assert not missing, f"{len(missing)} of 150 queues not listed"


def test_delete_queue_with_and_without_dlq(mq: LeanMQ, redis: Redis) -> None:
    a, b = unique("dq"), unique("dqkeep")
    for n in (a, b):
        q, _ = mq.create_queue_pair(n)
        q.send_message({"x": 1})
    assert mq.delete_queue(a) is True
    assert xlen(redis, f"mq:{a}") == 0 and redis.cli("EXISTS", f"mq:{a}:dlq:metadata") == "0"
    assert mq.delete_queue(b, delete_dlq=False) is True
    assert redis.cli("EXISTS", f"mq:{b}:dlq:metadata") == "1"
    assert mq.get_queue(a) is None
    assert mq.delete_queue(unique("never")) is True  # as LeanMQ


def test_transaction_is_one_atomic_send_batch(mq: LeanMQ, redis: Redis) -> None:
    q1, _ = mq.create_queue_pair(unique("tx1"))
    q2, _ = mq.create_queue_pair(unique("tx2"))
    with mq.transaction() as tx:
        tid = tx.send_message(q1, {"a": 1})
        tx.send_message(q2, {"b": 2}, ttl=30)
        assert xlen(redis, q1.name) == 0  # nothing until the block ends
    assert len(tid) == 36
    assert [e["a"] for e in entries(redis, q1.name)] == [1]
    assert entries(redis, q2.name)[0]["_metadata"]["ttl"] == 30
    with pytest.raises(RuntimeError):
        with mq.transaction() as tx:
            tx.send_message(q1, {"never": True})
            raise RuntimeError("abort")
    assert xlen(redis, q1.name) == 1
    # One invalid message: nothing of the batch is appended.
    with pytest.raises(compat.TransactionError):
        with mq.transaction() as tx:
            tx.send_message(q1, {"ok": True})
            tx.send_message(q1, {"big": "x" * (2 << 20)})
    assert xlen(redis, q1.name) == 1


def test_process_expired_messages_returns_zero_the_broker_expires(mq: LeanMQ, redis: Redis) -> None:
    q, dlq = mq.create_queue_pair(unique("ttl"))
    t0 = time.monotonic()
    q.send_message({"short": True}, ttl=1)
    assert mq.process_expired_messages() == 0
    # The broker never delivers it after its TTL: it goes to the DLQ as "expired".
    assert wait_until(lambda: time.monotonic() - t0 > 1.5, timeout=5)  # the TTL itself is what we wait for
    assert wait_until(lambda: (q.get_messages(count=1) == [] and xlen(redis, dlq.name) == 1), timeout=15)
    assert entries(redis, dlq.name)[0]["_failures"][-1]["reason"] == "expired"


def test_close_and_context_manager(broker: Leanmqd) -> None:
    with LeanMQ(target=broker.target) as m:
        q, _ = m.create_queue_pair(unique("ctx"))
        q.send_message({"a": 1})
    with pytest.raises(compat.LeanMQError):
        q.send_message({"after": "close"})


def test_unreachable_broker_is_connection_error() -> None:
    m = LeanMQ(target="127.0.0.1:1")
    with pytest.raises(compat.ConnectionError):
        m.create_queue_pair("x")
    m.close()


# ------------------------------------------------------------------ LeanMQWebhook


def _wait_handled(seen: List[Any], n: int, timeout: float = 15) -> bool:
    return wait_until(lambda: len(seen) >= n, timeout=timeout)


def test_webhook_constructor_mq_get_send_and_process_messages(broker: Leanmqd, redis: Redis) -> None:
    wh = LeanMQWebhook(target=broker.target, process_interval=1, auto_start=False)
    assert isinstance(wh.mq, LeanMQ) and wh.mq.prefix == "webhook:" and wh.process_interval == 1
    path = f"/compat/{unique('order')}/status/"
    seen: List[Dict[str, Any]] = []

    @wh.get(path)
    def handle(data: Dict[str, Any]) -> None:
        seen.append(data)

    [route] = wh.routes
    assert route.path == path.rstrip("/") and route.handler is not None
    qname = wh._path_to_queue_name(route.path)
    assert route.queue.name == f"webhook:{qname}"
    assert redis.pending(f"webhook:{qname}", f"{qname}-group") == 0  # created when registered
    mid = wh.send(path, {"order_id": "ORD-1"})
    [e] = entries(redis, f"webhook:{qname}")
    assert e["_leanmq"]["webhook"]["path"] == route.path  # as LeanMQWebhook.send writes it
    assert wh.process_messages(block=True, timeout=5) == 1
    assert seen[0]["order_id"] == "ORD-1" and seen[0]["_leanmq"]["webhook"]["path"] == route.path
    assert mid
    # webhook.mq sees the same queue on the same channel.
    assert wh.mq.get_queue(qname) is not None and wh.mq.client.conn is route.queue.client.conn
    wh.close()


def test_auto_start_processes_in_the_background(broker: Leanmqd) -> None:
    wh = LeanMQWebhook(target=broker.target, process_interval=1)  # auto_start=True, LeanMQ's default
    seen: List[Any] = []
    path = f"/compat/{unique('auto')}"
    wh.get(path)(seen.append)
    wh.send(path, {"n": 1})
    assert _wait_handled(seen, 1)
    # The program processing by itself takes over: the background stops.
    wh.send(path, {"n": 2})
    assert wh.process_messages(block=True, timeout=5) + len(seen) >= 2
    assert _wait_handled(seen, 2)
    assert not wh._auto_running
    wh.close()


def test_run_service_and_webhook_service(broker: Leanmqd) -> None:
    wh = LeanMQWebhook(target=broker.target, auto_start=False)
    seen: List[Any] = []
    path = f"/compat/{unique('svc')}"
    wh.get(path)(seen.append)
    service = wh.run_service(process_count=5, block_for_seconds=1, handle_signals=False)
    assert isinstance(service, WebhookService) and service.is_alive()
    for i in range(7):
        wh.send(path, {"i": i})
    assert _wait_handled(seen, 7)
    service.stop()
    assert not service.is_alive()
    assert sorted(d["i"] for d in seen) == list(range(7))
    wh.close()


def test_start_and_stop_processing(broker: Leanmqd) -> None:
    wh = LeanMQWebhook(target=broker.target, auto_start=False, process_interval=1)
    seen: List[Any] = []
    path = f"/compat/{unique('loop')}"
    wh.get(path)(seen.append)
    t = threading.Thread(target=wh.start_processing)
    t.start()
    wh.send(path, {"x": 1})
    assert _wait_handled(seen, 1)
    assert wh.is_processing
    wh.stop_processing()
    t.join(timeout=10)
    assert not t.is_alive() and not wh.is_processing
    wh.close()


def test_handler_exceptions_retry_with_backoff_then_dead_letter(broker: Leanmqd, redis: Redis) -> None:
    """The module's leanmqd allows 3 attempts with 100-200 ms backoff."""
    wh = LeanMQWebhook(target=broker.target, auto_start=False)
    calls: List[int] = []
    path = f"/compat/{unique('fail')}"
    qname = wh._path_to_queue_name(path)

    @wh.get(path)
    def always_fails(data: Dict[str, Any]) -> None:
        calls.append(1)
        raise ValueError("nope")

    wh.send(path, {"x": 1})
    assert wait_until(lambda: (wh.process_messages(block=True, timeout=1) == 0 and xlen(redis, f"webhook:{qname}:dlq") == 1), timeout=20)
    assert len(calls) == 3
    [dead] = entries(redis, f"webhook:{qname}:dlq")
    assert "Processing error: nope" in dead["_failures"][-1]["reason"]
    wh.close()


def test_retry_failures_false_dead_letters_at_once_like_leanmq(broker: Leanmqd, redis: Redis) -> None:
    wh = LeanMQWebhook(target=broker.target, auto_start=False, retry_failures=False)
    calls: List[int] = []
    path = f"/compat/{unique('now')}"
    qname = wh._path_to_queue_name(path)

    @wh.get(path)
    def fails(data: Dict[str, Any]) -> None:
        calls.append(1)
        raise ValueError("once")

    wh.send(path, {"x": 1})
    assert wh.process_messages(block=True, timeout=5) == 0
    assert len(calls) == 1 and xlen(redis, f"webhook:{qname}:dlq") == 1
    wh.close()


def test_close_and_context_manager_of_the_webhook(broker: Leanmqd) -> None:
    with LeanMQWebhook(target=broker.target) as wh:
        path = f"/compat/{unique('close')}"
        wh.send(path, {"a": 1})
    assert not wh._auto_running
    with pytest.raises(compat.LeanMQError):
        wh.send(path, {"after": "close"})
