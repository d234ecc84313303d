// Administration: queues and dead-letter queues (the leanmq.v1.Admin
// service), with the webhook layer's channel, token and payload decoding.
import { Buffer } from "node:buffer";
import {
  Metadata,
  credentials as grpcCredentials,
  type CallOptions,
  type ChannelCredentials,
  type ChannelOptions,
  type ClientOptions,
  type ServiceError,
} from "@grpc/grpc-js";
import {
  AdminClient,
  type DeadLetter as DeadLetterMessage,
  type QueueInfo as QueueInfoMessage,
  type RequeueDeadLettersRequest,
  type RequeueDeadLettersResponse,
} from "./gen/leanmq/v1/admin";
import type { Duration } from "./gen/google/protobuf/duration";
import { bearerInterceptor } from "./internal";
import { decodePayload, isJsonContentType } from "./payload";

/** ListDeadLetters' default and largest page size (the broker's bounds). */
export const DEFAULT_PAGE_SIZE = 100;
export const MAX_PAGE_SIZE = 1000;
/** Most ids one Requeue or Delete call may carry; longer lists are split. */
const MAX_IDS_PER_CALL = 1000;

export interface AdminOptions {
  /** Channel credentials. Default: insecure (plaintext). For TLS: `credentials.createSsl(caPem)`. */
  credentials?: ChannelCredentials;
  /** A leanmqd bearer token with the `admin` grant, sent as `authorization: Bearer <token>`. */
  token?: string;
  /** Extra grpc-js channel options. */
  channelOptions?: ChannelOptions;
  /** Deadline of each call, in ms. Default 30 000. */
  callTimeoutMs?: number;
}

/** Queues asked for per ListQueues page (the server's largest). */
const QUEUE_PAGE = 1000;

/** One queue of `listQueues()`. */
export interface QueueSummary {
  /** Queue name ("order_status"). */
  queue: string;
  /** Its Redis stream ("webhook:order_status"). */
  stream: string;
  /** Entries in the stream (delivered or not, until retention trims them). */
  length: number;
  /** Entries in its dead-letter queue. */
  deadLetters: number;
  /** Paths leanmq-grpc has seen used for this queue (LeanMQ records none). */
  paths: string[];
}

/** One consumer group of a queue. */
export interface GroupInfo {
  name: string;
  /** Entries delivered and not yet acked. */
  pending: number;
  consumers: number;
  /** Entries not yet delivered to the group (-1 when Redis cannot tell). */
  lag: number;
  /** Age of the oldest pending entry in ms (undefined when nothing is pending). */
  oldestUnackedAgeMs: number | undefined;
  /** Pending entries waiting for a retry after a Nack. */
  retrying: number;
  lastDeliveredId: string;
}

/** One queue in detail (`getQueue()`). */
export interface QueueInfo {
  queue: string;
  stream: string;
  length: number;
  groups: GroupInfo[];
  deadLetters: number;
  /** Delayed messages plus pending entries waiting for a retry. */
  scheduled: number;
  /** Delayed messages not yet visible. */
  delayed: number;
  /** Messages that expired before delivery (moved to the DLQ), all time. */
  expired: number;
  /** Messages dropped by leanmqd's `--max-len` cap, all time. */
  dropped: number;
  createdAt: Date | undefined;
}

/** One failure of a dead letter (a LeanMQ `_failures` record). */
export interface Failure {
  at: Date | undefined;
  reason: string;
  /** Deliveries made before it failed (0 when LeanMQ recorded it). */
  attempts: number;
  /** The group it failed in ("" when LeanMQ recorded it). */
  group: string;
}

/**
 * A message in a dead-letter queue. `data` is what a handler would get:
 * the parsed JSON for application/json, else the payload Buffer.
 */
