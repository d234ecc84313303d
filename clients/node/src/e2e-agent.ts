#!/usr/bin/env node
// Agent for the cross-language end-to-end suite. Usage:
//
//   node dist/e2e-agent.js send --target HOST:PORT --path P (--json JSON | --hex HEX) [--header K=V]...
//       [--ttl SECONDS] [--delay SECONDS] [--idempotency-key K]
//       Sends one message and prints its message id (the schedule id for a
//       delayed message). --json sends the text byte for byte as
//       application/json; --hex sends the bytes as application/octet-stream.
//
//   node dist/e2e-agent.js consume --target HOST:PORT --path P [--group G] --count N
//       [--mode ok|fail|deadletter|sleep:SECONDS] [--ack-deadline SECONDS]
//       [--concurrency C] [--timeout SECONDS] [--start beginning|now|after:ID|at:RFC3339]
//       Runs the SDK's webhook with one handler; prints one JSON line per
//       delivery ({"message_id","path","content_type","payload_hex","attempt",
//       "headers"}) to stdout, "READY" to stderr once the stream is open, and
//       exits 0 after N deliveries were handled and settled. Modes: ok
//       returns, fail throws an Error, deadletter throws DeadLetterError,
//       sleep:S waits S seconds then returns. An empty or absent --group
//       means LeanMQ's default group for the path.
//
//   Both take --token TOKEN (sent as "authorization: Bearer TOKEN") and
//   --tls-ca FILE (connect over TLS, trusting the PEM certificates in FILE).
//
// Exit codes: 0 done, 1 error, 2 bad usage, 3 --timeout reached, 4 interrupted.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { credentials } from "@grpc/grpc-js";
import { DeadLetterError, Webhook, type Delivery, type Start, type WebhookOptions } from "./index";

class UsageError extends Error {}

function required(values: Record<string, unknown>, name: string): string {
  const v = values[name];
  if (typeof v !== "string" || v === "") throw new UsageError(`--${name} is required`);
  return v;
}

/** --token and --tls-ca, the options every command takes. */
const CONNECTION_OPTIONS = {
  token: { type: "string" },
  "tls-ca": { type: "string" },
} as const;

function connection(values: { token?: string; "tls-ca"?: string }): Pick<WebhookOptions, "token" | "credentials"> {
  const out: Pick<WebhookOptions, "token" | "credentials"> = {};
  if (values.token !== undefined) out.token = values.token;
  const caFile = values["tls-ca"];
  if (caFile !== undefined) {
    let pem: Buffer;
    try {
      pem = readFileSync(caFile);
    } catch (err) {
      throw new UsageError(`--tls-ca: ${(err as Error).message}`);
    }
    out.credentials = credentials.createSsl(pem);
  }
  return out;
}

function headersFrom(list: string[] | undefined): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const item of list ?? []) {
    const eq = item.indexOf("=");
    if (eq <= 0) throw new UsageError(`--header wants KEY=VALUE, got ${JSON.stringify(item)}`);
    headers[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return headers;
}

async function send(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      target: { type: "string" },
      path: { type: "string" },
      json: { type: "string" },
      hex: { type: "string" },
      header: { type: "string", multiple: true },
      ttl: { type: "string" },
      delay: { type: "string" },
      "idempotency-key": { type: "string" },
      ...CONNECTION_OPTIONS,
    },
    strict: true,
  });
  const target = required(values, "target");
  const path = required(values, "path");
  if ((values.json === undefined) === (values.hex === undefined)) throw new UsageError("give exactly one of --json or --hex");
  let payload: Buffer;
  let contentType: string;
  if (values.json !== undefined) {
    payload = Buffer.from(values.json, "utf8");
    contentType = "application/json";
  } else {
    const hex = values.hex!;
    if (!/^([0-9a-fA-F]{2})*$/.test(hex)) throw new UsageError("--hex wants an even number of hex digits");
    payload = Buffer.from(hex, "hex");
    contentType = "application/octet-stream";
  }
  const webhook = new Webhook(target, connection(values));
  try {
    const ttl = positiveNumber(values.ttl, "ttl");
    const delaySeconds = positiveNumber(values.delay, "delay");
    const res = await webhook.publish(path, payload, {
      contentType,
      headers: headersFrom(values.header),
      ttlMs: ttl !== undefined ? Math.round(ttl * 1000) : undefined,
      delayMs: delaySeconds !== undefined ? Math.round(delaySeconds * 1000) : undefined,
      idempotencyKey: values["idempotency-key"],
    });
    process.stdout.write(`${res.messageId || res.scheduleId}\n`);
    return 0;
  } finally {
    await webhook.close();
  }
}

