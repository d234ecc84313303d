"""token= and TLS against a real leanmqd started with --auth-tokens (and
--tls-cert/--tls-key). Skipped when leanmqd, redis-server or openssl is missing."""
from __future__ import annotations

import asyncio
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, List

import grpc
import pytest

from leanmq_grpc import AsyncWebhook, Webhook, queue_name
from leanmq_grpc._common import call_metadata
from waiting import wait_until
from real_broker import (
    SDK_TOKEN,
    SEND_ONLY_TOKEN,
    Leanmqd,
    Redis,
    missing_tools,
    self_signed_cert,
    write_tokens_file,
)

_missing = missing_tools("redis-server", "redis-cli")
needs_leanmqd = pytest.mark.skipif(bool(_missing), reason=f"missing: {', '.join(_missing)}")


def sdk_path(label: str) -> str:
    return f"/sdk/{label}/{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def auth_broker(workdir: Path, redis: Redis) -> Iterator[Leanmqd]:
    tokens = write_tokens_file(workdir / "tokens.toml")
    d = Leanmqd(workdir, redis.url, ["--auth-tokens", str(tokens)])
    yield d
    d.stop()


# ------------------------------------------------------------------ token= itself


def test_token_becomes_bearer_metadata() -> None:
    assert call_metadata(None, None) == ()
    assert call_metadata([("x-trace", "1")], "abc") == (("x-trace", "1"), ("authorization", "Bearer abc"))
    for bad in ["", "two words", "line\n"]:
        with pytest.raises(ValueError):
            call_metadata(None, bad)
    with pytest.raises(ValueError, match="not both"):
        call_metadata([("Authorization", "Bearer x")], "abc")
    with pytest.raises(ValueError):
        Webhook("127.0.0.1:1", token="")
    with pytest.raises(ValueError):
        AsyncWebhook("127.0.0.1:1", token="has space")


# ------------------------------------------------------------------ leanmqd --auth-tokens


@needs_leanmqd
def test_no_token_or_unknown_token_is_unauthenticated(auth_broker: Leanmqd) -> None:
    path = sdk_path("anon")
    for token in (None, "not-a-known-token"):
        with Webhook(auth_broker.target, token=token) as wh:
            with pytest.raises(grpc.RpcError) as err:
                wh.send(path, {"n": 1})
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

            @wh.get(path)
            def handle(data):  # pragma: no cover - never delivered
                pass

            svc = wh.run_service(handle_signals=False)
            assert svc.wait(10), "the service should stop on UNAUTHENTICATED"
            assert isinstance(svc.error, grpc.RpcError)
            assert svc.error.code() == grpc.StatusCode.UNAUTHENTICATED


@needs_leanmqd
def test_token_send_subscribe_and_ack(auth_broker: Leanmqd, redis: Redis) -> None:
    path = sdk_path("sync")
    got: List[dict] = []
    done = threading.Event()
    with Webhook(auth_broker.target, token=SDK_TOKEN, ack_deadline=5) as wh:

        @wh.get(path)
        def handle(data):
            got.append(data)
            done.set()

        svc = wh.run_service(handle_signals=False)
        try:
            assert svc.wait_ready(10), svc.error
            message_id = wh.send(path, {"order_id": "ORD-1"})
            assert message_id
            assert done.wait(10)
            q = queue_name(path)
            # The handler returned, so the SDK acked: nothing stays pending.
            assert wait_until(lambda: redis.pending(f"webhook:{q}", f"{q}-group") == 0)
        finally:
            assert svc.stop()
        assert svc.error is None
    assert got == [{"order_id": "ORD-1"}]


