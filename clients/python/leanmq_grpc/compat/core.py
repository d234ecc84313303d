"""LeanMQ 0.2.0's core API (``LeanMQ``, ``Queue``, ``QueueInfo``, ``Message``,
``Transaction``) on leanmqd.

Queues are addressed by name (the ``queue`` field) under the instance's
prefix (the ``prefix`` field), so Redis keys stay LeanMQ's: ``mq:tasks``,
``mq:tasks:dlq``, groups ``tasks-group`` / ``tasks-group-dlq``. Each call's
mapping to an RPC, and where it differs from LeanMQ, is in the table in
``clients/python/README.md``.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import grpc

from .._common import JSON_CONTENT_TYPE, to_duration
from .._proto.leanmq.v1 import admin_pb2, broker_pb2
from ..admin import QUEUE_PAGE
from . import config, exceptions
from .config import Connection, announce, code_of

logger = logging.getLogger("leanmq_grpc.compat")

#: Top-level keys LeanMQ and leanmq-grpc keep for themselves; dropped from
#: data a program sends (a message's ``data`` carries them back).
RESERVED_KEYS = ("_metadata", "_leanmq", "_failures", "_requeues")
#: Most messages one ``get_messages`` asks for (the broker's limit).
MAX_COUNT = 1000
#: Longest single wait the broker grants (its ``Receive.wait`` limit), seconds.
MAX_WAIT = 300
#: Receipts a queue keeps for ``acknowledge_messages`` and friends; the
#: oldest are forgotten first (their leases have long run out by then).
MAX_RECEIPTS = 100_000


@dataclass
class Message:
    """Representation of a message in the queue.

    Attributes:
        id: The Redis stream entry id ('<ms>-<seq>').
        data: The message payload (a dict).
        timestamp: Unix time the message was sent.
        delivery_count: Which delivery this is (1 on the first; counted by the broker).
    """

    id: str
    data: Dict[str, Any]
    timestamp: float
    delivery_count: int = 0


@dataclass
class QueueInfo:
    """Information about a queue (LeanMQ's fields)."""

    name: str
    is_dlq: bool = False
    message_count: int = 0
    consumer_group: Optional[str] = None
    pending_messages: int = 0
    created_at: Optional[float] = None


class Client:
    """What ``LeanMQ.client`` is here: the broker connection and the key
    prefix every request of this instance names."""

    def __init__(self, conn: Connection, prefix: str) -> None:
        self.conn = conn
        self.prefix = prefix


def _valid_ids(message_ids: List[Any]) -> List[str]:
    """LeanMQ's id validation: ``<digits>-<digits>`` strings (bytes decoded)."""
    out = []
    for mid in message_ids or []:
        if isinstance(mid, bytes):
            mid = mid.decode("utf-8", "replace")
        if isinstance(mid, str):
            ms, sep, seq = mid.partition("-")
            if sep and ms.isdigit() and seq.isdigit():
                out.append(mid)
                continue
        logger.warning(f"Skipping invalid Redis stream ID: {mid}")
    return out


def _id_key(entry_id: str) -> Tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return (int(ms or 0), int(seq or 0))


def _ts(ts: Any) -> Optional[float]:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.seconds + ts.nanos / 1e9


def _payload_dict(payload: bytes) -> Optional[Dict[str, Any]]:
    try:
        v = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return v if isinstance(v, dict) else None


def _encode(data: Dict[str, Any]) -> bytes:
    if not isinstance(data, dict):
        raise exceptions.MessageError(f"message data must be a dict, not {type(data).__name__}")
    clean = {k: v for k, v in data.items() if k not in RESERVED_KEYS}
    try:
        return json.dumps(clean).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise exceptions.MessageError(f"message data is not JSON-serializable: {e}") from e


class Queue:
    """A queue or dead-letter queue, as LeanMQ's ``Queue``.

    ``name`` is the full key (``mq:tasks``, ``mq:tasks:dlq``), as in LeanMQ.
    """

    def __init__(self, client: Client, name: str, consumer_group: str, is_dlq: bool = False) -> None:
        self.client = client
        self.name = name
        self.consumer_group = consumer_group
        self.is_dlq = is_dlq
        base = name[len(client.prefix):] if name.startswith(client.prefix) else name
        if is_dlq and base.endswith(":dlq"):
            base = base[: -len(":dlq")]
        #: The queue's name without prefix (and, for a DLQ, of its main queue).
        self._queue = base
        conn = client.conn
        with conn.receipts_lock:
            self._receipts: "OrderedDict[str, str]" = conn.receipts.setdefault(
                (client.prefix, self._queue, consumer_group), OrderedDict()
            )
        self._lock = conn.receipts_lock
        #: For a DLQ: the last entry id ``get_messages`` returned (a DLQ read
        #: returns each dead letter once per Queue object, as LeanMQ's group read does).
        self._dlq_cursor: Optional[str] = None

    # -- plumbing ---------------------------------------------------------

    @property
    def _conn(self) -> Connection:
        return self.client.conn

    def _keep(self, message_id: str, receipt: str) -> None:
        self._conn.keep_leases()
        with self._lock:
            self._receipts[message_id] = receipt
            self._receipts.move_to_end(message_id)
            while len(self._receipts) > MAX_RECEIPTS:
                self._receipts.popitem(last=False)

    def _held(self, ids: List[str]) -> List[Tuple[str, str]]:
        with self._lock:
            return [(i, self._receipts[i]) for i in ids if i in self._receipts]

    def _forget(self, ids: List[str]) -> None:
        with self._lock:
            for i in ids:
                self._receipts.pop(i, None)

    def _dead_letters(self) -> List[Any]:
        """Every dead letter of this DLQ, oldest first."""
        out: List[Any] = []
        token = ""
        while True:
            resp = self._conn.call(
                self._conn.admin.ListDeadLetters,
                admin_pb2.ListDeadLettersRequest(
                    queue=self._queue, prefix=self.client.prefix, page_size=1000, page_token=token
                ),
            )
            out.extend(resp.dead_letters)
            token = resp.next_page_token
            if not token:
                return out

    # -- LeanMQ's API -----------------------------------------------------

    def get_info(self) -> QueueInfo:
        """Information about the queue. A queue that does not exist (yet)
        reports zeros instead of raising (LeanMQ 0.2.0 crashes here)."""
        info = QueueInfo(name=self.name, is_dlq=self.is_dlq, consumer_group=self.consumer_group)
        try:
            q = self._conn.call(
                self._conn.admin.GetQueue, admin_pb2.GetQueueRequest(queue=self._queue, prefix=self.client.prefix)
            )
        except exceptions.QueueNotFoundError:
            return info
        info.created_at = _ts(q.created_at) if q.HasField("created_at") else None
        if self.is_dlq:
            info.message_count = int(q.dead_letters)
        else:
            info.message_count = int(q.length)
            info.pending_messages = sum(int(g.pending) for g in q.groups if g.name == self.consumer_group)
        return info

    def send_message(self, data: Dict[str, Any], message_id: Optional[str] = None, ttl: Optional[int] = None) -> str:
        """Send a message; returns its stream entry id. ``message_id``, when
        given, is the message's idempotency key: a second send with the same
        id within the broker's dedup window stores nothing and returns the
        first message's entry id."""
        if self.is_dlq:
            raise exceptions.QueueError(
                f"{self.name} is a dead-letter queue; messages reach it through move_to_dlq or failed handlers"
            )
        req = self._send_request(data, message_id, ttl)
        return self._conn.call(self._conn.broker.Send, req).message_id

    def _send_request(self, data: Dict[str, Any], message_id: Optional[str], ttl: Optional[int]) -> broker_pb2.SendRequest:
        req = broker_pb2.SendRequest(
            queue=self._queue,
            prefix=self.client.prefix,
            payload=_encode(data),
            content_type=JSON_CONTENT_TYPE,
        )
        if ttl is not None:
            if ttl <= 0:
                raise exceptions.MessageError("ttl must be a positive number of seconds")
            req.ttl.CopyFrom(to_duration(ttl))
        if message_id is not None:
            req.idempotency_key = str(message_id)
        return req

    def get_messages(
        self,
        count: int = 1,
        block_for_seconds: Optional[int] = None,
        consumer_id: str = "default-consumer",
    ) -> List[Message]:
        """Up to ``count`` messages for this queue's group, waiting up to
        ``block_for_seconds`` for the first (``None``: no wait; ``0``: until
        one arrives, as Redis' BLOCK 0)."""
        count = max(1, min(int(count or 1), MAX_COUNT))
        if self.is_dlq:
            return self._get_dead_letters(count, block_for_seconds)
        while True:
            wait = MAX_WAIT if block_for_seconds == 0 else min(block_for_seconds or 0, MAX_WAIT)
            req = broker_pb2.ReceiveRequest(
                queue=self._queue,
                prefix=self.client.prefix,
                group=self.consumer_group,
                consumer=consumer_id,
                max_messages=count,
            )
            if wait:
                req.wait.CopyFrom(to_duration(wait))
            req.ack_deadline.CopyFrom(to_duration(config.LEASE_SECONDS))
            resp = self._conn.call(self._conn.broker.Receive, req, timeout=wait + 30)
            out = []
            for d in resp.deliveries:
                m = self._message(d)
                if m is not None:
                    out.append(m)
            if out or block_for_seconds != 0:
                return out

    def _message(self, d: Any) -> Optional[Message]:
        data = _payload_dict(d.payload)
        if data is None:
            # LeanMQ drops entries it cannot parse; dead-letter them instead,
            # so nothing another client sent is lost.
            try:
                self._conn.call(
                    self._conn.broker.Nack,
                    broker_pb2.NackRequest(
                        receipt=d.receipt, dead_letter=True, reason="not a JSON object: a LeanMQ program cannot read it"
                    ),
                )
            except exceptions.LeanMQError as e:
                logger.error(f"Error parsing message {d.message_id}: {e}")
            return None
        if d.path:
            data["_leanmq"] = {"webhook": {"path": d.path, "timestamp": _ts(d.published_at)}}
        for header, key in (("leanmq-failures", "_failures"), ("leanmq-requeues", "_requeues")):
            if header in d.headers:
                try:
                    data[key] = json.loads(d.headers[header])
                except ValueError:
                    pass
        self._keep(d.message_id, d.receipt)
        return Message(
            id=d.message_id,
            data=data,
            timestamp=_ts(d.published_at) or time.time(),
            delivery_count=int(d.attempt),
        )

    def _get_dead_letters(self, count: int, block_for_seconds: Optional[int]) -> List[Message]:
        deadline = None if block_for_seconds is None else time.monotonic() + (block_for_seconds or MAX_WAIT)
        while True:
            fresh = [
                dl for dl in self._dead_letters() if self._dlq_cursor is None or _id_key(dl.id) > _id_key(self._dlq_cursor)
            ][:count]
            if fresh or deadline is None or time.monotonic() >= deadline:
                break
            # The broker has no blocking read of a DLQ; look again shortly.
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        out = []
        for dl in fresh:
            data = _payload_dict(dl.payload) or {"_payload": dl.payload.decode("utf-8", "replace")}
            data["_failures"] = [{"timestamp": _ts(f.at), "reason": f.reason} for f in dl.failures]
            if "leanmq-requeues" in dl.headers:
                try:
                    data["_requeues"] = json.loads(dl.headers["leanmq-requeues"])
                except ValueError:
                    pass
            ts = _ts(dl.last_failed_at) or time.time()
            out.append(Message(id=dl.id, data=data, timestamp=ts, delivery_count=1))
            self._dlq_cursor = dl.id
        return out

    def acknowledge_messages(self, message_ids: List[str]) -> int:
        """Settle messages this queue handed out, by entry id. An id it never
        handed out (or whose delivery has since gone to someone else) counts
        as not acknowledged, as LeanMQ's XACK counts it."""
        if self.is_dlq:
            logger.warning(
                "Called acknowledge_messages on a DLQ. DLQ messages should be "
                "either deleted with delete_messages or requeued with requeue_messages."
            )
            return 0
        held = self._held(_valid_ids(message_ids))
        if not held:
            return 0
        acked = 0
        for start in range(0, len(held), MAX_COUNT):
            chunk = held[start : start + MAX_COUNT]
            resp = self._conn.call(self._conn.broker.Ack, broker_pb2.AckRequest(receipts=[r for _, r in chunk]))
            acked += sum(1 for r in resp.results if r.outcome == broker_pb2.ACK_OUTCOME_ACKED)
            self._forget([i for i, _ in chunk])
        return acked

    def delete_messages(self, message_ids: List[str]) -> int:
        """DLQ: delete the dead letters. Queue: settle held messages for good
        (they are never delivered again; the entries stay until retention)."""
        ids = _valid_ids(message_ids)
        if not ids:
            return 0
        if self.is_dlq:
            resp = self._conn.call(
                self._conn.admin.DeleteDeadLetters,
                admin_pb2.DeleteDeadLettersRequest(queue=self._queue, prefix=self.client.prefix, ids=ids[:MAX_COUNT]),
            )
            return int(resp.deleted) + (self.delete_messages(ids[MAX_COUNT:]) if len(ids) > MAX_COUNT else 0)
        held = self._held(ids)
        if not held:
            return 0
        resp = self._conn.call(self._conn.broker.Ack, broker_pb2.AckRequest(receipts=[r for _, r in held]))
        self._forget([i for i, _ in held])
        return sum(1 for r in resp.results if r.outcome != broker_pb2.ACK_OUTCOME_STALE)

    def requeue_messages(self, message_ids: List[str], destination_queue: Optional["Queue"] = None) -> int:
        """Move dead letters back. Without ``destination_queue`` (as LeanMQ's
        guide calls it), or with this DLQ's own queue, each moves atomically
        (RequeueDeadLetters). Another destination gets a copy sent, then the
        dead letter deleted: two steps, as LeanMQ does it."""
        if not self.is_dlq:
            logger.warning(
                "Called requeue_messages on a non-DLQ. This method should only be used on a dead letter queue."
            )
            return 0
        if destination_queue is not None and destination_queue.is_dlq:
            logger.warning("Cannot requeue messages to another DLQ. Destination must be a regular queue.")
            return 0
        ids = _valid_ids(message_ids)
        if not ids:
            return 0
        own = destination_queue is None or (
            destination_queue._queue == self._queue and destination_queue.client.prefix == self.client.prefix
        )
        if own:
            done = 0
            for start in range(0, len(ids), MAX_COUNT):
                resp = self._conn.call(
                    self._conn.admin.RequeueDeadLetters,
                    admin_pb2.RequeueDeadLettersRequest(
                        queue=self._queue,
                        prefix=self.client.prefix,
                        ids=admin_pb2.DeadLetterIds(ids=ids[start : start + MAX_COUNT]),
                    ),
                )
                done += len(resp.requeued)
            return done
        wanted = set(ids)
        done = 0
        assert destination_queue is not None
        for dl in self._dead_letters():
            if dl.id not in wanted:
                continue
            data = _payload_dict(dl.payload)
            if data is None:
                logger.error(f"Error requeuing message {dl.id}: not a JSON object")
                continue
            try:
                destination_queue.send_message(data)
                self.delete_messages([dl.id])
                done += 1
            except exceptions.LeanMQError as e:
                logger.error(f"Error requeuing message {dl.id}: {e}")
        return done

    def purge(self) -> int:
        """Delete every message (DLQ: every dead letter); returns how many."""
        if self.is_dlq:
            resp = self._conn.call(
                self._conn.admin.PurgeDeadLetters,
                admin_pb2.PurgeDeadLettersRequest(queue=self._queue, prefix=self.client.prefix),
            )
        else:
            resp = self._conn.call(
                self._conn.admin.PurgeQueue,
                admin_pb2.PurgeQueueRequest(queue=self._queue, prefix=self.client.prefix, confirm=self._queue),
            )
        with self._lock:
            self._receipts.clear()
        return int(resp.purged)

    def move_to_dlq(self, message_ids: List[str], reason: str, dlq: "Queue") -> int:
        """Dead-letter held messages now (Nack with dead_letter), recording
        ``reason``. They go to this queue's own DLQ."""
        if not message_ids or not dlq or dlq.is_dlq is False:
            return 0
        moved = 0
        for mid, receipt in self._held(_valid_ids(message_ids)):
            try:
                resp = self._conn.call(
                    self._conn.broker.Nack,
                    broker_pb2.NackRequest(receipt=receipt, dead_letter=True, reason=str(reason)),
                )
            except exceptions.LeanMQError as e:
                if code_of(e) != grpc.StatusCode.FAILED_PRECONDITION:
                    logger.error(f"Error moving message {mid} to DLQ: {e}")
                self._forget([mid])
                continue
            self._forget([mid])
            if resp.outcome == broker_pb2.NACK_OUTCOME_DEAD_LETTERED:
                moved += 1
        return moved

    def _retry_later(self, message_id: str, reason: str) -> bool:
        """Nack a held message for a retry with the broker's backoff (its
        last allowed attempt dead-letters it instead)."""
        held = self._held([message_id])
        if not held:
            return False
        try:
            self._conn.call(self._conn.broker.Nack, broker_pb2.NackRequest(receipt=held[0][1], reason=reason))
        except exceptions.LeanMQError as e:
            logger.error(f"Error scheduling a retry of message {message_id}: {e}")
            return False
        finally:
            self._forget([message_id])
        return True


class Transaction:
    """Sends collected inside ``with mq.transaction() as tx:``, appended as
    one atomic SendBatch when the block ends without an exception."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.pipeline: Optional[object] = None
        self.messages: List[Tuple[Queue, Dict[str, Any], str, Optional[int]]] = []
        self._explicit_ids: List[bool] = []

    def send_message(
        self,
        queue: Queue,
        data: Dict[str, Any],
        message_id: Optional[str] = None,
        ttl: Optional[int] = None,
    ) -> str:
        """Add a send; returns the message's tracking id (a uuid4 unless given)."""
        explicit = message_id is not None
        if message_id is None:
            message_id = str(uuid.uuid4())
        self.messages.append((queue, data, message_id, ttl))
        self._explicit_ids.append(explicit)
        return message_id

    def _execute(self) -> None:
        if not self.pipeline or not self.messages:
            return
        prefixes = {q.client.prefix for q, _, _, _ in self.messages}
        if len(prefixes) > 1:
            raise exceptions.TransactionError(
                f"a transaction spans prefixes {sorted(prefixes)}; the broker makes one prefix's sends atomic"
            )
        reqs = [
            q._send_request(data, mid if explicit else None, ttl)
            for (q, data, mid, ttl), explicit in zip(self.messages, self._explicit_ids)
        ]
        conn = self.client.conn
        try:
            conn.call(conn.broker.SendBatch, broker_pb2.SendBatchRequest(messages=reqs))
        except exceptions.LeanMQError as e:
            raise exceptions.TransactionError(str(e)) from e


class LeanMQ:
    """LeanMQ's main class, on leanmqd.

    ``redis_host``, ``redis_port``, ``redis_db``, ``redis_password`` are
    accepted and ignored; the broker comes from ``target=`` /
    ``LEANMQ_GRPC_TARGET`` and ``token=`` / ``LEANMQ_GRPC_TOKEN``.
    """

    def __init__(
        self,
        redis_host: str = "localhost",
        redis_port: int = 6379,
        redis_db: int = 0,
        redis_password: Optional[str] = None,
        prefix: str = "mq:",
        max_retries: int = 3,
        *,
        target: Optional[str] = None,
        token: Optional[str] = None,
        _connection: Optional[Connection] = None,
    ) -> None:
        self.prefix = prefix
        self.max_retries = max_retries
        self._owns_connection = _connection is None
        conn = _connection or Connection(target, token)
        #: LeanMQ's Redis pool; here the broker connection.
        self.pool = conn
        self.client = Client(conn, prefix)
        self._queue_registry_key = f"{self.prefix}registry"
        announce(conn, prefix)

    # -- names ------------------------------------------------------------

    def _base(self, queue_name: str) -> Tuple[str, bool]:
        """A name as LeanMQ programs give it ('tasks', 'mq:tasks',
        'mq:tasks:dlq' from list_queues) → (queue name, is it the DLQ)."""
        name = queue_name[len(self.prefix):] if self.prefix and queue_name.startswith(self.prefix) else queue_name
        if name.endswith(":dlq"):
            return name[: -len(":dlq")], True
        return name, False

    def _main(self, q: str) -> Queue:
        return Queue(self.client, f"{self.prefix}{q}", f"{q}-group")

    def _dlq(self, q: str) -> Queue:
        return Queue(self.client, f"{self.prefix}{q}:dlq", f"{q}-group-dlq", is_dlq=True)

    def _exists(self, q: str) -> bool:
        try:
            self.client.conn.call(
                self.client.conn.admin.GetQueue, admin_pb2.GetQueueRequest(queue=q, prefix=self.prefix)
            )
            return True
        except exceptions.QueueNotFoundError:
            return False
        except exceptions.QueueError as e:
            if code_of(e) == grpc.StatusCode.INVALID_ARGUMENT:
                return False
            raise

    # -- LeanMQ's API -----------------------------------------------------

    def create_queue_pair(self, queue_name: str) -> Tuple[Queue, Queue]:
        """Create (idempotently) a queue, its DLQ and LeanMQ's groups."""
        self.client.conn.call(
            self.client.conn.admin.CreateQueue, admin_pb2.CreateQueueRequest(queue=queue_name, prefix=self.prefix)
        )
        return self._main(queue_name), self._dlq(queue_name)

    def list_queues(self) -> List[QueueInfo]:
        """Every queue and DLQ under this prefix (names are full keys, which
        ``get_queue`` accepts back)."""
        out: List[QueueInfo] = []
        for s in self._summaries():
            main = self._main(s.queue).get_info()
            main.message_count = int(s.length)
            out.append(main)
            out.append(
                QueueInfo(
                    name=f"{self.prefix}{s.queue}:dlq",
                    is_dlq=True,
                    message_count=int(s.dead_letters),
                    consumer_group=f"{s.queue}-group-dlq",
                    pending_messages=0,
                    created_at=main.created_at,
                )
            )
        return out

    def _summaries(self) -> Iterator[admin_pb2.QueueSummary]:
        """Every queue under this prefix, following ListQueues' pages."""
        conn = self.client.conn
        token = ""
        while True:
            resp = conn.call(
                conn.admin.ListQueues,
                admin_pb2.ListQueuesRequest(prefix=self.prefix, page_size=QUEUE_PAGE, page_token=token),
            )
            yield from resp.queues
            token = resp.next_page_token
            if not token:
                return

    def delete_queue(self, queue_name: str, delete_dlq: bool = True) -> bool:
        """Delete a queue (and its DLQ). True also when it did not exist, as LeanMQ."""
        q, _ = self._base(queue_name)
        try:
            self.client.conn.call(
                self.client.conn.admin.DeleteQueue,
                admin_pb2.DeleteQueueRequest(queue=q, prefix=self.prefix, with_dlq=delete_dlq, confirm=q),
            )
            return True
        except exceptions.QueueNotFoundError:
            return True
        except exceptions.LeanMQError as e:
            logger.error(f"Error deleting queue {self.prefix}{q}: {e}")
            return False

    def get_queue(self, queue_name: str) -> Optional[Queue]:
        """The queue (or, for a ':dlq' name, the DLQ), or None when it does not exist."""
        q, dlq = self._base(queue_name)
        if not self._exists(q):
            return None
        return self._dlq(q) if dlq else self._main(q)

    def get_dead_letter_queue(self, queue_name: str) -> Optional[Queue]:
        """The DLQ of a queue, or None when the queue does not exist."""
        q, _ = self._base(queue_name)
        if not self._exists(q):
            return None
        return self._dlq(q)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Collect sends; on a clean exit they are appended atomically (one
        SendBatch), on an exception none is."""
        tx = Transaction(self.client)
        tx.pipeline = object()
        try:
            yield tx
            tx._execute()
        except Exception as e:
            logger.error(f"Transaction failed: {e}")
            raise
        finally:
            tx.pipeline = None

    def process_expired_messages(self) -> int:
        """Always 0: leanmqd enforces TTLs itself. A message past its TTL is
        never delivered; the reader that finds it moves it to the DLQ with
        reason "expired" (GetQueue's ``expired`` counts them)."""
        return 0

    def close(self) -> None:
        """Close the broker connection (when this instance opened it)."""
        if self._owns_connection:
            self.client.conn.close()

    def __enter__(self) -> "LeanMQ":
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        self.close()