function parseMode(mode: string): (d: Delivery) => Promise<void> {
  if (mode === "ok") return async () => undefined;
  if (mode === "fail") {
    return async () => {
      throw new Error("e2e failure");
    };
  }
  if (mode === "deadletter") {
    return async () => {
      throw new DeadLetterError("e2e dead letter");
    };
  }
  const m = /^sleep:(\d+(?:\.\d+)?)$/.exec(mode);
  if (m) {
    const ms = Number(m[1]) * 1000;
    return () => new Promise((resolve) => setTimeout(resolve, ms));
  }
  throw new UsageError(`--mode wants ok, fail, deadletter or sleep:SECONDS, got ${JSON.stringify(mode)}`);
}

function parseStart(value: string | undefined): Start | undefined {
  if (value === undefined) return undefined;
  if (value === "beginning" || value === "now") return value;
  if (value.startsWith("after:") && value.length > 6) return { afterId: value.slice(6) };
  if (value.startsWith("at:")) {
    const at = new Date(value.slice(3));
    if (!Number.isNaN(at.getTime())) return { atTime: at };
  }
  throw new UsageError(`--start wants beginning, now, after:ID or at:RFC3339, got ${JSON.stringify(value)}`);
}

function positiveNumber(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new UsageError(`--${name} wants a positive number, got ${JSON.stringify(value)}`);
  return n;
}

async function consume(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      target: { type: "string" },
      path: { type: "string" },
      group: { type: "string" },
      count: { type: "string" },
      mode: { type: "string", default: "ok" },
      "ack-deadline": { type: "string" },
      concurrency: { type: "string", default: "1" },
      timeout: { type: "string" },
      start: { type: "string" },
      ...CONNECTION_OPTIONS,
    },
    strict: true,
  });
  const target = required(values, "target");
  const path = required(values, "path");
  const start = parseStart(values.start);
  // Empty or absent: LeanMQ's default group for the path.
  const group = values.group ?? "";
  const count = positiveNumber(required(values, "count"), "count")!;
  if (!Number.isInteger(count)) throw new UsageError("--count wants a whole number");
  const behave = parseMode(values.mode!);
  const ackDeadline = positiveNumber(values["ack-deadline"], "ack-deadline");
  const concurrency = positiveNumber(values.concurrency, "concurrency")!;
  const timeout = positiveNumber(values.timeout, "timeout");

  const webhook = new Webhook(target, {
    ...connection(values),
    group,
    consumer: `e2e-node-${process.pid}`,
    concurrency,
    ackDeadlineMs: ackDeadline !== undefined ? Math.round(ackDeadline * 1000) : undefined,
    stopTimeoutMs: 10_000,
  });
  const routeOptions = start !== undefined ? { start } : {};
  webhook.on("warning", (err: Error) => process.stderr.write(`warning: ${err.message}\n`));
  webhook.on("reconnecting", (e: { error?: Error; delayMs: number }) =>
    process.stderr.write(`reconnecting in ${e.delayMs} ms: ${e.error?.message ?? "stream ended"}\n`),
  );
  let ready = false;
  webhook.on("subscribed", () => {
    if (ready) return;
    ready = true;
    process.stderr.write("READY\n");
  });

  let exitCode = 0;
  let handled = 0;
  const done = new AbortController();
  webhook.on("settled", () => {
    handled++;
    if (handled >= count) done.abort();
  });
  webhook.get(path, async (_data: unknown, d: Delivery) => {
    const line = {
      message_id: d.messageId,
      path: d.path,
      content_type: d.contentType,
      payload_hex: d.payload.toString("hex"),
      attempt: d.attempt,
      headers: d.headers,
    };
    process.stdout.write(`${JSON.stringify(line)}\n`);
    await behave(d);
  }, routeOptions);

  const timer =
    timeout !== undefined
      ? setTimeout(() => {
          process.stderr.write(`timeout: ${handled} of ${count} deliveries handled\n`);
          exitCode = 3;
          done.abort();
        }, timeout * 1000)
      : undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    process.stderr.write(`${sig}: ${handled} of ${count} deliveries handled\n`);
    exitCode = 4;
    done.abort();
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    await webhook.run({ signal: done.signal });
  } finally {
    clearTimeout(timer);
    await webhook.close();
  }
  return exitCode;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    if (command === "send") return await send(rest);
    if (command === "consume") return await consume(rest);
    throw new UsageError(`unknown command ${JSON.stringify(command ?? "")}; use send or consume`);
  } catch (err) {
    if (err instanceof UsageError || String((err as { code?: unknown }).code).startsWith("ERR_PARSE_ARGS")) {
      process.stderr.write(`usage error: ${(err as Error).message}\n`);
      return 2;
    }
    process.stderr.write(`error: ${(err as Error)?.message ?? String(err)}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then((code) => process.exit(code));
