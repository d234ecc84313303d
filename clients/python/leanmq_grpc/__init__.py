"""leanmq_grpc: Python SDK for leanmq-grpc (LeanMQ's webhook pattern over gRPC).

    from leanmq_grpc import Webhook, DeadLetter, RetryAfter

    webhook = Webhook("127.0.0.1:50051")

    @webhook.get("/order/status/")
    def process_order_status(data):
        print(data["order_id"], data["status"])

    webhook.send("/order/status/", {"order_id": "ORD-1", "status": "shipped"})
    service = webhook.run_service()

The generated gRPC code is importable as ``leanmq_grpc.pb`` (messages) and
``leanmq_grpc.pb_grpc`` (``BrokerStub``, ``BrokerServicer``). Trace context
through the broker (optional OpenTelemetry API): ``leanmq_grpc.tracing``.
"""
from ._common import Delivery, normalize_path, queue_name
from ._proto.leanmq.v1 import broker_pb2 as pb
from ._proto.leanmq.v1 import broker_pb2_grpc as pb_grpc
from . import tracing
from .aio import AsyncWebhook
from .errors import DeadLetter, DeadLetterError, RetryAfter
from .webhook import Webhook, WebhookService

__version__ = "0.1.0"

__all__ = [
    "AsyncWebhook",
    "DeadLetter",
    "DeadLetterError",
    "Delivery",
    "RetryAfter",
    "Webhook",
    "WebhookService",
    "normalize_path",
    "pb",
    "pb_grpc",
    "queue_name",
    "tracing",
]
