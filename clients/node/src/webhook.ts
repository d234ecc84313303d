import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import {
  credentials as grpcCredentials,
  type ChannelCredentials,
  type ChannelOptions,
  type ServiceError,
} from "@grpc/grpc-js";
import { Admin } from "./admin";
import {
  BrokerClient,
  ReceiveRequest,
  SendBatchRequest,
  SendRequest,
  StartPosition,
  SubscribeRequest,
  type Delivery as DeliveryMessage,
  type SendResponse,
} from "./gen/leanmq/v1/broker";
import { Delivery, type DeliveryHooks } from "./delivery";
import { DeadLetterError, RetryAfterError } from "./errors";
import { bearerInterceptor, deferred, errorMessage, msToDuration, type Deferred } from "./internal";
import { encodePayload } from "./payload";
import { Publisher, publishSettings, type PublishSettings } from "./publish";
import { Rpc } from "./rpc";
import { SubscribeLoop } from "./stream";
import { inHandlerSpan } from "./tracing";

/** A handler: `data` is the parsed JSON (application/json) or the payload Buffer. */
export type Handler<T = any> = (data: T, delivery: Delivery<T>) => unknown;

export interface SubscribeOptions {
  /** Consumer group. Default: the webhook's, else LeanMQ's group for the path ("<queue>-group"). */
  group?: string;
  /** Name of this subscriber, for the broker's logs. Default: the webhook's. */
  consumer?: string;
  /** Most deliveries handled (held unsettled) at once; sent as max_in_flight. Default: the webhook's (10). */
  concurrency?: number;
  /** Lease length in ms. Default: the webhook's, else the broker's (30 s). */
  ackDeadlineMs?: number;
  /** Keep extending each delivery's lease until it is settled. Default true. */
  autoExtend?: boolean;
  /**
   * Where a consumer group that does not exist yet starts: "now" (the
   * default: only messages sent from now on), "beginning" (every message
   * still in the stream), after a stream entry id, or at a time. Ignored for
   * an existing group.
   */
  start?: Start;
  /** (`subscribe()` only) ends the iteration when aborted. */
  signal?: AbortSignal;
}

/** Where a new consumer group starts reading (SubscribeRequest.start). */
export type Start = "beginning" | "now" | { afterId: string } | { atTime: Date };

export interface WebhookOptions {
  /** Default consumer group of every path. Default: LeanMQ's group for the path. */
  group?: string;
  /** Name of this subscriber, for the broker's logs. Default: "node-<pid>". */
  consumer?: string;
  /** Most handlers running at once per path (= SubscribeRequest.max_in_flight). Default 10. */
  concurrency?: number;
  /** Lease length in ms (SubscribeRequest.ack_deadline). Default: the broker's, 30 s. */
  ackDeadlineMs?: number;
  /** Channel credentials. Default: insecure (plaintext). For TLS: `credentials.createSsl(caPem)`. */
  credentials?: ChannelCredentials;
  /**
   * A leanmqd bearer token (`--auth-tokens`): sent as `authorization: Bearer
   * <token>` metadata on every call, Subscribe streams included (and on calls
   * made through `webhook.client`). Without a known token calls fail with
   * UNAUTHENTICATED, on a path outside its grant with PERMISSION_DENIED.
   */
  token?: string;
  /** Extra grpc-js channel options. */
  channelOptions?: ChannelOptions;
  /** How long a graceful stop waits for running handlers, in ms. Default 30 000. */
  stopTimeoutMs?: number;
  /** Deadline of each unary call (Send, Ack, ...), in ms. Default 30 000. */
  callTimeoutMs?: number;
  /** Reconnect backoff of a broken Subscribe stream. Default 100 ms doubling to 5 s, with jitter. */
  reconnect?: { initialMs?: number; maxMs?: number };
  /**
   * How `publishOnStream()` batches messages onto the Publish stream: the
   * buffer is written as one burst at `maxMessages` (default 100) or
   * `maxBytes` (serialized requests, default 1 MiB), `maxDelayMs` after its
   * first message (default 5), or on `flush()`/`close()`. Checked by the
   * constructor (TypeError/RangeError).
   */
  publishSettings?: PublishSettings;
}

