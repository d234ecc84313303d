// Trace context through the broker (W3C `traceparent`), with the
// OpenTelemetry API when the application has it installed: the package
// declares `@opentelemetry/api` as an optional peer dependency and loads
// it only if present.
//
// - `send`/`publish`/`sendBatch` put the active span into the call's
//   `traceparent` metadata; leanmqd stores it as the message's `traceparent`
//   header (unless the message has its own), and with `--otlp-endpoint` its
//   `leanmq.send` span joins the same trace.
// - Each handler runs in a CONSUMER span, `process <path>`, that is a child
//   of the message's context and links to it; inside the handler
//   `trace.getActiveSpan()` is that span.
// - `traceContext(delivery)` returns the sender's span context, with or
//   without the API.
import type * as OtelApi from "@opentelemetry/api";

/** The metadata key and message header leanmqd reads and writes. */
export const TRACEPARENT = "traceparent";

/** The sender's span context a message carries (the shape of OpenTelemetry's `SpanContext`). */
export interface TraceContext {
  traceId: string;
  spanId: string;
  traceFlags: number;
  isRemote: true;
}

let api: typeof OtelApi | null | undefined;

/** The OpenTelemetry API, or null when it is not installed. */
function otel(): typeof OtelApi | null {
  if (api === undefined) {
    try {
      api = require("@opentelemetry/api") as typeof OtelApi;
    } catch {
      api = null;
    }
  }
  return api;
}

let version: string | undefined;
function packageVersion(): string {
  if (version === undefined) {
    try {
      version = String((require("../package.json") as { version?: unknown }).version ?? "");
    } catch {
      version = "";
    }
  }
  return version;
}

const TRACEPARENT_RE = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$/;
const ZERO_TRACE = "0".repeat(32);
const ZERO_SPAN = "0".repeat(16);

/** Parse a W3C `traceparent` (undefined when it is missing or malformed). */
export function parseTraceparent(value: string | undefined): TraceContext | undefined {
  const m = value === undefined ? null : TRACEPARENT_RE.exec(value.trim());
  if (!m || m[1] === "ff" || (m[1] === "00" && m[0].length !== 55)) return undefined;
  if (m[2] === ZERO_TRACE || m[3] === ZERO_SPAN) return undefined;
  return { traceId: m[2], spanId: m[3], traceFlags: parseInt(m[4], 16) & 0xff, isRemote: true };
}

/** The `traceparent` of the active span; undefined without the API or a valid span. */
export function activeTraceparent(): string | undefined {
  const a = otel();
  if (!a) return undefined;
  const sc = a.trace.getSpanContext(a.context.active());
  if (!sc || !a.isSpanContextValid(sc)) return undefined;
  return `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 0xff).toString(16).padStart(2, "0")}`;
}

/** The sender's trace context of a delivery (undefined when the message carries none). */
export function traceContext(d: { readonly headers: Readonly<Record<string, string>> }): TraceContext | undefined {
  return parseTraceparent(d.headers[TRACEPARENT]);
}

/** What the handler span describes. */
interface Handled {
  readonly path: string;
  readonly messageId: string;
  readonly group: string;
  readonly attempt: number;
  readonly headers: Readonly<Record<string, string>>;
}

/**
 * @internal Run `fn` in the delivery's CONSUMER span (when the API is
 * installed), recording what it throws.
 */
export async function inHandlerSpan<T>(d: Handled, fn: () => Promise<T> | T): Promise<T> {
  const a = otel();
  if (!a) return await fn();
  const sender = traceContext(d);
  const parent = sender ? a.trace.setSpanContext(a.ROOT_CONTEXT, sender) : a.ROOT_CONTEXT;
  const tracer = a.trace.getTracer("leanmq-grpc", packageVersion());
  const options: OtelApi.SpanOptions = {
    kind: a.SpanKind.CONSUMER,
    links: sender ? [{ context: sender }] : [],
    attributes: {
      "messaging.system": "leanmq",
      "messaging.operation.type": "process",
      "messaging.destination.name": d.path,
      "messaging.message.id": d.messageId,
      "messaging.consumer.group.name": d.group,
      "messaging.leanmq.attempt": d.attempt,
    },
  };
  return tracer.startActiveSpan(`process ${d.path}`, options, parent, async (span) => {
    try {
      return await fn();
    } catch (err) {
      span.recordException(err instanceof Error ? err : String(err));
      span.setStatus({ code: a.SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
      throw err;
    } finally {
      span.end();
    }
  });
}
