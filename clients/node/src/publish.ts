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
//
// Messages are batched (PublishSettings, issue #18): they wait in a buffer,
// already counted against the window, and the buffer is written as one burst
// when it holds maxMessages messages or maxBytes of serialized requests,
// maxDelayMs after its first message, when the window is full (nothing more
// could join it), or on flush()/close(). A resend after a break writes what
// had been written and not answered; the buffer waits for its own burst.
import { Metadata, status as Status, type ClientDuplexStream, type ServiceError, type StatusObject } from "@grpc/grpc-js";
import { PublishRequest, type BrokerClient, type PublishResponse, type SendRequest } from "./gen/leanmq/v1/broker";
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
 * How `publishOnStream()` batches messages onto the Publish stream (the same
 * settings in every SDK; like Pub/Sub's BatchSettings). The buffered messages
 * are written as one burst when the first of these holds; `flush()` and
 * `close()` write them at once.
 */
export interface PublishSettings {
  /** Ms since the buffer's first message. Default 5. */
  maxDelayMs?: number;
  /**
   * Messages in the buffer. Default 100, at most 10 000 (leanmqd's largest
   * window). When the server's window is smaller, the buffer is also
   * written once the window is full.
   */
  maxMessages?: number;
  /**
   * Serialized size of the buffered requests, in bytes. Default 1 MiB. A
   * message that would take the buffer past it goes in the next burst, so a
   * burst is larger only when a single message is.
   */
  maxBytes?: number;
}

export const DEFAULT_PUBLISH_SETTINGS: Readonly<Required<PublishSettings>> = Object.freeze({
  maxDelayMs: 5,
  maxMessages: 100,
  maxBytes: 1 << 20,
});

/** `settings` with defaults filled in; TypeError/RangeError naming the bad field. */
export function publishSettings(settings: PublishSettings | undefined): Required<PublishSettings> {
  if (settings === undefined) return { ...DEFAULT_PUBLISH_SETTINGS };
  if (settings === null || typeof settings !== "object") {
    throw new TypeError("leanmq-grpc: publishSettings must be an object { maxDelayMs?, maxMessages?, maxBytes? }");
  }
  const out = { ...DEFAULT_PUBLISH_SETTINGS };
  const given = settings as Record<string, unknown>;
  for (const key of ["maxDelayMs", "maxMessages", "maxBytes"] as const) {
    const v = given[key];
    if (v === undefined) continue;
    if (typeof v !== "number") throw new TypeError(`leanmq-grpc: publishSettings.${key} must be a number, not ${typeof v}`);
    if (key === "maxDelayMs") {
      if (!Number.isFinite(v) || v <= 0) throw new RangeError(`leanmq-grpc: publishSettings.maxDelayMs must be a positive, finite number of ms, got ${v}`);
    } else {
      if (!Number.isInteger(v)) throw new TypeError(`leanmq-grpc: publishSettings.${key} must be an integer, got ${v}`);
      if (v < 1) throw new RangeError(`leanmq-grpc: publishSettings.${key} must be >= 1, got ${v}`);
      if (key === "maxMessages" && v > MAX_WINDOW) {
        throw new RangeError(`leanmq-grpc: publishSettings.maxMessages must be <= ${MAX_WINDOW} (the largest publish window leanmqd allows), got ${v}`);
      }
    }
    out[key] = v;
  }
  for (const key of Object.keys(given)) {
    if (!(key in DEFAULT_PUBLISH_SETTINGS)) throw new TypeError(`leanmq-grpc: unknown publishSettings field ${key} (maxDelayMs, maxMessages, maxBytes)`);
  }
  return out;
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
  /** The batch: published (in `pending`) but not written yet, in sequence order. */
  private readonly buffer = new Map<number, Entry>();
  private bufferBytes = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly client: BrokerClient,
    private readonly reconnect: { initialMs: number; maxMs: number },
    private readonly onReconnect: (error: unknown, delayMs: number) => void = () => undefined,
    private readonly settings: Required<PublishSettings> = { ...DEFAULT_PUBLISH_SETTINGS },
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
    this.addToBuffer(entry); // before a first stream opens: it writes only what is not buffered
    if (this.running === undefined) this.running = this.run();
    return entry.answer.promise;
  }

  /** Writes the buffer now; resolves once every published message is answered (resolved or rejected). */
  async flush(): Promise<void> {
    this.writeBuffer();
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

  private addToBuffer(entry: Entry): void {
    const s = this.settings;
    const size = PublishRequest.encode(entry.request).finish().length;
    if (this.buffer.size > 0 && this.bufferBytes + size > s.maxBytes) this.writeBuffer(); // the burst stays within maxBytes
    if (this.buffer.size === 0) this.timer = setTimeout(() => this.writeBuffer(), s.maxDelayMs);
    this.buffer.set(entry.request.sequence, entry);
    this.bufferBytes += size;
    if (this.buffer.size >= s.maxMessages || this.bufferBytes >= s.maxBytes || this.pending.size >= this.window) {
      this.writeBuffer(); // full; or the window is, so nothing more can join it
    }
  }

  /**
   * The buffered messages, as one burst, onto the open stream (between
   * streams, left to the next one, which writes every unanswered written message).
   */
  private writeBuffer(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.buffer.size === 0) return;
    const burst = [...this.buffer.values()];
    this.buffer.clear();
    this.bufferBytes = 0;
    for (const e of burst) this.call?.write(e.request);
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
          if (this.pending.size >= w) this.writeBuffer();
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
      // Unanswered written messages, in sequence order (Map keeps insertion order), same keys;
      // the buffer waits for its own burst.
      for (const [sequence, entry] of this.pending) if (!this.buffer.has(sequence)) call.write(entry.request);
    });
  }

  private failAll(error: unknown): void {
    const failed = [...this.pending.values()];
    this.pending.clear();
    this.buffer.clear();
    this.bufferBytes = 0;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    for (const e of failed) e.answer.reject(error);
    this.notify();
  }
}
