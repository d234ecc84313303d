"""Administration: inspect queues, and list, requeue and delete dead letters
(the ``leanmq.v1.Admin`` service), with the webhook layer's channel, token
and payload decoding.

    from leanmq_grpc import Admin

    admin = Admin("127.0.0.1:50051", token=os.environ["LEANMQ_TOKEN"])  # or webhook.admin
    for q in admin.list_queues():
        print(q.queue, q.length, q.dead_letters)
    for dl in admin.list_dead_letters("/order/status/"):   # every page, oldest first
        print(dl.id, dl.last_reason, dl.data)               # data: JSON decoded, else bytes
    admin.requeue_dead_letters("/order/status/", all=True)

The value types and request checks here are shared with the asyncio twin,
:class:`leanmq_grpc.aio.AsyncAdmin`. Calls raise :class:`LeanMQError`
subclasses (``PermissionDenied``, ``NotFound``, ``InvalidArgument``, ...).
The token needs the ``admin`` grant on the queue's path.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from ._common import Metadata, Target, _ts, call_metadata, is_json_content_type
from ._proto.leanmq.v1 import admin_pb2 as apb
from ._proto.leanmq.v1 import admin_pb2_grpc as apb_grpc
from .errors import error_for

#: The broker's bounds: ``page_size`` of ListDeadLetters, ids per Requeue/Delete call.
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MAX_IDS_PER_CALL = 1000

T = TypeVar("T")


# --------------------------------------------------------------------------- values


#: Queues asked for per ListQueues page (the server's largest).
QUEUE_PAGE = 1000


@dataclass(frozen=True)
class QueueSummary:
    """One queue of ``list_queues()``."""

    #: Queue name ("order_status").
    queue: str
    #: Its Redis stream ("webhook:order_status").
    stream: str
    #: Entries in the stream (delivered or not, until retention trims them).
    length: int
    #: Entries in its dead-letter queue.
    dead_letters: int
    #: Paths leanmq-grpc has seen used for this queue (LeanMQ records none).
    paths: Tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupInfo:
    """One consumer group of a queue."""

    name: str
    #: Entries delivered and not yet acked.
    pending: int
    consumers: int
    #: Entries not yet delivered to the group (-1 when Redis cannot tell).
    lag: int
    #: Age of the oldest pending entry (None when nothing is pending).
    oldest_unacked_age: Optional[timedelta]
    #: Pending entries waiting for a retry after a Nack.
    retrying: int
    last_delivered_id: str


@dataclass(frozen=True)
class QueueInfo:
    """One queue in detail (``get_queue()``)."""

    queue: str
    stream: str
    length: int
    groups: Tuple[GroupInfo, ...]
    dead_letters: int
    #: Delayed messages plus pending entries waiting for a retry.
    scheduled: int
    #: Delayed messages not yet visible.
    delayed: int
    #: Messages that expired before delivery (moved to the DLQ), all time.
    expired: int
    #: Messages dropped by leanmqd's ``--max-len`` cap, all time.
    dropped: int
    created_at: Optional[datetime]


@dataclass(frozen=True)
class Failure:
    """One failure of a dead letter (a LeanMQ ``_failures`` record)."""

    at: Optional[datetime]
    reason: str
    #: Deliveries made before it failed (0 when LeanMQ recorded it).
    attempts: int
    #: The group it failed in ("" when LeanMQ recorded it).
    group: str


@dataclass(frozen=True)
class DeadLetterEntry:
    """A message in a dead-letter queue. ``data`` is what a handler would
    get: decoded JSON for ``application/json``, else the bytes."""

    #: The DLQ entry id: what ``requeue_dead_letters`` and ``delete_dead_letters`` take.
    id: str
    #: The id it had in its queue when it failed ("" when LeanMQ dead-lettered it).
    original_message_id: str
    path: str
    payload: bytes
    content_type: str
    headers: Mapping[str, str]
    #: Attempts of the last failure.
    attempts: int
    last_reason: str
    #: Every failure, oldest first.
    failures: Tuple[Failure, ...] = ()
    first_failed_at: Optional[datetime] = None
    last_failed_at: Optional[datetime] = None

    @property
    def is_json(self) -> bool:
        return is_json_content_type(self.content_type)

    def json(self) -> Any:
        """The payload decoded as JSON (whatever the content type)."""
        return json.loads(self.payload.decode("utf-8"))

    @property
    def data(self) -> Any:
        """Decoded JSON for application/json, else the payload bytes (as for handlers)."""
        return self.json() if self.is_json else self.payload


@dataclass(frozen=True)
class Requeued:
    dead_letter_id: str
    #: Its new entry id in the queue.
    message_id: str


@dataclass(frozen=True)
class RequeueResult:
    """What ``requeue_dead_letters`` did."""

    requeued: Tuple[Requeued, ...] = ()
    #: Requested ids that were not in the DLQ (already requeued or deleted).
    missing: Tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.requeued)


# --------------------------------------------------------------------------- proto -> values


def _duration(msg: Any, name: str) -> Optional[timedelta]:
    if not msg.HasField(name):
        return None
    d = getattr(msg, name)
    return timedelta(seconds=d.seconds, microseconds=d.nanos // 1000)


def queue_summary(m: apb.QueueSummary) -> QueueSummary:
    return QueueSummary(m.queue, m.stream, m.length, m.dead_letters, tuple(m.paths))


def queue_info(m: apb.QueueInfo) -> QueueInfo:
    groups = tuple(
        GroupInfo(
            name=g.name,
            pending=g.pending,
            consumers=g.consumers,
            lag=g.lag,
            oldest_unacked_age=_duration(g, "oldest_unacked_age"),
            retrying=g.retrying,
            last_delivered_id=g.last_delivered_id,
        )
        for g in m.groups
    )
    return QueueInfo(
        queue=m.queue,
        stream=m.stream,
        length=m.length,
        groups=groups,
        dead_letters=m.dead_letters,
        scheduled=m.scheduled,
        delayed=m.delayed,
        expired=m.expired,
        dropped=m.dropped,
        created_at=_ts(m, "created_at"),
    )


def dead_letter_entry(m: apb.DeadLetter) -> DeadLetterEntry:
    return DeadLetterEntry(
        id=m.id,
        original_message_id=m.original_message_id,
        path=m.path,
        payload=bytes(m.payload),
        content_type=m.content_type,
        headers=dict(m.headers),
        attempts=m.attempts,
        last_reason=m.last_reason,
        failures=tuple(Failure(_ts(f, "at"), f.reason, f.attempts, f.group) for f in m.failures),
        first_failed_at=_ts(m, "first_failed_at"),
        last_failed_at=_ts(m, "last_failed_at"),
    )


def requeue_result(responses: Iterable[apb.RequeueDeadLettersResponse]) -> RequeueResult:
    requeued: List[Requeued] = []
    missing: List[str] = []
    for r in responses:
        requeued.extend(Requeued(x.dead_letter_id, x.message_id) for x in r.requeued)
        missing.extend(r.missing)
    return RequeueResult(tuple(requeued), tuple(missing))


# --------------------------------------------------------------------------- requests


def check_paging(limit: Optional[int], page_size: int) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError("limit must be None or an integer >= 0")
    if not isinstance(page_size, int) or isinstance(page_size, bool) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")


def page_request(path: str, page_size: int, limit: Optional[int], seen: int, token: str) -> apb.ListDeadLettersRequest:
    size = page_size if limit is None else min(page_size, limit - seen)
    return apb.ListDeadLettersRequest(path=path, page_size=size, page_token=token)


def id_list(ids: Any, what: str) -> List[str]:
    """``ids`` as a list of strings (a lone string is refused: it would be
    taken character by character)."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{what}: ids must be a list of DLQ entry ids, not one string")
    out = list(ids)
    if not out:
        raise ValueError(f"{what}: ids is empty")
    for i in out:
        if not isinstance(i, str) or not i:
            raise TypeError(f"{what}: every id must be a non-empty string, got {i!r}")
    return out


