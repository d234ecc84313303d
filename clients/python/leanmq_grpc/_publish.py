"""Publish: messages over one long-lived ``Publish`` stream, each answered on
its own future.

One stream is opened on the first :meth:`Publisher.publish` and kept. Every
message gets a sequence number and, unless the caller gave one, an
idempotency key; it stays in ``pending`` until its answer arrives. At most
the server's window (the ``leanmq-publish-window`` response header) is
unanswered at once: ``publish`` blocks while it is full. When the stream
breaks, a new one is opened and every unanswered message is sent again
under its idempotency key, so a message the broker had stored before the
break is answered with its first id (``duplicate``) instead of being stored
twice.

Messages are batched (:class:`PublishSettings`, issue #18): they wait in a
buffer, already counted against the window, and the buffer is written to the
stream as one burst when it holds ``max_messages`` messages or
``max_bytes`` of serialized requests, ``max_delay`` seconds after its first
message, when the window is full (nothing more could join it), or on
``flush()``/``close()``. A resend after a break writes what had been written
and not answered; the buffer keeps waiting for its own burst.
"""
from __future__ import annotations

import math
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import grpc

from . import tracing
from ._common import RETRYABLE_CODES, Backoff, build_send_request, logger, rpc_code, to_duration
from ._proto.leanmq.v1 import broker_pb2 as pb
from .errors import Unavailable, error_for, error_for_code

#: The window assumed until the server announces its own.
DEFAULT_WINDOW = 1000
#: The largest window a leanmqd announces (``--publish-window`` is 1-10000).
MAX_WINDOW = 10_000
#: How long a broken stream is reopened before its messages fail.
RECONNECT_FOR = 30.0
_END = object()


def _window_of(metadata: Any) -> Optional[str]:
    """The ``leanmq-publish-window`` header among ``metadata``'s (key, value) pairs."""
    for key, value in metadata or ():
        if key == "leanmq-publish-window":
            return str(value)
    return None


@dataclass(frozen=True)
class PublishSettings:
    """How :meth:`Webhook.publish` batches messages onto the Publish stream
    (the same settings in every SDK; like Pub/Sub's ``BatchSettings``).

    The messages published so far are written as one burst when the first
    of these holds:

    Args:
        max_delay: seconds since the buffer's first message (default 5 ms).
        max_messages: messages in the buffer (default 100); at most
            10000, leanmqd's largest window. When the server's window is
            smaller, the buffer is also written once the window is full.
        max_bytes: serialized size of the buffered requests (default 1 MiB);
            a message that would take the buffer past it is written in the
            next burst, so a burst exceeds ``max_bytes`` only when a single
            message does.

    ``flush()`` and ``close()`` write the buffer at once. Invalid values raise
    ``ValueError`` (``TypeError`` for a value of the wrong type).
    """

    max_delay: float = 0.005
    max_messages: int = 100
    max_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        d = self.max_delay
        if isinstance(d, bool) or not isinstance(d, (int, float)):
            raise TypeError(f"PublishSettings.max_delay must be a number of seconds, not {type(d).__name__}")
        if not (math.isfinite(d) and d > 0):
            raise ValueError(f"PublishSettings.max_delay must be a positive, finite number of seconds, got {d!r}")
        for name, limit in (("max_messages", MAX_WINDOW), ("max_bytes", None)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"PublishSettings.{name} must be an int, not {type(v).__name__}")
            if v < 1:
                raise ValueError(f"PublishSettings.{name} must be >= 1, got {v}")
            if limit is not None and v > limit:
                raise ValueError(
                    f"PublishSettings.{name} must be <= {limit} (the largest publish window leanmqd allows), got {v}"
                )

    @classmethod
    def given(cls, settings: Optional["PublishSettings"]) -> "PublishSettings":
        """A constructor's ``publish_settings`` argument: the defaults for None."""
        if settings is None:
            return cls()
        if not isinstance(settings, cls):
            raise TypeError("publish_settings must be a leanmq_grpc.PublishSettings")
        return settings


