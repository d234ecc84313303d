"""Admin and AsyncAdmin against a real leanmqd (with --auth-tokens) on a
private redis-server, and the typed errors of every SDK call. Skipped when
leanmqd, redis-server or redis-cli is missing."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, List

import grpc
import pytest

from leanmq_grpc import (
    Admin,
    AsyncAdmin,
    AsyncWebhook,
    DeadLetter,
    DeadLetterEntry,
    InvalidArgument,
    LeanMQError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    Webhook,
    normalize_path,
    queue_name,
)
from leanmq_grpc import aio as leanmq_aio
from real_broker import ADMIN_TOKEN, SDK_TOKEN, SEND_ONLY_TOKEN, Leanmqd, Redis, free_port, missing_tools, write_tokens_file
from waiting import wait_until

_missing = missing_tools("redis-server", "redis-cli")
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"missing: {', '.join(_missing)}")


def sdk_path(label: str) -> str:
    return f"/sdk/admin/{label}/{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def leanmqd(workdir: Path, redis: Redis) -> Iterator[Leanmqd]:
    d = Leanmqd(workdir, redis.url, ["--auth-tokens", str(write_tokens_file(workdir / "tokens.toml"))])
    yield d
    d.stop()


class CountingInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Counts the calls made through a channel, per method."""

    def __init__(self) -> None:
        self.calls: List[str] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls.append(details.method.rsplit("/", 1)[-1])
        return continuation(details, request)


class Handler:
    """Records what it gets; dead-letters it unless ``accept``."""

    def __init__(self) -> None:
        self.got: List[Any] = []
        self.accept = False

    def __call__(self, data: Any) -> None:
        self.got.append(data)
        if not self.accept:
            raise DeadLetter("rejected by the test")


def drive(wh: Webhook, until: Callable[[], bool], timeout: float = 20.0) -> None:
    """process_messages until ``until()`` holds (bounded by ``timeout``)."""
    assert wait_until(lambda: wh.process_messages(block=True, timeout=0.5) >= 0 and until(), timeout)


def dead_letter(wh: Webhook, admin: Admin, path: str, handler: Handler, payloads: List[Any]) -> List[str]:
    """Send ``payloads`` to ``path`` and let ``handler`` dead-letter them all
    (Nack{dead_letter}); returns the message ids."""
    before = len(handler.got)
    try:
        dlq_before = admin.get_queue(path).dead_letters
    except NotFound:
        dlq_before = 0
    ids = [wh.send(path, p) for p in payloads]
    drive(wh, lambda: len(handler.got) >= before + len(payloads))
    assert wait_until(lambda: admin.get_queue(path).dead_letters == dlq_before + len(payloads))
    return ids


