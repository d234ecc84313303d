"""Trace context through a real leanmqd with the OpenTelemetry SDK: a send
inside a span carries it as ``traceparent``, the handler runs in a CONSUMER
span that is that span's child and links to it, and the handler can read the
delivery's trace context. Skipped when leanmqd or redis-server is missing."""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from leanmq_grpc import AsyncWebhook, Delivery, Webhook, tracing
from real_broker import Leanmqd, Redis, leanmqd_binary, missing_tools

_missing = missing_tools("redis-server", "redis-cli") + ([] if leanmqd_binary() else ["leanmqd (set LEANMQD)"])
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"missing: {', '.join(_missing)}")

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def provider() -> None:
    # The global provider can be set once per process; this module owns it.
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(p)


@pytest.fixture(autouse=True)
def clear_spans() -> Iterator[None]:
    EXPORTER.clear()
    yield


@pytest.fixture(scope="module")
def leanmqd(workdir: Path, redis: Redis) -> Iterator[Leanmqd]:
    d = Leanmqd(workdir, redis.url, ["--retry-min", "100ms", "--retry-max", "200ms"])
    yield d
    d.stop()


def traceparent_of(ctx: Any) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def new_path(label: str) -> str:
    return f"/traced/{label}/{uuid.uuid4().hex[:8]}"


def process_until(wh: Webhook, n: int, seen: List[Any], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(seen) < n:
        assert time.monotonic() < deadline, f"only {len(seen)} of {n} handled"
        wh.process_messages(block=True, timeout=1)


def handler_spans(path: str) -> List[Any]:
    return [s for s in EXPORTER.get_finished_spans() if s.name == f"process {path}"]


def test_a_send_in_a_span_reaches_the_handler_as_its_parent(leanmqd: Leanmqd) -> None:
    path = new_path("sync")
    tracer = trace.get_tracer("test")
    seen: List[Dict[str, Any]] = []
    with Webhook(leanmqd.target) as wh:

        @wh.get(path, raw=True)
        def handle(d: Delivery) -> None:
            seen.append(
                {
                    "header": d.headers.get("traceparent"),
                    "delivery_traceparent": tracing.delivery_traceparent(),
                    "current": trace.get_current_span().get_span_context(),
                }
            )

        with tracer.start_as_current_span("producer") as producer:
            wh.send(path, {"n": 1})
        process_until(wh, 1, seen)
    sent = producer.get_span_context()
    want = traceparent_of(sent)
    assert seen[0]["header"] == want
    assert seen[0]["delivery_traceparent"] == want
    spans = handler_spans(path)
    assert len(spans) == 1
    span = spans[0]
    assert span.kind == trace.SpanKind.CONSUMER
    assert span.context.trace_id == sent.trace_id
    assert span.parent is not None and span.parent.span_id == sent.span_id
    assert [link.context.span_id for link in span.links] == [sent.span_id]
    assert seen[0]["current"].span_id == span.context.span_id, "the handler runs inside its span"
    assert span.attributes["messaging.destination.name"] == path
    assert span.attributes["messaging.system"] == "leanmq"
    assert span.attributes["messaging.leanmq.attempt"] == 1
    assert tracing.delivery_traceparent() is None, "outside a handler there is none"


def test_send_batch_carries_the_span_to_every_message(leanmqd: Leanmqd) -> None:
    path = new_path("batch")
    seen: List[str] = []
    with Webhook(leanmqd.target) as wh:
        wh.add_handler(path, lambda d: seen.append(d.headers.get("traceparent", "")), raw=True)
        with trace.get_tracer("test").start_as_current_span("batch producer") as producer:
            wh.send_batch([(path, {"i": i}) for i in range(3)])
        process_until(wh, 3, seen)
    ctx = producer.get_span_context()
    assert seen == [traceparent_of(ctx)] * 3
    assert {s.parent.span_id for s in handler_spans(path) if s.parent} == {ctx.span_id}


def test_without_a_current_span_nothing_is_sent_and_the_handler_span_is_a_root(leanmqd: Leanmqd) -> None:
    path = new_path("untraced")
    seen: List[Dict[str, str]] = []
    with Webhook(leanmqd.target) as wh:
        wh.add_handler(path, lambda d: seen.append(dict(d.headers)), raw=True)
        wh.send(path, {"n": 1})
        process_until(wh, 1, seen)
    assert "traceparent" not in seen[0]
    (span,) = handler_spans(path)
    assert span.parent is None and list(span.links) == []


def test_a_failing_handler_marks_its_span_as_an_error(leanmqd: Leanmqd) -> None:
    path = new_path("fails")
    calls: List[int] = []
    with Webhook(leanmqd.target) as wh:

        @wh.get(path)
        def handle(data: Any) -> None:
            calls.append(1)
            raise RuntimeError("boom")

        with trace.get_tracer("test").start_as_current_span("producer"):
            wh.send(path, {"n": 1})
        process_until(wh, 1, calls)
    (span,) = handler_spans(path)[:1]
    assert span.status.status_code == trace.StatusCode.ERROR
    assert any(e.name == "exception" for e in span.events)


def test_the_callers_own_traceparent_metadata_wins() -> None:
    mine = (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),)
    with trace.get_tracer("test").start_as_current_span("ignored"):
        assert tracing.with_trace(mine) == mine
        added = tracing.with_trace((("x-other", "1"),))
    assert added[0] == ("x-other", "1") and added[1][0] == "traceparent"
    assert tracing.with_trace(()) == (), "no span, nothing added"


def test_async_handlers_sync_and_async_run_in_their_spans(leanmqd: Leanmqd) -> None:
    path_async = new_path("aio-async")
    path_sync = new_path("aio-sync")
    seen: Dict[str, Any] = {}
    lock = threading.Lock()

    async def main() -> None:
        async with AsyncWebhook(leanmqd.target) as wh:

            @wh.get(path_async)
            async def on_async(data: Any) -> None:
                seen["async"] = (trace.get_current_span().get_span_context(), tracing.delivery_traceparent())

            @wh.get(path_sync)
            def on_sync(data: Any) -> None:  # runs in an executor thread
                with lock:
                    seen["sync"] = (trace.get_current_span().get_span_context(), tracing.delivery_traceparent())

            with trace.get_tracer("test").start_as_current_span("async producer") as producer:
                await wh.send(path_async, {"n": 1})
                await wh.send(path_sync, {"n": 2})
            seen["producer"] = producer.get_span_context()
            deadline = time.monotonic() + 20
            while not ("async" in seen and "sync" in seen):
                assert time.monotonic() < deadline, seen
                await wh.process_messages(block=True, timeout=1)

    asyncio.run(main())
    sent = seen["producer"]
    want = traceparent_of(sent)
    for kind, path in (("async", path_async), ("sync", path_sync)):
        (span,) = handler_spans(path)
        current, tp = seen[kind]
        assert current.span_id == span.context.span_id, kind
        assert span.parent is not None and span.parent.span_id == sent.span_id, kind
        assert tp == want, kind
