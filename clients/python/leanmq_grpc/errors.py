"""Exceptions: those a handler raises to choose how its message is settled,
and the typed errors every SDK call raises when leanmqd refuses or cannot be
reached (``LeanMQError`` and one subclass per gRPC status code).

| the handler...                 | the SDK calls                                 |
| ------------------------------ | --------------------------------------------- |
| returns normally               | ``Ack``                                       |
| raises any other exception     | ``Nack`` (server retry policy), reason=repr() |
| raises ``DeadLetter(reason)``  | ``Nack{dead_letter: true, reason}``           |
| raises ``RetryAfter(seconds)`` | ``Nack{delay: seconds}``                      |
"""
from __future__ import annotations

from typing import Dict, Optional, Type

import grpc


class DeadLetter(Exception):
    """Move the message to the dead-letter queue now, with ``reason``.

    The reason is recorded in the DLQ entry's ``_failures`` record.
    """

    def __init__(self, reason: str = "dead-lettered by handler") -> None:
        super().__init__(reason)
        self.reason = str(reason)

    def __str__(self) -> str:
        return self.reason


#: Alias matching the Go and Node SDKs' name.
DeadLetterError = DeadLetter


class RetryAfter(Exception):
    """Redeliver the message after ``seconds`` (instead of the server's backoff).

    ``seconds`` must be between 0 and 7 days; 0 means "the server's retry
    policy", like a plain failure.
    """

    def __init__(self, seconds: float, reason: Optional[str] = None) -> None:
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError("RetryAfter seconds must be >= 0")
        self.seconds = seconds
        self.reason = reason if reason is not None else f"retry after {seconds:g}s"
        super().__init__(self.reason)

    def __str__(self) -> str:
        return self.reason


# --------------------------------------------------------------------------- call errors


class LeanMQError(grpc.RpcError):
    """A call to leanmqd failed. Every SDK call raises a subclass per gRPC
    status code (``Unavailable``, ``PermissionDenied``, ...) instead of a raw
    ``grpc.RpcError``.

    It still *is* a ``grpc.RpcError`` with ``code()`` and ``details()``, so
    code written against the raw gRPC errors keeps working. The gRPC error
    it came from is ``__cause__``.
    """

    #: The status code of this class; ``code()`` gives the actual one.
    grpc_code: Optional[grpc.StatusCode] = None

    def __init__(self, details: str, code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(details)
        self._code = code if code is not None else (self.grpc_code or grpc.StatusCode.UNKNOWN)
        self._details = details

    def code(self) -> grpc.StatusCode:
        """The gRPC status code (as ``grpc.RpcError.code()``)."""
        return self._code

    def details(self) -> str:
        """The server's message (as ``grpc.RpcError.details()``)."""
        return self._details

    def __str__(self) -> str:
        return f"{self._code.name}: {self._details}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._details!r})"


class Cancelled(LeanMQError):
    grpc_code = grpc.StatusCode.CANCELLED


class Unknown(LeanMQError):
    grpc_code = grpc.StatusCode.UNKNOWN


class InvalidArgument(LeanMQError):
    """The request is malformed (a bad path, id, count, or a wrong ``confirm``)."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(LeanMQError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(LeanMQError):
    """E.g. ``get_queue`` of a queue that does not exist."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(LeanMQError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(LeanMQError):
    """The token may not do this on this path (its grant does not cover it)."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(LeanMQError):
    """A limit was hit (the token's rate, a size bound)."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(LeanMQError):
    """E.g. a lease that was lost before the delivery was settled."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(LeanMQError):
    grpc_code = grpc.StatusCode.ABORTED


class OutOfRange(LeanMQError):
    grpc_code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(LeanMQError):
    """The server does not have this call (an older leanmqd?)."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(LeanMQError):
    grpc_code = grpc.StatusCode.INTERNAL


class Unavailable(LeanMQError):
    """leanmqd (or its Redis) cannot be reached right now; worth retrying."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class DataLoss(LeanMQError):
    grpc_code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(LeanMQError):
    """No token, or one leanmqd does not know."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: Dict[grpc.StatusCode, Type[LeanMQError]] = {
    cls.grpc_code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
    if cls.grpc_code is not None
}


def error_for(err: BaseException) -> BaseException:
    """The typed error for a gRPC error (itself when already typed or not a
    gRPC error); raise it ``from err``."""
    if isinstance(err, LeanMQError) or not isinstance(err, grpc.RpcError):
        return err
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    cls = _BY_CODE.get(code, LeanMQError)
    typed = cls(details or str(err) or code.name, code)
    typed.__cause__ = err
    return typed


_STATUS_BY_NUMBER: Dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def error_for_code(code: int, details: str) -> LeanMQError:
    """The typed error for a numeric google.rpc code and its message (a
    Publish response's ``code`` and ``error``)."""
    status = _STATUS_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    cls = _BY_CODE.get(status, LeanMQError)
    return cls(details or status.name, status)
