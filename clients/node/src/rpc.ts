// Promise wrappers around the generated grpc-js client, with per-call
// deadlines and bounded retries for the settle calls. Not public API.
import { Metadata, status as Status, type CallOptions, type ServiceError } from "@grpc/grpc-js";
import type {
  AckRequest,
  AckResponse,
  BrokerClient,
  ExtendRequest,
  ExtendResponse,
  NackRequest,
  NackResponse,
  ReceiveRequest,
  ReceiveResponse,
  SendBatchRequest,
  SendBatchResponse,
  SendRequest,
  SendResponse,
} from "./gen/leanmq/v1/broker";
import { Backoff, delay, errorCode } from "./internal";
import { TRACEPARENT, activeTraceparent } from "./tracing";

interface Unary {
  send: [SendRequest, SendResponse];
  sendBatch: [SendBatchRequest, SendBatchResponse];
  receive: [ReceiveRequest, ReceiveResponse];
  ack: [AckRequest, AckResponse];
  nack: [NackRequest, NackResponse];
  extend: [ExtendRequest, ExtendResponse];
}
type UnaryMethod = keyof Unary;
type Req<M extends UnaryMethod> = Unary[M][0];
type Res<M extends UnaryMethod> = Unary[M][1];

export interface RpcOptions {
  /** Deadline of each unary call, in ms. */
  callTimeoutMs: number;
  /** Attempts of a settle call (Ack/Nack/Extend) that failed with UNAVAILABLE. */
  settleAttempts: number;
}

export class Rpc {
  constructor(
    readonly client: BrokerClient,
    readonly options: RpcOptions,
  ) {}

  call<M extends UnaryMethod>(method: M, request: Req<M>, timeoutMs = this.options.callTimeoutMs): Promise<Res<M>> {
    const callOptions: Partial<CallOptions> = { deadline: Date.now() + timeoutMs };
    return new Promise((resolve, reject) => {
      const fn = this.client[method] as unknown as (
        req: Req<M>,
        md: Metadata,
        opts: Partial<CallOptions>,
        cb: (err: ServiceError | null, res: Res<M>) => void,
      ) => unknown;
      const md = new Metadata();
      if (method === "send" || method === "sendBatch") {
        // The caller's span travels with the message (tracing.ts).
        const tp = activeTraceparent();
        if (tp) md.set(TRACEPARENT, tp);
      }
      fn.call(this.client, request, md, callOptions, (err, res) => (err ? reject(err) : resolve(res)));
    });
  }

  /**
   * A settle call (Ack, Nack, Extend), retried with backoff while the broker
   * is UNAVAILABLE (receipts are valid on any replica, so a restarted or
   * different replica can take it). `idempotent` calls also retry
   * DEADLINE_EXCEEDED.
   */
  async settle<M extends "ack" | "nack" | "extend">(method: M, request: Req<M>, idempotent: boolean): Promise<Res<M>> {
    const backoff = new Backoff(100, 2000);
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.call(method, request);
      } catch (err) {
        const code = errorCode(err);
        const retryable = code === Status.UNAVAILABLE || (idempotent && code === Status.DEADLINE_EXCEEDED);
        if (!retryable || attempt >= this.options.settleAttempts) throw err;
        await delay(backoff.next());
      }
    }
  }
}