def test_queues_and_dead_letters_round_trip(leanmqd: Leanmqd) -> None:
    path = sdk_path("round")
    q = queue_name(path)
    counter = CountingInterceptor()
    channel = grpc.intercept_channel(grpc.insecure_channel(leanmqd.target), counter)
    handler = Handler()
    try:
        with Webhook(leanmqd.target, token=ADMIN_TOKEN) as wh, Admin(channel, token=ADMIN_TOKEN) as admin:
            wh.add_handler(path, handler)
            sent = dead_letter(wh, admin, path, handler, [{"n": 1}, {"n": 2}, b"\x00raw"])

            # Queues: the summary and the detail.
            summary = next(s for s in admin.list_queues() if s.queue == q)
            assert (summary.stream, summary.length, summary.dead_letters) == (f"webhook:{q}", 3, 3)
            assert normalize_path(path) in summary.paths
            info = admin.get_queue(path)
            assert (info.queue, info.stream, info.length, info.dead_letters) == (q, f"webhook:{q}", 3, 3)
            group = next(g for g in info.groups if g.name == f"{q}-group")
            assert group.pending == 0 and group.oldest_unacked_age is None
            assert admin.get_queue(q) == info  # by queue name too

            # Dead letters, across two pages of two, payloads decoded as handlers get them.
            counter.calls.clear()
            entries = list(admin.list_dead_letters(path, page_size=2))
            assert counter.calls == ["ListDeadLetters", "ListDeadLetters"]
            assert all(isinstance(e, DeadLetterEntry) for e in entries)
            assert [e.data for e in entries] == [{"n": 1}, {"n": 2}, b"\x00raw"]
            assert [e.content_type for e in entries] == ["application/json", "application/json", "application/octet-stream"]
            assert [e.original_message_id for e in entries] == sent
            first = entries[0]
            assert first.path == normalize_path(path)
            assert first.last_reason == "rejected by the test"
            assert first.failures and first.failures[-1].reason == "rejected by the test"
            assert first.failures[-1].group == f"{q}-group"
            assert first.last_failed_at is not None and first.last_failed_at.tzinfo is not None
            # limit stops early, without fetching more than it needs.
            counter.calls.clear()
            assert [e.id for e in admin.list_dead_letters(path, limit=2, page_size=2)] == [e.id for e in entries[:2]]
            assert counter.calls == ["ListDeadLetters"]
            assert list(admin.list_dead_letters(path, limit=0)) == []

            # Requeue one: it leaves the DLQ and is delivered again.
            result = admin.requeue_dead_letters(path, ids=[first.id])
            assert len(result) == 1 and result.missing == ()
            assert result.requeued[0].dead_letter_id == first.id and result.requeued[0].message_id
            again = admin.requeue_dead_letters(path, ids=[first.id])
            assert len(again) == 0 and again.missing == (first.id,)
            handler.accept = True
            drive(wh, lambda: len(handler.got) == 4)
            assert handler.got[-1] == {"n": 1}
            assert [e.id for e in admin.list_dead_letters(path)] == [e.id for e in entries[1:]]

            # Delete one, purge the rest.
            assert admin.delete_dead_letters(path, [entries[1].id]) == 1
            assert admin.delete_dead_letters(path, [entries[1].id]) == 0
            assert admin.purge_dead_letters(path) == 1
            assert list(admin.list_dead_letters(path)) == []

            # Purge and delete the queue: both want its name in confirm.
            with pytest.raises(InvalidArgument) as err:
                admin.purge_queue(path, confirm="not-" + q)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "confirm" in err.value.details()
            assert admin.get_queue(path).length == 4
            assert admin.purge_queue(path, confirm=q) == 4
            assert admin.get_queue(path).length == 0
            with pytest.raises(InvalidArgument):
                admin.delete_queue(path, confirm="nope")
            admin.delete_queue(path, confirm=q)
            with pytest.raises(NotFound):
                admin.get_queue(path)
            assert all(s.queue != q for s in admin.list_queues())
    finally:
        channel.close()


def test_requeue_since_and_all_through_webhook_admin(leanmqd: Leanmqd) -> None:
    path = sdk_path("since")
    handler = Handler()
    with Webhook(leanmqd.target, token=ADMIN_TOKEN) as wh:
        wh.add_handler(path, handler)
        admin = wh.admin
        assert wh.admin is admin  # one per webhook, on its channel and token
        start = datetime.now(timezone.utc) - timedelta(seconds=5)
        dead_letter(wh, admin, path, handler, [{"k": "a"}, {"k": "b"}])
        assert len(admin.requeue_dead_letters(path, since=datetime.now(timezone.utc) + timedelta(hours=1))) == 0
        assert len(admin.requeue_dead_letters(path, since=start)) == 2
        drive(wh, lambda: len(handler.got) == 4)  # both redelivered, dead-lettered again
        assert wait_until(lambda: admin.get_queue(path).dead_letters == 2)
        assert len(admin.requeue_dead_letters(path, all=True)) == 2
        handler.accept = True
        drive(wh, lambda: len(handler.got) == 6)
        assert sorted(d["k"] for d in handler.got[-2:]) == ["a", "b"]
        assert admin.get_queue(path).dead_letters == 0
        admin.delete_queue(path, confirm=queue_name(path))


