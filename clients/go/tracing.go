package leanmq

// Trace context through the broker, with the OpenTelemetry API
// (go.opentelemetry.io/otel). The API alone records nothing: with no
// TracerProvider installed (otel.SetTracerProvider) spans are no-ops and
// only the context travels.
//
//   - Send and SendBatch put the span of their ctx into the call's W3C
//     "traceparent" metadata; leanmqd stores it as the message's
//     "traceparent" header (unless the message has its own), and with
//     --otlp-endpoint its "leanmq.send" span joins the same trace.
//   - Each handler runs in a CONSUMER span, "process <path>", that is a
//     child of the message's context and links to it; the handler's ctx
//     carries that span (trace.SpanFromContext), and Delivery.TraceContext
//     returns the sender's span context.

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
)

// traceparentKey is the metadata key and message header leanmqd reads and
// writes.
const traceparentKey = "traceparent"

// tracerName names the SDK's spans' instrumentation scope.
const tracerName = "github.com/leanmq/leanmq-grpc/clients/go"

// w3c is the only format leanmqd understands, so it is the format on the
// wire whatever propagator the application installed for its own calls.
var w3c = propagation.TraceContext{}

// withTraceparent adds the "traceparent" of ctx's span to the outgoing
// metadata, unless there is no valid span or the caller set one already.
func withTraceparent(ctx context.Context) context.Context {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx
	}
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get(traceparentKey)) > 0 {
		return ctx
	}
	carrier := propagation.MapCarrier{}
	w3c.Inject(ctx, carrier)
	if tp := carrier[traceparentKey]; tp != "" {
		return metadata.AppendToOutgoingContext(ctx, traceparentKey, tp)
	}
	return ctx
}

// TraceParent is the message's W3C "traceparent" header ("" when the
// sender sent none).
func (d *Delivery) TraceParent() string { return d.Headers[traceparentKey] }

// TraceContext is the sender's span context carried by the message (not
// valid when it carries none). The handler's own span is in its ctx.
func (d *Delivery) TraceContext() trace.SpanContext {
	return trace.SpanContextFromContext(w3c.Extract(context.Background(), propagation.MapCarrier(d.Headers)))
}

// startHandlerSpan starts d's CONSUMER span under the message's context;
// end records the handler's error.
func startHandlerSpan(ctx context.Context, d *Delivery) (context.Context, func(error)) {
	sender := d.TraceContext()
	opts := []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "leanmq"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", d.Path),
			attribute.String("messaging.message.id", d.MessageID),
			attribute.String("messaging.consumer.group.name", d.Group),
			attribute.Int("messaging.leanmq.attempt", d.Attempt),
		),
	}
	if sender.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, sender)
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sender}))
	} else {
		// No sender context: a new trace, not a child of whatever ctx holds.
		opts = append(opts, trace.WithNewRoot())
	}
	ctx, span := otel.Tracer(tracerName).Start(ctx, "process "+d.Path, opts...)
	return ctx, func(err error) {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
}