export interface SendOptions {
  /** Application headers (keys must not start with "leanmq-"). */
  headers?: Record<string, string>;
  /** Time to live in ms: an expired message is never delivered (it goes to the DLQ as "expired"). */
  ttlMs?: number;
  /** Make the message visible only after this many ms (kept in Redis). Not with `deliverAt`. */
  delayMs?: number;
  /** Make the message visible at this time. Not with `delayMs`. */
  deliverAt?: Date;
  /** Deduplication key: a repeat within the broker's window stores nothing and returns the first ids. */
  idempotencyKey?: string;
  /**
   * Ordering key: within each consumer group, messages with the same key are
   * delivered one at a time, in send order, the next only once the previous
   * one is acked or dead-lettered. Keys are independent; unset or "" is
   * unordered. At most 256 bytes without control characters (the broker
   * answers INVALID_ARGUMENT otherwise). See docs/ordering.md.
   */
  orderingKey?: string;
  /**
   * Content type of a Buffer/Uint8Array payload (default
   * application/octet-stream); e.g. "application/json" to send JSON text
   * byte for byte. Other values are always sent as JSON.
   */
  contentType?: string;
}

/** What the broker answered to one send. */
export interface SendResult {
  /** The Redis stream entry id; empty for a delayed message until it becomes visible. */
  messageId: string;
  /** True when `idempotencyKey` matched an earlier message (nothing new was stored). */
  duplicate: boolean;
  /** For a delayed message: its id in the schedule; empty otherwise. */
  scheduleId: string;
}

export interface BatchMessage extends SendOptions {
  path: string;
  data: unknown;
}

export interface RunOptions {
  /** Stops the run (gracefully) when aborted. */
  signal?: AbortSignal;
  /** Overrides `WebhookOptions.stopTimeoutMs` for this run. */
  stopTimeoutMs?: number;
}

export interface StopOptions {
  /** How long to wait for running handlers before nacking them, in ms. */
  timeoutMs?: number;
}

export interface ProcessOptions {
  /** How long to wait for the first message on each path, in ms. Default 0 (do not wait). */
  waitMs?: number;
  /** Most messages to take per path. Default 10. */
  count?: number;
}

/** What the SDK did with a delivery a handler was run for ("settled" event). */
export type Outcome =
  | { kind: "ack" }
  | { kind: "nack"; error: unknown; delayMs?: number; deadLetter: boolean }
  | { kind: "manual" }
  | { kind: "abandoned" };

interface Route {
  path: string;
  handler: Handler;
  options: SubscribeOptions;
}

/**
 * LeanMQ's webhook pattern on leanmq-grpc: register handlers per path with
 * `get()`, `send()` to a path, and `run()` to process.
 *
 * Events: "subscribed" (path) once a Subscribe stream is open;
 * "reconnecting" ({ path, error, delayMs }) when one broke;
 * "publishReconnecting" ({ error, delayMs }) when the Publish stream broke;
 * "settled" (delivery, outcome) after a handler's delivery was settled;
 * "warning" (Error) for problems the SDK handled (failed settle calls, lost
 * leases, stale acks). Without a "warning" listener they go to console.warn.
 */
export class Webhook extends EventEmitter {
  readonly client: BrokerClient;
  private readonly target: string;
  private readonly channelOptions: ChannelOptions;
  private adminClient: Admin | undefined;
  private publisher: Publisher | undefined;
  private readonly rpc: Rpc;
  private readonly publishSettings: Required<PublishSettings>;
  private readonly routes = new Map<string, Route>();
  private readonly iterators = new Set<SubscribeLoop>();
  private current: RunState | undefined;
  private closed = false;
  private readonly deliveryHooks: DeliveryHooks = { warn: (err) => this.warn(err) };

