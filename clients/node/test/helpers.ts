import { once, type EventEmitter } from "node:events";

/** `promise`, or a rejection after `ms` naming `what`. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** A promise with its resolve function, for gating handlers. */
export function gate<T = void>(): { promise: Promise<T>; open(value: T): void } {
  let open!: (value: T) => void;
  const promise = new Promise<T>((resolve) => (open = resolve));
  return { promise, open };
}

/** Resolves once `predicate()` holds, re-checking on each `event` of `emitter`. */
export async function until(emitter: EventEmitter, event: string, predicate: () => boolean, ms = 5000): Promise<void> {
  const signal = AbortSignal.timeout(ms);
  while (!predicate()) {
    try {
      await once(emitter, event, { signal });
    } catch {
      throw new Error(`timed out after ${ms} ms waiting on "${event}"`);
    }
  }
}
