"""Exceptions a handler raises to choose how its message is settled.

| the handler...                 | the SDK calls                                 |
| ------------------------------ | --------------------------------------------- |
| returns normally               | ``Ack``                                       |
| raises any other exception     | ``Nack`` (server retry policy), reason=repr() |
| raises ``DeadLetter(reason)``  | ``Nack{dead_letter: true, reason}``           |
| raises ``RetryAfter(seconds)`` | ``Nack{delay: seconds}``                      |
"""
from __future__ import annotations

from typing import Optional


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