def build_publish_message(
    path: str,
    data: Any,
    *,
    headers: Optional[Mapping[str, str]] = None,
    content_type: Optional[str] = None,
    ordering_key: Optional[str] = None,
    idempotency_key: Optional[str] = None,
    delay: Optional[float] = None,
    ttl: Optional[float] = None,
) -> pb.SendRequest:
    """A SendRequest with every Send option; an idempotency key is always set."""
    req = build_send_request(path, data, headers, content_type, ordering_key)
    req.idempotency_key = idempotency_key or f"py-{uuid.uuid4().hex}"
    if delay:
        req.delay.CopyFrom(to_duration(delay))
    if ttl:
        req.ttl.CopyFrom(to_duration(ttl))
    return req


class _Burst:
    """The batch both publishers keep: messages published (and counted
    against the window) but not written yet, and when to write them."""

    def __init__(self, settings: PublishSettings) -> None:
        self.settings = settings
        self.requests: Dict[int, pb.PublishRequest] = {}
        self.bytes = 0

    def __bool__(self) -> bool:
        return bool(self.requests)

    def __contains__(self, sequence: int) -> bool:
        return sequence in self.requests

    def add(self, req: pb.PublishRequest, window_full: bool) -> Tuple[bool, List[List[pb.PublishRequest]]]:
        """Add ``req`` (``window_full``: no message can join after it).
        Returns whether it began a new batch, and the bursts to write now:
        the batch so far first when ``req`` would take it past ``max_bytes``,
        then the batch with ``req`` once it is full."""
        s, due = self.settings, []
        size = req.ByteSize()
        if self.requests and self.bytes + size > s.max_bytes:
            due.append(self.take())  # the burst so far stays within max_bytes
        began = not self.requests
        self.requests[req.sequence] = req
        self.bytes += size
        if len(self.requests) >= s.max_messages or self.bytes >= s.max_bytes or window_full:
            due.append(self.take())
        return began, due

    def take(self) -> List[pb.PublishRequest]:
        """The batch as one burst, leaving it empty."""
        burst = list(self.requests.values())
        self.requests.clear()
        self.bytes = 0
        return burst