  constructor(
    target: string,
    readonly options: WebhookOptions = {},
  ) {
    super();
    this.publishSettings = publishSettings(options.publishSettings); // throws before a channel is made
    const channelOptions: ChannelOptions = {
      "grpc.keepalive_time_ms": 60_000,
      "grpc.keepalive_timeout_ms": 20_000,
      ...options.channelOptions,
    };
    if (options.token !== undefined) {
      channelOptions.interceptors = [bearerInterceptor(options.token), ...(channelOptions.interceptors ?? [])];
    }
    this.client = new BrokerClient(target, options.credentials ?? grpcCredentials.createInsecure(), channelOptions);
    this.target = target;
    this.channelOptions = channelOptions;
    this.rpc = new Rpc(this.client, { callTimeoutMs: options.callTimeoutMs ?? 30_000, settleAttempts: 6 });
  }

  /**
   * An `Admin` (queues, dead letters) on this webhook's channel, with its
   * token and call timeout; closed with the webhook.
   */
  get admin(): Admin {
    if (this.closed) throw new Error("leanmq-grpc: webhook is closed");
    this.adminClient ??= new Admin(
      this.target,
      { callTimeoutMs: this.options.callTimeoutMs },
      { ...this.channelOptions, channelOverride: this.client.getChannel() },
    );
    return this.adminClient;
  }

  /** Register `handler` for `path` (like LeanMQ's `@webhook.get(path)`). Returns the webhook. */
  get<T = any>(path: string, handler: Handler<T>, options: Omit<SubscribeOptions, "signal"> = {}): this {
    if (typeof handler !== "function") throw new TypeError("leanmq-grpc: handler must be a function");
    if (this.routes.has(path)) throw new Error(`leanmq-grpc: a handler for ${path} is already registered`);
    this.routes.set(path, { path, handler: handler as Handler, options });
    return this;
  }

  /**
   * Send `data` to `path`: a Buffer/Uint8Array as application/octet-stream,
   * anything else as JSON (application/json). Resolves with the message id.
   */
  async send(path: string, data: unknown, options: SendOptions = {}): Promise<string> {
    return (await this.publish(path, data, options)).messageId;
  }

  /** As `send()`, resolving with the broker's whole answer (duplicate flag, schedule id). */
  async publish(path: string, data: unknown, options: SendOptions = {}): Promise<SendResult> {
    return toResult(await this.rpc.call("send", this.sendRequest(path, data, options)));
  }

  /**
   * Send `data` to `path` over the webhook's one Publish stream (opened on
   * first use): no round trip per message. Resolves with the message id;
   * rejects with the error a `send()` of it would have (same `code`,
   * `details`). At most the broker's window (`leanmq-publish-window`) is
   * unanswered at once; beyond it this waits. Each message has an idempotency
   * key (`node-<uuid>` unless given): on a broken stream the unanswered ones
   * are resent, never stored twice. Messages are written in bursts
   * (`publishSettings`: `maxMessages`, `maxBytes`, or `maxDelayMs` after the
   * first of a burst, whichever comes first). `flush()`/`close()` write the
   * burst at once and wait for them all.
   */
  async publishOnStream(path: string, data: unknown, options: SendOptions = {}): Promise<string> {
    if (this.closed) throw new Error("leanmq-grpc: webhook is closed");
    const request = this.sendRequest(path, data, options);
    if (request.idempotencyKey === "") request.idempotencyKey = `node-${randomUUID()}`;
    const reconnect = { initialMs: this.options.reconnect?.initialMs ?? 100, maxMs: this.options.reconnect?.maxMs ?? 5000 };
    this.publisher ??= new Publisher(
      this.client,
      reconnect,
      (error, ms) => this.emit("publishReconnecting", { error, delayMs: ms }),
      this.publishSettings,
    );
    return this.publisher.publish(request);
  }

  /** `publishOnStream()` messages not answered yet (at most the broker's window). */
  get publishing(): number { return this.publisher?.outstanding ?? 0; }

