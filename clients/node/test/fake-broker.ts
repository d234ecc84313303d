// An in-memory leanmq.v1.Broker on @grpc/grpc-js, for testing the client
// (not Redis): queues per path, one consumer group, leases, max_in_flight,
// Nack with delay / dead letter, Extend, and hooks to break streams.
import { EventEmitter } from "node:events";
import * as grpc from "@grpc/grpc-js";
import {
  AckOutcome,
  BrokerService,
  NackOutcome,
  SendResponse,
  type AckRequest,
  type BrokerServer,
  type Delivery,
  type ExtendRequest,
  type NackRequest,
  type SendRequest,
  type SubscribeRequest,
} from "leanmq-grpc/gen/leanmq/v1/broker";
import type { Duration } from "leanmq-grpc/gen/google/protobuf/duration";

export interface StoredMessage {
  id: string;
  path: string;
  payload: Buffer;
  contentType: string;
  headers: Record<string, string>;
  attempt: number;
  state: "ready" | "leased" | "acked" | "dead";
  readyAt: number;
  receipt?: string;
  holder?: Subscriber;
  leaseTimer?: NodeJS.Timeout;
  publishedAt: Date;
}

export interface Subscriber {
  request: SubscribeRequest;
  call: grpc.ServerWritableStream<SubscribeRequest, Delivery>;
  inFlight: Set<string>;
  leaseMs: number;
  closed: boolean;
}

export interface FakeBrokerOptions {
  /** Send more than max_in_flight (to test the client's own bound). */
  ignoreMaxInFlight?: boolean;
  /** Redelivery delay of a Nack without a delay, in ms. */
  retryDelayMs?: number;
}

export function durationMs(d: Duration | undefined): number | undefined {
  if (!d) return undefined;
  return d.seconds * 1000 + d.nanos / 1e6;
}

/** "/order/status/" -> "/order/status", as the real broker normalizes. */
export function normalizePath(path: string): string {
  const trimmed = path.replace(/\/+$/, "");
  return trimmed.startsWith("/") ? trimmed : `/${trimmed}`;
}

export class FakeBroker extends EventEmitter {
  readonly server = new grpc.Server();
  port = 0;
  readonly messages: StoredMessage[] = [];
  readonly subscribers: Subscriber[] = [];
  readonly subscribeRequests: SubscribeRequest[] = [];
  readonly sends: SendRequest[] = [];
  readonly acks: AckRequest[] = [];
  readonly nacks: NackRequest[] = [];
  readonly extends: ExtendRequest[] = [];
  delivered = 0;
  private seq = 0;
  private timers = new Set<NodeJS.Timeout>();

  constructor(readonly options: FakeBrokerOptions = {}) {
    super();
    const impl: BrokerServer = {
      send: (call, cb) => {
        try {
          cb(null, SendResponse.fromPartial({ messageId: this.store(call.request) }));
        } catch (err) {
          cb(err as grpc.ServiceError);
        }
      },
      sendBatch: (call, cb) => {
        const results = call.request.messages.map((m) => SendResponse.fromPartial({ messageId: this.store(m) }));
        cb(null, { results });
      },
      subscribe: (call) => this.subscribe(call),
      // The Node SDK does not publish over a stream yet.
      publish: (call) => {
        call.emit("error", { code: grpc.status.UNIMPLEMENTED, details: "the fake broker has no Publish" });
      },
      receive: (call, cb) => {
        const path = normalizePath(call.request.path);
        const max = call.request.maxMessages || 10;
        const leaseMs = durationMs(call.request.ackDeadline) || 30_000;
        const deliveries: Delivery[] = [];
        for (const m of this.ready(path)) {
          if (deliveries.length >= max) break;
          deliveries.push(this.lease(m, undefined, leaseMs));
        }
        cb(null, { deliveries });
      },
      ack: (call, cb) => {
        this.acks.push(call.request);
        const results = call.request.receipts.map((receipt) => {
          const m = this.byReceipt(receipt);
          let outcome = AckOutcome.ACK_OUTCOME_NOT_PENDING;
          if (m && m.receipt === receipt && m.state === "leased") {
            this.release(m);
            m.state = "acked";
            outcome = AckOutcome.ACK_OUTCOME_ACKED;
          } else if (m && m.receipt !== receipt && m.state !== "acked" && m.state !== "dead") {
            outcome = AckOutcome.ACK_OUTCOME_STALE;
          }
          return { receipt, outcome };
        });
        cb(null, { results });
        this.emit("ack", call.request);
        this.dispatchAll();
      },
      nack: (call, cb) => {
        this.nacks.push(call.request);
        const m = this.byReceipt(call.request.receipt);
        if (!m || m.receipt !== call.request.receipt || m.state !== "leased") {
          cb({ code: grpc.status.FAILED_PRECONDITION, details: "receipt does not hold the lease" });
          this.emit("nack", call.request);
          return;
        }
        this.release(m);
        if (call.request.deadLetter) {
          m.state = "dead";
          cb(null, { outcome: NackOutcome.NACK_OUTCOME_DEAD_LETTERED, retryAt: undefined, deadLetterId: `${m.id}-dlq` });
        } else {
          const delayMs = durationMs(call.request.delay) || (this.options.retryDelayMs ?? 20);
          m.state = "ready";
          m.readyAt = Date.now() + delayMs;
          this.dispatchAt(m.readyAt);
          cb(null, { outcome: NackOutcome.NACK_OUTCOME_RETRY_SCHEDULED, retryAt: new Date(m.readyAt), deadLetterId: "" });
        }
        this.emit("nack", call.request);
        this.dispatchAll();
      },
      extend: (call, cb) => {
        this.extends.push(call.request);
        const m = this.byReceipt(call.request.receipt);
        if (!m || m.receipt !== call.request.receipt || m.state !== "leased") {
          cb({ code: grpc.status.FAILED_PRECONDITION, details: "receipt does not hold the lease" });
        } else {
          const ms = durationMs(call.request.extension) || 30_000;
          this.armLease(m, ms);
          cb(null, { leaseExpiresAt: new Date(Date.now() + ms) });
        }
        this.emit("extend", call.request);
      },
    };
    this.server.addService(BrokerService, impl as unknown as grpc.UntypedServiceImplementation);
  }

