"""Cross-language end to end: the Python, Go and Node SDKs through one leanmqd."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any, Dict, List

import grpc
from leanmq_grpc import Webhook

from harness import (
    Agent,
    normalized,
    payload_of,
    pending_count,
    queue_name,
    unique_path,
    wait_until,
)

# A JSON object that exercises nesting, unicode, numbers, booleans and null.
DOC: Dict[str, Any] = {
    "order_id": "ORD-12345",
    "status": "shipped",
    "quantity": 5,
    "price": 12.5,
    "tags": ["fragile", "grüße", "✓"],
    "nested": {"ok": True, "none": None, "deep": {"list": [1, 2, {"x": "y"}]}},
}
# Bytes that are not UTF-8 and not JSON: every byte value, then a tail.
BLOB = bytes(range(256)) + b"\xff\xfe\x00leanmq\x80"


def consume_args(broker, path: str, group: str, count: int, *extra: str) -> List[str]:
    args = ["--target", broker.target, "--path", path, "--count", str(count)]
    if group:
        args += ["--group", group]
    return args + list(extra)


def test_python_sends_json_and_bytes_to_go_and_node(broker, redis_server, agents):
    path = unique_path("fanout")
    go = agents.go("consume", *consume_args(broker, path, "go", 2, "--timeout", "60"))
    node = agents.node("consume", *consume_args(broker, path, "node", 2, "--timeout", "60"))
    go.wait_ready()
    node.wait_ready()

    with Webhook(broker.target) as wh:
        json_id = wh.send(path, DOC)
        bin_id = wh.send(path, BLOB, headers={"x-e2e": "bytes"})

    for agent in (go, node):
        rc = agent.wait_exit(30)
        assert rc == 0, agent.describe()
        got = {d["message_id"]: d for d in agent.deliveries}
        assert set(got) == {json_id, bin_id}, agent.describe()
        assert len(agent.deliveries) == 2, agent.describe()

        j = got[json_id]
        assert j["content_type"] == "application/json"
        assert json.loads(payload_of(j)) == DOC
        assert j["path"] == normalized(path)
        assert j["attempt"] == 1

        b = got[bin_id]
        assert b["content_type"] == "application/octet-stream"
        assert payload_of(b) == BLOB
        assert b["headers"].get("x-e2e") == "bytes"
        assert b["attempt"] == 1

    r = redis_server.client()
    stream = "webhook:" + queue_name(path)
    for group in ("go", "node"):
        assert wait_until(lambda: pending_count(r, stream, group) == 0, 10, f"group {group} fully acked")


def test_go_sends_python_process_messages_handles(broker, redis_server, agents):
    path = unique_path("pull")
    # Compact JSON (no '<', '>' or '&', which Go's encoder would escape): the
    # broker delivers a compact JSON object byte for byte.
    text = json.dumps(DOC, ensure_ascii=False, separators=(",", ":"))
    sent = agents.run("go", "send", "--target", broker.target, "--path", path, "--json", text)
    message_id = sent.stdout_lines[-1].strip()
    assert message_id, sent.describe()

    proc = agents.python("process", "--target", broker.target, "--path", path, "--count", "1", "--timeout", "30")
    rc = proc.wait_exit(45)
    assert rc == 0, proc.describe()
    assert len(proc.deliveries) == 1, proc.describe()
    d = proc.deliveries[0]
    assert d["message_id"] == message_id
    assert d["content_type"] == "application/json"
    assert json.loads(payload_of(d)) == DOC
    assert payload_of(d) == text.encode("utf-8")
    assert d["path"] == normalized(path)
    assert d["attempt"] == 1

    r = redis_server.client()
    q = queue_name(path)
    assert wait_until(lambda: pending_count(r, f"webhook:{q}", f"{q}-group") == 0, 10, "process_messages acked")


def test_node_dead_letter_lands_in_dlq(broker, redis_server, agents):
    path = unique_path("deadletter")
    q = queue_name(path)
    node = agents.node("consume", *consume_args(broker, path, "", 1, "--mode", "deadletter", "--timeout", "60"))
    node.wait_ready()
    doc = {"order_id": "ORD-DL", "attempt_me": 1, "note": "poison"}
    with Webhook(broker.target) as wh:
        message_id = wh.send(path, doc)

    rc = node.wait_exit(30)
    assert rc == 0, node.describe()
    assert [d["message_id"] for d in node.deliveries] == [message_id]
    assert node.deliveries[0]["attempt"] == 1

    r = redis_server.client()
    dlq = f"webhook:{q}:dlq"
    entries = wait_until(lambda: r.xrange(dlq), 10, f"a dead letter in {dlq}")
    assert len(entries) == 1, entries
    data = json.loads(entries[0][1][b"data"])
    failures = data["_failures"]
    assert isinstance(failures, list) and failures, data
    assert "e2e dead letter" in failures[-1]["reason"], failures
    assert {k: v for k, v in data.items() if not k.startswith("_")} == doc
    # The main group has nothing pending: the dead-lettering settled it.
    assert pending_count(r, f"webhook:{q}", f"{q}-group") == 0


def test_python_handler_outlives_its_lease_by_extending(broker, redis_server, agents):
    path = unique_path("lease")
    stream = "webhook:" + queue_name(path)
    # --count 2 keeps the subscriber open after the first delivery, so a
    # redelivery (lease lost) would show up on its stdout.
    py = agents.python(
        "consume",
        *consume_args(broker, path, "py", 2, "--mode", "sleep:3", "--ack-deadline", "1", "--timeout", "60"),
    )
    py.wait_ready()
    with Webhook(broker.target) as wh:
        message_id = wh.send(path, {"job": "slow"})

    first = py.next_delivery(15)
    assert first is not None, py.describe()
    t0 = time.monotonic()
    assert first["message_id"] == message_id
    assert first["attempt"] == 1

    r = redis_server.client()
    seen_deliveries = [0]

    def acked() -> bool:
        rows = r.xpending_range(stream, "py", "-", "+", 10)
        for row in rows:
            seen_deliveries[0] = max(seen_deliveries[0], int(row["times_delivered"]))
        return not rows

    wait_until(acked, 15, "the slow delivery to be acked")
    held = time.monotonic() - t0
    # The handler slept 3 s (three 1 s leases) and its ack still settled it.
    assert held >= 1.5, f"acked after {held:.2f}s: the handler did not run long"
    assert seen_deliveries[0] <= 1, f"redelivered while the handler ran: times_delivered={seen_deliveries[0]}"
    # Watch a further 2.5 leases: no second delivery.
    extra = py.next_delivery(2.5)
    assert extra is None, f"second delivery: {extra}\n{py.describe()}"
    assert len(py.deliveries) == 1
    assert pending_count(r, stream, "py") == 0


# ----------------------------------------------------------------- restart

RESTART_N = 60


def _send_with_retry(wh: Webhook, path: str, data: Any, retries: List[int], timeout: float = 60.0) -> str:
    """Send, retrying UNAVAILABLE (and DEADLINE_EXCEEDED) with backoff until ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            return wh.send(path, data)
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            if time.monotonic() + delay > deadline:
                raise
            retries[0] += 1
            # Backoff between retries of a failed call (not synchronization).
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _numbers(agent: Agent) -> Counter:
    return Counter(json.loads(payload_of(d))["n"] for d in agent.snapshot())


