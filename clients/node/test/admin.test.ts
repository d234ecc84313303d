// Admin against a real leanmqd (with --auth-tokens) on a private
// redis-server. Skipped when leanmqd, redis-server or redis-cli is missing.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { InterceptingCall, status, type Interceptor, type ServiceError } from "@grpc/grpc-js";
import { Admin, DeadLetterEntry, DeadLetterError, MAX_PAGE_SIZE, Webhook } from "leanmq-grpc";
import { ADMIN_TOKEN, Leanmqd, Redis, SDK_TOKEN, freePort, skipReason, tempDir, writeTokensFile } from "./real-broker";

const T = { timeout: 30_000 };

const sdkPath = (label: string) => `/sdk/admin/${label}/${randomBytes(4).toString("hex")}`;
const queueOf = (p: string) => p.replace(/^\/+|\/+$/g, "").replace(/\//g, "_");
const codeOf = (err: unknown) => (err as Partial<ServiceError>)?.code;
const hasCode = (code: number) => (err: unknown) => codeOf(err) === code;

/** Counts the calls made through a channel, by method name. */
function callCounter(): { calls: string[]; interceptor: Interceptor } {
  const calls: string[] = [];
  const interceptor: Interceptor = (options, nextCall) => {
    calls.push(options.method_definition.path.split("/").pop()!);
    return new InterceptingCall(nextCall(options));
  };
  return { calls, interceptor };
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

/** Resolves once `cond()` holds; rejects after `ms`. */
async function eventually(cond: () => Promise<boolean> | boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe("Admin against leanmqd", { skip: skipReason() }, () => {
  let tmp: ReturnType<typeof tempDir>;
  let redis: Redis;
  let broker: Leanmqd;
  const closers: (() => unknown)[] = [];

  before(async () => {
    tmp = tempDir();
    redis = await Redis.start(tmp.dir);
    broker = await Leanmqd.start(redis.url, ["--auth-tokens", writeTokensFile(tmp.dir)]);
  });

  after(async () => {
    for (const close of closers) await close();
    await broker?.stop();
    await redis?.stop();
    tmp?.remove();
  });

  /** A webhook whose handler for `path` records what it gets and dead-letters it unless `accept`. */
  function consumer(path: string) {
    const w = new Webhook(broker.target, { token: ADMIN_TOKEN });
    w.on("warning", () => undefined);
    closers.push(() => w.close());
    const state = { got: [] as unknown[], accept: false };
    w.get(path, (data: unknown) => {
      state.got.push(data);
      if (!state.accept) throw new DeadLetterError("rejected by the test");
    });
    /** processMessages until `n` deliveries were handled in all. */
    const drive = (n: number) =>
      eventually(async () => (await w.processMessages({ waitMs: 500 })) >= 0 && state.got.length >= n, 20_000, `${n} deliveries`);
    return { w, state, drive };
  }

  function admin(token = ADMIN_TOKEN, extra = {}) {
    const a = new Admin(broker.target, { token, ...extra });
    closers.push(() => a.close());
    return a;
  }

  test("queues and dead letters, round trip", T, async () => {
    const path = sdkPath("round");
    const q = queueOf(path);
    const { w, state, drive } = consumer(path);
    const sent = [await w.send(path, { n: 1 }), await w.send(path, { n: 2 }), await w.send(path, Buffer.from("\x00raw"))];
    await drive(3);
    const counter = callCounter();
    const a = admin(ADMIN_TOKEN, { channelOptions: { interceptors: [counter.interceptor] } });
    await eventually(async () => (await a.getQueue(path)).deadLetters === 3, 10_000, "3 dead letters");

    const summary = (await a.listQueues()).find((s) => s.queue === q);
    assert.ok(summary);
    assert.deepEqual([summary.stream, summary.length, summary.deadLetters], [`webhook:${q}`, 3, 3]);
    assert.ok(summary.paths.includes(path));
    const info = await a.getQueue(path);
    assert.deepEqual([info.queue, info.length, info.deadLetters], [q, 3, 3]);
    const group = info.groups.find((g) => g.name === `${q}-group`);
    assert.ok(group);
    assert.equal(group.pending, 0);
    assert.equal(group.oldestUnackedAgeMs, undefined);
    assert.equal((await a.getQueue(q)).queue, q);

    counter.calls.length = 0;
    const entries = await collect(a.listDeadLetters(path, { pageSize: 2 }));
    assert.deepEqual(counter.calls, ["ListDeadLetters", "ListDeadLetters"]);
    assert.ok(entries.every((e) => e instanceof DeadLetterEntry));
    // Oldest failure first; the handlers ran concurrently, so match them by message id.
    const bySent = sent.map((id) => entries.find((e) => e.originalMessageId === id)!);
    assert.ok(bySent.every((e) => e !== undefined));
    assert.deepEqual(bySent.slice(0, 2).map((e) => e.data), [{ n: 1 }, { n: 2 }]);
    assert.ok(Buffer.isBuffer(bySent[2]!.data));
    assert.equal((bySent[2]!.data as Buffer).toString("latin1"), "\x00raw");
    assert.equal(bySent[2]!.isJson, false);
    for (const e of entries) {
      assert.equal(e.path, path);
      assert.equal(e.lastReason, "rejected by the test");
      assert.equal(e.failures.at(-1)?.group, `${q}-group`);
      assert.ok(e.lastFailedAt instanceof Date);
    }
    // limit fetches no more than it needs; leaving the loop stops the paging.
    counter.calls.length = 0;
    const two = await collect(a.listDeadLetters(path, { pageSize: 2, limit: 2 }));
    assert.deepEqual(two.map((e) => e.id), entries.slice(0, 2).map((e) => e.id));
    assert.equal(counter.calls.length, 1);
    counter.calls.length = 0;
    for await (const _ of a.listDeadLetters(path, { pageSize: 1 })) break;
    assert.equal(counter.calls.length, 1);

    // Requeue one (through webhook.admin): it leaves the DLQ and is delivered again.
    const shared = w.admin;
    assert.equal(w.admin, shared);
    const res = await shared.requeueDeadLetters(path, { ids: [entries[0]!.id] });
    assert.equal(res.requeued.length, 1);
    assert.equal(res.requeued[0]!.deadLetterId, entries[0]!.id);
    assert.deepEqual(res.missing, []);
    const again = await shared.requeueDeadLetters(path, { ids: [entries[0]!.id] });
    assert.deepEqual([again.requeued, again.missing], [[], [entries[0]!.id]]);
    state.accept = true;
    await drive(4);
    assert.deepEqual(state.got[3], entries[0]!.data);

    // Delete one, purge the rest.
    assert.equal(await a.deleteDeadLetters(path, [entries[1]!.id]), 1);
    assert.equal(await a.deleteDeadLetters(path, [entries[1]!.id]), 0);
    assert.equal(await a.purgeDeadLetters(path), 1);
    assert.deepEqual(await collect(a.listDeadLetters(path)), []);

    // purgeQueue and deleteQueue want the queue name in confirm.
    await assert.rejects(a.purgeQueue(path, `not-${q}`), (err) => {
      assert.equal(codeOf(err), status.INVALID_ARGUMENT);
      assert.match((err as Error).message, /confirm/);
      return true;
    });
    assert.equal(await a.purgeQueue(path, q), 4);
    assert.equal((await a.getQueue(path)).length, 0);
    await assert.rejects(a.deleteQueue(path, "nope"), hasCode(status.INVALID_ARGUMENT));
    await a.deleteQueue(path, q);
    await assert.rejects(a.getQueue(path), hasCode(status.NOT_FOUND));
  });

  test("requeue since a time, all, and id lists over 1000", T, async () => {
    const path = sdkPath("since");
    const { w, state, drive } = consumer(path);
    const a = w.admin;
    const start = new Date(Date.now() - 5000);
    await w.send(path, { k: "a" });
    await w.send(path, { k: "b" });
    await drive(2);
    await eventually(async () => (await a.getQueue(path)).deadLetters === 2, 10_000, "2 dead letters");
    assert.equal((await a.requeueDeadLetters(path, { since: new Date(Date.now() + 3_600_000) })).requeued.length, 0);
    assert.equal((await a.requeueDeadLetters(path, { since: start })).requeued.length, 2);
    await drive(4); // redelivered, dead-lettered again
    await eventually(async () => (await a.getQueue(path)).deadLetters === 2, 10_000, "2 dead letters again");

    const counter = callCounter();
    const counted = admin(ADMIN_TOKEN, { channelOptions: { interceptors: [counter.interceptor] } });
    const absent = Array.from({ length: 1500 }, (_, i) => `${i + 1}-0`); // valid ids, none in the DLQ
    const none = await counted.requeueDeadLetters(path, { ids: absent });
    assert.deepEqual([none.requeued.length, none.missing.length], [0, 1500]);
    assert.equal(await counted.deleteDeadLetters(path, absent), 0);
    assert.deepEqual(counter.calls, ["RequeueDeadLetters", "RequeueDeadLetters", "DeleteDeadLetters", "DeleteDeadLetters"]);

    assert.equal((await a.requeueDeadLetters(path, { all: true })).requeued.length, 2);
    state.accept = true;
    await drive(6);
    assert.deepEqual(state.got.slice(4).map((d) => (d as { k: string }).k).sort(), ["a", "b"]);
    assert.equal((await a.getQueue(path)).deadLetters, 0);
  });

  test("bad requests and refusals", T, async () => {
    const path = sdkPath("bad");
    const a = admin();
    for (const sel of [{}, { ids: ["1-0"], all: true }, { all: true, since: new Date() }]) {
      await assert.rejects(a.requeueDeadLetters(path, sel as never), TypeError);
    }
    await assert.rejects(a.requeueDeadLetters(path, { ids: "1-0" } as never), TypeError);
    await assert.rejects(a.requeueDeadLetters(path, { since: new Date(NaN) }), TypeError);
    await assert.rejects(a.deleteDeadLetters(path, []), RangeError);
    await assert.rejects(a.deleteDeadLetters(path, ["1-0", ""]), TypeError);
    for (const pageSize of [0, MAX_PAGE_SIZE + 1, 1.5]) {
      assert.throws(() => a.listDeadLetters(path, { pageSize }), RangeError);
    }
    assert.throws(() => a.listDeadLetters(path, { limit: -1 }), RangeError);
    assert.throws(() => new Admin(broker.target, { token: "two words" }), TypeError);
    await assert.rejects(a.deleteDeadLetters(path, ["not-an-id"]), hasCode(status.INVALID_ARGUMENT));
    await assert.rejects(a.getQueue(path), hasCode(status.NOT_FOUND));
    await assert.rejects(a.getQueue("/other/x"), hasCode(status.PERMISSION_DENIED));

    const anonymous = new Admin(broker.target);
    closers.push(() => anonymous.close());
    await assert.rejects(anonymous.listQueues(), hasCode(status.UNAUTHENTICATED));
    const noGrant = admin(SDK_TOKEN);
    await assert.rejects(noGrant.getQueue(path), (err) => {
      assert.equal(codeOf(err), status.PERMISSION_DENIED);
      assert.match((err as Error).message, /admin/);
      return true;
    });
    await assert.rejects(collect(noGrant.listDeadLetters(path)), hasCode(status.PERMISSION_DENIED));
    await assert.rejects(noGrant.requeueDeadLetters(path, { all: true }), hasCode(status.PERMISSION_DENIED));
    assert.deepEqual(await noGrant.listQueues(), []); // filtered by the grant, not refused

    const unreachable = new Admin(`127.0.0.1:${await freePort()}`, { callTimeoutMs: 5000 });
    closers.push(() => unreachable.close());
    await assert.rejects(unreachable.listQueues(), hasCode(status.UNAVAILABLE));
  });
});