export class DeadLetterEntry<T = unknown> {
  /** The DLQ entry id: what `requeueDeadLetters` and `deleteDeadLetters` take. */
  readonly id: string;
  /** The id it had in its queue when it failed ("" when LeanMQ dead-lettered it). */
  readonly originalMessageId: string;
  readonly path: string;
  readonly payload: Buffer;
  readonly contentType: string;
  readonly headers: Readonly<Record<string, string>>;
  /** Attempts of the last failure. */
  readonly attempts: number;
  readonly lastReason: string;
  /** Every failure, oldest first. */
  readonly failures: readonly Failure[];
  readonly firstFailedAt: Date | undefined;
  readonly lastFailedAt: Date | undefined;

  constructor(m: DeadLetterMessage) {
    this.id = m.id;
    this.originalMessageId = m.originalMessageId;
    this.path = m.path;
    this.payload = Buffer.from(m.payload ?? []);
    this.contentType = m.contentType;
    this.headers = { ...m.headers };
    this.attempts = m.attempts;
    this.lastReason = m.lastReason;
    this.failures = m.failures.map((f) => ({ at: f.at, reason: f.reason, attempts: f.attempts, group: f.group }));
    this.firstFailedAt = m.firstFailedAt;
    this.lastFailedAt = m.lastFailedAt;
  }

  get isJson(): boolean {
    return isJsonContentType(this.contentType);
  }

  /** Parsed JSON for application/json, else the payload Buffer (throws on invalid JSON). */
  get data(): T {
    return decodePayload(this.payload, this.contentType) as T;
  }
}

/** What `requeueDeadLetters` did. */
export interface RequeueResult {
  requeued: { deadLetterId: string; messageId: string }[];
  /** Requested ids that were not in the DLQ (already requeued or deleted). */
  missing: string[];
}

/** Which dead letters to requeue: these ids, all of them, or those that failed at or after a time. */
export type RequeueSelection = { ids: string[] } | { all: true } | { since: Date };

export interface ListDeadLettersOptions {
  /** Dead letters fetched per call, 1 to 1000. Default 100. */
  pageSize?: number;
  /** Stop after this many. Default: all of them. */
  limit?: number;
}

/**
 * Client of leanmqd's Admin service. Calls reject with the gRPC
 * `ServiceError` (`err.code`: NOT_FOUND for an unknown queue,
 * PERMISSION_DENIED outside the token's admin grant, INVALID_ARGUMENT for a
 * wrong `confirm`, ...).
 *
 *     const admin = new Admin("127.0.0.1:50051", { token });   // or webhook.admin
 *     for await (const dl of admin.listDeadLetters("/order/status/")) console.log(dl.id, dl.data);
 *     await admin.requeueDeadLetters("/order/status/", { all: true });
 */
export class Admin {
  /** The generated client, for calls this class does not wrap. */
  readonly client: AdminClient;
  private readonly callTimeoutMs: number;
  private readonly ownsChannel: boolean;

  /**
   * `shared` is for `webhook.admin`: the webhook's channel
   * (`channelOverride`) and interceptors (its token).
   */
  constructor(target: string, options: AdminOptions = {}, shared?: ClientOptions) {
    const channelOptions: ClientOptions = { ...options.channelOptions, ...shared };
    if (shared === undefined && options.token !== undefined) {
      channelOptions.interceptors = [bearerInterceptor(options.token), ...(channelOptions.interceptors ?? [])];
    }
    const timeout = options.callTimeoutMs ?? 30_000;
    if (!(timeout > 0)) throw new RangeError(`leanmq-grpc: callTimeoutMs must be > 0, got ${timeout}`);
    this.callTimeoutMs = timeout;
    this.ownsChannel = shared === undefined;
    this.client = new AdminClient(target, options.credentials ?? grpcCredentials.createInsecure(), channelOptions);
  }

  private call<Req, Res>(method: string, request: Req): Promise<Res> {
    const options: Partial<CallOptions> = { deadline: Date.now() + this.callTimeoutMs };
    const fn = (this.client as unknown as Record<string, Function>)[method]!;
    // Every Admin request may name a key prefix and a queue by name; the
    // generated encoder writes any field that is not its default, so unset
    // ones must be "" (the default prefix; the queue given by path).
    const full = { queue: "", prefix: "", ...request };
    return new Promise<Res>((resolve, reject) =>
      fn.call(this.client, full, new Metadata(), options, (err: ServiceError | null, res: Res) =>
        err ? reject(err) : resolve(res),
      ),
    );
  }

