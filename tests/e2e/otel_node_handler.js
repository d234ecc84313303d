#!/usr/bin/env node
// A Node handler with the OpenTelemetry SDK, for test_trace_context.py:
//
//   node otel_node_handler.js TARGET PATH OTLP_URL
//
// Exports its spans over OTLP/gRPC to OTLP_URL as each ends, prints one JSON
// line per delivery ({"message_id", "traceparent", "trace_id", "span_id"}:
// the delivery's header and the span the handler ran in), "READY" on stderr
// once its stream is open, and on SIGTERM stops, flushes and exits 0.
// Loads the SDK's built dist/ and the OpenTelemetry packages from
// clients/node (its devDependencies).
"use strict";
const path = require("node:path");

const nodeDir = path.resolve(__dirname, "..", "..", "clients", "node");
const load = (m) => require(require.resolve(m, { paths: [nodeDir] }));
const { context, trace } = load("@opentelemetry/api");
const { AsyncLocalStorageContextManager } = load("@opentelemetry/context-async-hooks");
const { BasicTracerProvider, SimpleSpanProcessor } = load("@opentelemetry/sdk-trace-base");
const { OTLPTraceExporter } = load("@opentelemetry/exporter-trace-otlp-grpc");
const { Webhook } = require(path.join(nodeDir, "dist", "index.js"));

const [target, queuePath, otlpUrl] = process.argv.slice(2);
if (!target || !queuePath || !otlpUrl) {
  console.error("usage: otel_node_handler.js TARGET PATH OTLP_URL");
  process.exit(64);
}

const provider = new BasicTracerProvider({
  spanProcessors: [new SimpleSpanProcessor(new OTLPTraceExporter({ url: otlpUrl }))],
});
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
trace.setGlobalTracerProvider(provider);

const webhook = new Webhook(target, { stopTimeoutMs: 5000 });
webhook.on("warning", (err) => console.error(`warning: ${err.message}`));
webhook.get(queuePath, (_data, d) => {
  const sc = trace.getActiveSpan()?.spanContext();
  process.stdout.write(
    JSON.stringify({ message_id: d.messageId, traceparent: d.headers.traceparent ?? null, trace_id: sc?.traceId ?? null, span_id: sc?.spanId ?? null }) + "\n",
  );
});
webhook.once("subscribed", () => process.stderr.write("READY\n"));

const running = webhook.run();
process.once("SIGTERM", async () => {
  await webhook.stop();
  await running.catch(() => undefined);
  await provider.forceFlush();
  await provider.shutdown();
  process.exit(0);
});
running.catch((err) => {
  console.error(`run failed: ${err.message}`);
  process.exit(1);
});