  /** Writes the waiting burst; resolves once every `publishOnStream()` promise so far is settled (it never rejects). */
  async flush(): Promise<void> {
    await this.publisher?.flush();
  }

  /** Send several messages atomically (all or none). Resolves with their ids, in order. */
  async sendBatch(messages: BatchMessage[]): Promise<string[]> {
    return (await this.publishBatch(messages)).map((r) => r.messageId);
  }

  /** As `sendBatch()`, resolving with the broker's whole answers. */
  async publishBatch(messages: BatchMessage[]): Promise<SendResult[]> {
    const res = await this.rpc.call(
      "sendBatch",
      SendBatchRequest.fromPartial({ messages: messages.map((m) => this.sendRequest(m.path, m.data, m)) }),
    );
    return res.results.map(toResult);
  }

  /**
   * Deliveries of `path` as an async iterator; settle each with `ack()` /
   * `nack()`. Breaking out of the loop (or `signal`) cancels the stream.
   * The stream is reopened with backoff when it breaks.
   */
  subscribe<T = any>(path: string, options: SubscribeOptions = {}): AsyncGenerator<Delivery<T>, void, undefined> {
    return this.iterate<T>(path, options);
  }

  /**
   * Run every registered handler (one Subscribe stream per path) until
   * `signal` aborts or `stop()` is called; then stop gracefully. Rejects if
   * a stream fails in a way reconnecting cannot fix (e.g. INVALID_ARGUMENT
   * for a bad path), after stopping the others.
   */
  async run(options: RunOptions = {}): Promise<void> {
    if (this.closed) throw new Error("leanmq-grpc: webhook is closed");
    if (this.current) throw new Error("leanmq-grpc: webhook is already running");
    if (this.routes.size === 0) throw new Error("leanmq-grpc: no handlers registered (use webhook.get(path, handler))");
    const state = new RunState(this, [...this.routes.values()], options.stopTimeoutMs ?? this.options.stopTimeoutMs ?? 30_000);
    this.current = state;
    const onAbort = () => void state.requestStop();
    if (options.signal?.aborted) state.requestStop();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      await state.run();
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
      if (this.current === state) this.current = undefined;
    }
  }

  /** Stop `run()` gracefully; resolves once it has stopped. */
  async stop(options: StopOptions = {}): Promise<void> {
    const state = this.current;
    if (state) await state.requestStop(options.timeoutMs);
  }

  /**
   * LeanMQ's `process_messages`: take up to `count` messages per registered
   * path (waiting up to `waitMs` for the first), run their handlers, settle
   * them. Resolves with the number processed.
   */
  async processMessages(options: ProcessOptions = {}): Promise<number> {
    const results = await Promise.all(
      [...this.routes.values()].map(async (route) => {
        const o = this.resolve(route.options);
        const res = await this.rpc.call(
          "receive",
          ReceiveRequest.fromPartial({
            path: route.path,
            group: o.group,
            consumer: o.consumer,
            maxMessages: options.count ?? 10,
            wait: options.waitMs ? msToDuration(options.waitMs) : undefined,
            ackDeadline: o.ackDeadlineMs !== undefined ? msToDuration(o.ackDeadlineMs) : undefined,
            start: startPosition(o.start),
          }),
          (this.options.callTimeoutMs ?? 30_000) + (options.waitMs ?? 0),
        );
        const deliveries = res.deliveries.map((m) => this.wrap(m));
        for (const d of deliveries) if (o.autoExtend) d.keepLease(o.ackDeadlineMs);
        let processed = 0;
        // Bounded by the route's concurrency, in arrival order.
        const queue = [...deliveries];
        const workers = Array.from({ length: Math.min(o.concurrency, queue.length) }, async () => {
          for (let d = queue.shift(); d; d = queue.shift()) {
            await this.handle(route.handler, d);
            processed++;
          }
        });
        await Promise.all(workers);
        return processed;
      }),
    );
    return results.reduce((a, b) => a + b, 0);
  }

  /** Wait for outstanding `publishOnStream()`s, stop everything (handlers, iterators), close the channel. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.publisher?.close();
    await this.stop();
    for (const loop of this.iterators) loop.stop();
    this.client.close();
  }

  // ---- internals -------------------------------------------------------

  /** @internal */
  resolve(
    options: SubscribeOptions,
  ): Required<Omit<SubscribeOptions, "signal" | "ackDeadlineMs" | "start">> & { ackDeadlineMs?: number; start?: Start } {
    const concurrency = options.concurrency ?? this.options.concurrency ?? 10;
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 10_000) {
      throw new RangeError(`leanmq-grpc: concurrency must be an integer from 1 to 10000, got ${concurrency}`);
    }
    return {
      group: options.group ?? this.options.group ?? "",
      consumer: options.consumer ?? this.options.consumer ?? `node-${process.pid}`,
      concurrency,
      ackDeadlineMs: options.ackDeadlineMs ?? this.options.ackDeadlineMs,
      autoExtend: options.autoExtend ?? true,
      start: options.start,
    };
  }

  /** @internal */
  openLoop(path: string, options: SubscribeOptions, onDelivery: (message: DeliveryMessage) => void): SubscribeLoop {
    const o = this.resolve(options);
    return new SubscribeLoop(
      this.client,
      SubscribeRequest.fromPartial({
        path,
        group: o.group,
        consumer: o.consumer,
        maxInFlight: o.concurrency,
        ackDeadline: o.ackDeadlineMs !== undefined ? msToDuration(o.ackDeadlineMs) : undefined,
        start: startPosition(o.start),
      }),
      {
        onOpen: () => this.emit("subscribed", path),
        onDelivery,
        onBreak: (error: ServiceError | undefined, delayMs: number) => this.emit("reconnecting", { path, error, delayMs }),
      },
      { initialMs: this.options.reconnect?.initialMs ?? 100, maxMs: this.options.reconnect?.maxMs ?? 5000 },
    );
  }

  /** @internal */
  wrap<T>(message: DeliveryMessage): Delivery<T> {
    return new Delivery<T>(message, this.rpc, this.deliveryHooks);
  }

  /**
   * @internal Run `handler` for `d` and settle from its outcome:
   * return → Ack; DeadLetterError → Nack(dead_letter); RetryAfterError →
   * Nack(delay); any other throw → Nack. Never rejects.
   */
  async handle(handler: Handler, d: Delivery): Promise<void> {
    let outcome: Outcome;
    let data: unknown;
    try {
      data = d.data;
    } catch (err) {
      // Cannot be handled by any retry: straight to the DLQ.
      const reason = `invalid ${d.contentType} payload: ${errorMessage(err)}`;
      await this.settle(d, { kind: "nack", error: err, deadLetter: true }, () => d.nack({ deadLetter: true, reason }));
      return;
    }
    try {
      await inHandlerSpan(d, () => handler(data, d));
      outcome = { kind: "ack" };
    } catch (err) {
      if (err instanceof DeadLetterError) outcome = { kind: "nack", error: err, deadLetter: true };
      else if (err instanceof RetryAfterError) outcome = { kind: "nack", error: err, delayMs: err.delayMs, deadLetter: false };
      else outcome = { kind: "nack", error: err, deadLetter: false };
    }
    if (d.settled) {
      // The handler settled it itself, or a graceful stop gave up on it.
      await d.settling?.catch(() => undefined);
      if (!d.signal.aborted) this.emit("settled", d, { kind: "manual" } satisfies Outcome);
      return;
    }
    await this.settle(d, outcome, () =>
      outcome.kind === "ack"
        ? d.ack()
        : d.nack({
            deadLetter: outcome.deadLetter,
            delay: outcome.delayMs,
            reason: errorMessage(outcome.error),
          }),
    );
  }

  /** @internal */
  async settle(d: Delivery, outcome: Outcome, call: () => Promise<unknown>): Promise<void> {
    try {
      await call();
    } catch (err) {
      this.warn(new Error(`could not ${outcome.kind} message ${d.messageId} on ${d.path}: ${errorMessage(err)}`, { cause: err }));
    }
    this.emit("settled", d, outcome);
  }

  /** @internal */
  warn(err: Error): void {
    if (this.listenerCount("warning") > 0) this.emit("warning", err);
    else console.warn(`leanmq-grpc: ${err.message}`);
  }

  private sendRequest(path: string, data: unknown, options: SendOptions): SendRequest {
    const { payload, contentType } = encodePayload(data, options.contentType);
    return SendRequest.fromPartial({
      path,
      payload,
      contentType,
      headers: { ...options.headers },
      ttl: options.ttlMs ? msToDuration(options.ttlMs) : undefined,
      delay: options.delayMs ? msToDuration(options.delayMs) : undefined,
      deliverAt: options.deliverAt,
      idempotencyKey: options.idempotencyKey ?? "",
      orderingKey: options.orderingKey ?? "",
    });
  }

  private async *iterate<T>(path: string, options: SubscribeOptions): AsyncGenerator<Delivery<T>, void, undefined> {
    if (this.closed) throw new Error("leanmq-grpc: webhook is closed");
    const o = this.resolve(options);
    const buffer: Delivery<T>[] = [];
    const handedOut = new Set<Delivery<T>>();
    let wake: (() => void) | undefined;
    let ended = false;
    let fatal: unknown;
    const loop = this.openLoop(path, options, (message) => {
      const d = this.wrap<T>(message);
      if (o.autoExtend) d.keepLease(o.ackDeadlineMs);
      buffer.push(d);
      wake?.();
    });
    this.iterators.add(loop);
    const done = loop.start().then(
      () => {
        ended = true;
        wake?.();
      },
      (err) => {
        fatal = err;
        ended = true;
        wake?.();
      },
    );
    const onAbort = () => loop.stop();
    if (options.signal?.aborted) loop.stop();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      for (;;) {
        const next = buffer.shift();
        if (next) {
          handedOut.add(next);
          yield next;
          continue;
        }
        if (ended) {
          if (fatal !== undefined) throw fatal;
          return;
        }
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
      loop.stop();
      await done;
      this.iterators.delete(loop);
      // Deliveries handed out but never settled: stop extending, so their
      // leases run out and they are redelivered. Ones never handed out:
      // give them back now.
      for (const d of handedOut) d.stopLeaseKeeper();
      await Promise.all(
        buffer.splice(0).map((d) =>
          d.nack({ reason: "subscriber closed before handling it" }).catch((err) =>
            this.warn(new Error(`could not nack message ${d.messageId} on ${d.path}: ${errorMessage(err)}`)),
          ),
        ),
      );
    }
  }
}

