"""LeanMQ 0.2.0's exception classes, under the same names and hierarchy.

``ConnectionError`` is raised when leanmqd cannot be reached (where LeanMQ
raised it for Redis); it shadows the builtin inside this module, as in LeanMQ.
"""


class LeanMQError(Exception):
    """Base exception for all LeanMQ errors."""


class ConnectionError(LeanMQError):  # noqa: A001 - LeanMQ's name
    """Raised when the broker (leanmqd) cannot be reached."""


class QueueError(LeanMQError):
    """Raised when there is an error with a queue operation."""


class MessageError(LeanMQError):
    """Raised when there is an error processing a message."""


class TransactionError(LeanMQError):
    """Raised when there is an error in a transaction."""


class QueueNotFoundError(QueueError):
    """Raised when a queue cannot be found."""


class DeadLetterQueueNotFoundError(QueueError):
    """Raised when a dead letter queue cannot be found."""


__all__ = [
    "ConnectionError",
    "DeadLetterQueueNotFoundError",
    "LeanMQError",
    "MessageError",
    "QueueError",
    "QueueNotFoundError",
    "TransactionError",
]
