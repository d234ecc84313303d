"""leanmqd with TLS and bearer tokens: a Go or Node producer sends with its
token over TLS, a Python consumer receives with its own; a wrong token is
UNAUTHENTICATED."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from leanmq_grpc import Webhook

from harness import (
    Agents,
    Leanmqd,
    RedisServer,
    normalized,
    payload_of,
    pending_count,
    queue_name,
    unique_path,
    wait_until,
)

# The producer may only send under /e2e/, the consumer only subscribe there.
PRODUCER_TOKEN = "e2e-producer-7b1d9a"
CONSUMER_TOKEN = "e2e-consumer-2c8e4f"
WRONG_TOKEN = "e2e-not-a-token"

DOC = {"order_id": "ORD-TLS", "status": "shipped", "tags": ["grüße", "✓"]}


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "rep_call", None)  # set by conftest's makereport hook
    return rep is None or rep.failed


def token_hash(token: str) -> str:
    """What `leanmqd hash-token` prints for token."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


class Secure:
    """The files of a TLS + auth leanmqd."""

    def __init__(self, workdir: Path) -> None:
        d = workdir / "secure"
        d.mkdir()
        self.cert, self.key = d / "cert.pem", d / "key.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                "-keyout", str(self.key), "-out", str(self.cert),
                "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-days", "1",
            ],
            check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )
        self.tokens = d / "tokens.toml"
        self.tokens.write_text(
            f"""[[tokens]]
name = "producer"
hash = "{token_hash(PRODUCER_TOKEN)}"
send = ["/e2e/>"]

[[tokens]]
name = "consumer"
hash = "{token_hash(CONSUMER_TOKEN)}"
subscribe = ["/e2e/>"]
"""
        )

    @property
    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.cert.read_bytes())

    def args(self, token: str) -> list:
        """An agent's connection arguments."""
        return ["--token", token, "--tls-ca", str(self.cert)]


@pytest.fixture
def secure(workdir: Path) -> Secure:
    return Secure(workdir)


@pytest.fixture
def secure_broker(
    request: pytest.FixtureRequest, leanmqd_bin: str, redis_server: RedisServer, workdir: Path, secure: Secure
) -> Iterator[Leanmqd]:
    d = Leanmqd(
        leanmqd_bin,
        redis_server.url,
        workdir,
        ["--tls-cert", str(secure.cert), "--tls-key", str(secure.key), "--auth-tokens", str(secure.tokens)],
        tls_ca=secure.cert.read_bytes(),
    )
    yield d
    d.stop()
    if _failed(request) or os.environ.get("E2E_VERBOSE"):
        print(f"\n--- leanmqd log (tail) ---\n{d.log_tail(80)}")


@pytest.fixture
def secure_agents(
    request: pytest.FixtureRequest, go_agent_bin: str, node_agent_js: str, secure_broker: Leanmqd
) -> Iterator[Agents]:
    # Depends on secure_broker so agents stop before leanmqd and Redis do.
    a = Agents(go_agent_bin, node_agent_js)
    yield a
    a.stop_all()
    if _failed(request) or os.environ.get("E2E_VERBOSE"):
        for agent in a.started:
            print("\n" + agent.describe())


@pytest.mark.parametrize("producer", ["go", "node"])
def test_tls_and_tokens_producer_to_python_consumer(producer, secure, secure_broker, secure_agents, redis_server):
    target = secure_broker.target
    path = unique_path(f"tls-{producer}")
    text = json.dumps(DOC, ensure_ascii=False, separators=(",", ":"))

    consumer = secure_agents.python(
        "consume", "--target", target, "--path", path, "--count", "1", "--timeout", "60",
        *secure.args(CONSUMER_TOKEN),
    )
    consumer.wait_ready()

    sent = secure_agents.run(
        producer, "send", "--target", target, "--path", path, "--json", text, *secure.args(PRODUCER_TOKEN)
    )
    message_id = sent.stdout_lines[-1].strip()
    assert message_id, sent.describe()

    rc = consumer.wait_exit(30)
    assert rc == 0, consumer.describe()
    assert len(consumer.deliveries) == 1, consumer.describe()
    d = consumer.deliveries[0]
    assert d["message_id"] == message_id
    assert d["content_type"] == "application/json"
    assert json.loads(payload_of(d)) == DOC
    assert d["path"] == normalized(path)
    q = queue_name(path)
    r = redis_server.client()
    assert wait_until(lambda: pending_count(r, f"webhook:{q}", f"{q}-group") == 0, 10, "the consumer acked")

    # The same producer with a wrong token: UNAUTHENTICATED, nothing stored.
    wrong = getattr(secure_agents, producer)(
        "send", "--target", target, "--path", path, "--json", text, *secure.args(WRONG_TOKEN)
    )
    assert wrong.wait_exit(30) != 0, wrong.describe()
    assert "unauthenticated" in "\n".join(wrong.stderr_lines).lower(), wrong.describe()
    assert r.xlen(f"webhook:{q}") == 1

    # The Python SDK over TLS: a wrong token is UNAUTHENTICATED, the
    # consumer's token may not send.
    with Webhook(target, credentials=secure.credentials, token=WRONG_TOKEN) as wh:
        with pytest.raises(grpc.RpcError) as err:
            wh.send(path, DOC)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with Webhook(target, credentials=secure.credentials, token=CONSUMER_TOKEN) as wh:
        with pytest.raises(grpc.RpcError) as err:
            wh.send(path, DOC)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
