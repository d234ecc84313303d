"""asyncio layer on ``grpc.aio``: ``AsyncWebhook`` and ``AsyncAdmin`` (also
importable as ``leanmq_grpc.aio.Admin``)."""
from __future__ import annotations

import asyncio
import contextvars
import time
import functools
import logging
from datetime import datetime
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, TypeVar

import grpc
import grpc.aio

from ._common import (
    FATAL_STREAM_CODES,
    RETRYABLE_CODES,
    SETTLE_RETRY_FOR,
    Backoff,
    BatchItem,
    Delivery,
    Metadata,
    Route,
    Router,
    Settlement,
    ack_chunks,
    ack_outcomes,
    build_batch_request,
    build_send_request,
    call_metadata,
    check_consumer_options,
    default_consumer,
    first_extend_delay,
    handler_argument,
    log_settle_error,
    logger,
    rpc_code,
    settlement_for,
    shutdown_settlement,
    to_duration,
)
from ._proto.leanmq.v1 import admin_pb2 as apb
from ._proto.leanmq.v1 import admin_pb2_grpc as apb_grpc
from . import tracing
from ._proto.leanmq.v1 import broker_pb2 as pb
from ._proto.leanmq.v1 import broker_pb2_grpc as pb_grpc
from ._publish import AsyncPublisher, PublishSettings, build_publish_message
from .admin import (
    DEFAULT_PAGE_SIZE,
    QUEUE_PAGE,
    DeadLetterEntry,
    QueueInfo,
    QueueSummary,
    RequeueResult,
    check_confirm,
    check_paging,
    dead_letter_entry,
    delete_requests,
    page_request,
    queue_info,
    queue_summary,
    requeue_requests,
    requeue_result,
)
from .errors import error_for

F = TypeVar("F", bound=Callable[..., Any])


class _Job:
    """A delivery being handled; settled exactly once."""

    __slots__ = ("route", "delivery", "settled", "task")

    def __init__(self, route: Route, delivery: Delivery) -> None:
        self.route = route
        self.delivery = delivery
        self.settled = False
        self.task: Optional["asyncio.Task[None]"] = None

    def claim(self) -> bool:
        if self.settled:
            return False
        self.settled = True
        return True


