// Trace context through a real leanmqd with the OpenTelemetry SDK: a send
// inside an active span carries it as `traceparent`, the handler runs in a
// CONSUMER span that is that span's child and links to it, and the handler
// reads the delivery's trace context. Skipped when leanmqd, redis-server or
// redis-cli is missing.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { context, trace, SpanKind, SpanStatusCode } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { DeadLetterError, Webhook, parseTraceparent, traceContext, type Delivery } from "leanmq-grpc";
import { within } from "./helpers";
import { Leanmqd, Redis, skipReason, tempDir } from "./real-broker";

const T = { timeout: 30_000 };
const newPath = (label: string) => `/traced/${label}/${randomBytes(4).toString("hex")}`;

async function eventually(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test("parseTraceparent takes W3C trace context and refuses the rest", () => {
  assert.deepEqual(parseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), {
    traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
    spanId: "00f067aa0ba902b7",
    traceFlags: 1,
    isRemote: true,
  });
  for (const bad of [
    undefined,
    "",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
  ]) {
    assert.equal(parseTraceparent(bad), undefined, String(bad));
  }
});

describe("trace context through leanmqd", { skip: skipReason() }, () => {
  let tmp: ReturnType<typeof tempDir>;
  let redis: Redis;
  let broker: Leanmqd;
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const contextManager = new AsyncLocalStorageContextManager();
  const tracer = provider.getTracer("test");
  const handlerSpans = (path: string) => exporter.getFinishedSpans().filter((s) => s.name === `process ${path}`);

  before(async () => {
    context.setGlobalContextManager(contextManager.enable());
    trace.setGlobalTracerProvider(provider);
    tmp = tempDir();
    redis = await Redis.start(tmp.dir);
    broker = await Leanmqd.start(redis.url, []);
  });

  after(async () => {
    await broker?.stop();
    await redis?.stop();
    tmp?.remove();
    trace.disable();
    context.disable();
  });

  /** Run `w`; once subscribed, `done` resolves after `cond()` holds and `w` stopped. */
  async function runUntil(w: Webhook, cond: () => boolean): Promise<{ done: Promise<void> }> {
    let subscribed!: () => void;
    const isSubscribed = new Promise<void>((resolve) => (subscribed = resolve));
    w.once("subscribed", () => subscribed());
    const running = w.run();
    await within(isSubscribed, 10_000, "subscribed");
    const done = (async () => {
      await eventually(cond, 10_000, "deliveries");
      await w.stop();
      await running;
    })();
    return { done };
  }

  test("a send in a span is the parent of the handler's span", T, async () => {
    const w = new Webhook(broker.target, { stopTimeoutMs: 2000 });
    const path = newPath("node");
    const seen: { header?: string; sender?: unknown; active?: string; traceId?: string }[] = [];
    w.get(path, (_data: unknown, d: Delivery) => {
      const active = trace.getActiveSpan()?.spanContext();
      seen.push({ header: d.headers.traceparent, sender: traceContext(d), active: active?.spanId, traceId: active?.traceId });
    });
    const { done } = await runUntil(w, () => seen.length === 1);
    const producer = tracer.startSpan("producer");
    await context.with(trace.setSpan(context.active(), producer), () => w.send(path, { n: 1 }));
    producer.end();
    await done;
    const sent = producer.spanContext();
    assert.equal(seen[0].header, `00-${sent.traceId}-${sent.spanId}-01`);
    assert.deepEqual(seen[0].sender, { traceId: sent.traceId, spanId: sent.spanId, traceFlags: 1, isRemote: true });
    const [span] = handlerSpans(path);
    assert.ok(span, "the handler span ended");
    assert.equal(span.kind, SpanKind.CONSUMER);
    assert.equal(span.spanContext().traceId, sent.traceId);
    assert.equal(span.parentSpanContext?.spanId, sent.spanId);
    assert.deepEqual(
      span.links.map((l) => l.context.spanId),
      [sent.spanId],
    );
    assert.equal(seen[0].active, span.spanContext().spanId, "the handler runs inside its span");
    assert.equal(span.attributes["messaging.destination.name"], path);
    assert.equal(span.attributes["messaging.leanmq.attempt"], 1);
  });

  test("sendBatch carries the span; no span, no traceparent and a root handler span", T, async () => {
    const w = new Webhook(broker.target, { stopTimeoutMs: 2000 });
    const traced = newPath("batch");
    const untraced = newPath("untraced");
    const headers: Record<string, (string | undefined)[]> = { [traced]: [], [untraced]: [] };
    for (const p of [traced, untraced]) w.get(p, (_data: unknown, d: Delivery) => void headers[p].push(d.headers.traceparent));
    const { done } = await runUntil(w, () => headers[traced].length === 2 && headers[untraced].length === 1);
    const producer = tracer.startSpan("batch producer");
    await context.with(trace.setSpan(context.active(), producer), () =>
      w.sendBatch([
        { path: traced, data: 1 },
        { path: traced, data: 2 },
      ]),
    );
    producer.end();
    await w.send(untraced, 3);
    await done;
    const sc = producer.spanContext();
    assert.deepEqual(headers[traced], [`00-${sc.traceId}-${sc.spanId}-01`, `00-${sc.traceId}-${sc.spanId}-01`]);
    assert.deepEqual(headers[untraced], [undefined]);
    const [root] = handlerSpans(untraced);
    assert.ok(root);
    assert.equal(root.parentSpanContext, undefined);
    assert.equal(root.links.length, 0);
  });

  test("a failing handler marks its span as an error", T, async () => {
    const w = new Webhook(broker.target, { stopTimeoutMs: 2000 });
    w.on("warning", () => undefined);
    const path = newPath("fails");
    let calls = 0;
    w.get(path, () => {
      calls++;
      throw new DeadLetterError("bad order");
    });
    const { done } = await runUntil(w, () => handlerSpans(path).length === 1);
    await w.send(path, { n: 1 });
    await done;
    assert.equal(calls, 1);
    const [span] = handlerSpans(path);
    assert.equal(span.status.code, SpanStatusCode.ERROR);
    assert.equal(span.status.message, "bad order");
    assert.ok(span.events.some((e) => e.name === "exception"));
  });
});