/** Adds `authorization: Bearer <token>` to the metadata of every call. */
function toResult(r: SendResponse): SendResult {
  return { messageId: r.messageId, duplicate: r.duplicate, scheduleId: r.scheduleId };
}

function startPosition(start: Start | undefined): StartPosition | undefined {
  if (start === undefined) return undefined;
  if (start === "beginning") return StartPosition.fromPartial({ beginning: true });
  if (start === "now") return StartPosition.fromPartial({ now: true });
  if ("afterId" in start) return StartPosition.fromPartial({ afterId: start.afterId });
  if ("atTime" in start) return StartPosition.fromPartial({ atTime: start.atTime });
  throw new TypeError(`leanmq-grpc: bad start position ${JSON.stringify(start)}`);
}

/** One path's handler under `run()`: bounded concurrency, in arrival order. */
class PathWorker {
  readonly queue: Delivery[] = [];
  readonly active = new Set<Delivery>();
  private idle: Deferred<void> | undefined;
  stopping = false;
  readonly loop: SubscribeLoop;
  private readonly opts: ReturnType<Webhook["resolve"]>;

  constructor(
    private readonly webhook: Webhook,
    readonly route: Route,
  ) {
    this.opts = webhook.resolve(route.options);
    this.loop = webhook.openLoop(route.path, route.options, (m) => this.onDelivery(m));
  }

