"""Trace context from a Python producer through leanmqd to a Node handler's
span, seen at an in-test OTLP collector.

The producer sends inside an OpenTelemetry span (Python SDK, otel extra);
leanmqd runs with --otlp-endpoint and the Node handler exports over OTLP,
both to a collector served by this test. The collector must receive
leanmqd's ``leanmq.send`` span and the handler's ``process <path>`` span,
both in the producer's trace, both children of the producer's span, and
the handler span linked to it.
"""
from __future__ import annotations

import signal
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Dict, List

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import TracerProvider

from harness import REPO, Agent, Leanmqd, RedisServer, normalized, unique_path, wait_until
from leanmq_grpc import Webhook

NODE_HANDLER = REPO / "tests" / "e2e" / "otel_node_handler.js"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """OTLP/gRPC trace receiver: keeps every span with its service name."""

    def __init__(self) -> None:
        self.spans: List[Dict] = []
        self._lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 - the gRPC method name
        for rs in request.resource_spans:
            service = next(
                (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), ""
            )
            for ss in rs.scope_spans:
                for s in ss.spans:
                    with self._lock:
                        self.spans.append(
                            {
                                "service": service,
                                "name": s.name,
                                "trace_id": s.trace_id.hex(),
                                "span_id": s.span_id.hex(),
                                "parent": s.parent_span_id.hex(),
                                "links": [link.span_id.hex() for link in s.links],
                                "kind": s.kind,
                            }
                        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> List[Dict]:
        with self._lock:
            return [s for s in self.spans if s["name"] == name]


def test_python_producer_to_node_handler_span_through_leanmqd(
    leanmqd_bin: str, redis_server: RedisServer, workdir: Path
) -> None:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    otlp = f"http://127.0.0.1:{port}"
    broker = Leanmqd(leanmqd_bin, redis_server.url, workdir, extra_args=["--otlp-endpoint", otlp])
    handler = None
    try:
        path = unique_path("traced")
        handler = Agent("node-otel-handler", ["node", str(NODE_HANDLER), broker.target, path, otlp])
        handler.wait_ready(timeout=30)

        # The producer: the Python SDK inside a span of its own provider.
        tracer = TracerProvider().get_tracer("e2e-producer")
        with Webhook(broker.target) as wh:
            with tracer.start_as_current_span("checkout") as producer:
                message_id = wh.send(path, {"order_id": "ORD-7", "status": "paid"})
        sent = producer.get_span_context()
        trace_id, span_id = f"{sent.trace_id:032x}", f"{sent.span_id:016x}"

        delivery = handler.next_delivery(timeout=20)
        assert delivery is not None, handler.describe()
        assert delivery["message_id"] == message_id
        assert delivery["traceparent"] == f"00-{trace_id}-{span_id}-{int(sent.trace_flags):02x}"
        assert delivery["trace_id"] == trace_id, "the handler's active span is in the producer's trace"

        # SIGTERM flushes both exporters: the handler's and leanmqd's batch.
        assert handler.stop(timeout=20) == 0, handler.describe()
        broker.terminate()
        assert broker.wait() == 0, broker.log_tail()

        try:
            process = wait_until(lambda: collector.named(f"process {normalized(path)}"), 20, "the handler span at the collector")
        except AssertionError as e:
            raise AssertionError(f"{e}\ncollected: {collector.spans}\n{handler.describe()}") from None
        send = wait_until(lambda: collector.named("leanmq.send"), 20, "leanmqd's send span at the collector")
        (h,) = process
        assert h["trace_id"] == trace_id and h["parent"] == span_id, h
        assert h["links"] == [span_id], h
        assert h["kind"] == trace_pb2.Span.SPAN_KIND_CONSUMER, h
        assert h["span_id"] == delivery["span_id"], "the span the handler ran in is the exported one"
        (s,) = send
        assert s["service"] == "leanmqd"
        assert s["trace_id"] == trace_id and s["parent"] == span_id, s
    finally:
        if handler is not None:
            handler.stop(timeout=10)
        broker.stop()
        server.stop(grace=None)
