/**
 * Throw from a handler to send the message straight to the dead-letter queue:
 * the SDK calls `Nack{dead_letter: true, reason: error.message}`.
 */
export class DeadLetterError extends Error {
  constructor(message?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "DeadLetterError";
  }
}

/**
 * Throw from a handler to have the message redelivered after `delayMs`
 * milliseconds: the SDK calls `Nack{delay: delayMs}`.
 */
export class RetryAfterError extends Error {
  readonly delayMs: number;

  constructor(delayMs: number, message?: string, options?: { cause?: unknown }) {
    super(message ?? `retry after ${delayMs} ms`, options);
    if (!Number.isFinite(delayMs) || delayMs < 0) {
      throw new RangeError(`RetryAfterError: delayMs must be a non-negative number, got ${delayMs}`);
    }
    this.name = "RetryAfterError";
    this.delayMs = delayMs;
  }
}
