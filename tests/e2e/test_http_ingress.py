"""The HTTP JSON ingress end to end (docs/http.md): a third party's webhook,
signed with PyPI's `standardwebhooks`, posted over plain HTTP to a signed
route of a real leanmqd, lands in Redis once; unsigned, tampered and stale
requests are refused with RFC 9457 problems."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Dict, Tuple

import pytest
import redis
from standardwebhooks.webhooks import Webhook as StandardWebhook

from harness import Leanmqd, free_port, normalized, queue_name, unique_path

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def post(url: str, body: bytes, headers: Dict[str, str]) -> Tuple[int, Dict, Dict[str, str]]:
    """POST and return (status, JSON body, headers), error statuses included."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read()), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), {k.lower(): v for k, v in e.headers.items()}


@pytest.fixture
def ingress(leanmqd_bin, redis_server, workdir):
    secret_file = workdir / "stripe.secret"
    secret_file.write_text(SECRET + "\n")
    path = unique_path("stripe")
    port = free_port()
    d = Leanmqd(leanmqd_bin, redis_server.url, workdir, extra_args=[
        "--http-listen", f"127.0.0.1:{port}",
        "--http-signed-route", f"{path}={secret_file}",
    ])
    yield d, f"http://127.0.0.1:{port}", path
    d.stop()


def stored(redis_url: str, path: str):
    """The `data` JSON of every entry of the path's queue."""
    r = redis.Redis.from_url(redis_url)
    return [json.loads(f[b"data"]) for _, f in r.xrange(f"webhook:{queue_name(path)}")]


def test_a_standardwebhooks_signed_post_is_stored_once(ingress, redis_server):
    _, base, path = ingress
    url = f"{base}/v1/send{path}"
    hook = StandardWebhook(SECRET)
    body = json.dumps({"type": "charge.succeeded", "amount": 4200})

    def signed(msg_id: str, at: datetime, data: str = body) -> Dict[str, str]:
        return {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": hook.sign(msg_id, at, data),
        }

    now = datetime.now(tz=timezone.utc)
    status, first, _ = post(url, body.encode(), signed("msg_e2e_1", now))
    assert status == 202, first
    assert first["duplicate"] is False and first["message_id"]
    # The sender's retry: same webhook-id, a new timestamp and signature.
    status, again, _ = post(url, body.encode(), signed("msg_e2e_1", now + timedelta(seconds=2)))
    assert status == 202, again
    assert again == {"message_id": first["message_id"], "duplicate": True}

    refusals = {
        "tampered": (body.replace("4200", "1"), signed("msg_e2e_2", now)),
        "stale": (body, signed("msg_e2e_3", now - timedelta(minutes=10))),
        "unsigned": (body, {"content-type": "application/json"}),
    }
    for what, (data, headers) in refusals.items():
        status, problem, got = post(url, data.encode(), headers)
        assert status == 401, (what, problem)
        assert got["content-type"] == "application/problem+json", what
        assert problem["status"] == 401 and problem["type"].startswith("urn:leanmq:problem:"), problem

    entries = stored(redis_server.url, path)
    assert len(entries) == 1, entries
    assert entries[0]["type"] == "charge.succeeded" and entries[0]["amount"] == 4200
    assert entries[0]["_leanmq"]["webhook"]["path"] == normalized(path)


def test_an_unsigned_route_takes_plain_json(ingress, redis_server):
    _, base, _ = ingress
    path = unique_path("plain")
    status, sent, _ = post(f"{base}/v1/send{path}?ordering_key=o-1",
                           b'{"order_id": 1}', {"content-type": "application/json",
                                                "x-leanmq-header-tenant": "acme"})
    assert status == 202, sent
    entries = stored(redis_server.url, path)
    assert [e["order_id"] for e in entries] == [1]
    status, problem, headers = post(f"{base}/v1/send{path}?delay=soon", b"{}",
                                    {"content-type": "application/json"})
    assert status == 400 and "delay" in problem["detail"], problem
