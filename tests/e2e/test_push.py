"""Push delivery end to end (docs/push.md): leanmqd POSTs to receivers that
verify with the third-party `standardwebhooks` packages (PyPI in this
process, npm in a Node child); and two replicas, one SIGKILLed mid-push,
deliver everything (ledger lost=0)."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List

import pytest
from leanmq_grpc import Webhook as LeanmqWebhook
from standardwebhooks.webhooks import Webhook as StandardWebhook

from harness import Leanmqd, pending_count, queue_name, unique_path, wait_until

SECRET_A = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_B = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24tdGVzdHM="
E2E = Path(__file__).resolve().parent


def leanmq_cli() -> str:
    """The `leanmq` binary beside the leanmqd under test."""
    cli = Path(os.environ.get("LEANMQD", "target/debug/leanmqd")).resolve().parent / "leanmq"
    assert cli.exists(), f"leanmq CLI not found at {cli} (cargo build --bin leanmq)"
    return str(cli)


def push_create(broker: Leanmqd, name: str, path: str, endpoint: str, *secrets: str, extra=()) -> Dict:
    args = [leanmq_cli(), "--addr", f"http://{broker.target}", "--json", "push", "create", name,
            "--path", path, "--endpoint", endpoint, *extra]
    for s in secrets:
        args += ["--secret", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


class PyReceiver:
    """Test code: a ThreadingHTTPServer verifying each POST with PyPI's
    standardwebhooks; records verified deliveries, answers per `answer`."""

    def __init__(self, secrets: List[str], delay: float = 0.0, answers=()) -> None:
        self.hooks = [StandardWebhook(s) for s in secrets]
        self.delay = delay
        #: (status, headers) to give to the first verified POSTs, in order; then 204.
        self.answers = list(answers)
        self.got: List[Dict] = []
        self.refused: List[str] = []
        self.lock = threading.Lock()
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    for wh in me.hooks:
                        wh.verify(body, headers)
                except Exception as e:  # a refused signature is recorded, not raised
                    with me.lock:
                        me.refused.append(repr(e))
                    self.send_response(400)
                    self.end_headers()
                    return
                if me.delay:
                    time.sleep(me.delay)
                with me.lock:
                    status, extra = me.answers.pop(0) if me.answers else (204, {})
                    me.got.append({"id": headers["webhook-id"], "attempt": headers.get("leanmq-attempt"),
                                   "body": body, "status": status, "at": time.monotonic()})
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def ids(self) -> List[str]:
        with self.lock:
            return [g["id"] for g in self.got]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pushing(leanmqd_bin, redis_server, workdir):
    d = Leanmqd(leanmqd_bin, redis_server.url, workdir,
                extra_args=["--push-allow-private", "--push-poll-interval", "200ms"])
    yield d
    d.stop()


def test_python_standardwebhooks_verifies_a_rotation(pushing):
    rx = PyReceiver([SECRET_A, SECRET_B])
    try:
        path = unique_path("push-py")
        created = push_create(pushing, "py", path, rx.endpoint, SECRET_A, SECRET_B)
        assert created["secret_count"] == 2
        with LeanmqWebhook(pushing.target) as wh:
            sent = [wh.send(path, {"n": i}) for i in range(5)]
        wait_until(lambda: len(set(rx.ids())) >= 5, 30, "5 verified pushes")
        assert set(rx.ids()) == set(sent)
        assert rx.refused == []
        assert json.loads(rx.got[0]["body"])["n"] in range(5)
    finally:
        rx.stop()


def test_node_standardwebhooks_verifies_a_rotation_and_a_retry(pushing):
    # The first POST is answered 500: its retry carries the same webhook-id,
    # and both verify under either secret with the npm package.
    node = subprocess.Popen(["node", str(E2E / "push-receiver" / "receiver.js"), SECRET_A, SECRET_B],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "ANSWERS": "500"})
    lines: List[Dict] = []
    try:
        assert node.stdout is not None
        port = json.loads(node.stdout.readline())["port"]
        reader = threading.Thread(target=lambda: [lines.append(json.loads(l)) for l in node.stdout], daemon=True)
        reader.start()
        path = unique_path("push-node")
        push_create(pushing, "node", path, f"http://127.0.0.1:{port}/hook", SECRET_A, SECRET_B)
        with LeanmqWebhook(pushing.target) as wh:
            sent = [wh.send(path, {"n": i, "text": "grüße ✓"}) for i in range(5)]
        wait_until(lambda: len([l for l in lines if l.get("status") == 204]) >= 5, 60, "5 pushes verified by node")
        assert [l for l in lines if "refused" in l] == []
        assert {l["id"] for l in lines} == set(sent)
        assert json.loads(lines[0]["body"])["text"] == "grüße ✓"
        first = lines[0]
        assert first["status"] == 500 and first["attempt"] == "1"
        again = [l for l in lines[1:] if l["id"] == first["id"]]
        assert again and again[0]["attempt"] == "2" and again[0]["status"] == 204, lines
    finally:
        node.terminate()
        node.wait(timeout=10)


def test_a_replica_killed_mid_push_loses_nothing(leanmqd_bin, redis_server, workdir, summary):
    """Two replicas push one subscription; one is SIGKILLed with POSTs in
    flight; the other delivers the rest once the dead one's leases run out."""
    args = ["--push-allow-private", "--push-poll-interval", "200ms"]
    for sub in ("a", "b"):
        (workdir / sub).mkdir()
    a = Leanmqd(leanmqd_bin, redis_server.url, workdir / "a", extra_args=args)
    b = Leanmqd(leanmqd_bin, redis_server.url, workdir / "b", extra_args=args)
    rx = PyReceiver([SECRET_A], delay=0.2)
    try:
        path = unique_path("push-kill")
        # A 1 s timeout: the killed replica's leases end 11 s later.
        push_create(a, "kill", path, rx.endpoint, SECRET_A, extra=["--timeout", "1s", "--max-in-flight", "5"])
        n = 300
        with LeanmqWebhook(a.target) as wh:
            sent = [wh.send(path, {"n": i}) for i in range(n)]
        wait_until(lambda: len(rx.ids()) >= 40, 30, "pushes under way")
        a.kill()  # SIGKILL: no drain, its leases are left to expire
        at_kill = len(set(rx.ids()))
        wait_until(lambda: set(sent) <= set(rx.ids()), 90, "every message pushed by the surviving replica")
        # And acked: what the killed replica had in flight (received, never
        # acked) is redelivered by the other once its leases run out.
        stream = "webhook:" + queue_name(path)
        r = redis_server.client()
        wait_until(lambda: pending_count(r, stream, "push-kill") == 0, 60, "every push acked")
        got = rx.ids()
        lost = set(sent) - set(got)
        dups = len(got) - len(set(got))
        redelivered = sum(1 for g in rx.got if g["attempt"] != "1")
        ledger = (f"push-replica-kill: accepted={n} delivered={n - len(lost)} lost={len(lost)} duplicates={dups} "
                  f"redelivered={redelivered} (killed after {at_kill})")
        summary.append(ledger)
        print(ledger)
        assert lost == set()
        assert at_kill < n, "the kill came too late to test anything"
        assert redelivered >= 1, "the killed replica had no push in flight"
        assert rx.refused == []
    finally:
        rx.stop()
        a.kill()
        b.stop()