@needs_leanmqd
def test_token_send_receive_and_ack_with_process_messages(auth_broker: Leanmqd, redis: Redis) -> None:
    path = sdk_path("pull")
    got: List[dict] = []
    with Webhook(auth_broker.target, token=SDK_TOKEN) as wh:
        wh.add_handler(path, got.append)
        wh.send_batch([(path, {"n": 1}), (path, {"n": 2})])
        handled = 0
        deadline = time.monotonic() + 10
        while handled < 2 and time.monotonic() < deadline:
            handled += wh.process_messages(block=True, timeout=1)  # counts acked deliveries
    assert handled == 2
    assert got == [{"n": 1}, {"n": 2}]
    q = queue_name(path)
    assert redis.pending(f"webhook:{q}", f"{q}-group") == 0


@needs_leanmqd
def test_async_token_send_subscribe_and_ack(auth_broker: Leanmqd, redis: Redis) -> None:
    path = sdk_path("aio")

    async def main() -> List[dict]:
        got: List[dict] = []
        async with AsyncWebhook(auth_broker.target, token=SDK_TOKEN) as wh:
            arrived = asyncio.Event()

            @wh.get(path)
            async def handle(data):
                got.append(data)
                arrived.set()

            task = asyncio.ensure_future(wh.run())
            assert await wh.wait_ready(10)
            await wh.send(path, {"aio": True})
            await asyncio.wait_for(arrived.wait(), 10)
            q = queue_name(path)
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(
                None, wait_until, lambda: redis.pending(f"webhook:{q}", f"{q}-group") == 0
            )
            wh.stop()
            await asyncio.wait_for(task, 10)
        return got

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [{"aio": True}]


@needs_leanmqd
def test_send_only_token_subscribing_is_permission_denied(auth_broker: Leanmqd) -> None:
    path = sdk_path("denied")
    with Webhook(auth_broker.target, token=SEND_ONLY_TOKEN) as wh:
        assert wh.send(f"/other/{uuid.uuid4().hex[:8]}", {"ok": True})  # inside its grant
        with pytest.raises(grpc.RpcError) as err:
            wh.send(path, {"n": 1})
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

        @wh.get(path)
        def handle(data):  # pragma: no cover - never delivered
            pass

        svc = wh.run_service(handle_signals=False)
        assert svc.wait(10), "the service should stop on PERMISSION_DENIED"
        assert isinstance(svc.error, grpc.RpcError)
        assert svc.error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "subscribe" in (svc.error.details() or "")


@needs_leanmqd
def test_async_send_only_token_subscribing_is_permission_denied(auth_broker: Leanmqd) -> None:
    path = sdk_path("aio-denied")

    async def main() -> None:
        async with AsyncWebhook(auth_broker.target, token=SEND_ONLY_TOKEN) as wh:

            @wh.get(path)
            async def handle(data):  # pragma: no cover - never delivered
                pass

            with pytest.raises(grpc.RpcError) as err:
                await asyncio.wait_for(wh.run(), 10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    asyncio.run(main())


# ------------------------------------------------------------------ TLS


@needs_leanmqd
@pytest.mark.skipif(shutil.which("openssl") is None, reason="missing: openssl")
def test_tls_send_and_receive(workdir: Path, redis: Redis) -> None:
    tls_dir = workdir / "tls"
    tls_dir.mkdir()
    cert, key = self_signed_cert(tls_dir)
    tokens = write_tokens_file(workdir / "tls-tokens.toml")
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    d = Leanmqd(
        tls_dir,
        redis.url,
        ["--tls-cert", str(cert), "--tls-key", str(key), "--auth-tokens", str(tokens)],
        credentials=creds,
    )
    try:
        path = sdk_path("tls")
        got: List[dict] = []
        with Webhook(d.target, credentials=creds, token=SDK_TOKEN) as wh:
            wh.add_handler(path, got.append)
            wh.send(path, {"secure": True})
            assert wh.process_messages(block=True, timeout=5) == 1
        assert got == [{"secure": True}]
        # A plaintext client cannot talk to the TLS port.
        with Webhook(d.target, token=SDK_TOKEN, rpc_timeout=5) as plain:
            with pytest.raises(grpc.RpcError) as err:
                plain.send(path, {"plain": True})
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        d.stop()
