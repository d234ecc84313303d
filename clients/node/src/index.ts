export { Webhook } from "./webhook";
export { DEFAULT_PUBLISH_SETTINGS } from "./publish";
export type { PublishSettings } from "./publish";
export { Admin, DeadLetterEntry, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE } from "./admin";
export type {
  AdminOptions,
  Failure,
  GroupInfo,
  ListDeadLettersOptions,
  QueueInfo,
  QueueSummary,
  RequeueResult,
  RequeueSelection,
} from "./admin";
export type {
  BatchMessage,
  Handler,
  Outcome,
  ProcessOptions,
  RunOptions,
  SendOptions,
  SendResult,
  Start,
  StopOptions,
  SubscribeOptions,
  WebhookOptions,
} from "./webhook";
export { Delivery, AckOutcome, NackOutcome, DEFAULT_LEASE_MS } from "./delivery";
export type { NackOptions, NackResult } from "./delivery";
export { DeadLetterError, RetryAfterError } from "./errors";
export { TRACEPARENT, parseTraceparent, traceContext } from "./tracing";
export type { TraceContext } from "./tracing";
export { BYTES_CONTENT_TYPE, JSON_CONTENT_TYPE, decodePayload, encodePayload, isJsonContentType } from "./payload";
export { BrokerClient, BrokerService } from "./gen/leanmq/v1/broker";
export type { BrokerServer } from "./gen/leanmq/v1/broker";
/** The generated leanmq.v1 Broker messages and service, for direct use of the API. */
export * as pb from "./gen/leanmq/v1/broker";
/** The generated leanmq.v1 Admin service (queues, dead letters) and its messages. */
export * as admin from "./gen/leanmq/v1/admin";
export { AdminClient } from "./gen/leanmq/v1/admin";