  private onDelivery(message: DeliveryMessage): void {
    const d = this.webhook.wrap(message);
    if (this.stopping) {
      // Arrived while stopping: hand it back at once.
      void this.giveBack(d, "subscriber stopping");
      return;
    }
    if (this.opts.autoExtend) d.keepLease(this.opts.ackDeadlineMs);
    this.queue.push(d);
    this.pump();
  }

  private pump(): void {
    while (!this.stopping && this.active.size < this.opts.concurrency && this.queue.length > 0) {
      const d = this.queue.shift()!;
      this.active.add(d);
      void this.webhook.handle(this.route.handler, d).finally(() => {
        d.stopLeaseKeeper();
        this.active.delete(d);
        this.pump();
        if (this.active.size === 0) this.idle?.resolve();
      });
    }
  }

  /** Stop taking work: hand back queued deliveries. */
  async drainQueue(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.queue.splice(0).map((d) => this.giveBack(d, "subscriber stopping")));
  }

  /** Resolves when no handler is running. */
  whenIdle(): Promise<void> {
    if (this.active.size === 0) return Promise.resolve();
    this.idle ??= deferred<void>();
    return this.idle.promise;
  }

  /** Nack the deliveries whose handlers did not finish in time. */
  async abandonActive(reason: string): Promise<void> {
    await Promise.all(
      [...this.active].map(async (d) => {
        if (d.settled) return;
        d.abandon(reason);
        await this.webhook.settle(d, { kind: "abandoned" }, () => d.nack({ reason }));
      }),
    );
  }

  private async giveBack(d: Delivery, reason: string): Promise<void> {
    d.stopLeaseKeeper();
    try {
      await d.nack({ reason });
    } catch (err) {
      this.webhook.warn(new Error(`could not nack message ${d.messageId} on ${d.path}: ${errorMessage(err)}`, { cause: err }));
    }
  }
}

