"""Threaded webhook layer: ``Webhook`` (LeanMQ's ``LeanMQWebhook``) and ``WebhookService``."""
from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import grpc

from ._common import (
    FATAL_STREAM_CODES,
    MAX_ACK_RECEIPTS,
    RETRYABLE_CODES,
    SETTLE_RETRY_FOR,
    Backoff,
    BatchItem,
    Delivery,
    Metadata,
    Route,
    Router,
    Settlement,
    Target,
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
from . import tracing
from ._proto.leanmq.v1 import broker_pb2 as pb
from ._proto.leanmq.v1 import broker_pb2_grpc as pb_grpc
from ._publish import Publisher, PublishSettings, build_publish_message, stream_opener
from .admin import Admin
from .errors import error_for

F = TypeVar("F", bound=Callable[..., Any])

_worker_local = threading.local()


class _InFlight:
    """A delivery between receipt and settlement; settled exactly once."""

    __slots__ = ("route", "delivery", "_lock", "_claimed", "started")

    def __init__(self, route: Route, delivery: Delivery) -> None:
        self.route = route
        self.delivery = delivery
        self._lock = threading.Lock()
        self._claimed = False
        self.started = False

    def claim(self) -> bool:
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def is_claimed(self) -> bool:
        with self._lock:
            return self._claimed


class _LeaseKeeper:
    """One background thread that calls Extend for every delivery it holds,
    at about half of the lease, until the delivery is removed (settled)."""

    def __init__(self, webhook: "Webhook") -> None:
        self._webhook = webhook
        self._cond = threading.Condition()
        self._due: Dict[str, float] = {}  # receipt -> monotonic time of next Extend
        # When the thread's wait ends: inf while it waits for work, -inf
        # while it is not waiting (it looks at _due again before it does).
        self._wakes_at = float("-inf")
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    def add(self, delivery: Delivery) -> None:
        self.add_many((delivery,))

    def add_many(self, deliveries: Iterable[Delivery]) -> None:
        lease = self._webhook.ack_deadline
        with self._cond:
            if self._closed:
                return
            earliest = float("inf")
            for d in deliveries:
                due = d.received_at + first_extend_delay(d, lease)
                self._due[d.receipt] = due
                earliest = min(earliest, due)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="leanmq-lease-keeper", daemon=True)
                self._thread.start()
            if earliest < self._wakes_at:  # only wake the thread when it would sleep too long
                self._cond.notify_all()

    def remove(self, receipt: str) -> None:
        # No wake-up: the thread finds out at its next due time.
        with self._cond:
            self._due.pop(receipt, None)

    def remove_many(self, receipts: Iterable[str]) -> None:
        with self._cond:
            for r in receipts:
                self._due.pop(r, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._due.clear()
            self._cond.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)

    def _next_due(self) -> Optional[str]:
        """Wait for the next receipt due for extension (None when closed)."""
        with self._cond:
            try:
                while not self._closed:
                    if not self._due:
                        self._wakes_at = float("inf")
                        self._cond.wait()
                        continue
                    receipt = min(self._due, key=self._due.__getitem__)
                    due = self._due[receipt]
                    wait = due - time.monotonic()
                    if wait > 0:
                        self._wakes_at = due
                        self._cond.wait(wait)
                        continue
                    self._due[receipt] = float("inf")  # being extended
                    return receipt
                return None
            finally:
                self._wakes_at = float("-inf")

    def _run(self) -> None:
        lease = self._webhook.ack_deadline
        while True:
            receipt = self._next_due()
            if receipt is None:
                return
            retry_in: Optional[float] = lease / 2
            try:
                self._webhook._stub.Extend(
                    pb.ExtendRequest(receipt=receipt, extension=to_duration(lease)),
                    timeout=min(self._webhook.rpc_timeout, max(lease / 2, 1.0)),
                    metadata=self._webhook._metadata,
                )
            except grpc.RpcError as e:
                code = rpc_code(e)
                with self._cond:
                    held = receipt in self._due
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    if held:
                        logger.warning("lease lost for receipt %s (redelivered elsewhere?)", receipt)
                    retry_in = None
                else:
                    if held:
                        logger.warning("Extend failed for %s: %s; retrying", receipt, e)
                    retry_in = min(1.0, lease / 4)
            except Exception:  # pragma: no cover - defensive
                logger.exception("Extend failed for %s", receipt)
                retry_in = min(1.0, lease / 4)
            with self._cond:
                if receipt in self._due:
                    if retry_in is None:
                        del self._due[receipt]
                    else:
                        self._due[receipt] = time.monotonic() + retry_in


