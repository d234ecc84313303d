"""Pieces shared by the threaded (`Webhook`) and asyncio (`AsyncWebhook`) layers."""
from __future__ import annotations

import inspect
import json
import logging
import os
import random
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from ._proto.leanmq.v1 import broker_pb2 as pb
from .errors import DeadLetter, RetryAfter

logger = logging.getLogger("leanmq_grpc")

JSON_CONTENT_TYPE = "application/json"
OCTET_STREAM = "application/octet-stream"

#: Errors after which re-subscribing cannot help (bad request, wrong server,
#: missing credentials); the service stops and records the error.
FATAL_STREAM_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
#: Settlement calls (Ack/Nack/Extend) are retried on these.
RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
#: How long a settlement keeps retrying: long enough to ride out a leanmqd
#: restart or failover, so a handled message is not processed twice.
SETTLE_RETRY_FOR = 10.0

Metadata = Sequence[Tuple[str, Union[str, bytes]]]
Target = Union[str, grpc.Channel]


def call_metadata(metadata: Optional[Metadata], token: Optional[str]) -> Tuple[Tuple[str, Union[str, bytes]], ...]:
    """The metadata sent with every call: ``metadata`` plus, with a
    ``token``, ``authorization: Bearer <token>`` (leanmqd's ``--auth-tokens``).
    """
    md = tuple(metadata or ())
    if token is None:
        return md
    if not isinstance(token, str) or not token or any(c.isspace() or not c.isprintable() for c in token):
        raise ValueError("token must be a non-empty string without whitespace")
    if any(str(k).lower() == "authorization" for k, _ in md):
        raise ValueError("give the token either as token= or as authorization metadata, not both")
    return md + (("authorization", f"Bearer {token}"),)


def check_consumer_options(concurrency: int, ack_deadline: float) -> None:
    """The consumer settings both Webhook constructors take, checked before a channel is made."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if not 0.1 <= ack_deadline <= 12 * 3600:
        raise ValueError("ack_deadline must be between 0.1 s and 12 h")


# --------------------------------------------------------------------------- paths


def normalize_path(path: str) -> str:
    """LeanMQ's normalisation: leading "/", no trailing "/" (except "/")."""
    if path != "/" and path.endswith("/"):
        path = path[:-1]
    if not path.startswith("/"):
        path = "/" + path
    return path


def queue_name(path: str) -> str:
    """LeanMQ 0.2.0's path → queue name mapping ("/order/status/" → "order_status")."""
    name = path.strip("/").replace("/", "_")
    return "".join(c if c.isalnum() else "_" for c in name)


def default_consumer() -> str:
    return f"py-{socket.gethostname()}-{os.getpid()}"


# --------------------------------------------------------------------------- payloads


