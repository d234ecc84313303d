// One Subscribe stream, reopened with backoff when it breaks. Not public API.
import { status as Status, type ClientReadableStream, type ServiceError, type StatusObject } from "@grpc/grpc-js";
import type { BrokerClient, Delivery as DeliveryMessage, SubscribeRequest } from "./gen/leanmq/v1/broker";
import { Backoff, FATAL_STREAM_CODES, delay } from "./internal";

/** A stream open this long counts as having worked (resets the backoff). */
const HEALTHY_AFTER_MS = 1000;

export interface StreamHooks {
  /** The stream is open (the broker sent its response headers). */
  onOpen(): void;
  onDelivery(message: DeliveryMessage): void;
  /** The stream broke and will be reopened after `delayMs`. */
  onBreak(error: ServiceError | undefined, delayMs: number): void;
}

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
}

export class SubscribeLoop {
  private stopped = false;
  private call: ClientReadableStream<DeliveryMessage> | undefined;
  private readonly wake = new AbortController();
  private running: Promise<void> | undefined;

  constructor(
    private readonly client: BrokerClient,
    private readonly request: SubscribeRequest,
    private readonly hooks: StreamHooks,
    private readonly backoffOptions: BackoffOptions,
  ) {}

  /** Runs until `stop()`; rejects on an error that reconnecting cannot fix (e.g. INVALID_ARGUMENT). */
  start(): Promise<void> {
    this.running ??= this.loop();
    return this.running;
  }

  /** Cancels the stream and any pending reconnect; `start()`'s promise then resolves. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.wake.abort();
    this.call?.cancel();
  }

  get isStopped(): boolean {
    return this.stopped;
  }

  private async loop(): Promise<void> {
    const backoff = new Backoff(this.backoffOptions.initialMs, this.backoffOptions.maxMs);
    while (!this.stopped) {
      const { error, healthy } = await this.once();
      if (this.stopped) return;
      // Start over at the shortest delay only after a stream that worked
      // (delivered something, or stayed open a while), so a broker that
      // accepts and at once fails streams is not hammered.
      if (healthy) backoff.reset();
      if (error && FATAL_STREAM_CODES.has(error.code)) throw error;
      const wait = backoff.next();
      this.hooks.onBreak(error, wait);
      await delay(wait, this.wake.signal);
    }
  }

  /** One stream, until it ends: its error (undefined when it ended OK), and whether it worked. */
  private once(): Promise<{ error: ServiceError | undefined; healthy: boolean }> {
    return new Promise((resolve) => {
      let done = false;
      let lastError: ServiceError | undefined;
      let openedAt: number | undefined;
      let received = false;
      const finish = (error: ServiceError | undefined) => {
        if (done) return;
        done = true;
        this.call = undefined;
        const healthy = received || (openedAt !== undefined && Date.now() - openedAt >= HEALTHY_AFTER_MS);
        resolve({ error, healthy });
      };
      let call: ClientReadableStream<DeliveryMessage>;
      try {
        call = this.client.subscribe(this.request);
      } catch (err) {
        // e.g. the client was closed.
        const e = Object.assign(new Error(String(err)), { code: Status.UNAVAILABLE, details: String(err) });
        return finish(e as ServiceError);
      }
      this.call = call;
      const open = () => {
        if (openedAt !== undefined) return;
        openedAt = Date.now();
        this.hooks.onOpen();
      };
      call.on("metadata", open);
      call.on("data", (message: DeliveryMessage) => {
        open();
        received = true;
        this.hooks.onDelivery(message);
      });
      call.on("error", (err: ServiceError) => {
        lastError = err;
      });
      call.on("status", (status: StatusObject) => {
        if (status.code === Status.OK) return finish(undefined);
        finish(lastError ?? (Object.assign(new Error(status.details), status) as unknown as ServiceError));
      });
      if (this.stopped) call.cancel();
    });
  }
}