class Publisher:
    """The one Publish stream of a :class:`~leanmq_grpc.Webhook`."""

    def __init__(
        self,
        open_stream: Callable[[Iterator[pb.PublishRequest]], Any],
        settings: Optional[PublishSettings] = None,
    ) -> None:
        self._open = open_stream
        self._settings = PublishSettings.given(settings)
        self._lock = threading.Condition()
        self._pending: Dict[int, Tuple[pb.PublishRequest, "Future[str]"]] = {}
        self._seq = 0
        self._window = DEFAULT_WINDOW
        self._outbox: Optional["queue.Queue[Any]"] = None
        self._thread: Optional[threading.Thread] = None
        self._timer: Optional[threading.Thread] = None
        self._closing = False
        self._buffer = _Burst(self._settings)
        self._buffer_since = 0.0

    def publish(self, message: pb.SendRequest) -> "Future[str]":
        fut: "Future[str]" = Future()
        with self._lock:
            if self._closing:
                raise RuntimeError("publish after close()")
            while len(self._pending) >= self._window and not self._closing:
                self._lock.wait()
            self._seq += 1
            req = pb.PublishRequest(sequence=self._seq, message=message)
            self._pending[self._seq] = (req, fut)
            self._add_to_buffer(req)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="leanmq-publish", daemon=True)
                self._thread.start()
                self._timer = threading.Thread(target=self._time_bursts, name="leanmq-publish-batch", daemon=True)
                self._timer.start()
        return fut

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Write the buffer now, then wait until every published message is
        answered; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._write_buffer()
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def close(self, timeout: Optional[float] = None) -> bool:
        """Wait for every outstanding future, then end the stream."""
        done = self.flush(timeout)
        with self._lock:
            self._closing = True
            if self._outbox is not None:
                self._outbox.put(_END)
            self._lock.notify_all()
            threads = (self._thread, self._timer)
        for thread in threads:
            if thread is not None:
                thread.join(timeout)
        return done

    # ------------------------------------------------------------ the batch (under _lock)

    def _add_to_buffer(self, req: pb.PublishRequest) -> None:
        began, bursts = self._buffer.add(req, len(self._pending) >= self._window)
        for burst in bursts:
            self._put(burst)
        if began and self._buffer:
            self._buffer_since = time.monotonic()
            self._lock.notify_all()  # the timer thread starts counting

    def _write_buffer(self) -> None:
        """The buffered messages, as one burst, onto the open stream."""
        if self._buffer:
            self._put(self._buffer.take())

    def _put(self, burst: List[pb.PublishRequest]) -> None:
        """``burst`` onto the open stream; between streams it is left to the
        next one, which writes every unanswered written message."""
        if self._outbox is not None:
            for req in burst:
                self._outbox.put(req)

    def _time_bursts(self) -> None:
        """Writes the buffer ``max_delay`` after its first message."""
        with self._lock:
            while not self._closing:
                if not self._buffer:
                    self._lock.wait()
                    continue
                left = self._buffer_since + self._settings.max_delay - time.monotonic()
                if left <= 0:
                    self._write_buffer()
                else:
                    self._lock.wait(left)

    # ------------------------------------------------------------ the stream

    def _requests(self, outbox: "queue.Queue[Any]") -> Iterator[pb.PublishRequest]:
        while True:
            item = outbox.get()
            if item is _END:
                return
            yield item

    def _run(self) -> None:
        backoff = Backoff()
        broken_since: Optional[float] = None
        while True:
            with self._lock:
                if self._closing and not self._pending:
                    return
                outbox: "queue.Queue[Any]" = queue.Queue()
                for seq in sorted(self._pending):  # unanswered: sent again, same keys
                    if seq not in self._buffer:  # the batch waits for its own burst
                        outbox.put(self._pending[seq][0])
                self._outbox = outbox
            answered = 0
            try:
                call = self._open(self._requests(outbox))
                answered = self._read(call)
                if self._closing:
                    return
                err: BaseException = Unavailable("the Publish stream ended")
            except Exception as e:  # noqa: BLE001 - any failure fails or retries the futures, never strands them
                err = e
            outbox.put(_END)  # the old stream's writer stops
            if answered:
                backoff.reset()
                broken_since = None
            now = time.monotonic()
            broken_since = broken_since or now
            code = rpc_code(err)
            if code not in RETRYABLE_CODES or now - broken_since > RECONNECT_FOR:
                self._fail_all(error_for(err))
                broken_since = None
                if self._closing:
                    return
            else:
                logger.info("Publish stream broke (%s); reopening, resending unanswered messages", code)
            time.sleep(backoff.next())

    def _read(self, call: Any) -> int:
        """Resolve futures from ``call``'s answers; how many were answered."""
        answered = 0
        window = _window_of(call.initial_metadata())
        if window and str(window).isdigit():
            with self._lock:
                self._window = max(1, int(window))
                if len(self._pending) >= self._window:
                    self._write_buffer()
                self._lock.notify_all()
        for resp in call:
            with self._lock:
                entry = self._pending.pop(resp.sequence, None)
                self._lock.notify_all()
            if entry is None:
                continue
            answered += 1
            fut = entry[1]
            if resp.code == 0:
                fut.set_result(resp.message_id)
            else:
                fut.set_exception(error_for_code(resp.code, resp.error))
        return answered

    def _fail_all(self, err: BaseException) -> None:
        with self._lock:
            failed = list(self._pending.values())
            self._pending.clear()
            self._buffer.take()
            self._lock.notify_all()
        for _, fut in failed:
            fut.set_exception(err)


def stream_opener(stub: Any, metadata: Any) -> Callable[[Iterator[pb.PublishRequest]], Any]:
    def open_stream(requests: Iterator[pb.PublishRequest]) -> Any:
        return stub.Publish(requests, metadata=tracing.with_trace(metadata))

    return open_stream