def is_json_content_type(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == JSON_CONTENT_TYPE


def encode_payload(data: Any, content_type: Optional[str] = None) -> Tuple[bytes, str]:
    """Turn handler-level data into (payload, content_type).

    bytes-like → as is, application/octet-stream (or ``content_type``);
    str with an explicit non-JSON ``content_type`` → UTF-8 text;
    anything else (dict, list, str, numbers, bool, None) → compact JSON,
    application/json.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), content_type or OCTET_STREAM
    if isinstance(data, str) and content_type and not is_json_content_type(content_type):
        return data.encode("utf-8"), content_type
    if content_type and not is_json_content_type(content_type):
        raise TypeError(f"cannot send {type(data).__name__} as {content_type!r}; pass bytes")
    try:
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"data is not JSON-serialisable ({e}); pass a dict/list or bytes") from e
    return body.encode("utf-8"), content_type or JSON_CONTENT_TYPE


def build_send_request(
    path: str,
    data: Any,
    headers: Optional[Mapping[str, str]] = None,
    content_type: Optional[str] = None,
    ordering_key: Optional[str] = None,
) -> pb.SendRequest:
    payload, ct = encode_payload(data, content_type)
    req = pb.SendRequest(path=path, payload=payload, content_type=ct, headers=dict(headers or {}))
    if ordering_key:
        # Checked by the broker (at most 256 bytes, no control characters).
        req.ordering_key = ordering_key
    return req


@dataclass(frozen=True)
class BatchMessage:
    """One message of ``send_batch``, with the options the tuple forms lack.

    ``send_batch([BatchMessage("/order/status/", {"status": "paid"}, ordering_key="order-7"), ...])``
    """

    path: str
    data: Any
    headers: Optional[Mapping[str, str]] = None
    content_type: Optional[str] = None
    #: messages with the same key are delivered one at a time, in send order (docs/ordering.md)
    ordering_key: Optional[str] = None


BatchItem = Union[BatchMessage, Tuple[str, Any], Tuple[str, Any, Optional[Mapping[str, str]]]]


def build_batch_request(messages: Iterable[BatchItem]) -> pb.SendBatchRequest:
    reqs: List[pb.SendRequest] = []
    for item in messages:
        if isinstance(item, BatchMessage):
            reqs.append(build_send_request(item.path, item.data, item.headers, item.content_type, item.ordering_key))
            continue
        if len(item) == 2:
            path, data = item
            headers = None
        elif len(item) == 3:
            path, data, headers = item
        else:
            raise ValueError("send_batch items are BatchMessage, (path, data) or (path, data, headers)")
        reqs.append(build_send_request(path, data, headers))
    if not reqs:
        raise ValueError("send_batch needs at least one message")
    return pb.SendBatchRequest(messages=reqs)


# --------------------------------------------------------------------------- time


def to_duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    nanos = int(round(seconds * 1e9))
    d.seconds, d.nanos = divmod(nanos, 1_000_000_000)
    return d


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _ts(msg: Any, name: str) -> Optional[datetime]:
    if not msg.HasField(name):
        return None
    ts: timestamp_pb2.Timestamp = getattr(msg, name)
    # ToDatetime(tzinfo=timezone.utc), at half the cost (nanos of a valid Timestamp are >= 0).
    return _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


class Backoff:
    """100 ms doubling to 5 s, with jitter (half fixed, half random)."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0) -> None:
        self.initial, self.maximum = initial, maximum
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next(self) -> float:
        base = self._next
        self._next = min(self._next * 2, self.maximum)
        return base / 2 + random.uniform(0, base / 2)


# --------------------------------------------------------------------------- deliveries


@dataclass(frozen=True)
class Delivery:
    """One delivery of one message, as handed to ``raw=True`` handlers."""

    receipt: str
    message_id: str
    path: str
    payload: bytes
    content_type: str
    headers: Mapping[str, str]
    attempt: int
    group: str
    published_at: Optional[datetime] = None
    lease_expires_at: Optional[datetime] = None
    #: the ordering key it was sent with ("" when unordered)
    ordering_key: str = ""
    #: local time.monotonic() when the delivery was received
    received_at: float = field(default_factory=time.monotonic, compare=False, repr=False)
    #: lease seconds left at receipt, per the server (None when unknown)
    lease_remaining: Optional[float] = field(default=None, compare=False, repr=False)

    @classmethod
    def from_proto(cls, msg: pb.Delivery) -> "Delivery":
        remaining: Optional[float] = None
        if msg.HasField("lease_expires_at"):
            ts = msg.lease_expires_at
            remaining = ts.seconds + ts.nanos / 1e9 - time.time()
        return cls(
            receipt=msg.receipt,
            message_id=msg.message_id,
            path=msg.path,
            payload=bytes(msg.payload),
            content_type=msg.content_type,
            headers=dict(msg.headers) if msg.headers else {},
            attempt=msg.attempt,
            group=msg.group,
            published_at=_ts(msg, "published_at"),
            lease_expires_at=_ts(msg, "lease_expires_at"),
            ordering_key=msg.ordering_key,
            lease_remaining=remaining,
        )

    @property
    def is_json(self) -> bool:
        return is_json_content_type(self.content_type)

    def json(self) -> Any:
        """The payload decoded as JSON (whatever the content type)."""
        return json.loads(self.payload.decode("utf-8"))

    @property
    def data(self) -> Any:
        """What a plain handler receives: decoded JSON for application/json, else bytes."""
        return self.json() if self.is_json else self.payload


def first_extend_delay(delivery: Delivery, lease: float) -> float:
    """Seconds after receipt at which to extend: about half the lease left.

    Uses the server's ``lease_expires_at`` when the local clock agrees with it
    (never more than the requested lease, never less than 50 ms).
    """
    remaining = lease
    if delivery.lease_remaining is not None:
        remaining = min(lease, delivery.lease_remaining)
    return max(remaining / 2, 0.05)


# --------------------------------------------------------------------------- routes & outcomes

Handler = Callable[[Any], Any]


@dataclass
class Route:
    path: str  # normalised
    handler: Handler
    raw: bool
    is_async: bool = False

    @property
    def queue(self) -> str:
        return queue_name(self.path)


class Router:
    """Path → handler table, with LeanMQ's path normalisation."""

    def __init__(self) -> None:
        self.routes: Dict[str, Route] = {}

    def add(self, path: str, handler: Handler, raw: bool) -> Route:
        norm = normalize_path(path)
        if not queue_name(norm):
            raise ValueError(f"path {path!r} maps to an empty queue name")
        if norm in self.routes:
            raise ValueError(f"a handler is already registered for {norm!r}")
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)
        )
        route = Route(norm, handler, raw, is_async)
        self.routes[norm] = route
        return route

    def subscriptions(self) -> List[Route]:
        """One route per distinct queue (paths sharing a queue share a stream)."""
        seen: Dict[str, Route] = {}
        for route in self.routes.values():
            segments = route.path.split("/")
            key = route.path if ("*" in segments or ">" in segments) else route.queue
            seen.setdefault(key, route)
        return list(seen.values())

    def route_for(self, stream_route: Route, delivery: Delivery) -> Route:
        """Dispatch on the delivery's own path when it has a handler."""
        return self.routes.get(normalize_path(delivery.path), stream_route) if delivery.path else stream_route


