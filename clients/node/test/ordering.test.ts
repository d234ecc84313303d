// Ordering keys (docs/ordering.md) against a real leanmqd on a private
// redis-server: with several handlers in flight and some messages failing
// once, every key's messages are acked in send order, one at a time, and
// each delivery carries its key; a bad key is refused with the broker's
// message. Skipped when leanmqd, redis-server or redis-cli is missing.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { status, type ServiceError } from "@grpc/grpc-js";
import { Webhook, type BatchMessage, type Delivery } from "leanmq-grpc";
import { gate, until, within } from "./helpers";
import { Leanmqd, Redis, skipReason, tempDir } from "./real-broker";

const T = { timeout: 90_000 };
const KEYS = ["order-a", "order-b", "order-c"];
const PER_KEY = 20;

const newPath = (label: string) => `/ordering/${label}/${randomBytes(4).toString("hex")}`;
const queueOf = (p: string) => p.replace(/^\/+|\/+$/g, "").replace(/\//g, "_");
const codeOf = (err: unknown) => (err as Partial<ServiceError>)?.code;
const detailsOf = (err: unknown) => String((err as Partial<ServiceError>)?.details ?? "");

/** Every 7th message (by send sequence) fails its first attempt. */
const failsOnce = (seq: number, attempt: number) => seq % 7 === 6 && attempt === 1;

interface Body {
  key: string;
  i: number;
  seq: number;
}

/** Polls `cond` (a state check, not a sleep as synchronisation) until it holds or `ms` pass. */
async function eventually(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe("ordering keys against leanmqd", { skip: skipReason() }, () => {
  let tmp: ReturnType<typeof tempDir>;
  let redis: Redis;
  let broker: Leanmqd;

  before(async () => {
    tmp = tempDir();
    redis = await Redis.start(tmp.dir);
    broker = await Leanmqd.start(redis.url, ["--retry-min", "50ms", "--retry-max", "100ms"]);
  });

  after(async () => {
    await broker?.stop();
    await redis?.stop();
    tmp?.remove();
  });

  test("each key is acked in send order with handlers in flight", T, async () => {
    const w = new Webhook(broker.target, { concurrency: 8, stopTimeoutMs: 5000 });
    const path = newPath("run");
    const acked = new Map<string, number[]>(KEYS.map((k) => [k, []]));
    const inFlight = new Set<string>();
    const problems: string[] = [];
    const failed: number[] = [];
    const retried: number[] = [];
    let mostAtOnce = 0;
    let total = 0;
    // Each key's first message waits until all three are being handled: the
    // keys do not wait for each other, and several handlers run at once.
    const heads = gate();
    let headsIn = 0;
    w.get(path, async (body: Body, d: Delivery<Body>) => {
      if (d.orderingKey !== body.key) problems.push(`${body.key}/${body.i} came with ordering key "${d.orderingKey}"`);
      if (inFlight.has(body.key)) problems.push(`${body.key}/${body.i} delivered while its key's previous was in flight`);
      inFlight.add(body.key);
      mostAtOnce = Math.max(mostAtOnce, inFlight.size);
      if (d.attempt > 1) retried.push(body.seq);
      let ok = false;
      try {
        if (body.i === 0 && d.attempt === 1) {
          if (++headsIn === KEYS.length) heads.open();
          await within(heads.promise, 30_000, "the other keys' first messages");
        }
        if (failsOnce(body.seq, d.attempt)) throw new Error("fails once");
        ok = true;
      } finally {
        inFlight.delete(body.key);
        if (ok) {
          acked.get(body.key)!.push(body.i);
          total++;
        } else {
          failed.push(body.seq);
        }
      }
    });
    const subscribed = gate();
    w.once("subscribed", () => subscribed.open());
    const running = w.run();
    try {
      // The group exists before the sends (docs/ordering.md).
      await within(subscribed.promise, 10_000, "subscribed");
      const msgs: Body[] = [];
      for (let i = 0; i < PER_KEY; i++) KEYS.forEach((key, n) => msgs.push({ key, i, seq: i * KEYS.length + n }));
      const half = msgs.length / 2;
      for (const m of msgs.slice(0, half)) await w.send(path, m, { orderingKey: m.key });
      const batch: BatchMessage[] = msgs.slice(half).map((m) => ({ path, data: m, orderingKey: m.key }));
      assert.equal((await w.sendBatch(batch)).length, batch.length);
      await until(w, "settled", () => total === msgs.length, 60_000);
      const q = queueOf(path);
      await eventually(() => redis.pending(`webhook:${q}`, `${q}-group`) === 0, 10_000, "nothing pending");
    } finally {
      await w.stop();
      await running;
      w.close();
    }
    assert.deepEqual(problems, []);
    const want = Array.from({ length: PER_KEY }, (_, i) => i);
    for (const k of KEYS) assert.deepEqual(acked.get(k), want, `key ${k}`);
    const shouldFail = Array.from({ length: KEYS.length * PER_KEY }, (_, s) => s).filter((s) => failsOnce(s, 1));
    const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);
    assert.deepEqual(sorted(failed), shouldFail);
    assert.deepEqual(sorted(retried), shouldFail);
    assert.equal(mostAtOnce, KEYS.length);
  });

  test("a delivery without a key has an empty orderingKey", T, async () => {
    const w = new Webhook(broker.target);
    const path = newPath("plain");
    const got = new Map<string, string>();
    w.get(path, (data: Buffer, d: Delivery<Buffer>) => {
      got.set(data.toString(), d.orderingKey);
    });
    try {
      await w.send(path, Buffer.from("plain"));
      await w.send(path, Buffer.from("keyed"), { orderingKey: "k" });
      const deadline = Date.now() + 10_000;
      while (got.size < 2 && Date.now() < deadline) await w.processMessages({ waitMs: 1000 });
    } finally {
      w.close();
    }
    assert.deepEqual(Object.fromEntries(got), { plain: "", keyed: "k" });
  });

  test("a bad key is INVALID_ARGUMENT with the broker's message", T, async () => {
    const w = new Webhook(broker.target);
    const path = newPath("bad");
    const long = "k".repeat(257);
    try {
      await assert.rejects(w.send(path, { x: 1 }, { orderingKey: long }), (err) => {
        assert.equal(codeOf(err), status.INVALID_ARGUMENT);
        assert.match(detailsOf(err), /ordering_key is 257 bytes; it must be at most 256 bytes/);
        return true;
      });
      await assert.rejects(w.send(path, { x: 1 }, { orderingKey: "a\nb" }), (err) => {
        assert.equal(codeOf(err), status.INVALID_ARGUMENT);
        assert.match(detailsOf(err), /without control characters/);
        return true;
      });
      const batch = [
        { path, data: 1, orderingKey: "ok" },
        { path, data: 2, orderingKey: long },
      ];
      await assert.rejects(w.sendBatch(batch), (err) => {
        assert.equal(codeOf(err), status.INVALID_ARGUMENT);
        assert.match(detailsOf(err), /messages\[1\].*ordering_key is 257 bytes/);
        return true;
      });
      const stream = `webhook:${queueOf(path)}`;
      assert.equal(redis.cli("XLEN", stream), "0");
      await w.send(path, { x: 1 }, { orderingKey: "k".repeat(256) });
      assert.equal(redis.cli("XLEN", stream), "1");
    } finally {
      w.close();
    }
  });
});
