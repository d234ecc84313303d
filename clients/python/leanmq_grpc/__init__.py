"""leanmq_grpc: Python SDK for leanmq-grpc (LeanMQ's webhook pattern over gRPC).

    from leanmq_grpc import Webhook, DeadLetter, RetryAfter

    webhook = Webhook("127.0.0.1:50051")

    @webhook.get("/order/status/")
    def process_order_status(data):
        print(data["order_id"], data["status"])

    webhook.send("/order/status/", {"order_id": "ORD-1", "status": "shipped"})
    service = webhook.run_service()

    admin = webhook.admin        # or Admin("127.0.0.1:50051", token=...)
    for dl in admin.list_dead_letters("/order/status/"):
        print(dl.id, dl.last_reason, dl.data)
    admin.requeue_dead_letters("/order/status/", all=True)

Every call raises a ``LeanMQError`` subclass (``Unavailable``,
``PermissionDenied``, ``InvalidArgument``, ``NotFound``, ...) carrying the
gRPC status code, never a raw ``grpc.RpcError``.

The generated gRPC code is importable as ``leanmq_grpc.pb`` (messages) and
``leanmq_grpc.pb_grpc`` (``BrokerStub``, ``BrokerServicer``). Trace context
through the broker (optional OpenTelemetry API): ``leanmq_grpc.tracing``.
"""
from ._common import BatchMessage, Delivery, normalize_path, queue_name
from ._proto.leanmq.v1 import broker_pb2 as pb
from ._proto.leanmq.v1 import broker_pb2_grpc as pb_grpc
from . import tracing
from .admin import (
    Admin,
    DeadLetterEntry,
    Failure,
    GroupInfo,
    QueueInfo,
    QueueSummary,
    Requeued,
    RequeueResult,
)
from .aio import AsyncAdmin, AsyncWebhook
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadLetter,
    DeadLetterError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LeanMQError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    RetryAfter,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from ._publish import PublishSettings
from .webhook import Webhook, WebhookService

__version__ = "0.1.0"

__all__ = [
    "Aborted",
    "Admin",
    "AlreadyExists",
    "AsyncAdmin",
    "AsyncWebhook",
    "BatchMessage",
    "Cancelled",
    "DataLoss",
    "DeadLetter",
    "DeadLetterEntry",
    "DeadLetterError",
    "DeadlineExceeded",
    "Delivery",
    "FailedPrecondition",
    "Failure",
    "GroupInfo",
    "Internal",
    "InvalidArgument",
    "LeanMQError",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PublishSettings",
    "QueueInfo",
    "QueueSummary",
    "Requeued",
    "RequeueResult",
    "ResourceExhausted",
    "RetryAfter",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "Webhook",
    "WebhookService",
    "normalize_path",
    "pb",
    "pb_grpc",
    "queue_name",
    "tracing",
]