class _AckBatcher:
    """Coalesces the acks of a webhook's push deliveries.

    Worker threads hand over the receipts of handled messages; one sender
    thread sends everything queued (up to ``MAX_ACK_RECEIPTS``) in one Ack
    call as soon as the previous call has returned. A lone message is so
    acked at once, and under load acks share calls; nothing waits on a timer.
    Each delivery stays with the lease keeper until its Ack has returned.
    """

    def __init__(self, webhook: "Webhook") -> None:
        self._webhook = webhook
        self._cond = threading.Condition()
        self._queue: Deque[Tuple[Delivery, "Future[bool]"]] = deque()
        self._busy = False  # an Ack call is under way
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    def submit(self, delivery: Delivery) -> "Future[bool]":
        """Queue ``delivery`` for acking; the future's result is True when its
        ack outcome is OK (logged like any settlement when it is not)."""
        fut: "Future[bool]" = Future()
        with self._cond:
            if not self._closed:
                self._queue.append((delivery, fut))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="leanmq-acker", daemon=True)
                    self._thread.start()
                self._cond.notify_all()
                return fut
        # Closed (the webhook is closing): ack on the caller's thread.
        try:
            fut.set_result(self._webhook._ack([delivery])[0])
        finally:
            self._webhook._keeper.remove(delivery.receipt)
        return fut

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every queued ack has been sent and answered."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self, timeout: Optional[float] = None) -> None:
        """Send what is queued, then stop the sender thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed and drained
                n = min(len(self._queue), MAX_ACK_RECEIPTS)
                batch = [self._queue.popleft() for _ in range(n)]
                self._busy = True
            deliveries = [d for d, _ in batch]
            try:
                oks = self._webhook._ack(deliveries)
            except BaseException as e:  # pragma: no cover - _ack logs and returns RPC failures
                logger.error("acking %d message(s) failed: %r", len(deliveries), e)
                oks = [False] * len(deliveries)
            self._webhook._keeper.remove_many(d.receipt for d in deliveries)
            for (_, fut), ok in zip(batch, oks):
                fut.set_result(ok)
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class Webhook:
    """gRPC counterpart of LeanMQ's ``LeanMQWebhook``.

    Args:
        target: ``"host:port"`` of a leanmqd, or an existing ``grpc.Channel``
            (not closed by :meth:`close`).
        group: consumer group; "" = LeanMQ's group for each path, so gRPC and
            LeanMQ Python consumers share the work.
        consumer: subscriber name for logs (default ``py-<host>-<pid>``).
        concurrency: most handlers running at once per path (sent as
            ``max_in_flight``).
        ack_deadline: lease length in seconds; leases of running handlers are
            extended at about half of it.
        credentials: ``grpc.ChannelCredentials`` for TLS (default plaintext),
            e.g. ``grpc.ssl_channel_credentials(root_certificates=ca_pem)``.
        metadata: extra call metadata.
        options: extra grpc channel options.
        rpc_timeout: deadline in seconds for unary calls.
        token: a leanmqd bearer token (``--auth-tokens``): sent as
            ``authorization: Bearer <token>`` on every call, Subscribe
            streams included. A missing or unknown token fails calls with
            ``UNAUTHENTICATED``, a path outside the token's grant with
            ``PERMISSION_DENIED`` (``Unauthenticated`` / ``PermissionDenied``,
            both :class:`~leanmq_grpc.LeanMQError`; a service stops with it in
            ``service.error``).
        publish_settings: how :meth:`publish` batches messages onto the
            Publish stream (:class:`~leanmq_grpc.PublishSettings`; default
            5 ms, 100 messages, 1 MiB).
    """

    def __init__(
        self,
        target: Target,
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
        settings = PublishSettings.given(publish_settings)
        call_md = call_metadata(metadata, token)  # validates before a channel is made
        if isinstance(target, grpc.Channel):
            self._channel, self._owns_channel = target, False
        elif credentials is not None:
            self._channel, self._owns_channel = grpc.secure_channel(target, credentials, options=options), True
        else:
            self._channel, self._owns_channel = grpc.insecure_channel(target, options=options), True
        self.target = target
        self.group = group
        self.consumer = consumer or default_consumer()
        self.concurrency = concurrency
        self.ack_deadline = float(ack_deadline)
        self.rpc_timeout = rpc_timeout
        self._metadata = call_md
        self._stub = pb_grpc.BrokerStub(self._channel)
        self._router = Router()
        self._keeper = _LeaseKeeper(self)
        self._acker = _AckBatcher(self)
        self._services: List["WebhookService"] = []
        self._admin: Optional[Admin] = None
        self.publish_settings = settings
        self._publisher: Optional[Publisher] = None
        self._closed = False

    # ------------------------------------------------------------ registration

    @property
    def routes(self) -> List[Route]:
        return list(self._router.routes.values())

    def get(self, path: str, *, raw: bool = False) -> Callable[[F], F]:
        """Register ``handler(data)`` for ``path`` (``handler(delivery)`` with ``raw=True``)."""

        def decorator(func: F) -> F:
            self._router.add(path, func, raw)
            return func

        return decorator

    def add_handler(self, path: str, handler: Callable[[Any], Any], *, raw: bool = False) -> None:
        """Non-decorator form of :meth:`get`."""
        self._router.add(path, handler, raw)

    # ------------------------------------------------------------ administration

    @property
    def admin(self) -> Admin:
        """An :class:`~leanmq_grpc.Admin` on this webhook's channel, with its
        token, metadata and ``rpc_timeout`` (closed with the webhook)."""
        if self._admin is None:
            self._admin = Admin._on_channel(self._channel, self._metadata, self.rpc_timeout)
        return self._admin

    # ------------------------------------------------------------ sending

    def send(
        self,
        path: str,
        data: Any,
        *,
        headers: Optional[Mapping[str, str]] = None,
        content_type: Optional[str] = None,
        ordering_key: Optional[str] = None,
    ) -> str:
        """Send ``data`` to ``path``; returns the message id.

        dict/list (any JSON value) → JSON, ``application/json``; bytes →
        ``application/octet-stream`` (or ``content_type``). With
        ``ordering_key``, messages with the same key are delivered one at a
        time per consumer group, in send order (docs/ordering.md); the broker
        refuses a key over 256 bytes or with control characters (``InvalidArgument``).
        Raises a :class:`~leanmq_grpc.LeanMQError` subclass when the broker
        refuses (``PermissionDenied``, ``InvalidArgument``, ...) or is
        unreachable (``Unavailable``).
        """
        req = build_send_request(path, data, headers, content_type, ordering_key)
        try:
            resp = self._stub.Send(req, timeout=self.rpc_timeout, metadata=tracing.with_trace(self._metadata))
        except grpc.RpcError as e:
            raise error_for(e) from e
        return resp.message_id

    def send_batch(self, messages: Iterable[BatchItem]) -> List[str]:
        """Send ``[(path, data), (path, data, headers), BatchMessage(…), …]`` atomically; ids in order.

        A :class:`~leanmq_grpc.BatchMessage` item also carries ``content_type``
        and ``ordering_key``."""
        req = build_batch_request(messages)
        try:
            resp = self._stub.SendBatch(req, timeout=self.rpc_timeout, metadata=tracing.with_trace(self._metadata))
        except grpc.RpcError as e:
            raise error_for(e) from e
        return [r.message_id for r in resp.results]

    def publish(
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
    ) -> "Future[str]":
        """Publish ``data`` to ``path`` over one shared ``Publish`` stream; a
        future of the message id (docs/publish.md).

        Takes ``send``'s options plus ``idempotency_key``, ``delay`` and
        ``ttl`` (seconds). Without ``idempotency_key`` the SDK sets one, so
        the resend after a broken stream never stores a message twice. Blocks
        while the server's window of unanswered messages is full. Messages
        are written in bursts (``publish_settings``: ``max_messages``,
        ``max_bytes`` or ``max_delay`` after the first of a burst, whichever
        comes first). A refusal arrives on the future as a
        :class:`~leanmq_grpc.LeanMQError` subclass. :meth:`flush` and
        :meth:`close` write the burst at once and wait for every future.
        """
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
            self._publisher = Publisher(stream_opener(self._stub, self._metadata), self.publish_settings)
        return self._publisher.publish(msg)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Write the waiting burst, then wait until every :meth:`publish` is
        answered; False on timeout."""
        return self._publisher is None or self._publisher.flush(timeout)

    # ------------------------------------------------------------ pull processing

    def process_messages(self, block: bool = False, timeout: float = 1, count: int = 10) -> int:
        """Receive up to ``count`` messages per registered path and handle them.

        With ``block``, waits up to ``timeout`` seconds (per path) for the first
        message. Returns how many were handled successfully (acked). Errors
        reaching the broker are logged, as LeanMQ does.

        The handlers of a received batch run one after another; failures are
        nacked at once, and the handled messages are acked together, with one
        Ack call, after the last handler (their leases are extended until then).
        """
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
                resp = self._stub.Receive(req, timeout=wait + self.rpc_timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                logger.error("Error fetching messages for route %s: %s", route.path, e)
                continue
            deliveries = [Delivery.from_proto(d) for d in resp.deliveries]
            processed += self._process_batch(route, deliveries)
        return processed

    def _process_batch(self, route: Route, deliveries: List[Delivery]) -> int:
        """Handle one received batch: nack failures one by one, ack the
        successes with one call at the end (also when a handler raised a
        BaseException, which then propagates). Returns how many acks were OK."""
        self._keeper.add_many(deliveries)
        handled: List[Delivery] = []
        settled = 0  # deliveries[:settled] have run (and are acked or nacked)
        oks: List[bool] = []
        try:
            for d in deliveries:
                state = _InFlight(self._router.route_for(route, d), d)
                error = self._run_handler(state)
                settled += 1
                if error is None:
                    state.claim()
                    handled.append(d)  # still with the keeper until acked
                    continue
                self._keeper.remove(d.receipt)
                if state.claim():
                    self._settle(d, settlement_for(error))
                if not isinstance(error, Exception):
                    raise error
        finally:
            try:
                if handled:
                    oks = self._ack(handled)
            finally:
                self._keeper.remove_many(d.receipt for d in handled)
                # Those that never ran (a handler raised a BaseException) are left to their leases.
                self._keeper.remove_many(d.receipt for d in deliveries[settled:])
        return sum(oks)

    # ------------------------------------------------------------ push processing

    def run_service(
        self,
        process_count: int = 10,
        block_for_seconds: Optional[float] = 1,
        handle_signals: bool = True,
        worker_thread_timeout: float = 5,
        log_level: Union[int, str, None] = None,
    ) -> "WebhookService":
        """Start a :class:`WebhookService` (Subscribe streams, one per path) and return it."""
        if log_level is not None:
            logger.setLevel(log_level)
        service = WebhookService(
            self,
            process_count=process_count,
            block_for_seconds=block_for_seconds,
            handle_signals=handle_signals,
            worker_thread_timeout=worker_thread_timeout,
        )
        service.start()
        return service

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop running services, stop extending leases, close the channel."""
        if self._closed:
            return
        self._closed = True
        if self._publisher is not None:
            self._publisher.close()
        for service in list(self._services):
            service.stop()
        self._acker.close(timeout=SETTLE_RETRY_FOR + self.rpc_timeout)
        self._keeper.close()
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "Webhook":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _run_handler(self, state: _InFlight) -> Optional[BaseException]:
        """Run the handler; returns what it raised (logged), None on success."""
        state.started = True
        try:
            with tracing.handler_span(state.delivery):
                state.route.handler(handler_argument(state.route, state.delivery))
        except BaseException as e:  # noqa: BLE001 - every failure is settled
            if not isinstance(e, Exception):
                logger.warning("handler for %s interrupted: %r", state.route.path, e)
            else:
                logger.info(
                    "handler for %s failed on message %s: %r", state.route.path, state.delivery.message_id, e
                )
            return e
        return None

    def _run_and_queue(self, state: _InFlight) -> "Optional[Future[bool]]":
        """Push path: run the handler; hand a success to the ack batcher (the
        future tells its outcome), nack a failure at once (None)."""
        error = self._run_handler(state)
        if error is None:
            if state.claim():
                return self._acker.submit(state.delivery)  # the batcher releases the lease keeper
            self._keeper.remove(state.delivery.receipt)
            return None
        self._keeper.remove(state.delivery.receipt)
        if state.claim():
            self._settle(state.delivery, settlement_for(error))
        return None

    def _call_with_retry(self, method: Callable[..., Any], request: Any) -> Any:
        backoff = Backoff()
        deadline = time.monotonic() + SETTLE_RETRY_FOR
        while True:
            try:
                return method(request, timeout=self.rpc_timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                if rpc_code(e) not in RETRYABLE_CODES or time.monotonic() >= deadline:
                    raise
                time.sleep(backoff.next())

    def _ack(self, deliveries: Sequence[Delivery]) -> List[bool]:
        """Ack ``deliveries`` with one call per ``MAX_ACK_RECEIPTS``; one flag
        per delivery, True when its outcome is OK (the others are logged)."""
        oks: List[bool] = []
        for chunk in ack_chunks(deliveries):
            try:
                resp = self._call_with_retry(self._stub.Ack, pb.AckRequest(receipts=[d.receipt for d in chunk]))
            except grpc.RpcError as e:
                if rpc_code(e) == grpc.StatusCode.INVALID_ARGUMENT and len(chunk) > 1:
                    # One bad receipt fails the whole call: settle each on its own.
                    oks.extend(self._ack([d])[0] for d in chunk)
                    continue
                for d in chunk:
                    log_settle_error(d, e)
                oks.extend(False for _ in chunk)
                continue
            oks.extend(ack_outcomes(chunk, resp))
        return oks

    def _settle(self, delivery: Delivery, settlement: Settlement) -> bool:
        if settlement.ack:
            return self._ack([delivery])[0]
        try:
            resp = self._call_with_retry(self._stub.Nack, settlement.nack_request(delivery.receipt))
            logger.debug("nacked %s: %s", delivery.message_id, pb.NackOutcome.Name(resp.outcome))
        except grpc.RpcError as e:
            log_settle_error(delivery, e)
        return False


class _WorkerPool:
    """Fixed-size pool of daemon threads (a stuck handler never blocks exit)."""

    def __init__(self, size: int, name: str) -> None:
        self._q: "queue.Queue[Optional[Callable[[], None]]]" = queue.Queue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(size)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[], None]) -> None:
        self._q.put(fn)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._q.put(None)

    def _run(self) -> None:
        _worker_local.active = True
        while True:
            fn = self._q.get()
            if fn is None:
                return
            try:
                fn()
            except Exception:  # pragma: no cover - _work settles everything itself
                logger.exception("worker error")


class _Subscription:
    """One Subscribe stream (one path) with reconnect, admission and its workers."""

    def __init__(self, service: "WebhookService", route: Route) -> None:
        self.service = service
        self.webhook = service.webhook
        self.route = route
        self.inflight: Dict[str, _InFlight] = {}
        self.ready = threading.Event()
        self.streams_opened = 0
        self._call: Any = None
        self._pool = _WorkerPool(self.webhook.concurrency, f"leanmq-{route.queue}")
        self.thread = threading.Thread(target=self._read_loop, name=f"leanmq-sub-{route.queue}", daemon=True)

    def cancel(self) -> None:
        call = self._call
        if call is not None:
            call.cancel()

    def shutdown(self) -> None:
        self._pool.shutdown()

    def _request(self) -> pb.SubscribeRequest:
        w = self.webhook
        return pb.SubscribeRequest(
            path=self.route.path,
            group=w.group,
            consumer=w.consumer,
            max_in_flight=w.concurrency,
            ack_deadline=to_duration(w.ack_deadline),
        )

    def _read_loop(self) -> None:
        svc = self.service
        backoff = Backoff()
        failures = 0
        while not svc._stop_event.is_set():
            call: Any = self.webhook._stub.Subscribe(self._request(), metadata=self.webhook._metadata)
            with svc._cond:
                self._call = call
            if svc._stop_event.is_set():
                call.cancel()
            try:
                call.initial_metadata()
                if not call.done():
                    self.streams_opened += 1
                    self.ready.set()
                    svc._notify_ready()
                    backoff.reset()
                    failures = 0
                    logger.info("subscribed to %s (group %r)", self.route.path, self.webhook.group or "<default>")
                for msg in call:
                    backoff.reset()
                    self._admit(Delivery.from_proto(msg))
                if not svc._stop_event.is_set():
                    logger.warning("stream for %s ended; reconnecting", self.route.path)
            except grpc.RpcError as e:
                if svc._stop_event.is_set():
                    break
                code = rpc_code(e)
                if code in FATAL_STREAM_CODES:
                    logger.error("subscription to %s failed: %s", self.route.path, e)
                    svc._fatal(error_for(e))
                    break
                failures += 1
                # Warn once per outage; the retries after that are debug noise.
                logger.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "stream for %s broke (%s: %s); reconnecting",
                    self.route.path,
                    code,
                    e.details() if hasattr(e, "details") else e,
                )
            finally:
                with svc._cond:
                    self._call = None
            if svc._stop_event.wait(backoff.next()):
                break

    def _admit(self, delivery: Delivery) -> None:
        svc = self.service
        webhook = self.webhook
        webhook._keeper.add(delivery)
        state = _InFlight(self.webhook._router.route_for(self.route, delivery), delivery)
        with svc._cond:
            while len(self.inflight) >= webhook.concurrency and not svc._stop_requested:
                svc._cond.wait()
            if svc._stop_requested:
                admitted = False
            else:
                admitted = True
                self.inflight[delivery.receipt] = state
        if not admitted:
            webhook._keeper.remove(delivery.receipt)
            if state.claim():
                webhook._settle(delivery, Settlement(ack=False, reason="shutdown: not started"))
            return
        self._pool.submit(lambda: self._work(state))

    def _work(self, state: _InFlight) -> None:
        svc = self.service
        try:
            if state.is_claimed():  # abandoned at stop before it started
                return
            self.webhook._run_and_queue(state)
        finally:
            with svc._cond:
                self.inflight.pop(state.delivery.receipt, None)
                svc._cond.notify_all()


class WebhookService:
    """Push-based processing: one Subscribe stream per path, handlers on a
    thread pool bounded by ``webhook.concurrency``, lease extension, reconnect
    with backoff, and graceful stop (LeanMQ's ``WebhookService`` API).

    ``process_count`` and ``block_for_seconds`` are accepted for LeanMQ
    compatibility; with streams, the broker pushes as soon as a message is
    ready and ``Webhook(concurrency=…)`` bounds the work in flight.
    """

    def __init__(
        self,
        webhook: Webhook,
        process_count: int = 10,
        block_for_seconds: Optional[float] = 1,
        handle_signals: bool = True,
        worker_thread_timeout: float = 5,
    ) -> None:
        self.webhook = webhook
        self.process_count = process_count
        self.block_for_seconds = block_for_seconds
        self.handle_signals = handle_signals
        self.worker_thread_timeout = float(worker_thread_timeout)
        self.running = False
        #: the error that stopped the service (a non-retryable stream error), if any
        self.error: Optional[BaseException] = None
        self._cond = threading.Condition()
        self._stop_event = threading.Event()
        self._stopped = threading.Event()
        self._stop_requested = False
        self._started = False
        self._subs: List[_Subscription] = []
        self._ready = threading.Event()
        self._prev_handlers: Dict[int, Any] = {}
        self._finisher: Optional[threading.Thread] = None

    # ------------------------------------------------------------ public API

    def start(self) -> None:
        if self._started:
            logger.info("Service is already running")
            return
        routes = self.webhook._router.subscriptions()
        if not routes:
            raise RuntimeError("no handlers registered; use @webhook.get(path) first")
        self._started = True
        self.running = True
        if self.handle_signals:
            self._install_signals()
        self._subs = [_Subscription(self, r) for r in routes]
        self.webhook._services.append(self)
        for sub in self._subs:
            sub.thread.start()
        logger.info("Webhook service started (%d path(s))", len(self._subs))

    def is_alive(self) -> bool:
        """True while running: not stopping, and the stream threads are alive."""
        return (
            self.running
            and not self._stop_requested
            and any(s.thread.is_alive() for s in self._subs)
        )

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait until every path's Subscribe stream has opened once."""
        return self._ready.wait(timeout)

    def request_stop(self) -> None:
        """Begin a graceful stop without waiting (safe from handlers and signal handlers)."""
        with self._cond:
            if self._stop_requested or not self._started:
                return
            self._stop_requested = True
            self.running = False
            self._stop_event.set()
            self._cond.notify_all()
        logger.info("Stopping webhook service...")
        for sub in self._subs:
            sub.cancel()
        self._finisher = threading.Thread(target=self._finish, name="leanmq-stop", daemon=True)
        self._finisher.start()

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Stop gracefully: take no new deliveries, wait up to
        ``worker_thread_timeout`` for running handlers, nack the unfinished.
        Returns True once fully stopped. Inside a handler, it only requests
        the stop (waiting there would wait for itself)."""
        if not self._started:
            return True
        self.request_stop()
        if threading.main_thread() is threading.current_thread():
            self._restore_signals()
        if getattr(_worker_local, "active", False):
            return self._stopped.is_set()
        return self._stopped.wait(self.worker_thread_timeout + 10 if timeout is None else timeout)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the service has stopped (by stop(), a signal or an error)."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> "WebhookService":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------ internals

    def _notify_ready(self) -> None:
        if all(s.ready.is_set() for s in self._subs):
            self._ready.set()

    def _fatal(self, err: BaseException) -> None:
        if self.error is None:
            self.error = err
        self.request_stop()

    def _finish(self) -> None:
        deadline = time.monotonic() + self.worker_thread_timeout
        with self._cond:
            while any(s.inflight for s in self._subs):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            leftovers = [st for s in self._subs for st in s.inflight.values()]
        for st in leftovers:
            self.webhook._keeper.remove(st.delivery.receipt)
            if st.claim():
                logger.warning(
                    "message %s did not finish within %gs; nacking it", st.delivery.message_id, self.worker_thread_timeout
                )
                self.webhook._settle(st.delivery, shutdown_settlement(self.worker_thread_timeout))
        # Handlers that finished have handed their acks over: send them now.
        if not self.webhook._acker.flush(timeout=SETTLE_RETRY_FOR + self.webhook.rpc_timeout):
            logger.warning("acks still pending at stop")
        for sub in self._subs:
            sub.cancel()
            sub.thread.join(timeout=5)
            sub.shutdown()
        try:
            self.webhook._services.remove(self)
        except ValueError:
            pass
        logger.info("Webhook service stopped")
        self._stopped.set()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("handle_signals ignored: run_service() not called from the main thread")
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._prev_handlers[sig] = signal.signal(sig, self._handle_signal)

    def _restore_signals(self) -> None:
        for sig, prev in self._prev_handlers.items():
            try:
                if signal.getsignal(sig) == self._handle_signal:
                    signal.signal(sig, prev)
            except (ValueError, TypeError):  # pragma: no cover
                pass
        self._prev_handlers.clear()

    def _handle_signal(self, signum: int, frame: Any) -> None:
        if self._stop_requested:
            # A second signal: give up on the graceful stop.
            self._restore_signals()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        logger.info("Received signal %s, shutting down...", signum)
        self.request_stop()
