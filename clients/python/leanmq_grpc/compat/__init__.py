"""A drop-in for LeanMQ 0.2.0 programs: change ``from leanmq import X`` to
``from leanmq_grpc.compat import X`` and the program runs on leanmqd.

    from leanmq_grpc.compat import LeanMQ, LeanMQWebhook

The broker is ``target=`` / ``LEANMQ_GRPC_TARGET`` (default
``127.0.0.1:50051``), the token ``token=`` / ``LEANMQ_GRPC_TOKEN``, a TLS CA
``LEANMQ_GRPC_CA``. LeanMQ's Redis arguments are accepted and ignored.
Every call, the RPC it uses and how it differs from LeanMQ: the table in
the SDK's README.

- ``core``: ``LeanMQ``, ``Queue``, ``QueueInfo``, ``Message``, ``Transaction``;
- ``webhook``: ``LeanMQWebhook``, ``WebhookService``, ``WebhookRoute``;
- ``exceptions``: LeanMQ's exception classes;
- ``config``: where it connects.
"""
from .core import LeanMQ, Message, Queue, QueueInfo, Transaction
from .exceptions import (
    ConnectionError,
    DeadLetterQueueNotFoundError,
    LeanMQError,
    MessageError,
    QueueError,
    QueueNotFoundError,
    TransactionError,
)
from .webhook import LeanMQWebhook, WebhookRoute, WebhookService

__all__ = [
    "ConnectionError",
    "DeadLetterQueueNotFoundError",
    "LeanMQ",
    "LeanMQError",
    "LeanMQWebhook",
    "Message",
    "MessageError",
    "Queue",
    "QueueError",
    "QueueInfo",
    "QueueNotFoundError",
    "Transaction",
    "TransactionError",
    "WebhookRoute",
    "WebhookService",
]