def chunks(items: Sequence[T], size: int = MAX_IDS_PER_CALL) -> List[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def requeue_requests(
    path: str, ids: Optional[Iterable[str]], all: bool, since: Optional[datetime]
) -> List[apb.RequeueDeadLettersRequest]:
    """One request per selector (ids cut into calls of at most 1000)."""
    chosen = sum((ids is not None, bool(all), since is not None))
    if chosen != 1:
        raise ValueError("requeue_dead_letters: give exactly one of ids=, all=True or since=")
    if ids is not None:
        return [
            apb.RequeueDeadLettersRequest(path=path, ids=apb.DeadLetterIds(ids=list(c)))
            for c in chunks(id_list(ids, "requeue_dead_letters"))
        ]
    if all:
        return [apb.RequeueDeadLettersRequest(path=path, all=True)]
    if not isinstance(since, datetime):
        raise TypeError("since must be a datetime")
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(since.timestamp() * 1_000_000) * 1000)  # naive = local time, as datetime.timestamp()
    return [apb.RequeueDeadLettersRequest(path=path, since=ts)]


def delete_requests(path: str, ids: Iterable[str]) -> List[apb.DeleteDeadLettersRequest]:
    return [
        apb.DeleteDeadLettersRequest(path=path, ids=list(c)) for c in chunks(id_list(ids, "delete_dead_letters"))
    ]


def check_confirm(confirm: Any) -> str:
    if not isinstance(confirm, str):
        raise TypeError("confirm must be the queue name (a string), e.g. queue_name(path)")
    return confirm


# --------------------------------------------------------------------------- the client


