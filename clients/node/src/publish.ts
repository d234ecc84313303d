// Publish: messages over one long-lived bidi `Publish` stream, each answered
// on its own promise. Not public API (Webhook.publishOnStream uses it).
//
// The stream is opened on the first publish and kept. Every message gets a
// sequence number (and, from the Webhook, an idempotency key) and stays in
// `pending` until the response naming its sequence arrives. At most the
// server's window (the `leanmq-publish-window` response header) is
// unanswered at once: publish waits while it is full. When the stream breaks
// with a retryable code, a new one is opened and every unanswered message is
// written again under its idempotency key, so a message the broker stored
// before the break is answered with its first id (duplicate), never stored
// twice.
import { Metadata, status as Status, type ClientDuplexStream, type ServiceError, type StatusObject } from "@grpc/grpc-js";
import type { BrokerClient, PublishRequest, PublishResponse, SendRequest } from "./gen/leanmq/v1/broker";
import { Backoff, deferred, delay, errorCode, type Deferred } from "./internal";
import { TRACEPARENT, activeTraceparent } from "./tracing";

/** The window assumed until the server announces its own. */
export const DEFAULT_WINDOW = 1000;
/** The largest window believed from a server (leanmqd's `--publish-window` is at most 10000). */
export const MAX_WINDOW = 10_000;
/** How long a broken stream is reopened before its messages fail, in ms. */
export const RECONNECT_FOR_MS = 30_000;
const WINDOW_HEADER = "leanmq-publish-window";
const RETRYABLE: ReadonlySet<number> = new Set([Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.RESOURCE_EXHAUSTED]);

interface Entry {
  request: PublishRequest;
  answer: Deferred<string>;
}

/**
 * The error a unary Send of the message would have rejected with: a
 * grpc-js ServiceError-shaped Error with the same `code`, `details` and
 * message format (`"3 INVALID_ARGUMENT: ..."`).
 */
export function publishError(code: number, details: string): ServiceError {
  const name = (Status as unknown as Record<number, string>)[code] ?? "UNKNOWN";
  return Object.assign(new Error(`${code} ${name}: ${details}`), { code, details, metadata: new Metadata() });
}

/** The window announced in `md`, bounded to 1..MAX_WINDOW; undefined when absent or malformed. */
export function windowOf(md: Metadata): number | undefined {
  const raw = md.get(WINDOW_HEADER)[0];
  const text = typeof raw === "string" ? raw.trim() : "";
  if (!/^\d{1,6}$/.test(text)) return undefined;
  return Math.min(MAX_WINDOW, Math.max(1, Number(text)));
}

export class Publisher {
  private readonly pending = new Map<number, Entry>();
  private seq = 0;
  private window = DEFAULT_WINDOW;
  private call: ClientDuplexStream<PublishRequest, PublishResponse> | undefined;
  private running: Promise<void> | undefined;
  private closing = false;
  private waiters: (() => void)[] = [];

  constructor(
    private readonly client: BrokerClient,
    private readonly reconnect: { initialMs: number; maxMs: number },
    private readonly onReconnect: (error: unknown, delayMs: number) => void = () => undefined,
  ) {}

  /** Unanswered messages (never more than the window). */
  get outstanding(): number {
    return this.pending.size;
  }

  async publish(message: SendRequest): Promise<string> {
    while (this.pending.size >= this.window && !this.closing) await this.changed();
    if (this.closing) throw new Error("leanmq-grpc: publish after close()");
    const sequence = ++this.seq;
    const entry: Entry = { request: { sequence, message }, answer: deferred<string>() };
    this.pending.set(sequence, entry);
    if (this.running === undefined) this.running = this.run();
    else this.call?.write(entry.request); // between streams: written when the next one opens
    return entry.answer.promise;
  }

  /** Resolves once every published message is answered (resolved or rejected). */
  async flush(): Promise<void> {
    while (this.pending.size > 0) await this.changed();
  }

  /** Waits for every outstanding promise, then ends the stream. */
  async close(): Promise<void> {
    await this.flush();
    this.closing = true;
    this.notify();
    this.call?.end();
    await this.running;
  }

  private changed(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  private async run(): Promise<void> {
    const backoff = new Backoff(this.reconnect.initialMs, this.reconnect.maxMs);
    let brokenSince: number | undefined;
    try {
      for (;;) {
        const { error, answered } = await this.stream();
        if (this.pending.size === 0) return; // closed, or all answered: the next publish reopens
        if (answered > 0) {
          backoff.reset();
          brokenSince = undefined;
        }
        const now = Date.now();
        brokenSince ??= now;
        const code = errorCode(error);
        if (code === undefined || !RETRYABLE.has(code) || now - brokenSince > RECONNECT_FOR_MS) {
          this.failAll(error);
          return;
        }
        const ms = backoff.next();
        this.onReconnect(error, ms);
        await delay(ms);
      }
    } finally {
      this.call = undefined;
      this.running = undefined;
    }
  }

  /** One stream: writes every unanswered message, settles answers until it ends. */
  private stream(): Promise<{ error: unknown; answered: number }> {
    return new Promise((resolve) => {
      const md = new Metadata();
      const tp = activeTraceparent();
      if (tp) md.set(TRACEPARENT, tp);
      const call = this.client.publish(md);
      this.call = call;
      let answered = 0;
      let error: ServiceError | undefined;
      call.on("metadata", (m: Metadata) => {
        const w = windowOf(m);
        if (w !== undefined) {
          this.window = w;
          this.notify();
        }
      });
      call.on("data", (resp: PublishResponse) => {
        const entry = this.pending.get(resp.sequence);
        if (entry === undefined) return; // answered already (a resend's second answer)
        this.pending.delete(resp.sequence);
        answered++;
        if (resp.code === Status.OK) entry.answer.resolve(resp.messageId);
        else entry.answer.reject(publishError(resp.code, resp.error));
        this.notify();
        if (this.closing && this.pending.size === 0) call.end();
      });
      call.on("error", (err: ServiceError) => (error = err));
      call.on("status", (s: StatusObject) => {
        if (this.call === call) this.call = undefined;
        const ended = s.code === Status.OK ? publishError(Status.UNAVAILABLE, "the Publish stream ended") : undefined;
        resolve({ error: ended ?? error ?? publishError(s.code, s.details), answered });
      });
      // Unanswered messages, in sequence order (Map keeps insertion order), same keys.
      for (const entry of this.pending.values()) call.write(entry.request);
    });
  }

  private failAll(error: unknown): void {
    const failed = [...this.pending.values()];
    this.pending.clear();
    for (const e of failed) e.answer.reject(error);
    this.notify();
  }
}
