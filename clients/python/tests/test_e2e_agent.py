"""The e2e agent CLI against the fake broker (subprocesses, bounded by timeouts)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import List

from leanmq_grpc import Webhook

AGENT = [sys.executable, "-m", "leanmq_grpc.e2e_agent"]


def _agent(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=timeout)


def test_send_prints_message_id(server, broker) -> None:
    out = _agent("send", "--target", server.target, "--path", "/order/status/", "--json", '{"a": 1}')
    assert out.returncode == 0, out.stderr
    out2 = _agent("send", "--target", server.target, "--path", "/bin", "--hex", "00ff10")
    assert out2.returncode == 0, out2.stderr
    ids = [out.stdout.strip(), out2.stdout.strip()]
    assert all(ids) and ids[0] != ids[1]
    assert broker.sent[0].content_type == "application/json" and broker.sent[0].payload == b'{"a":1}'
    assert broker.sent[1].content_type == "application/octet-stream" and broker.sent[1].payload == b"\x00\xff\x10"


def _start_consume(server, *extra: str) -> "tuple[subprocess.Popen, threading.Event, List[str]]":
    proc = subprocess.Popen(
        [*AGENT, "consume", "--target", server.target, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = threading.Event()
    err_lines: List[str] = []

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_lines.append(line)
            if line.strip() == "READY":
                ready.set()

    threading.Thread(target=read_err, daemon=True).start()
    return proc, ready, err_lines


def test_consume_prints_deliveries_and_exits(server, broker) -> None:
    proc, ready, err = _start_consume(server, "--path", "/e2e", "--group", "g", "--count", "2", "--mode", "ok")
    try:
        assert ready.wait(20), "".join(err)
        with Webhook(server.target) as wh:
            m1 = wh.send("/e2e", {"n": 1}, headers={"h": "v"})
            m2 = wh.send("/e2e", b"\x01\x02")
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, "".join(err)
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["message_id"] for x in lines] == [m1, m2]
    assert lines[0] == {
        "message_id": m1,
        "path": "/e2e",
        "content_type": "application/json",
        "payload_hex": b'{"n":1}'.hex(),
        "attempt": 1,
        "headers": {"h": "v"},
    }
    assert lines[1]["payload_hex"] == "0102" and lines[1]["content_type"] == "application/octet-stream"
    assert len(broker.acked) == 2 and broker.nacks == []
    assert broker.subscribes[0].group == "g"


def test_consume_deadletter_mode(server, broker) -> None:
    proc, ready, err = _start_consume(server, "--path", "/dl", "--group", "g", "--count", "1", "--mode", "deadletter")
    try:
        assert ready.wait(20), "".join(err)
        with Webhook(server.target) as wh:
            wh.send("/dl", {"n": 1})
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, "".join(err)
    assert len(out.splitlines()) == 1
    assert len(broker.nacks) == 1
    assert broker.nacks[0].dead_letter and broker.nacks[0].reason == "e2e dead letter"


def test_process_subcommand(server, broker) -> None:
    with Webhook(server.target) as wh:
        wh.send_batch([("/p", {"i": 0}), ("/p", {"i": 1})])
    out = _agent("process", "--target", server.target, "--path", "/p", "--count", "2", "--timeout", "20")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [bytes.fromhex(x["payload_hex"]) for x in lines] == [b'{"i":0}', b'{"i":1}']
    assert len(broker.acked) == 2


def test_process_times_out(server, broker) -> None:
    out = _agent("process", "--target", server.target, "--path", "/none", "--count", "1", "--timeout", "0.5")
    assert out.returncode == 1
    assert out.stdout == ""
