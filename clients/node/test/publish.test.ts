// publishOnStream() (docs/publish.md) against a real leanmqd on a private
// redis-server: many messages over one stream, each answered on its own
// promise; a bad message rejects only its own; the window is honoured;
// flush() waits; a leanmqd restart mid-publish resends the unanswered
// messages under their idempotency keys without storing any twice.
// Skipped when leanmqd, redis-server or redis-cli is missing.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { status, type ServiceError } from "@grpc/grpc-js";
import { Webhook } from "leanmq-grpc";
import { Leanmqd, Redis, SEND_ONLY_TOKEN, skipReason, tempDir, writeTokensFile } from "./real-broker";

const T = { timeout: 120_000 };
const WINDOW = 8;

const newPath = (label: string) => `/publish/${label}/${randomBytes(4).toString("hex")}`;
const streamOf = (p: string) => `webhook:${p.replace(/^\/+|\/+$/g, "").replace(/\//g, "_")}`;

/** Polls `cond` (a state check, not a sleep as synchronisation) until it holds or `ms` pass. */
async function eventually(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe("publishOnStream() against leanmqd", { skip: skipReason() }, () => {
  let tmp: ReturnType<typeof tempDir>;
  let redis: Redis;
  let broker: Leanmqd;
  let small: Leanmqd;
  let authed: Leanmqd;

  /** The ids of `stream`'s entries, from XRANGE. */
  const storedIds = (stream: string) =>
    redis
      .cli("XRANGE", stream, "-", "+")
      .split("\n")
      .filter((l) => /^\d+-\d+$/.test(l));

  before(async () => {
    tmp = tempDir();
    redis = await Redis.start(tmp.dir);
    broker = await Leanmqd.start(redis.url, []);
    small = await Leanmqd.start(redis.url, ["--publish-window", String(WINDOW)]);
    authed = await Leanmqd.start(redis.url, ["--auth-tokens", writeTokensFile(tmp.dir)]);
  });

  after(async () => {
    await broker?.stop();
    await small?.stop();
    await authed?.stop();
    await redis?.stop();
    tmp?.remove();
  });

  test("1000 publishes resolve with 1000 distinct ids, each stored", T, async () => {
    const w = new Webhook(broker.target);
    const path = newPath("many");
    try {
      const ids = await Promise.all(Array.from({ length: 1000 }, (_, i) => w.publishOnStream(path, { i })));
      assert.equal(new Set(ids).size, 1000);
      const stored = storedIds(streamOf(path));
      assert.equal(stored.length, 1000);
      assert.deepEqual([...stored].sort(), [...ids].sort());
      assert.equal(w.publishing, 0);
    } finally {
      await w.close();
    }
  });

  test("a bad message rejects its own promise as send() would; the others resolve", T, async () => {
    const w = new Webhook(broker.target);
    const path = newPath("bad");
    try {
      const results = await Promise.allSettled(
        Array.from({ length: 21 }, (_, i) => w.publishOnStream(path, { i }, { orderingKey: i === 10 ? "k".repeat(257) : "k" })),
      );
      const bad = results[10];
      assert.equal(bad.status, "rejected");
      const err = (bad as PromiseRejectedResult).reason as ServiceError;
      assert.ok(err instanceof Error);
      assert.equal(err.code, status.INVALID_ARGUMENT);
      assert.match(err.details, /ordering_key is 257 bytes; it must be at most 256 bytes/);
      assert.match(err.message, /^3 INVALID_ARGUMENT: /);
      // The unary send rejects the same message with the same code and details.
      await assert.rejects(w.send(path, { i: 10 }, { orderingKey: "k".repeat(257) }), (e: ServiceError) => {
        assert.equal(e.code, err.code);
        assert.equal(e.details, err.details);
        return true;
      });
      const ok = results.filter((r) => r.status === "fulfilled");
      assert.equal(ok.length, 20);
      assert.equal(storedIds(streamOf(path)).length, 20);
    } finally {
      await w.close();
    }
  });

  test("the server's window bounds the unanswered messages; flush() waits for all", T, async () => {
    const w = new Webhook(small.target);
    const path = newPath("window");
    try {
      await w.publishOnStream(path, { first: true }); // the window header has arrived
      let most = 0;
      let settled = 0;
      const all: Promise<string>[] = [];
      for (let i = 0; i < 300; i++) {
        const p = w.publishOnStream(path, { i });
        most = Math.max(most, w.publishing);
        p.then(() => {
          settled++;
          most = Math.max(most, w.publishing);
        });
        all.push(p);
      }
      assert.ok(w.publishing > 0, "some messages are still unanswered before flush()");
      await w.flush();
      assert.equal(settled, 300);
      assert.equal(w.publishing, 0);
      assert.ok(most <= WINDOW, `at most ${WINDOW} unanswered, saw ${most}`);
      assert.ok(most >= 1);
      assert.equal(new Set(await Promise.all(all)).size, 300);
      assert.equal(storedIds(streamOf(path)).length, 301);
    } finally {
      await w.close();
    }
  });

  test("close() waits for outstanding publishes", T, async () => {
    const w = new Webhook(broker.target);
    const path = newPath("close");
    let settled = 0;
    const all = Array.from({ length: 200 }, (_, i) => w.publishOnStream(path, { i }).then((id) => (settled++, id)));
    await w.close();
    assert.equal(settled, 200);
    assert.equal(new Set(await Promise.all(all)).size, 200);
    await assert.rejects(w.publishOnStream(path, 1), /webhook is closed/);
  });

  test("no token: every promise rejects UNAUTHENTICATED; a path outside the grant: PERMISSION_DENIED for that message", T, async () => {
    const anon = new Webhook(authed.target);
    const path = newPath("anon");
    try {
      const results = await Promise.allSettled([anon.publishOnStream(path, 1), anon.publishOnStream(path, 2)]);
      for (const r of results) {
        assert.equal(r.status, "rejected");
        assert.equal(((r as PromiseRejectedResult).reason as ServiceError).code, status.UNAUTHENTICATED);
      }
      assert.equal(anon.publishing, 0);
    } finally {
      await anon.close();
    }
    const w = new Webhook(authed.target, { token: SEND_ONLY_TOKEN });
    const allowed = `/other/${randomBytes(4).toString("hex")}`;
    try {
      const [denied, ok] = await Promise.allSettled([w.publishOnStream("/sdk/x", 1), w.publishOnStream(allowed, 2)]);
      assert.equal(denied.status, "rejected");
      assert.equal(((denied as PromiseRejectedResult).reason as ServiceError).code, status.PERMISSION_DENIED);
      assert.equal(ok.status, "fulfilled");
      assert.equal(storedIds(streamOf(allowed)).length, 1);
    } finally {
      await w.close();
    }
  });

  for (const signal of ["SIGTERM", "SIGKILL"] as const) {
    test(`a leanmqd restart (${signal}) mid-publish resends without duplicates`, T, async () => {
      const w = new Webhook(broker.target, { reconnect: { initialMs: 50, maxMs: 500 } });
      const path = newPath("restart");
      const N = 3000;
      let reconnects = 0;
      w.on("publishReconnecting", () => reconnects++);
      try {
        let settled = 0;
        const all = Array.from({ length: N }, (_, i) =>
          w.publishOnStream(path, { i }, i === 0 ? { idempotencyKey: `given-${path}` } : {}).finally(() => settled++),
        );
        await eventually(() => settled >= 100, 30_000, "the first answers");
        const settledBefore = settled;
        await broker.restart(signal);
        const ids = await Promise.all(all);
        assert.ok(settledBefore < N, `the restart came mid-publish (${settledBefore} of ${N} answered)`);
        assert.ok(reconnects >= 1, "the stream was reopened");
        assert.equal(new Set(ids).size, N);
        const stored = storedIds(streamOf(path));
        assert.equal(stored.length, N, "each message stored exactly once");
        assert.deepEqual([...stored].sort(), [...ids].sort());
      } finally {
        await w.close();
      }
    });
  }
});
