import { Buffer } from "node:buffer";
import { status as Status } from "@grpc/grpc-js";
import {
  AckOutcome,
  AckRequest,
  ExtendRequest,
  NackOutcome,
  NackRequest,
  type Delivery as DeliveryMessage,
  type NackResponse,
} from "./gen/leanmq/v1/broker";
import { decodePayload } from "./payload";
import { errorCode, msToDuration } from "./internal";
import type { Rpc } from "./rpc";

/** The server's default lease (SubscribeRequest.ack_deadline unset). */
export const DEFAULT_LEASE_MS = 30_000;

export interface NackOptions {
  /** Redeliver after this many milliseconds. Unset or 0: the broker's retry backoff. Ignored with `deadLetter`. */
  delay?: number;
  /** Move the message to the dead-letter queue now. */
  deadLetter?: boolean;
  /** Why it failed; recorded in the DLQ's `_failures` record. */
  reason?: string;
}

export type NackResult = NackResponse;

/** @internal hooks a Delivery reports through. */
export interface DeliveryHooks {
  warn(err: Error): void;
}

/**
 * One delivery of one message. Settle it exactly once with `ack()` or
 * `nack()`; a handler run by `Webhook.run()` is settled for you from its
 * outcome unless it settled the delivery itself.
 */
export class Delivery<T = unknown> {
  /** Opaque token naming this delivery (for Ack/Nack/Extend on any replica). */
  readonly receipt: string;
  /** The Redis stream entry id of the message. */
  readonly messageId: string;
  /** The path the message was sent to, normalized ("/order/status"). */
  readonly path: string;
  /** The raw message body. */
  readonly payload: Buffer;
  /** MIME type of `payload`. */
  readonly contentType: string;
  /** Application headers, plus the broker's `leanmq-*` headers. */
  readonly headers: Readonly<Record<string, string>>;
  /** 1 on the first delivery of this message to this group. */
  readonly attempt: number;
  /** When the message was sent. */
  readonly publishedAt: Date | undefined;
  /** The consumer group (resolved, never empty). */
  readonly group: string;
  /** The ordering key the message was sent with ("" when unordered). */
  readonly orderingKey: string;
  /** When the lease ends unless acked or extended (Redis clock); updated by `extend()`. */
  leaseExpiresAt: Date | undefined;

  private readonly abort = new AbortController();
  private settlement: { kind: "ack" | "nack"; promise: Promise<unknown> } | undefined;
  private decoded: { value: unknown } | undefined;
  private leaseTimer: NodeJS.Timeout | undefined;
  private leaseMs: number | undefined;
  private keeping = false;

  /** @internal */
  constructor(
    message: DeliveryMessage,
    private readonly rpc: Rpc,
    private readonly hooks: DeliveryHooks,
  ) {
    this.receipt = message.receipt;
    this.messageId = message.messageId;
    this.path = message.path;
    this.payload = Buffer.isBuffer(message.payload) ? message.payload : Buffer.from(message.payload);
    this.contentType = message.contentType;
    this.headers = { ...message.headers };
    this.attempt = message.attempt;
    this.publishedAt = message.publishedAt;
    this.group = message.group;
    this.orderingKey = message.orderingKey;
    this.leaseExpiresAt = message.leaseExpiresAt;
  }

  /**
   * The payload as the handler sees it: the parsed JSON value when
   * `contentType` is application/json, else the Buffer. Throws a
   * SyntaxError for an application/json payload that is not valid JSON.
   */
  get data(): T {
    if (!this.decoded) this.decoded = { value: decodePayload(this.payload, this.contentType) };
    return this.decoded.value as T;
  }

  /** True once `ack()` or `nack()` has been called. */
  get settled(): boolean {
    return this.settlement !== undefined;
  }

  /**
   * Aborted when the SDK gives up on this delivery: a graceful stop timed
   * out while the handler was still running (and nacked it). Long handlers
   * can watch it to stop early.
   */
  get signal(): AbortSignal {
    return this.abort.signal;
  }

  /** Settle as done. Resolves with the broker's outcome (ACKED, NOT_PENDING or STALE). */
  ack(): Promise<AckOutcome> {
    if (this.settlement) return this.again("ack") as Promise<AckOutcome>;
    this.stopLeaseKeeper();
    const promise = this.rpc.settle("ack", AckRequest.fromPartial({ receipts: [this.receipt] }), true).then((res) => {
      const outcome = res.results[0]?.outcome ?? AckOutcome.ACK_OUTCOME_UNSPECIFIED;
      if (outcome === AckOutcome.ACK_OUTCOME_STALE) {
        this.hooks.warn(
          new Error(`ack of message ${this.messageId} on ${this.path} was stale: its lease had expired and it will be processed again`),
        );
      }
      return outcome;
    });
    this.settlement = { kind: "ack", promise };
    return promise;
  }