class AsyncWebhook:
    """asyncio twin of :class:`leanmq_grpc.Webhook`.

    Same constructor arguments (``target`` is ``"host:port"`` or a
    ``grpc.aio.Channel``; ``publish_settings`` batch :meth:`publish` as
    :class:`~leanmq_grpc.PublishSettings` say; ``token`` is sent as ``authorization: Bearer
    <token>`` on every call, Subscribe streams included). Handlers may be
    ``async def`` (awaited on the loop) or plain functions (run in the loop's
    default executor).

    ``run()`` consumes until cancelled or :meth:`stop` is called, then stops
    gracefully: no new deliveries, running handlers get ``shutdown_timeout``
    seconds to finish, the rest are nacked (and their tasks cancelled).
    """

    def __init__(
        self,
        target: Any,
        *,
        group: str = "",
        consumer: Optional[str] = None,
        concurrency: int = 10,
        ack_deadline: float = 30.0,
        credentials: Optional[grpc.ChannelCredentials] = None,
        metadata: Optional[Metadata] = None,
        options: Optional[Sequence[Any]] = None,
        rpc_timeout: float = 30.0,
        token: Optional[str] = None,
        publish_settings: Optional[PublishSettings] = None,
    ) -> None:
        check_consumer_options(concurrency, ack_deadline)
        self.publish_settings = PublishSettings.given(publish_settings)
        self.target = target
        self.group = group
        self.consumer = consumer or default_consumer()
        self.concurrency = concurrency
        self.ack_deadline = float(ack_deadline)
        self.rpc_timeout = rpc_timeout
        self._credentials = credentials
        self._options = options
        self._metadata = call_metadata(metadata, token)
        self._channel: Any = None
        self._owns_channel = False
        self._stub: Any = None
        if not isinstance(target, str):
            self._channel, self._owns_channel = target, False
            self._stub = pb_grpc.BrokerStub(target)
        self._router = Router()
        self._admin: Optional["AsyncAdmin"] = None
        self._stop_event: Optional[asyncio.Event] = None
        self._stop_requested = False
        self._ready: Dict[str, asyncio.Event] = {}
        self._publisher: Optional[AsyncPublisher] = None
        self._closed = False

    # ------------------------------------------------------------ registration

    @property
    def routes(self) -> List[Route]:
        return list(self._router.routes.values())

    def get(self, path: str, *, raw: bool = False) -> Callable[[F], F]:
        """Register ``handler(data)`` (``handler(delivery)`` with ``raw=True``) for ``path``."""

        def decorator(func: F) -> F:
            self._router.add(path, func, raw)
            return func

        return decorator

    def add_handler(self, path: str, handler: Callable[[Any], Any], *, raw: bool = False) -> None:
        self._router.add(path, handler, raw)

    # ------------------------------------------------------------ channel

    def _get_stub(self) -> Any:
        if self._stub is None:
            if self._closed:
                raise RuntimeError("AsyncWebhook is closed")
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials, options=self._options)
            else:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            self._owns_channel = True
            self._stub = pb_grpc.BrokerStub(self._channel)
        return self._stub

    # ------------------------------------------------------------ administration

    @property
    def admin(self) -> "AsyncAdmin":
        """An :class:`AsyncAdmin` on this webhook's channel, with its token,
        metadata and ``rpc_timeout`` (closed with the webhook)."""
        if self._admin is None:
            self._admin = AsyncAdmin._sharing(lambda: self._get_stub() and self._channel, self._metadata, self.rpc_timeout)
        return self._admin

    # ------------------------------------------------------------ sending

    async def send(
        self,
        path: str,
        data: Any,
        *,
        headers: Optional[Mapping[str, str]] = None,
        content_type: Optional[str] = None,
        ordering_key: Optional[str] = None,
    ) -> str:
        """As :meth:`Webhook.send` (``ordering_key``: docs/ordering.md)."""
        req = build_send_request(path, data, headers, content_type, ordering_key)
        try:
            resp = await self._get_stub().Send(req, timeout=self.rpc_timeout, metadata=tracing.with_trace(self._metadata))
        except grpc.RpcError as e:
            raise error_for(e) from e
        return str(resp.message_id)

    async def publish(
        self,
        path: str,
        data: Any,
        *,
        headers: Optional[Mapping[str, str]] = None,
        content_type: Optional[str] = None,
        ordering_key: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        delay: Optional[float] = None,
        ttl: Optional[float] = None,
    ) -> str:
        """As :meth:`Webhook.publish`, awaiting the message id (docs/publish.md)."""
        msg = build_publish_message(
            path,
            data,
            headers=headers,
            content_type=content_type,
            ordering_key=ordering_key,
            idempotency_key=idempotency_key,
            delay=delay,
            ttl=ttl,
        )
        if self._publisher is None:
            stub = self._get_stub()
            self._publisher = AsyncPublisher(
                lambda: stub.Publish(metadata=tracing.with_trace(self._metadata)), self.publish_settings
            )
        return await self._publisher.publish(msg)

    async def flush(self) -> None:
        """Write the waiting burst, then wait until every :meth:`publish` is answered."""
        if self._publisher is not None:
            await self._publisher.flush()

    async def send_batch(self, messages: Iterable[BatchItem]) -> List[str]:
        req = build_batch_request(messages)
        try:
            resp = await self._get_stub().SendBatch(req, timeout=self.rpc_timeout, metadata=tracing.with_trace(self._metadata))
        except grpc.RpcError as e:
            raise error_for(e) from e
        return [r.message_id for r in resp.results]

    # ------------------------------------------------------------ pull processing

    async def process_messages(self, block: bool = False, timeout: float = 1, count: int = 10) -> int:
        """As :meth:`Webhook.process_messages`: handlers run one after another,
        failures are nacked at once, the handled messages of a batch are acked
        with one Ack call after the last handler (leases extended until then)."""
        stub = self._get_stub()
        processed = 0
        for route in self._router.subscriptions():
            req = pb.ReceiveRequest(
                path=route.path,
                group=self.group,
                consumer=self.consumer,
                max_messages=max(1, min(int(count), 1000)),  # the broker's limits
                ack_deadline=to_duration(self.ack_deadline),
            )
            wait = min(float(timeout), 300.0) if block and timeout else 0.0
            if wait > 0:
                req.wait.CopyFrom(to_duration(wait))
            try:
                resp = await stub.Receive(req, timeout=wait + self.rpc_timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                logger.error("Error fetching messages for route %s: %s", route.path, e)
                continue
            deliveries = [Delivery.from_proto(d) for d in resp.deliveries]
            processed += await self._process_batch(route, deliveries)
        return processed

    async def _process_batch(self, route: Route, deliveries: List[Delivery]) -> int:
        """Handle one received batch: nack failures one by one, ack the
        successes with one call at the end (also when cancelled, before the
        CancelledError propagates). Returns how many acks were OK."""
        keepers = [asyncio.ensure_future(self._keep_lease(d)) for d in deliveries]
        handled: List[int] = []  # indexes into deliveries, kept leased until acked
        oks: List[bool] = []
        try:
            for i, d in enumerate(deliveries):
                job = _Job(self._router.route_for(route, d), d)
                error = await self._run_handler(job, keepers[i])
                if error is None:
                    job.claim()
                    handled.append(i)
                    continue
                keepers[i].cancel()
                if job.claim():
                    await self._settle(d, settlement_for(error))
        finally:
            kept = set(handled)
            for i, k in enumerate(keepers):
                if i not in kept:
                    k.cancel()
            if handled:
                done = [keepers[i] for i in handled]
                ack = asyncio.ensure_future(self._ack([deliveries[i] for i in handled]))
                # Release the leases once the Ack is answered, even if we are
                # cancelled (again) while waiting for it.
                ack.add_done_callback(lambda _f: [k.cancel() for k in done])
                oks = await asyncio.shield(ack)
        return sum(oks)

    # ------------------------------------------------------------ push processing

    def stop(self) -> None:
        """Ask a running :meth:`run` to stop gracefully and return."""
        self._stop_requested = True
        if self._stop_event is not None:
            self._stop_event.set()

    async def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait until :meth:`run` has every path's Subscribe stream open."""

        async def _all() -> None:
            # run() creates the events (on its loop); poll until it has.
            while not (self._ready and all(e.is_set() for e in self._ready.values())):
                await asyncio.sleep(0.01)

        try:
            await asyncio.wait_for(_all(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def run(self, *, shutdown_timeout: float = 5.0) -> None:
        """Consume every registered path until cancelled or :meth:`stop`.

        Cancellation is honoured: the graceful stop runs, then
        ``CancelledError`` propagates. A non-retryable stream error
        (e.g. INVALID_ARGUMENT) stops the run and is raised.
        """
        routes = self._router.subscriptions()
        if not routes:
            raise RuntimeError("no handlers registered; use @webhook.get(path) first")
        self._get_stub()
        self._stop_event = asyncio.Event()
        if self._stop_requested:
            self._stop_event.set()
        self._ready = {r.path: asyncio.Event() for r in routes}
        jobs: Set[_Job] = set()
        fatal: List[BaseException] = []
        readers = [asyncio.ensure_future(self._subscribe_loop(r, jobs, fatal)) for r in routes]
        stop_wait = asyncio.ensure_future(self._stop_event.wait())
        cancelled = False
        try:
            await asyncio.wait([stop_wait, *readers], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            cancelled = True
        finally:
            # Graceful stop: shielded so a second cancel cannot skip the nacks.
            stopping = asyncio.ensure_future(self._graceful_stop(readers, stop_wait, jobs, shutdown_timeout))
            try:
                await asyncio.shield(stopping)
            except asyncio.CancelledError:
                cancelled = True
                await stopping
            self._stop_event = None
            self._stop_requested = False
        if cancelled:
            raise asyncio.CancelledError
        if fatal:
            raise fatal[0]
        for r in readers:
            if r.done() and not r.cancelled() and r.exception() is not None:
                raise r.exception()  # type: ignore[misc]

    async def _graceful_stop(
        self, readers: Sequence["asyncio.Future[None]"], stop_wait: "asyncio.Future[Any]", jobs: Set[_Job], timeout: float
    ) -> None:
        for t in (*readers, stop_wait):
            t.cancel()
        await asyncio.gather(*readers, stop_wait, return_exceptions=True)
        pending = [j.task for j in jobs if j.task is not None]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for job in list(jobs):
            if job.claim():
                logger.warning("message %s did not finish within %gs; nacking it", job.delivery.message_id, timeout)
                await self._settle(job.delivery, shutdown_settlement(timeout))
                if job.task is not None:
                    job.task.cancel()
        leftovers = [j.task for j in jobs if j.task is not None and not j.task.done()]
        if leftovers:
            await asyncio.wait(leftovers, timeout=1.0)

    async def _subscribe_loop(self, route: Route, jobs: Set[_Job], fatal: List[BaseException]) -> None:
        stub = self._get_stub()
        sem = asyncio.Semaphore(self.concurrency)
        backoff = Backoff()
        failures = 0
        req = pb.SubscribeRequest(
            path=route.path,
            group=self.group,
            consumer=self.consumer,
            max_in_flight=self.concurrency,
            ack_deadline=to_duration(self.ack_deadline),
        )
        while True:
            call = stub.Subscribe(req, metadata=self._metadata)
            try:
                await call.initial_metadata()
                if not call.done():
                    backoff.reset()
                    failures = 0
                    self._ready[route.path].set()
                    logger.info("subscribed to %s (group %r)", route.path, self.group or "<default>")
                async for msg in call:
                    backoff.reset()
                    delivery = Delivery.from_proto(msg)
                    await sem.acquire()
                    job = _Job(self._router.route_for(route, delivery), delivery)
                    jobs.add(job)
                    job.task = asyncio.ensure_future(self._work(job, sem, jobs))
                logger.warning("stream for %s ended; reconnecting", route.path)
            except asyncio.CancelledError:
                call.cancel()
                raise
            except grpc.RpcError as e:
                code = rpc_code(e)
                if code in FATAL_STREAM_CODES:
                    logger.error("subscription to %s failed: %s", route.path, e)
                    fatal.append(error_for(e))
                    return
                failures += 1
                logger.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "stream for %s broke (%s: %s); reconnecting",
                    route.path,
                    code,
                    e.details() if hasattr(e, "details") else e,
                )
            await asyncio.sleep(backoff.next())

    async def _work(self, job: _Job, sem: asyncio.Semaphore, jobs: Set[_Job]) -> None:
        keeper = asyncio.ensure_future(self._keep_lease(job.delivery))
        try:
            await self._run_and_settle(job, keeper)
        except asyncio.CancelledError:
            pass  # abandoned at stop (already nacked)
        finally:
            keeper.cancel()
            sem.release()
            jobs.discard(job)

    # ------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        if self._publisher is not None:
            await self._publisher.close()
            self._publisher = None
        self.stop()
        self._closed = True
        if self._channel is not None and self._owns_channel:
            await self._channel.close()
        self._channel = None
        self._stub = None

    async def __aenter__(self) -> "AsyncWebhook":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ------------------------------------------------------------ internals

    async def _call_handler(self, job: _Job) -> None:
        with tracing.handler_span(job.delivery):
            arg = handler_argument(job.route, job.delivery)
            if job.route.is_async:
                await job.route.handler(arg)
                return
            loop = asyncio.get_running_loop()
            # The executor thread does not inherit context variables: hand it
            # this one, so the handler sees its span and delivery_traceparent().
            ctx = contextvars.copy_context()
            result = await loop.run_in_executor(None, ctx.run, functools.partial(job.route.handler, arg))
            if asyncio.iscoroutine(result):  # a sync callable that returned a coroutine
                await result

    async def _run_handler(self, job: _Job, keeper: "asyncio.Future[None]") -> Optional[Exception]:
        """Run the handler; returns the exception it raised (logged), None on
        success. Cancelled, it nacks the delivery and re-raises."""
        try:
            await self._call_handler(job)
        except asyncio.CancelledError:
            keeper.cancel()
            if job.claim():  # cancelled from outside (e.g. process_messages' caller)
                await asyncio.shield(self._settle(job.delivery, Settlement(ack=False, reason="cancelled")))
            raise
        except Exception as e:  # noqa: BLE001 - every failure is settled
            logger.info("handler for %s failed on message %s: %r", job.route.path, job.delivery.message_id, e)
            return e
        return None

    async def _run_and_settle(self, job: _Job, keeper: "asyncio.Future[None]") -> bool:
        error = await self._run_handler(job, keeper)
        keeper.cancel()
        if not job.claim():
            return False
        return await self._settle(job.delivery, settlement_for(error))

    async def _call_with_retry(self, method: Callable[..., Awaitable[Any]], request: Any) -> Any:
        backoff = Backoff()
        deadline = time.monotonic() + SETTLE_RETRY_FOR
        while True:
            try:
                return await method(request, timeout=self.rpc_timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                if rpc_code(e) not in RETRYABLE_CODES or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(backoff.next())

    async def _ack(self, deliveries: Sequence[Delivery]) -> List[bool]:
        """As :meth:`Webhook._ack`: one Ack call per ``MAX_ACK_RECEIPTS``, one flag per delivery."""
        stub = self._get_stub()
        oks: List[bool] = []
        for chunk in ack_chunks(deliveries):
            try:
                resp = await self._call_with_retry(stub.Ack, pb.AckRequest(receipts=[d.receipt for d in chunk]))
            except grpc.RpcError as e:
                if rpc_code(e) == grpc.StatusCode.INVALID_ARGUMENT and len(chunk) > 1:
                    # One bad receipt fails the whole call: settle each on its own.
                    for d in chunk:
                        oks.extend(await self._ack([d]))
                    continue
                for d in chunk:
                    log_settle_error(d, e)
                oks.extend(False for _ in chunk)
                continue
            oks.extend(ack_outcomes(chunk, resp))
        return oks

    async def _settle(self, delivery: Delivery, settlement: Settlement) -> bool:
        if settlement.ack:
            return (await self._ack([delivery]))[0]
        try:
            await self._call_with_retry(self._get_stub().Nack, settlement.nack_request(delivery.receipt))
        except grpc.RpcError as e:
            log_settle_error(delivery, e)
        return False

    async def _keep_lease(self, delivery: Delivery) -> None:
        """Extend the lease at about half of it until cancelled."""
        stub = self._get_stub()
        lease = self.ack_deadline
        delay = first_extend_delay(delivery, lease)
        while True:
            await asyncio.sleep(delay)
            try:
                await stub.Extend(
                    pb.ExtendRequest(receipt=delivery.receipt, extension=to_duration(lease)),
                    timeout=min(self.rpc_timeout, max(lease / 2, 1.0)),
                    metadata=self._metadata,
                )
                delay = lease / 2
            except grpc.RpcError as e:
                if rpc_code(e) == grpc.StatusCode.FAILED_PRECONDITION:
                    logger.warning("lease lost for message %s", delivery.message_id)
                    return
                logger.warning("Extend failed for message %s: %s; retrying", delivery.message_id, e)
                delay = min(1.0, lease / 4)


class AsyncAdmin:
    """asyncio twin of :class:`leanmq_grpc.Admin`: the same constructor and
    methods, as coroutines; :meth:`list_dead_letters` is an async iterator.

    ``target`` is ``"host:port"`` (the channel is made on first use, on the
    running loop) or a ``grpc.aio.Channel`` (not closed by :meth:`close`).
    ``webhook.admin`` gives one on an :class:`AsyncWebhook`'s channel.
    """

    def __init__(
        self,
        target: Any,
        *,
        token: Optional[str] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        metadata: Optional[Metadata] = None,
        options: Optional[Sequence[Any]] = None,
        rpc_timeout: float = 30.0,
    ) -> None:
        call_md = call_metadata(metadata, token)
        if isinstance(target, str):
            self._channel: Any = None

            def make() -> Any:
                if self._channel is None:
                    if credentials is not None:
                        self._channel = grpc.aio.secure_channel(target, credentials, options=options)
                    else:
                        self._channel = grpc.aio.insecure_channel(target, options=options)
                return self._channel

            self._init(make, True, call_md, rpc_timeout)
        else:
            self._channel = target
            self._init(lambda: target, False, call_md, rpc_timeout)

    @classmethod
    def _sharing(cls, channel: Callable[[], Any], metadata: Metadata, rpc_timeout: float) -> "AsyncAdmin":
        """An AsyncAdmin on another client's (lazily made) channel and metadata."""
        admin = cls.__new__(cls)
        admin._channel = None
        admin._init(channel, False, tuple(metadata), rpc_timeout)
        return admin

    def _init(self, channel: Callable[[], Any], owns: bool, metadata: Metadata, rpc_timeout: float) -> None:
        if not rpc_timeout > 0:
            raise ValueError("rpc_timeout must be > 0")
        self._get_channel = channel
        self._owns_channel = owns
        self._metadata = tuple(metadata)
        self.rpc_timeout = float(rpc_timeout)
        self._stub: Any = None
        self._stub_channel: Any = None
        self._closed = False

    def _get_stub(self) -> Any:
        if self._closed:
            raise RuntimeError("AsyncAdmin is closed")
        channel = self._get_channel()
        if self._stub is None or channel is not self._stub_channel:
            self._stub, self._stub_channel = apb_grpc.AdminStub(channel), channel
        return self._stub

    async def _call(self, name: str, request: Any) -> Any:
        method = getattr(self._get_stub(), name)
        try:
            return await method(request, timeout=self.rpc_timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise error_for(e) from e

    async def list_queues(self) -> List[QueueSummary]:
        out: List[QueueSummary] = []
        token = ""
        while True:
            resp = await self._call(
                "ListQueues", apb.ListQueuesRequest(page_size=QUEUE_PAGE, page_token=token)
            )
            out.extend(queue_summary(q) for q in resp.queues)
            token = resp.next_page_token
            if not token:
                return out

    async def get_queue(self, path: str) -> QueueInfo:
        return queue_info(await self._call("GetQueue", apb.GetQueueRequest(path=path)))

    async def purge_queue(self, path: str, confirm: str) -> int:
        req = apb.PurgeQueueRequest(path=path, confirm=check_confirm(confirm))
        return int((await self._call("PurgeQueue", req)).purged)

    async def delete_queue(self, path: str, confirm: str, with_dlq: bool = True) -> int:
        req = apb.DeleteQueueRequest(path=path, confirm=check_confirm(confirm), with_dlq=bool(with_dlq))
        return int((await self._call("DeleteQueue", req)).deleted_messages)

    def list_dead_letters(
        self, path: str, limit: Optional[int] = None, *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> AsyncIterator[DeadLetterEntry]:
        """``async for dl in admin.list_dead_letters(path)``: every page, oldest first."""
        check_paging(limit, page_size)
        return self._pages(path, limit, page_size)

    async def _pages(self, path: str, limit: Optional[int], page_size: int) -> AsyncIterator[DeadLetterEntry]:
        seen, token = 0, ""
        while limit is None or seen < limit:
            resp = await self._call("ListDeadLetters", page_request(path, page_size, limit, seen, token))
            for m in resp.dead_letters:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield dead_letter_entry(m)
            token = resp.next_page_token
            if not token:
                return

    async def requeue_dead_letters(
        self,
        path: str,
        ids: Optional[Iterable[str]] = None,
        all: bool = False,
        since: Optional[datetime] = None,
    ) -> RequeueResult:
        responses = [await self._call("RequeueDeadLetters", r) for r in requeue_requests(path, ids, all, since)]
        return requeue_result(responses)

    async def delete_dead_letters(self, path: str, ids: Iterable[str]) -> int:
        return sum([int((await self._call("DeleteDeadLetters", r)).deleted) for r in delete_requests(path, ids)])

    async def purge_dead_letters(self, path: str) -> int:
        return int((await self._call("PurgeDeadLetters", apb.PurgeDeadLettersRequest(path=path))).purged)

    async def close(self) -> None:
        """Close the channel, if this AsyncAdmin made it."""
        self._closed = True
        if self._owns_channel and self._channel is not None:
            await self._channel.close()
        self._channel = None

    async def __aenter__(self) -> "AsyncAdmin":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


#: ``from leanmq_grpc.aio import Admin`` reads as the sync API does.
Admin = AsyncAdmin