  /** Every queue in the registry (those the token's admin grant covers), in name order, following the server's pages. */
  async listQueues(): Promise<QueueSummary[]> {
    const out: QueueSummary[] = [];
    let pageToken = "";
    for (;;) {
      const resp = await this.call<object, { queues: QueueSummary[]; nextPageToken: string }>(
        "listQueues",
        { pageSize: QUEUE_PAGE, pageToken },
      );
      for (const q of resp.queues) {
        out.push({
          queue: q.queue,
          stream: q.stream,
          length: q.length,
          deadLetters: q.deadLetters,
          paths: [...q.paths],
        });
      }
      pageToken = resp.nextPageToken;
      if (!pageToken) return out;
    }
  }

  /** One queue, by path ("/order/status/") or name ("order_status"); NOT_FOUND when it does not exist. */
  async getQueue(path: string): Promise<QueueInfo> {
    const m = await this.call<object, QueueInfoMessage>("getQueue", { path });
    return {
      queue: m.queue,
      stream: m.stream,
      length: m.length,
      groups: m.groups.map((g) => ({
        name: g.name,
        pending: g.pending,
        consumers: g.consumers,
        lag: g.lag,
        oldestUnackedAgeMs: durationMs(g.oldestUnackedAge),
        retrying: g.retrying,
        lastDeliveredId: g.lastDeliveredId,
      })),
      deadLetters: m.deadLetters,
      scheduled: m.scheduled,
      delayed: m.delayed,
      expired: m.expired,
      dropped: m.dropped,
      createdAt: m.createdAt,
    };
  }