class RunState {
  private readonly workers: PathWorker[];
  private readonly stopRequested = deferred<void>();
  private readonly stopped = deferred<void>();
  private stopTimeoutMs: number;
  private stopping = false;

  constructor(
    webhook: Webhook,
    routes: Route[],
    stopTimeoutMs: number,
  ) {
    this.stopTimeoutMs = stopTimeoutMs;
    this.workers = routes.map((r) => new PathWorker(webhook, r));
  }

  requestStop(timeoutMs?: number): Promise<void> {
    if (!this.stopping && timeoutMs !== undefined) this.stopTimeoutMs = timeoutMs;
    this.stopping = true;
    this.stopRequested.resolve();
    return this.stopped.promise;
  }

  async run(): Promise<void> {
    let fatal: unknown;
    const loops = this.workers.map((w) =>
      w.loop.start().catch((err) => {
        fatal ??= err;
        this.stopRequested.resolve();
      }),
    );
    try {
      await this.stopRequested.promise;
      this.stopping = true;
      await this.gracefulStop();
      await Promise.all(loops);
    } finally {
      this.stopped.resolve();
    }
    if (fatal !== undefined) throw fatal;
  }

  private async gracefulStop(): Promise<void> {
    // 1. Take no new work: cancel the streams, hand back what was queued.
    for (const w of this.workers) w.loop.stop();
    await Promise.all(this.workers.map((w) => w.drainQueue()));
    // 2. Wait for running handlers, up to the timeout.
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      Promise.all(this.workers.map((w) => w.whenIdle())).then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), this.stopTimeoutMs))),
    ]);
    clearTimeout(timer);
    // 3. Nack what did not finish.
    if (timedOut) {
      const reason = `handler did not finish within the ${this.stopTimeoutMs} ms stop timeout`;
      await Promise.all(this.workers.map((w) => w.abandonActive(reason)));
    }
  }
}