class AsyncPublisher:
    """:class:`Publisher` for asyncio: the one Publish stream of an
    :class:`~leanmq_grpc.AsyncWebhook`, run by one task; the same batching."""

    def __init__(self, open_stream: Callable[[], Any], settings: Optional[PublishSettings] = None) -> None:
        import asyncio

        self._asyncio = asyncio
        self._open = open_stream
        self._settings = PublishSettings.given(settings)
        self._cond = asyncio.Condition()
        self._pending: Dict[int, Tuple[pb.PublishRequest, "asyncio.Future[str]"]] = {}
        self._seq = 0
        self._window = DEFAULT_WINDOW
        self._outbox: Optional["asyncio.Queue[Any]"] = None
        self._task: Optional["asyncio.Task[None]"] = None
        self._closing = False
        self._buffer = _Burst(self._settings)
        self._timer: Optional["asyncio.TimerHandle"] = None

    async def publish(self, message: pb.SendRequest) -> str:
        async with self._cond:
            if self._closing:
                raise RuntimeError("publish after close()")
            await self._cond.wait_for(lambda: len(self._pending) < self._window or self._closing)
            self._seq += 1
            req = pb.PublishRequest(sequence=self._seq, message=message)
            fut: "Any" = self._asyncio.get_running_loop().create_future()
            self._pending[self._seq] = (req, fut)
            self._add_to_buffer(req)
            if self._task is None:
                self._task = self._asyncio.create_task(self._run())
        return str(await fut)

    async def flush(self) -> None:
        async with self._cond:
            self._write_buffer()
            await self._cond.wait_for(lambda: not self._pending)

    async def close(self) -> None:
        await self.flush()
        async with self._cond:
            self._closing = True
            if self._outbox is not None:
                self._outbox.put_nowait(_END)
            self._cond.notify_all()
        if self._task is not None:
            await self._task

    # ------------------------------------------------------------ the batch (on the loop)

    def _add_to_buffer(self, req: pb.PublishRequest) -> None:
        began, bursts = self._buffer.add(req, len(self._pending) >= self._window)
        for burst in bursts:
            self._put(burst)
        if began or not self._buffer:
            self._cancel_timer()  # the batch it timed was written
        if began and self._buffer:
            self._timer = self._asyncio.get_running_loop().call_later(self._settings.max_delay, self._write_buffer)

    def _write_buffer(self) -> None:
        """As :meth:`Publisher._write_buffer`; also run by the ``max_delay`` timer."""
        self._cancel_timer()
        if self._buffer:
            self._put(self._buffer.take())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _put(self, burst: List[pb.PublishRequest]) -> None:
        if self._outbox is not None:
            for req in burst:
                self._outbox.put_nowait(req)

    async def _write(self, call: Any, outbox: Any) -> None:
        """Feed ``call`` from ``outbox`` until ``_END`` (its writes, not a
        request iterator, which grpc.aio did not start reading answers for)."""
        try:
            while True:
                item = await outbox.get()
                if item is _END:
                    await call.done_writing()
                    return
                await call.write(item)
        except (grpc.RpcError, self._asyncio.InvalidStateError):
            return  # the stream broke; the reader reconnects

    async def _run(self) -> None:
        backoff = Backoff()
        broken_since: Optional[float] = None
        while True:
            async with self._cond:
                if self._closing and not self._pending:
                    return
                outbox: Any = self._asyncio.Queue()
                for seq in sorted(self._pending):
                    if seq not in self._buffer:  # the batch waits for its own burst
                        outbox.put_nowait(self._pending[seq][0])
                self._outbox = outbox
            answered = 0
            call = self._open()
            writer = self._asyncio.create_task(self._write(call, outbox))
            try:
                answered = await self._read(call)
                if self._closing:
                    await writer
                    return
                err: BaseException = Unavailable("the Publish stream ended")
            except Exception as e:  # noqa: BLE001 - any failure fails or retries the futures, never strands them
                err = e
            outbox.put_nowait(_END)
            writer.cancel()
            if answered:
                backoff.reset()
                broken_since = None
            now = time.monotonic()
            broken_since = broken_since or now
            code = rpc_code(err)
            if code not in RETRYABLE_CODES or now - broken_since > RECONNECT_FOR:
                await self._fail_all(error_for(err))
                broken_since = None
                if self._closing:
                    return
            else:
                logger.info("Publish stream broke (%s); reopening, resending unanswered messages", code)
            await self._asyncio.sleep(backoff.next())

    async def _read(self, call: Any) -> int:
        answered = 0
        window = _window_of(await call.initial_metadata())
        if window and str(window).isdigit():
            async with self._cond:
                self._window = max(1, int(window))
                if len(self._pending) >= self._window:
                    self._write_buffer()
                self._cond.notify_all()
        async for resp in call:
            async with self._cond:
                entry = self._pending.pop(resp.sequence, None)
                self._cond.notify_all()
            if entry is None or entry[1].done():
                continue
            answered += 1
            if resp.code == 0:
                entry[1].set_result(resp.message_id)
            else:
                entry[1].set_exception(error_for_code(resp.code, resp.error))
        return answered

    async def _fail_all(self, err: BaseException) -> None:
        async with self._cond:
            failed = list(self._pending.values())
            self._pending.clear()
            self._buffer.take()
            self._cond.notify_all()
        for _, fut in failed:
            if not fut.done():
                fut.set_exception(err)