  /**
   * The queue's dead letters, oldest first, fetched `pageSize` at a time
   * until the last page or `limit`: `for await (const dl of admin.listDeadLetters(path))`.
   * Leaving the loop early stops the paging.
   */
  listDeadLetters<T = unknown>(path: string, options: ListDeadLettersOptions = {}): AsyncIterable<DeadLetterEntry<T>> {
    const pageSize = options.pageSize ?? DEFAULT_PAGE_SIZE;
    const limit = options.limit;
    if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > MAX_PAGE_SIZE) {
      throw new RangeError(`leanmq-grpc: pageSize must be an integer from 1 to ${MAX_PAGE_SIZE}, got ${pageSize}`);
    }
    if (limit !== undefined && (!Number.isInteger(limit) || limit < 0)) {
      throw new RangeError(`leanmq-grpc: limit must be an integer >= 0, got ${limit}`);
    }
    return this.pages<T>(path, pageSize, limit);
  }

  private async *pages<T>(path: string, pageSize: number, limit: number | undefined): AsyncGenerator<DeadLetterEntry<T>> {
    let seen = 0;
    let pageToken = "";
    while (limit === undefined || seen < limit) {
      const size = limit === undefined ? pageSize : Math.min(pageSize, limit - seen);
      const resp = await this.call<object, { deadLetters: DeadLetterMessage[]; nextPageToken: string }>(
        "listDeadLetters",
        { path, pageSize: size, pageToken },
      );
      for (const m of resp.deadLetters) {
        if (limit !== undefined && seen >= limit) return;
        seen++;
        yield new DeadLetterEntry<T>(m);
      }
      pageToken = resp.nextPageToken;
      if (!pageToken) return;
    }
  }

  /** Move dead letters back to their queue (attempts start again at 1). */
  async requeueDeadLetters(path: string, selection: RequeueSelection): Promise<RequeueResult> {
    const keys = ["ids", "all", "since"].filter((k) => (selection as Record<string, unknown>)?.[k] !== undefined);
    if (keys.length !== 1) {
      throw new TypeError("leanmq-grpc: requeueDeadLetters wants exactly one of { ids }, { all: true } or { since }");
    }
    let requests: RequeueDeadLettersRequest[];
    if ("ids" in selection) {
      requests = chunks(idList(selection.ids, "requeueDeadLetters")).map((ids) => ({ path, queue: "", prefix: "", ids: { ids } }));
    } else if ("all" in selection) {
      if (selection.all !== true) throw new TypeError("leanmq-grpc: requeueDeadLetters: all must be true");
      requests = [{ path, queue: "", prefix: "", all: true }];
    } else {
      if (!(selection.since instanceof Date) || Number.isNaN(selection.since.getTime())) {
        throw new TypeError("leanmq-grpc: requeueDeadLetters: since must be a valid Date");
      }
      requests = [{ path, queue: "", prefix: "", since: selection.since }];
    }
    const out: RequeueResult = { requeued: [], missing: [] };
    for (const r of requests) {
      const resp = await this.call<RequeueDeadLettersRequest, RequeueDeadLettersResponse>("requeueDeadLetters", r);
      for (const q of resp.requeued) out.requeued.push({ deadLetterId: q.deadLetterId, messageId: q.messageId });
      out.missing.push(...resp.missing);
    }
    return out;
  }

  /** Delete the given dead letters; resolves with how many existed. */
  async deleteDeadLetters(path: string, ids: string[]): Promise<number> {
    let deleted = 0;
    for (const c of chunks(idList(ids, "deleteDeadLetters"))) {
      deleted += (await this.call<object, { deleted: number }>("deleteDeadLetters", { path, ids: c })).deleted;
    }
    return deleted;
  }

  /** Delete every dead letter of the queue; resolves with how many. */
  async purgeDeadLetters(path: string): Promise<number> {
    return (await this.call<object, { purged: number }>("purgeDeadLetters", { path })).purged;
  }

  /**
   * Delete every message of the queue, delivered or not, and its schedules
   * (its groups remain). `confirm` must be the queue name ("order_status"
   * for "/order/status/"), else INVALID_ARGUMENT.
   */
  async purgeQueue(path: string, confirm: string): Promise<number> {
    return (await this.call<object, { purged: number }>("purgeQueue", { path, confirm: confirmText(confirm) })).purged;
  }

  /**
   * Delete the queue, its groups, schedules and metadata, and (unless
   * `withDlq: false`) its dead letters. `confirm` as for `purgeQueue`.
   * Resolves with the number of messages deleted.
   */
  async deleteQueue(path: string, confirm: string, options: { withDlq?: boolean } = {}): Promise<number> {
    const req = { path, confirm: confirmText(confirm), withDlq: options.withDlq ?? true };
    return (await this.call<object, { deletedMessages: number }>("deleteQueue", req)).deletedMessages;
  }

  /** Close the channel, unless it is a webhook's (`webhook.admin`): closing the webhook closes it. */
  close(): void {
    if (this.ownsChannel) this.client.close();
  }
}

function durationMs(d: Duration | undefined): number | undefined {
  return d === undefined ? undefined : d.seconds * 1000 + d.nanos / 1e6;
}

function idList(ids: unknown, what: string): string[] {
  if (!Array.isArray(ids)) throw new TypeError(`leanmq-grpc: ${what}: ids must be an array of DLQ entry ids`);
  if (ids.length === 0) throw new RangeError(`leanmq-grpc: ${what}: ids is empty`);
  for (const id of ids) {
    if (typeof id !== "string" || id === "") {
      throw new TypeError(`leanmq-grpc: ${what}: every id must be a non-empty string, got ${JSON.stringify(id)}`);
    }
  }
  return ids as string[];
}

function chunks<T>(items: T[]): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += MAX_IDS_PER_CALL) out.push(items.slice(i, i + MAX_IDS_PER_CALL));
  return out;
}

function confirmText(confirm: unknown): string {
  if (typeof confirm !== "string") throw new TypeError("leanmq-grpc: confirm must be the queue name (a string)");
  return confirm;
}
