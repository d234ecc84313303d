"""Where the compat layer connects: leanmqd instead of Redis.

- target: ``target=`` keyword, else ``LEANMQ_GRPC_TARGET``, else ``127.0.0.1:50051``;
- token: ``token=`` keyword, else ``LEANMQ_GRPC_TOKEN`` (sent as ``authorization: Bearer``);
- TLS: ``LEANMQ_GRPC_CA`` names a PEM file of CA certificates; with it the
  channel is TLS, without it plaintext.

LeanMQ's ``redis_host``, ``redis_port``, ``redis_db`` and ``redis_password``
are accepted and ignored; one INFO line per ``LeanMQ`` names the broker used.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

import grpc

from .._common import call_metadata
from .._proto.leanmq.v1 import admin_pb2_grpc, broker_pb2_grpc
from . import exceptions

logger = logging.getLogger("leanmq_grpc.compat")

DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_ENV = "LEANMQ_GRPC_TARGET"
TOKEN_ENV = "LEANMQ_GRPC_TOKEN"
CA_ENV = "LEANMQ_GRPC_CA"

#: Deadline of each unary call that does not wait for messages, in seconds.
CALL_TIMEOUT = 30.0
#: Lease of each message the compat receives, in seconds. While the program
#: holds a message (until it acks, dead-letters or deletes it), the
#: connection's keeper extends the lease every ``EXTEND_EVERY`` seconds, so a
#: slow LeanMQ consumer is not raced by a redelivery, as under LeanMQ; if the
#: process dies, its messages are redelivered once the lease runs out (LeanMQ
#: leaves them pending forever).
LEASE_SECONDS = 60.0
EXTEND_EVERY = 20.0
#: Most held messages the keeper extends per round (the oldest first).
MAX_KEPT = 10_000


def resolve(target: Optional[str], token: Optional[str]) -> Tuple[str, Optional[str], Optional[str]]:
    """(target, token, CA file) from the keywords, then the environment."""
    t = target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
    tok = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
    ca = os.environ.get(CA_ENV) or None
    return t, tok, ca


class Connection:
    """One gRPC channel to leanmqd with its stubs, shared by a ``LeanMQ``,
    its queues and, for ``LeanMQWebhook``, ``webhook.mq``."""

    def __init__(self, target: Optional[str] = None, token: Optional[str] = None) -> None:
        self.target, token, ca = resolve(target, token)
        self.metadata = call_metadata(None, token)
        if ca:
            try:
                with open(ca, "rb") as f:
                    roots = f.read()
            except OSError as e:
                raise exceptions.ConnectionError(f"cannot read {CA_ENV}={ca!r}: {e}") from e
            self.channel = grpc.secure_channel(self.target, grpc.ssl_channel_credentials(root_certificates=roots))
        else:
            self.channel = grpc.insecure_channel(self.target)
        self.tls = bool(ca)
        self.broker = broker_pb2_grpc.BrokerStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        self._lock = threading.Lock()
        self._closed = False
        #: Receipts handed out, per (prefix, queue, group): every ``Queue``
        #: object on this connection for the same queue and group settles
        #: what another one received, as LeanMQ's ids work on any object.
        self.receipts: Dict[Tuple[str, str, str], "OrderedDict[str, str]"] = {}
        self.receipts_lock = threading.Lock()
        self._stop = threading.Event()
        self._keeper: Optional[threading.Thread] = None

    def call(self, method: Callable[..., Any], request: Any, timeout: Optional[float] = CALL_TIMEOUT) -> Any:
        """Call ``method`` with the connection's metadata; gRPC errors become
        LeanMQ's exceptions (``rpc_error`` keeps the original)."""
        if self._closed:
            raise exceptions.ConnectionError("the connection to leanmqd is closed (close() was called)")
        try:
            return method(request, metadata=self.metadata, timeout=timeout)
        except grpc.RpcError as e:
            raise translate(e) from e
        except ValueError as e:  # grpc: "Cannot invoke RPC on closed channel!"
            raise exceptions.ConnectionError(str(e)) from e

    def keep_leases(self) -> None:
        """Start the keeper (once): it extends the lease of every held message."""
        with self._lock:
            if self._keeper is None and not self._closed:
                self._keeper = threading.Thread(target=self._keep, name="leanmq-compat-leases", daemon=True)
                self._keeper.start()

    def _keep(self) -> None:
        from .._common import to_duration
        from .._proto.leanmq.v1 import broker_pb2

        while not self._stop.wait(EXTEND_EVERY):
            with self.receipts_lock:
                held = [(book, mid, r) for book in self.receipts.values() for mid, r in book.items()][:MAX_KEPT]
            for book, mid, receipt in held:
                if self._stop.is_set():
                    return
                try:
                    self.broker.Extend(
                        broker_pb2.ExtendRequest(receipt=receipt, extension=to_duration(LEASE_SECONDS)),
                        metadata=self.metadata,
                        timeout=CALL_TIMEOUT,
                    )
                except grpc.RpcError as e:
                    # The lease is gone (settled, or redelivered elsewhere):
                    # stop holding it. Anything else (the broker is away) is
                    # tried again next round.
                    if e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
                        with self.receipts_lock:
                            if book.get(mid) == receipt:
                                del book[mid]
                except ValueError:  # the channel was closed under us
                    return

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if not self._closed:
                self._closed = True
                self.channel.close()


def translate(err: grpc.RpcError) -> exceptions.LeanMQError:
    """A gRPC error as the LeanMQ exception a LeanMQ program would catch."""
    code = err.code() if hasattr(err, "code") else None
    detail = err.details() if hasattr(err, "details") else str(err)
    msg = f"{getattr(code, 'name', code)}: {detail}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        e: exceptions.LeanMQError = exceptions.ConnectionError(msg)
    elif code == grpc.StatusCode.NOT_FOUND:
        e = exceptions.QueueNotFoundError(msg)
    else:
        e = exceptions.QueueError(msg)
    e.rpc_error = err  # type: ignore[attr-defined]
    e.code = code  # type: ignore[attr-defined]
    return e


def code_of(err: BaseException) -> Optional[grpc.StatusCode]:
    """The gRPC status code behind a translated error, if any."""
    return getattr(err, "code", None)


def announce(conn: Connection, prefix: str) -> None:
    logger.info(
        "LeanMQ compat: using leanmqd at %s (%s, prefix %r); redis_host/redis_port/redis_db/redis_password are ignored",
        conn.target,
        "TLS" if conn.tls else "plaintext",
        prefix,
    )