def test_restart_while_consuming_loses_nothing(broker, redis_server, agents, summary):
    path = unique_path("restart")
    stream = "webhook:" + queue_name(path)
    common = ("--ack-deadline", "4", "--timeout", "140")
    consumers = {
        "python": agents.python("consume", *consume_args(broker, path, "py", 100000, *common)),
        "go": agents.go("consume", *consume_args(broker, path, "go", 100000, *common)),
        "node": agents.node("consume", *consume_args(broker, path, "node", 100000, *common)),
    }
    groups = {"python": "py", "go": "go", "node": "node"}
    for a in consumers.values():
        a.wait_ready()

    half_sent = threading.Event()
    restart_begun = threading.Event()
    restarted = threading.Event()
    sent: Dict[int, str] = {}
    after_restart: List[int] = []
    retries = [0]
    errors: List[str] = []

    def producer() -> None:
        try:
            options = [
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ]
            with Webhook(broker.target, rpc_timeout=5, options=options) as wh:
                for n in range(RESTART_N):
                    if n == RESTART_N // 2:
                        half_sent.set()
                        if not restart_begun.wait(30):
                            errors.append("the restart never began")
                            return
                    if n == (3 * RESTART_N) // 4 and not restarted.wait(60):
                        errors.append("leanmqd never came back")
                        return
                    was_restarted = restarted.is_set()
                    sent[n] = _send_with_retry(wh, path, {"n": n, "body": f"message {n}"}, retries)
                    if was_restarted:
                        after_restart.append(n)
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(repr(e))

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    assert half_sent.wait(30), "producer did not send the first half"
    old_pid = broker.proc.pid
    broker.terminate()
    restart_begun.set()  # the second half is sent during the drain and the outage
    rc = broker.wait(25)
    assert rc == 0, f"leanmqd exited {rc} after SIGTERM\n{broker.log_tail()}"
    broker.start()  # same port, same Redis
    assert broker.proc.pid != old_pid
    restarted.set()
    t.join(90)
    assert not t.is_alive(), "producer still running"
    assert not errors, errors
    assert sorted(sent) == list(range(RESTART_N))
    assert after_restart, "no message was sent after the restart"

    want = set(range(RESTART_N))

    def all_seen() -> bool:
        return all(want <= set(_numbers(a)) for a in consumers.values())

    try:
        wait_until(all_seen, 60, "every message handled by every group")
    except AssertionError:
        missing = {lang: sorted(want - set(_numbers(a))) for lang, a in consumers.items()}
        raise AssertionError(
            f"messages lost: {missing}\n" + "\n".join(a.describe() for a in consumers.values())
        ) from None

    # Every SDK reconnected: the same processes, still subscribed, handled
    # messages sent only after leanmqd came back.
    for lang, a in consumers.items():
        assert a.proc.poll() is None, f"{lang} consumer exited\n{a.describe()}"
        assert set(after_restart) <= set(_numbers(a)), lang

    r = redis_server.client()
    for lang, group in groups.items():
        wait_until(lambda: pending_count(r, stream, group) == 0, 30, f"group {group} ({lang}) fully acked")

    dups = {lang: sum(c - 1 for c in _numbers(a).values()) for lang, a in consumers.items()}
    line = (
        f"restart: {RESTART_N} messages, {len(after_restart)} sent after the restart, "
        f"{retries[0]} send retries; duplicates per group: "
        + ", ".join(f"{lang}={n}" for lang, n in dups.items())
    )
    print(line)
    summary.append(line)