class Admin:
    """Client of leanmqd's Admin service.

    Args:
        target: ``"host:port"`` of a leanmqd, or an existing ``grpc.Channel``
            (not closed by :meth:`close`).
        token: a leanmqd bearer token with the ``admin`` grant; sent as
            ``authorization: Bearer <token>``.
        credentials: ``grpc.ChannelCredentials`` for TLS (default plaintext).
        metadata: extra call metadata.
        options: extra grpc channel options.
        rpc_timeout: deadline in seconds of each call.

    ``webhook.admin`` gives one on a :class:`~leanmq_grpc.Webhook`'s channel.
    """

    def __init__(
        self,
        target: Target,
        *,
        token: Optional[str] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        metadata: Optional[Metadata] = None,
        options: Optional[Sequence[Any]] = None,
        rpc_timeout: float = 30.0,
    ) -> None:
        call_md = call_metadata(metadata, token)  # validates before a channel is made
        if isinstance(target, grpc.Channel):
            channel, owns = target, False
        elif credentials is not None:
            channel, owns = grpc.secure_channel(target, credentials, options=options), True
        else:
            channel, owns = grpc.insecure_channel(target, options=options), True
        self._init(channel, owns, call_md, rpc_timeout)

    @classmethod
    def _on_channel(cls, channel: grpc.Channel, metadata: Metadata, rpc_timeout: float) -> "Admin":
        """An Admin sharing another client's channel and call metadata."""
        admin = cls.__new__(cls)
        admin._init(channel, False, tuple(metadata), rpc_timeout)
        return admin

    def _init(self, channel: grpc.Channel, owns: bool, metadata: Metadata, rpc_timeout: float) -> None:
        if not rpc_timeout > 0:
            raise ValueError("rpc_timeout must be > 0")
        self._channel = channel
        self._owns_channel = owns
        self._metadata = tuple(metadata)
        self.rpc_timeout = float(rpc_timeout)
        self._stub = apb_grpc.AdminStub(channel)

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self.rpc_timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise error_for(e) from e

    # ------------------------------------------------------------ queues

    def list_queues(self) -> List[QueueSummary]:
        """Every queue in the registry (those the token's admin grant covers),
        in name order, following the server's pages."""
        out: List[QueueSummary] = []
        token = ""
        while True:
            resp = self._call(
                self._stub.ListQueues,
                apb.ListQueuesRequest(page_size=QUEUE_PAGE, page_token=token),
            )
            out.extend(queue_summary(q) for q in resp.queues)
            token = resp.next_page_token
            if not token:
                return out

    def get_queue(self, path: str) -> QueueInfo:
        """One queue (by path "/order/status/" or name "order_status") in
        detail; raises ``NotFound`` when it does not exist."""
        return queue_info(self._call(self._stub.GetQueue, apb.GetQueueRequest(path=path)))

    def purge_queue(self, path: str, confirm: str) -> int:
        """Delete every message of the queue, delivered or not, and its
        schedules (its groups remain). ``confirm`` must be the queue name
        (``queue_name(path)``), else ``InvalidArgument``. Returns how many were deleted."""
        req = apb.PurgeQueueRequest(path=path, confirm=check_confirm(confirm))
        return int(self._call(self._stub.PurgeQueue, req).purged)

    def delete_queue(self, path: str, confirm: str, with_dlq: bool = True) -> int:
        """Delete the queue, its groups, schedules, metadata and (with
        ``with_dlq``) its dead letters. ``confirm`` as for :meth:`purge_queue`.
        Returns the number of messages deleted."""
        req = apb.DeleteQueueRequest(path=path, confirm=check_confirm(confirm), with_dlq=bool(with_dlq))
        return int(self._call(self._stub.DeleteQueue, req).deleted_messages)

    # ------------------------------------------------------------ dead letters

    def list_dead_letters(
        self, path: str, limit: Optional[int] = None, *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[DeadLetterEntry]:
        """The queue's dead letters, oldest first: an iterator that fetches
        ``page_size`` at a time, until ``limit`` (None: all of them)."""
        check_paging(limit, page_size)
        return self._pages(path, limit, page_size)

    def _pages(self, path: str, limit: Optional[int], page_size: int) -> Iterator[DeadLetterEntry]:
        seen, token = 0, ""
        while limit is None or seen < limit:
            resp = self._call(self._stub.ListDeadLetters, page_request(path, page_size, limit, seen, token))
            for m in resp.dead_letters:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield dead_letter_entry(m)
            token = resp.next_page_token
            if not token:
                return

    def requeue_dead_letters(
        self,
        path: str,
        ids: Optional[Iterable[str]] = None,
        all: bool = False,
        since: Optional[datetime] = None,
    ) -> RequeueResult:
        """Move dead letters back to their queue (attempts start again at 1):
        the given ``ids``, ``all=True``, or those that failed at or after
        ``since``. Exactly one of the three."""
        return requeue_result(
            self._call(self._stub.RequeueDeadLetters, r) for r in requeue_requests(path, ids, all, since)
        )

    def delete_dead_letters(self, path: str, ids: Iterable[str]) -> int:
        """Delete the given dead letters; returns how many existed."""
        return sum(int(self._call(self._stub.DeleteDeadLetters, r).deleted) for r in delete_requests(path, ids))

    def purge_dead_letters(self, path: str) -> int:
        """Delete every dead letter of the queue; returns how many."""
        return int(self._call(self._stub.PurgeDeadLetters, apb.PurgeDeadLettersRequest(path=path)).purged)

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the channel, if this Admin made it."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "Admin":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