def handler_argument(route: Route, delivery: Delivery) -> Any:
    if route.raw:
        return delivery
    try:
        return delivery.data
    except (ValueError, UnicodeDecodeError) as e:
        raise DeadLetter(f"payload is not valid JSON: {e}") from e


@dataclass
class Settlement:
    """What to do with a delivery once its handler is done."""

    ack: bool
    dead_letter: bool = False
    delay: Optional[float] = None
    reason: str = ""

    def nack_request(self, receipt: str) -> pb.NackRequest:
        req = pb.NackRequest(receipt=receipt, dead_letter=self.dead_letter, reason=self.reason[:4096])
        if self.delay is not None and not self.dead_letter:
            req.delay.CopyFrom(to_duration(self.delay))
        return req


def settlement_for(exc: Optional[BaseException]) -> Settlement:
    """The outcome table (clients/README.md)."""
    if exc is None:
        return Settlement(ack=True)
    if isinstance(exc, DeadLetter):
        return Settlement(ack=False, dead_letter=True, reason=str(exc))
    if isinstance(exc, RetryAfter):
        return Settlement(ack=False, delay=exc.seconds, reason=str(exc))
    return Settlement(ack=False, reason=repr(exc))


def shutdown_settlement(timeout: float) -> Settlement:
    return Settlement(ack=False, reason=f"shutdown: handler did not finish within {timeout:g}s")


ACK_OK = (pb.ACK_OUTCOME_ACKED, pb.ACK_OUTCOME_NOT_PENDING)

#: Most receipts one Ack call may carry (the broker's limit).
MAX_ACK_RECEIPTS = 1000


def ack_chunks(deliveries: Sequence["Delivery"]) -> List[Sequence["Delivery"]]:
    """``deliveries`` cut into Ack-sized pieces."""
    return [deliveries[i : i + MAX_ACK_RECEIPTS] for i in range(0, len(deliveries), MAX_ACK_RECEIPTS)]


def ack_outcomes(deliveries: Sequence["Delivery"], resp: pb.AckResponse) -> List[bool]:
    """One flag per delivery of an Ack call: True when its outcome is in
    ``ACK_OK``. The others (STALE, or no outcome at all) are logged, per message."""
    results = resp.results
    if len(results) == len(deliveries):  # the contract: one result per receipt, in order
        outcomes = [r.outcome for r in results]
    else:
        by_receipt = {r.receipt: r.outcome for r in results}
        outcomes = [by_receipt.get(d.receipt, pb.ACK_OUTCOME_UNSPECIFIED) for d in deliveries]
    oks = []
    for d, outcome in zip(deliveries, outcomes):
        ok = outcome in ACK_OK
        if not ok:
            logger.warning(
                "ack of message %s was stale: its lease had expired, it will be processed again", d.message_id
            )
        oks.append(ok)
    return oks


def log_settle_error(delivery: "Delivery", err: BaseException) -> None:
    """Log a settlement call (Ack/Nack) that failed for good."""
    if rpc_code(err) == grpc.StatusCode.FAILED_PRECONDITION:
        logger.warning("lease lost before settling message %s: %s", delivery.message_id, err)
    else:
        logger.error("settling message %s failed: %s", delivery.message_id, err)


def rpc_code(err: BaseException) -> Optional[grpc.StatusCode]:
    code = getattr(err, "code", None)
    if callable(code):
        try:
            return code()  # type: ignore[no-any-return]
        except Exception:  # pragma: no cover - defensive
            return None
    return None
