// publishSettings (issue #18) against a real leanmqd on a private
// redis-server: the burst goes out at maxMessages, at maxBytes, maxDelayMs
// after its first message, or on flush()/close(); until then its messages
// are unanswered and unstored. Bad settings throw. The broker tests skip when
// leanmqd, redis-server or redis-cli is missing.
//
// "Not answered yet" is checked only after something sent later has been
// answered by the same broker, never after a sleep.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { DEFAULT_PUBLISH_SETTINGS, Webhook, pb, type PublishSettings } from "leanmq-grpc";
import { Leanmqd, Redis, skipReason, tempDir } from "./real-broker";

const T = { timeout: 120_000 };
const LONG = 3_600_000; // a maxDelayMs no test waits for

const newPath = (label: string) => `/batch/${label}/${randomBytes(4).toString("hex")}`;
const streamOf = (p: string) => `webhook:${p.replace(/^\/+|\/+$/g, "").replace(/\//g, "_")}`;

/** A promise with its state visible. */
function tracked<T>(p: Promise<T>): { promise: Promise<T>; settled: () => boolean } {
  let done = false;
  const promise = p.finally(() => (done = true));
  promise.catch(() => undefined);
  return { promise, settled: () => done };
}

describe("publishSettings against leanmqd", { skip: skipReason() }, () => {
  let tmp: ReturnType<typeof tempDir>;
  let redis: Redis;
  let broker: Leanmqd;
  let small: Leanmqd;

  const xlen = (path: string) => Number(redis.cli("XLEN", streamOf(path)) || 0);

  before(async () => {
    tmp = tempDir();
    redis = await Redis.start(tmp.dir);
    broker = await Leanmqd.start(redis.url, []);
    small = await Leanmqd.start(redis.url, ["--publish-window", "4"]);
  });

  after(async () => {
    await broker?.stop();
    await small?.stop();
    await redis?.stop();
    tmp?.remove();
  });

  test("maxMessages: the 10th writes the burst; the next 9 wait for flush()", T, async () => {
    const w = new Webhook(broker.target, { publishSettings: { maxMessages: 10, maxDelayMs: LONG } });
    const path = newPath("count");
    try {
      const all = Array.from({ length: 19 }, (_, i) => tracked(w.publishOnStream(path, { i })));
      const first = await Promise.all(all.slice(0, 10).map((t) => t.promise)); // no flush
      assert.equal(new Set(first).size, 10);
      assert.ok(await w.send(`${path}/probe`, "probe"), "a later unary Send was answered");
      assert.deepEqual(all.slice(10).map((t) => t.settled()), Array(9).fill(false), "the next 9 wait for their burst");
      assert.equal(w.publishing, 9);
      assert.equal(xlen(path), 10, "nothing of the waiting burst is stored");
      await w.flush();
      assert.ok(all.every((t) => t.settled()));
      assert.equal(new Set(await Promise.all(all.map((t) => t.promise))).size, 19);
      assert.equal(xlen(path), 19);
    } finally {
      await w.close();
    }
  });

  test("maxDelayMs: a lone message is answered without flush()", T, async () => {
    const w = new Webhook(broker.target, { publishSettings: { maxDelayMs: 5 } });
    const path = newPath("delay");
    try {
      assert.ok(await w.publishOnStream(path, { alone: 1 }));
      assert.ok(await w.publishOnStream(path, { alone: 2 }), "the timer is set again for the next burst");
      assert.equal(xlen(path), 2);
    } finally {
      await w.close();
    }
  });

  test("the defaults (5 ms, 100, 1 MiB) answer a lone message without flush()", T, async () => {
    assert.deepEqual({ ...DEFAULT_PUBLISH_SETTINGS }, { maxDelayMs: 5, maxMessages: 100, maxBytes: 1 << 20 });
    const w = new Webhook(broker.target);
    const path = newPath("default");
    try {
      assert.ok(await w.publishOnStream(path, Buffer.from("x")));
      assert.equal(xlen(path), 1);
    } finally {
      await w.close();
    }
  });

  test("maxBytes writes the burst; a message that would pass it goes in the next one", T, async () => {
    const path = newPath("bytes");
    const payload = Buffer.alloc(1000, "b");
    // The serialized PublishRequest the SDK writes (its idempotency key has a fixed length).
    const size = (n: number, data = payload) =>
      pb.PublishRequest.encode({
        sequence: n,
        message: pb.SendRequest.fromPartial({
          path,
          payload: data,
          contentType: "application/octet-stream",
          idempotencyKey: `node-${"0".repeat(36)}`,
        }),
      }).finish().length;
    const one = size(1);
    assert.ok([2, 3, 4, 5].every((n) => size(n) === one));
    const w = new Webhook(broker.target, { publishSettings: { maxBytes: 3 * one, maxDelayMs: LONG } });
    try {
      const all = Array.from({ length: 5 }, () => tracked(w.publishOnStream(path, payload)));
      await Promise.all(all.slice(0, 3).map((t) => t.promise)); // the 3rd reached maxBytes
      assert.ok(await w.send(`${path}/probe`, "probe"));
      assert.deepEqual(all.slice(3).map((t) => t.settled()), [false, false]);
      assert.equal(xlen(path), 3);
      const big = tracked(w.publishOnStream(path, Buffer.alloc(2 * one, "B")));
      await Promise.all(all.slice(3).map((t) => t.promise)); // written without it
      assert.ok(await w.send(`${path}/probe`, "probe"));
      assert.equal(big.settled(), false);
      assert.equal(xlen(path), 5);
      await w.flush();
      assert.ok(big.settled() && (await big.promise));
      assert.equal(xlen(path), 6);
    } finally {
      await w.close();
    }
  });

  test("close() writes the waiting burst", T, async () => {
    const w = new Webhook(broker.target, { publishSettings: { maxMessages: 50, maxDelayMs: LONG } });
    const path = newPath("close");
    const all = Array.from({ length: 7 }, (_, i) => tracked(w.publishOnStream(path, { i })));
    await w.close();
    assert.ok(all.every((t) => t.settled()));
    assert.equal(new Set(await Promise.all(all.map((t) => t.promise))).size, 7);
    assert.equal(xlen(path), 7);
  });

  test("a window smaller than maxMessages writes the burst when full, never stalls", T, async () => {
    const w = new Webhook(small.target, { publishSettings: { maxMessages: 100, maxDelayMs: LONG } });
    const path = newPath("window");
    try {
      const first = w.publishOnStream(path, "first");
      await w.flush();
      assert.ok(await first); // the window header has arrived
      const ids = await Promise.all(Array.from({ length: 40 }, (_, i) => w.publishOnStream(path, { i })));
      assert.equal(new Set(ids).size, 40);
      assert.equal(xlen(path), 41);
    } finally {
      await w.close();
    }
  });

  test("publish() is still the unary Send with the broker's whole answer", T, async () => {
    const w = new Webhook(broker.target, { publishSettings: { maxMessages: 10, maxDelayMs: LONG } });
    const path = newPath("unary");
    try {
      const r = await w.publish(path, { unary: true }, { idempotencyKey: `k-${path}` });
      assert.ok(r.messageId);
      assert.equal(r.duplicate, false);
      assert.equal(r.scheduleId, "");
      assert.equal(w.publishing, 0);
    } finally {
      await w.close();
    }
  });
});