  async start(): Promise<string> {
    this.port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) =>
        err ? reject(err) : resolve(port),
      ),
    );
    return this.target;
  }

  get target(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** End every open Subscribe stream with `code` (as a restarting leanmqd does with UNAVAILABLE; OK ends it cleanly). */
  endStreams(code = grpc.status.UNAVAILABLE, details = "server shutting down"): void {
    for (const s of this.subscribers.splice(0)) {
      s.closed = true;
      if (code === grpc.status.OK) s.call.end();
      else s.call.emit("error", { code, details });
    }
  }

  async stop(): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    for (const m of this.messages) if (m.leaseTimer) clearTimeout(m.leaseTimer);
    this.server.forceShutdown();
  }

  // ---- internals -------------------------------------------------------

  private store(req: SendRequest): string {
    if (!req.path || normalizePath(req.path) === "/") {
      throw Object.assign(new Error("bad path"), { code: grpc.status.INVALID_ARGUMENT, details: "bad path" });
    }
    this.sends.push(req);
    const id = `${Date.now()}-${this.seq++}`;
    this.messages.push({
      id,
      path: normalizePath(req.path),
      payload: Buffer.from(req.payload),
      contentType: req.contentType || "application/octet-stream",
      headers: { ...req.headers },
      attempt: 0,
      state: "ready",
      readyAt: 0,
      publishedAt: new Date(),
    });
    this.emit("send", req);
    setImmediate(() => this.dispatchAll());
    return id;
  }

  private subscribe(call: grpc.ServerWritableStream<SubscribeRequest, Delivery>): void {
    const req = call.request;
    this.subscribeRequests.push(req);
    if (!req.path || normalizePath(req.path) === "/") {
      call.emit("error", { code: grpc.status.INVALID_ARGUMENT, details: "bad path" });
      return;
    }
    const sub: Subscriber = {
      request: req,
      call,
      inFlight: new Set(),
      leaseMs: durationMs(req.ackDeadline) || 30_000,
      closed: false,
    };
    call.on("cancelled", () => {
      sub.closed = true;
      const i = this.subscribers.indexOf(sub);
      if (i >= 0) this.subscribers.splice(i, 1);
      this.emit("cancelled", req);
    });
    call.sendMetadata(new grpc.Metadata());
    this.subscribers.push(sub);
    this.emit("subscribe", req);
    this.dispatchAll();
  }

  private ready(path: string): StoredMessage[] {
    const now = Date.now();
    return this.messages.filter((m) => m.path === path && m.state === "ready" && m.readyAt <= now);
  }

  private dispatchAll(): void {
    for (const sub of this.subscribers) {
      if (sub.closed) continue;
      const max = sub.request.maxInFlight || 100;
      for (const m of this.ready(normalizePath(sub.request.path))) {
        if (!this.options.ignoreMaxInFlight && sub.inFlight.size >= max) break;
        const d = this.lease(m, sub, sub.leaseMs);
        sub.call.write(d);
        this.delivered++;
        this.emit("delivered", d);
      }
    }
  }

  private lease(m: StoredMessage, sub: Subscriber | undefined, leaseMs: number): Delivery {
    m.attempt++;
    m.state = "leased";
    m.receipt = `${m.id}:${m.attempt}`;
    m.holder = sub;
    sub?.inFlight.add(m.receipt);
    const expires = this.armLease(m, leaseMs);
    return {
      receipt: m.receipt,
      messageId: m.id,
      path: m.path,
      payload: m.payload,
      contentType: m.contentType,
      headers: { ...m.headers },
      attempt: m.attempt,
      publishedAt: m.publishedAt,
      group: "fake-group",
      leaseExpiresAt: expires,
      // No ordering here: ordering keys are tested against leanmqd (ordering.test.ts).
      orderingKey: "",
    };
  }

  private armLease(m: StoredMessage, ms: number): Date {
    if (m.leaseTimer) clearTimeout(m.leaseTimer);
    m.leaseTimer = setTimeout(() => {
      if (m.state !== "leased") return;
      this.release(m);
      m.state = "ready";
      m.readyAt = 0;
      this.emit("expired", m);
      this.dispatchAll();
    }, ms);
    m.leaseTimer.unref();
    return new Date(Date.now() + ms);
  }

  private release(m: StoredMessage): void {
    if (m.leaseTimer) clearTimeout(m.leaseTimer);
    m.leaseTimer = undefined;
    if (m.receipt) m.holder?.inFlight.delete(m.receipt);
    m.holder = undefined;
  }

  private byReceipt(receipt: string): StoredMessage | undefined {
    const id = receipt.split(":")[0];
    return this.messages.find((m) => m.id === id);
  }

  /**
   * Dispatch once Date.now() reaches `at`. A timer can fire a little before
   * that (its start is the event loop's cached time, which lags Date.now()),
   * when ready() would still leave the message out: wait again for the rest.
   */
  private dispatchAt(at: number): void {
    this.later(Math.max(at - Date.now(), 0), () => {
      if (Date.now() < at) this.dispatchAt(at);
      else this.dispatchAll();
    });
  }

  private later(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }
}
