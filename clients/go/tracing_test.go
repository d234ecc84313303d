package leanmq_test

// Trace context through a real leanmqd with the OpenTelemetry SDK: Send
// inside a span carries it as "traceparent", and the handler runs in a
// CONSUMER span that is that span's child and links to it.

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"

	leanmq "github.com/leanmq/leanmq-grpc/clients/go"
)

// seen is what a handler observed of its trace context.
type seen struct {
	current     trace.SpanContext // the span in the handler's ctx
	sender      trace.SpanContext // Delivery.TraceContext
	traceparent string            // Delivery.TraceParent
}

// handlerSpans are the finished spans named "process <path>".
func handlerSpans(rec *tracetest.SpanRecorder, path string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == "process "+path {
			out = append(out, s)
		}
	}
	return out
}

// endedSpans waits until n handler spans for path have ended.
func endedSpans(t *testing.T, rec *tracetest.SpanRecorder, path string, n int) []sdktrace.ReadOnlySpan {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		if s := handlerSpans(rec, path); len(s) >= n {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d handler spans for %s, want %d", len(handlerSpans(rec, path)), path, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTraceContextFlowsFromSendToTheHandlersSpan(t *testing.T) {
	bin := leanmqdBinary(t)
	redis := startRedis(t)
	addr := startLeanmqd(t, bin, redis.url(), nil)

	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev); _ = tp.Shutdown(context.Background()) })
	ctx := context.Background()

	sub, subscribed := subscribedChan()
	c := dialReal(t, addr, sub)
	traced, untraced, failing := sdkPath("traced"), sdkPath("untraced"), sdkPath("failing")
	got := make(chan seen, 10)
	observe := func(hctx context.Context, d *leanmq.Delivery) error {
		got <- seen{trace.SpanContextFromContext(hctx), d.TraceContext(), d.TraceParent()}
		return nil
	}
	c.Handle(traced, observe)
	c.Handle(untraced, observe)
	c.Handle(failing, func(context.Context, *leanmq.Delivery) error {
		return leanmq.DeadLetter(errors.New("bad order"))
	})
	run(t, c, subscribed, traced, untraced, failing)

	t.Run("a send in a span is the parent of the handler's span", func(t *testing.T) {
		sctx, producer := tp.Tracer("test").Start(ctx, "producer")
		if _, err := c.Send(sctx, traced, map[string]any{"n": 1}); err != nil {
			t.Fatal(err)
		}
		producer.End()
		want := producer.SpanContext()
		s := recv(t, got, "delivery")
		wantTP := fmt.Sprintf("00-%s-%s-01", want.TraceID(), want.SpanID())
		if s.traceparent != wantTP {
			t.Fatalf("traceparent %q, want %q", s.traceparent, wantTP)
		}
		if s.sender.TraceID() != want.TraceID() || s.sender.SpanID() != want.SpanID() || !s.sender.IsRemote() {
			t.Fatalf("Delivery.TraceContext %v, want the producer's %v", s.sender, want)
		}
		spans := endedSpans(t, rec, traced, 1)
		span := spans[0]
		if span.SpanKind() != trace.SpanKindConsumer {
			t.Errorf("kind %v", span.SpanKind())
		}
		if span.Parent().SpanID() != want.SpanID() || span.SpanContext().TraceID() != want.TraceID() {
			t.Errorf("parent %v in trace %v, want %v", span.Parent(), span.SpanContext().TraceID(), want)
		}
		if len(span.Links()) != 1 || span.Links()[0].SpanContext.SpanID() != want.SpanID() {
			t.Errorf("links %v, want one to the producer", span.Links())
		}
		if s.current.SpanID() != span.SpanContext().SpanID() {
			t.Errorf("the handler's ctx holds %v, not its span %v", s.current, span.SpanContext())
		}
	})

	t.Run("send batch carries the span to every message", func(t *testing.T) {
		sctx, producer := tp.Tracer("test").Start(ctx, "batch producer")
		msgs := []leanmq.Message{{Path: traced, Payload: 1}, {Path: traced, Payload: 2}}
		if _, err := c.SendBatch(sctx, msgs); err != nil {
			t.Fatal(err)
		}
		producer.End()
		for range msgs {
			if s := recv(t, got, "delivery"); s.sender.SpanID() != producer.SpanContext().SpanID() {
				t.Errorf("sender %v, want %v", s.sender, producer.SpanContext())
			}
		}
	})

	t.Run("the caller's own traceparent metadata wins", func(t *testing.T) {
		mine := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
		sctx, producer := tp.Tracer("test").Start(ctx, "ignored")
		sctx = metadata.AppendToOutgoingContext(sctx, "traceparent", mine)
		if _, err := c.Send(sctx, traced, 3); err != nil {
			t.Fatal(err)
		}
		producer.End()
		if s := recv(t, got, "delivery"); s.traceparent != mine {
			t.Fatalf("traceparent %q, want the caller's %q", s.traceparent, mine)
		}
	})

	t.Run("without a span nothing is sent and the handler's span is a root", func(t *testing.T) {
		if _, err := c.Send(ctx, untraced, 4); err != nil {
			t.Fatal(err)
		}
		s := recv(t, got, "delivery")
		if s.traceparent != "" || s.sender.IsValid() {
			t.Fatalf("traceparent %q / %v, want none", s.traceparent, s.sender)
		}
		span := endedSpans(t, rec, untraced, 1)[0]
		if span.Parent().IsValid() || len(span.Links()) != 0 {
			t.Errorf("parent %v links %v, want a root", span.Parent(), span.Links())
		}
		if !s.current.IsValid() || s.current.SpanID() != span.SpanContext().SpanID() {
			t.Errorf("the handler's ctx holds %v, not its span", s.current)
		}
	})

	t.Run("a failing handler marks its span as an error", func(t *testing.T) {
		sctx, producer := tp.Tracer("test").Start(ctx, "producer")
		if _, err := c.Send(sctx, failing, 5); err != nil {
			t.Fatal(err)
		}
		producer.End()
		span := endedSpans(t, rec, failing, 1)[0]
		if span.Status().Code != codes.Error {
			t.Errorf("status %v, want Error", span.Status())
		}
		if len(span.Events()) == 0 || span.Events()[0].Name != "exception" {
			t.Errorf("events %v, want the recorded error", span.Events())
		}
	})
}