def test_id_lists_over_1000_are_split_into_calls(leanmqd: Leanmqd) -> None:
    path = sdk_path("many")
    handler = Handler()
    counter = CountingInterceptor()
    channel = grpc.intercept_channel(grpc.insecure_channel(leanmqd.target), counter)
    try:
        with Webhook(leanmqd.target, token=ADMIN_TOKEN) as wh, Admin(channel, token=ADMIN_TOKEN) as admin:
            wh.add_handler(path, handler)
            dead_letter(wh, admin, path, handler, ["x"])
            absent = [f"{i}-0" for i in range(1, 1501)]  # valid ids, none in the DLQ
            counter.calls.clear()
            result = admin.requeue_dead_letters(path, ids=absent)
            assert len(result) == 0 and result.missing == tuple(absent)
            assert admin.delete_dead_letters(path, absent) == 0
            assert counter.calls == ["RequeueDeadLetters"] * 2 + ["DeleteDeadLetters"] * 2
            assert admin.get_queue(path).dead_letters == 1
    finally:
        channel.close()


def test_bad_requests_fail_before_a_call(leanmqd: Leanmqd) -> None:
    with Admin(leanmqd.target, token=ADMIN_TOKEN) as admin:
        path = sdk_path("bad")
        for kwargs in ({}, {"ids": ["1-0"], "all": True}, {"all": True, "since": datetime.now(timezone.utc)}):
            with pytest.raises(ValueError, match="exactly one"):
                admin.requeue_dead_letters(path, **kwargs)
        with pytest.raises(TypeError):
            admin.requeue_dead_letters(path, ids="1-0")  # one string, not a list
        with pytest.raises(ValueError):
            admin.delete_dead_letters(path, [])
        with pytest.raises(TypeError):
            admin.delete_dead_letters(path, ["1-0", ""])
        for page_size in (0, 1001):
            with pytest.raises(ValueError, match="page_size"):
                admin.list_dead_letters(path, page_size=page_size)
        with pytest.raises(ValueError, match="limit"):
            admin.list_dead_letters(path, limit=-1)
        with pytest.raises(TypeError):
            admin.purge_queue(path, confirm=None)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            Admin(leanmqd.target, token="two words")
        # And bad input the broker refuses: an id that is not a stream entry id, an empty path.
        with pytest.raises(InvalidArgument):
            admin.delete_dead_letters(path, ["not-an-id"])
        with pytest.raises(InvalidArgument):
            admin.get_queue("")


def test_every_call_raises_typed_errors(leanmqd: Leanmqd) -> None:
    path = sdk_path("typed")
    with Admin(leanmqd.target) as anonymous:
        with pytest.raises(Unauthenticated) as unauth:
            anonymous.list_queues()
    assert isinstance(unauth.value, LeanMQError) and isinstance(unauth.value, grpc.RpcError)
    assert unauth.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert isinstance(unauth.value.__cause__, grpc.RpcError)

    with Admin(leanmqd.target, token=SDK_TOKEN) as no_admin_grant:
        for call in (
            lambda: no_admin_grant.get_queue(path),
            lambda: list(no_admin_grant.list_dead_letters(path)),
            lambda: no_admin_grant.requeue_dead_letters(path, all=True),
            lambda: no_admin_grant.purge_dead_letters(path),
            lambda: no_admin_grant.delete_queue(path, confirm=queue_name(path)),
        ):
            with pytest.raises(PermissionDenied) as denied:
                call()
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "admin" in denied.value.details()
        # Listing is filtered by the grant, not refused.
        assert no_admin_grant.list_queues() == []

    with Admin(leanmqd.target, token=ADMIN_TOKEN) as admin:
        with pytest.raises(PermissionDenied):
            admin.get_queue(f"/other/{uuid.uuid4().hex[:8]}")  # outside its grant
        with pytest.raises(NotFound):
            admin.get_queue(path)

    with Admin(f"127.0.0.1:{free_port()}", rpc_timeout=5) as unreachable:
        with pytest.raises(Unavailable):
            unreachable.list_queues()

    # The webhook layer's calls raise the same types.
    with Webhook(leanmqd.target, token=SEND_ONLY_TOKEN) as wh:
        with pytest.raises(PermissionDenied):
            wh.send(path, {"n": 1})
        with pytest.raises(PermissionDenied):
            wh.send_batch([(path, {"n": 1})])

        @wh.get(path)
        def handle(data: Any) -> None:  # pragma: no cover - never delivered
            pass

        svc = wh.run_service(handle_signals=False)
        assert svc.wait(10)
        assert isinstance(svc.error, PermissionDenied)