def admin_stub(broker: Leanmqd):
    import grpc
    from leanmq_grpc._proto.leanmq.v1 import admin_pb2, admin_pb2_grpc
    return admin_pb2, admin_pb2_grpc.AdminStub(grpc.insecure_channel(broker.target))


def create_fast(broker: Leanmqd, name: str, path: str, endpoint: str) -> None:
    """A subscription retrying after 0.2 s (the default schedule waits 5 s)."""
    from google.protobuf import duration_pb2
    pb2, stub = admin_stub(broker)
    stub.CreatePushSubscription(pb2.CreatePushSubscriptionRequest(subscription=pb2.PushSubscription(
        name=name, path=path, endpoint=endpoint, secrets=[SECRET_A],
        retry_schedule=[duration_pb2.Duration(nanos=200_000_000)], max_in_flight=1)), timeout=10)


def test_a_500_then_a_200_is_retried_under_the_same_id(pushing):
    rx = PyReceiver([SECRET_A], answers=[(500, {})])
    try:
        path = unique_path("push-500")
        create_fast(pushing, "py500", path, rx.endpoint)
        with LeanmqWebhook(pushing.target) as wh:
            sent = wh.send(path, {"n": 1})
        wait_until(lambda: len(rx.got) >= 2, 30, "the retry")
        first, second = rx.got[0], rx.got[1]
        assert (first["id"], first["status"], first["attempt"]) == (sent, 500, "1")
        assert (second["id"], second["status"], second["attempt"]) == (sent, 204, "2")
        assert rx.refused == []
    finally:
        rx.stop()


def test_retry_after_is_honoured(pushing):
    rx = PyReceiver([SECRET_A], answers=[(503, {"Retry-After": "2"})])
    try:
        path = unique_path("push-429")
        create_fast(pushing, "pyra", path, rx.endpoint)
        with LeanmqWebhook(pushing.target) as wh:
            wh.send(path, {"n": 1})
        wait_until(lambda: len(rx.got) >= 2, 30, "the retry")
        # The schedule says 0.2 s; the endpoint said 2 s, and that wins.
        gap = rx.got[1]["at"] - rx.got[0]["at"]
        assert gap >= 1.9, f"retried after {gap:.2f} s despite Retry-After: 2"
        assert rx.got[1]["status"] == 204
    finally:
        rx.stop()


def test_a_410_pauses_the_subscription_and_keeps_the_message(pushing, redis_server):
    import redis as redis_py
    rx = PyReceiver([SECRET_A], answers=[(410, {})])
    try:
        path = unique_path("push-410")
        create_fast(pushing, "py410", path, rx.endpoint)
        with LeanmqWebhook(pushing.target) as wh:
            wh.send(path, {"n": 1})
        pb2, stub = admin_stub(pushing)
        get = lambda: stub.GetPushSubscription(pb2.GetPushSubscriptionRequest(name="py410"), timeout=10)
        paused = wait_until(lambda: get().state == pb2.PUSH_STATE_PAUSED and get(), 30, "paused")
        assert "410" in paused.state_reason
        r = redis_py.Redis.from_url(redis_server.url)
        q = queue_name(path)
        assert pending_count(r, f"webhook:{q}", "push-py410") == 1
        assert r.xlen(f"webhook:{q}:dlq") == 0
        assert [g["status"] for g in rx.got] == [410]
    finally:
        rx.stop()