describe("publishSettings validation", () => {
  const bad: [unknown, ErrorConstructor, RegExp][] = [
    [{ maxDelayMs: 0 }, RangeError, /maxDelayMs must be a positive/],
    [{ maxDelayMs: -1 }, RangeError, /maxDelayMs must be a positive/],
    [{ maxDelayMs: Number.NaN }, RangeError, /maxDelayMs must be a positive/],
    [{ maxDelayMs: Number.POSITIVE_INFINITY }, RangeError, /maxDelayMs must be a positive/],
    [{ maxDelayMs: "5" }, TypeError, /maxDelayMs must be a number/],
    [{ maxMessages: 0 }, RangeError, /maxMessages must be >= 1/],
    [{ maxMessages: 10_001 }, RangeError, /maxMessages must be <= 10000/],
    [{ maxMessages: 2.5 }, TypeError, /maxMessages must be an integer/],
    [{ maxBytes: 0 }, RangeError, /maxBytes must be >= 1/],
    [{ maxBytes: -5 }, RangeError, /maxBytes must be >= 1/],
    [{ maxBytes: null }, TypeError, /maxBytes must be a number/],
    [{ maxMessage: 10 }, TypeError, /unknown publishSettings field maxMessage/],
    [42, TypeError, /publishSettings must be an object/],
    [null, TypeError, /publishSettings must be an object/],
  ];
  for (const [settings, error, message] of bad) {
    test(`${JSON.stringify(settings)} throws ${error.name}`, () => {
      assert.throws(() => new Webhook("127.0.0.1:1", { publishSettings: settings as PublishSettings }), (e: unknown) => {
        assert.ok(e instanceof error, `${String(e)} is a ${error.name}`);
        assert.match((e as Error).message, message);
        return true;
      });
    });
  }

  test("the edges and a partial object are accepted", async () => {
    for (const s of [{ maxDelayMs: 0.001, maxMessages: 10_000, maxBytes: 1 }, { maxMessages: 1 }, {}]) {
      const w = new Webhook("127.0.0.1:1", { publishSettings: s });
      await w.close();
    }
  });
});