def test_async_admin(leanmqd: Leanmqd) -> None:
    path = sdk_path("aio")
    q = queue_name(path)

    async def main() -> None:
        got: List[Any] = []
        accept = asyncio.Event()

        async with AsyncWebhook(leanmqd.target, token=ADMIN_TOKEN) as wh:

            @wh.get(path)
            async def handle(data: Any) -> None:
                got.append(data)
                if not accept.is_set():
                    raise DeadLetter("async rejection")

            async def drive(n: int) -> None:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 20
                while len(got) < n:
                    assert loop.time() < deadline, f"only {len(got)} of {n} delivered"
                    await wh.process_messages(block=True, timeout=0.5)

            for n in range(3):
                await wh.send(path, {"n": n})
            await drive(3)
            shared = wh.admin
            assert isinstance(shared, AsyncAdmin) and wh.admin is shared
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while (await shared.get_queue(path)).dead_letters < 3:
                assert loop.time() < deadline
                await asyncio.sleep(0.02)
            entries = [e async for e in shared.list_dead_letters(path, page_size=1)]
            assert [e.data for e in entries] == [{"n": 0}, {"n": 1}, {"n": 2}]
            assert entries[0].last_reason == "async rejection"
            assert [e.id async for e in shared.list_dead_letters(path, limit=2, page_size=1)] == [e.id for e in entries[:2]]

            async with leanmq_aio.Admin(leanmqd.target, token=ADMIN_TOKEN) as admin:
                assert any(s.queue == q and s.dead_letters == 3 for s in await admin.list_queues())
                result = await admin.requeue_dead_letters(path, ids=[entries[0].id, "9-9"])
                assert len(result) == 1 and result.missing == ("9-9",)
                accept.set()
                await drive(4)
                assert got[-1] == {"n": 0}
                assert await admin.delete_dead_letters(path, [entries[1].id]) == 1
                assert len(await admin.requeue_dead_letters(path, all=True)) == 1
                await drive(5)
                assert got[-1] == {"n": 2}
                assert await admin.purge_dead_letters(path) == 0
                with pytest.raises(InvalidArgument):
                    await admin.purge_queue(path, confirm="x")
                assert await admin.purge_queue(path, confirm=q) == 5
                with pytest.raises(InvalidArgument):
                    await admin.delete_queue(path, confirm="x", with_dlq=False)
                await admin.delete_queue(path, confirm=q)
                with pytest.raises(NotFound):
                    await admin.get_queue(path)

        async with AsyncAdmin(leanmqd.target, token=SDK_TOKEN) as no_admin_grant:
            with pytest.raises(PermissionDenied):
                await no_admin_grant.get_queue(path)
            with pytest.raises(PermissionDenied):
                [e async for e in no_admin_grant.list_dead_letters(path)]

        async with AsyncWebhook(leanmqd.target, token=SEND_ONLY_TOKEN) as denied:
            with pytest.raises(PermissionDenied):
                await denied.send(path, {"n": 1})

            @denied.get(path)
            async def never(data: Any) -> None:  # pragma: no cover - never delivered
                pass

            with pytest.raises(PermissionDenied):
                await asyncio.wait_for(denied.run(), 10)

    asyncio.run(asyncio.wait_for(main(), 60))
