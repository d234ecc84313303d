"""Trace context through the broker (W3C ``traceparent``).

With the OpenTelemetry API installed (``pip install 'leanmq-grpc[otel]'``)
the SDK carries traces across leanmqd:

- ``send``/``send_batch`` put the caller's current span into the call's
  ``traceparent`` metadata; leanmqd stores it as the message's
  ``traceparent`` header (unless the message brings its own), and with
  ``--otlp-endpoint`` its ``leanmq.send`` span joins the same trace.
- each handler runs in a CONSUMER span named ``process <path>`` that is a
  child of the message's context and links to it, so ``trace.get_current_span()``
  inside the handler is that span and the whole trace reads producer →
  broker → handler.

Without the API nothing is sent or started, at the cost of one check per
call. Either way a handler can read the delivery's trace context:
:func:`delivery_traceparent` while it runs (for ``handler(data)`` handlers),
``delivery.headers["traceparent"]`` on a raw delivery.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence, Tuple, Union

try:  # the optional dependency
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator as _Propagator
except ImportError:  # pragma: no cover - exercised by the wheel check's clean venv
    _trace = None  # type: ignore[assignment]
    _Propagator = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from ._common import Delivery

#: the metadata key and message header leanmqd reads and writes
TRACEPARENT = "traceparent"

#: True when the OpenTelemetry API is importable
ENABLED = _trace is not None

# leanmqd only understands W3C trace context, so that is the format on the
# wire whatever propagators the application configured for its own calls.
_PROPAGATOR = _Propagator() if _Propagator is not None else None

_current: "contextvars.ContextVar[Optional[str]]" = contextvars.ContextVar("leanmq_traceparent", default=None)

MetadataItems = Tuple[Tuple[str, Union[str, bytes]], ...]


def traceparent_metadata() -> MetadataItems:
    """``(("traceparent", value),)`` for the current span; ``()`` without
    the OpenTelemetry API or outside a valid span."""
    if _PROPAGATOR is None:
        return ()
    carrier: dict = {}
    _PROPAGATOR.inject(carrier)
    value = carrier.get(TRACEPARENT)
    return ((TRACEPARENT, value),) if value else ()


def with_trace(metadata: Sequence[Tuple[str, Union[str, bytes]]]) -> MetadataItems:
    """``metadata`` plus the current span's ``traceparent``, unless the
    caller already set one."""
    md = tuple(metadata)
    if _PROPAGATOR is None or any(k.lower() == TRACEPARENT for k, _ in md):
        return md
    return md + traceparent_metadata()


def delivery_traceparent() -> Optional[str]:
    """The ``traceparent`` of the delivery whose handler is running in this
    context (None outside a handler or when the message carries none)."""
    return _current.get()


def delivery_context(headers: Mapping[str, str]) -> Any:
    """The OpenTelemetry ``Context`` a message's headers carry (None without
    the API)."""
    if _PROPAGATOR is None:
        return None
    return _PROPAGATOR.extract(dict(headers))


@contextlib.contextmanager
def handler_span(delivery: "Delivery") -> Iterator[Any]:
    """Run a handler inside: makes :func:`delivery_traceparent` answer and,
    with the OpenTelemetry API, a CONSUMER span child of (and linked to) the
    message's context. The span records what the handler raises."""
    token = _current.set(delivery.headers.get(TRACEPARENT))
    try:
        if _trace is None or _PROPAGATOR is None:
            yield None
            return
        from . import __version__

        parent = _PROPAGATOR.extract(dict(delivery.headers))
        sender = _trace.get_current_span(parent).get_span_context()
        links = [_trace.Link(sender)] if sender.is_valid else []
        tracer = _trace.get_tracer("leanmq_grpc", __version__)
        with tracer.start_as_current_span(
            f"process {delivery.path}",
            context=parent,
            kind=_trace.SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "leanmq",
                "messaging.operation.type": "process",
                "messaging.destination.name": delivery.path,
                "messaging.message.id": delivery.message_id,
                "messaging.consumer.group.name": delivery.group,
                "messaging.leanmq.attempt": delivery.attempt,
            },
        ) as span:
            yield span
    finally:
        _current.reset(token)


__all__ = [
    "ENABLED",
    "TRACEPARENT",
    "delivery_context",
    "delivery_traceparent",
    "handler_span",
    "traceparent_metadata",
    "with_trace",
]