  /**
   * Settle as failed: retry after `delay` ms (default: the broker's
   * backoff), or dead-letter now with `deadLetter: true`. Resolves with the
   * broker's answer; a receipt that no longer holds the lease
   * (FAILED_PRECONDITION) rejects.
   */
  nack(options: NackOptions = {}): Promise<NackResult> {
    if (this.settlement) return this.again("nack") as Promise<NackResult>;
    this.stopLeaseKeeper();
    const request = NackRequest.fromPartial({
      receipt: this.receipt,
      delay: options.delay !== undefined && options.delay > 0 && !options.deadLetter ? msToDuration(options.delay) : undefined,
      deadLetter: options.deadLetter ?? false,
      reason: truncateUtf8(options.reason ?? "", 4096),
    });
    const promise = this.rpc.settle("nack", request, false);
    this.settlement = { kind: "nack", promise };
    return promise;
  }

  /**
   * Push the lease out to now + `ms` (default: this subscription's lease).
   * While the SDK keeps the lease (a handler is running), it keeps extending
   * by this new length.
   */
  async extend(ms?: number): Promise<Date | undefined> {
    if (this.settlement) throw new Error(`delivery ${this.messageId} is already ${this.settlement.kind}ed`);
    const length = ms ?? this.leaseMs;
    if (ms !== undefined) this.leaseMs = ms;
    const res = await this.rpc.settle(
      "extend",
      ExtendRequest.fromPartial({ receipt: this.receipt, extension: length !== undefined ? msToDuration(length) : undefined }),
      true,
    );
    this.leaseExpiresAt = res.leaseExpiresAt ?? this.leaseExpiresAt;
    if (this.keeping) this.scheduleLeaseTick();
    return this.leaseExpiresAt;
  }

  /** @internal Settle state, for the runner. */
  get settlementKind(): "ack" | "nack" | undefined {
    return this.settlement?.kind;
  }

  /** @internal The pending settle call, if any. */
  get settling(): Promise<unknown> | undefined {
    return this.settlement?.promise;
  }

  /** @internal Abort `signal` (the SDK gave up on this delivery). */
  abandon(reason: string): void {
    this.abort.abort(new Error(reason));
  }

  /**
   * @internal Keep the lease alive until settled: Extend at about half the
   * lease (never later than half of what is left of it).
   * `leaseMs` undefined means the broker's default (30 s).
   */
  keepLease(leaseMs: number | undefined): void {
    if (this.settlement || this.keeping) return;
    this.leaseMs ??= leaseMs;
    this.keeping = true;
    this.scheduleLeaseTick();
  }

  /** @internal */
  stopLeaseKeeper(): void {
    this.keeping = false;
    if (this.leaseTimer) clearTimeout(this.leaseTimer);
    this.leaseTimer = undefined;
  }

  private scheduleLeaseTick(retryDelay?: number): void {
    if (this.leaseTimer) clearTimeout(this.leaseTimer);
    const lease = this.leaseMs ?? DEFAULT_LEASE_MS;
    let wait: number;
    if (retryDelay !== undefined) {
      wait = retryDelay;
    } else {
      // Half of what is left (Redis clock vs ours), kept within [lease/4, lease/2]
      // so clock skew neither delays an Extend nor turns it into a busy loop.
      const left = this.leaseExpiresAt ? this.leaseExpiresAt.getTime() - Date.now() : lease;
      wait = Math.min(lease / 2, Math.max(lease / 4, left / 2));
    }
    this.leaseTimer = setTimeout(() => void this.leaseTick(), Math.max(1, Math.round(wait)));
    // The handler's own work keeps the process alive, not this timer.
    this.leaseTimer.unref();
  }

  private async leaseTick(): Promise<void> {
    this.leaseTimer = undefined;
    if (!this.keeping || this.settlement) return;
    try {
      const lease = this.leaseMs;
      const res = await this.rpc.settle(
        "extend",
        ExtendRequest.fromPartial({ receipt: this.receipt, extension: lease !== undefined ? msToDuration(lease) : undefined }),
        true,
      );
      this.leaseExpiresAt = res.leaseExpiresAt ?? this.leaseExpiresAt;
      if (this.keeping && !this.settlement) this.scheduleLeaseTick();
    } catch (err) {
      if (!this.keeping || this.settlement) return;
      if (errorCode(err) === Status.FAILED_PRECONDITION) {
        this.keeping = false;
        this.hooks.warn(
          new Error(`lost the lease of message ${this.messageId} on ${this.path}; it may be processed again`, { cause: err }),
        );
        return;
      }
      this.hooks.warn(new Error(`extending the lease of message ${this.messageId} failed; retrying`, { cause: err }));
      this.scheduleLeaseTick((this.leaseMs ?? DEFAULT_LEASE_MS) / 8);
    }
  }

  private again(kind: "ack" | "nack"): Promise<unknown> {
    const s = this.settlement!;
    if (s.kind === kind) return s.promise;
    return Promise.reject(new Error(`delivery ${this.messageId} is already ${s.kind}ed`));
  }
}

export { AckOutcome, NackOutcome };

function truncateUtf8(text: string, maxBytes: number): string {
  const buf = Buffer.from(text, "utf8");
  if (buf.length <= maxBytes) return text;
  // Cut on a character boundary.
  let end = maxBytes;
  while (end > 0 && (buf[end]! & 0xc0) === 0x80) end--;
  return buf.subarray(0, end).toString("utf8");
}
