// Small helpers shared by the SDK. Not part of the public API.
import { InterceptingCall, status as Status, type Interceptor, type ServiceError } from "@grpc/grpc-js";
import type { Duration } from "./gen/google/protobuf/duration";

export function msToDuration(ms: number): Duration {
  const total = Math.max(0, Math.round(ms));
  return { seconds: Math.floor(total / 1000), nanos: (total % 1000) * 1_000_000 };
}

export function isServiceError(err: unknown): err is ServiceError {
  return typeof err === "object" && err !== null && typeof (err as { code?: unknown }).code === "number";
}

export function errorCode(err: unknown): number | undefined {
  return isServiceError(err) ? err.code : undefined;
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}

/** Exponential backoff with jitter: `initialMs` doubling up to `maxMs`. */
export class Backoff {
  private attempt = 0;

  constructor(
    readonly initialMs = 100,
    readonly maxMs = 5000,
    private readonly random: () => number = Math.random,
  ) {}

  /** The next delay: the current step, jittered to between 50% and 100% of it. */
  next(): number {
    const base = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    return Math.round(base / 2 + (this.random() * base) / 2);
  }

  reset(): void {
    this.attempt = 0;
  }
}

/** setTimeout as a promise, resolved early (not rejected) when `signal` aborts. */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const onAbort = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(err: unknown): void;
}

export function deferred<T = void>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Status codes after which a Subscribe stream is not retried. */
export const FATAL_STREAM_CODES: ReadonlySet<number> = new Set([
  Status.INVALID_ARGUMENT,
  Status.UNIMPLEMENTED,
  Status.UNAUTHENTICATED,
  Status.PERMISSION_DENIED,
]);

/** Adds `authorization: Bearer <token>` (leanmqd's `--auth-tokens`) to every call. */
export function bearerInterceptor(token: string): Interceptor {
  if (typeof token !== "string" || token === "" || /[\s\x00-\x1f\x7f]/.test(token)) {
    throw new TypeError("leanmq-grpc: token must be a non-empty string without whitespace");
  }
  const authorization = `Bearer ${token}`;
  return (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set("authorization", authorization);
        next(metadata, listener);
      },
    });
}
