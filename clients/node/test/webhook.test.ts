import { test } from "node:test";
import assert from "node:assert/strict";
import { status } from "@grpc/grpc-js";
import { DeadLetterError, RetryAfterError, Webhook, type Delivery, type Outcome } from "leanmq-grpc";
import { FakeBroker } from "./fake-broker";
import { gate, until, within } from "./helpers";

const T = { timeout: 15_000 };

async function setup(options: ConstructorParameters<typeof FakeBroker>[0] = {}, webhookOptions: ConstructorParameters<typeof Webhook>[1] = {}) {
  const broker = new FakeBroker(options);
  const target = await broker.start();
  const webhook = new Webhook(target, { consumer: "test", ...webhookOptions });
  const warnings: Error[] = [];
  webhook.on("warning", (e: Error) => warnings.push(e));
  const settled: Array<{ delivery: Delivery; outcome: Outcome }> = [];
  webhook.on("settled", (delivery: Delivery, outcome: Outcome) => settled.push({ delivery, outcome }));
  const subscribed: string[] = [];
  webhook.on("subscribed", (path: string) => subscribed.push(path));
  const cleanup = async () => {
    await webhook.close();
    await broker.stop();
  };
  return { broker, webhook, warnings, settled, subscribed, cleanup };
}

test("handler outcomes: return → Ack, throw → Nack, DeadLetterError → dead letter, RetryAfterError → delayed Nack", T, async () => {
  const { broker, webhook, settled, cleanup } = await setup({ retryDelayMs: 60_000 });
  try {
    webhook.get("/outcomes/", async (data: { kind: string }) => {
      switch (data.kind) {
        case "ok":
          return;
        case "fail":
          throw new Error("boom");
        case "dead":
          throw new DeadLetterError("bad order");
        case "retry":
          throw new RetryAfterError(1500, "try later");
      }
    });
    const ac = new AbortController();
    const running = webhook.run({ signal: ac.signal });
    const ids: Record<string, string> = {};
    for (const kind of ["ok", "fail", "dead", "retry"]) ids[kind] = await webhook.send("/outcomes/", { kind });
    await until(webhook, "settled", () => settled.length === 4);
    ac.abort();
    await within(running, 5000, "run() to stop after abort");

    const idOf = (receipt: string) => receipt.split(":")[0];
    assert.deepEqual(
      broker.acks.map((a) => a.receipts.map(idOf)),
      [[ids.ok]],
    );
    assert.equal(broker.messages.find((m) => m.id === ids.ok)!.state, "acked");
    const nack = (kind: string) => broker.nacks.find((n) => idOf(n.receipt) === ids[kind])!;
    assert.deepEqual(
      { deadLetter: nack("fail").deadLetter, delay: nack("fail").delay, reason: nack("fail").reason },
      { deadLetter: false, delay: undefined, reason: "boom" },
    );
    assert.deepEqual(
      { deadLetter: nack("dead").deadLetter, reason: nack("dead").reason },
      { deadLetter: true, reason: "bad order" },
    );
    assert.deepEqual(
      { deadLetter: nack("retry").deadLetter, delay: nack("retry").delay, reason: nack("retry").reason },
      { deadLetter: false, delay: { seconds: 1, nanos: 500_000_000 }, reason: "try later" },
    );
    assert.equal(broker.messages.find((m) => m.id === ids.dead)!.state, "dead");
    const kinds = Object.fromEntries(settled.map((s) => [s.delivery.messageId, s.outcome.kind]));
    assert.deepEqual(kinds, { [ids.ok]: "ack", [ids.fail]: "nack", [ids.dead]: "nack", [ids.retry]: "nack" });
  } finally {
    await cleanup();
  }
});

test("payloads: objects as JSON, bytes as octet-stream; handlers get parsed JSON or a Buffer", T, async () => {
  const { broker, webhook, settled, cleanup } = await setup();
  try {
    const seen = new Map<string, { data: unknown; delivery: Delivery }>();
    webhook.get("/payloads/", (data, delivery) => {
      seen.set(delivery.messageId, { data, delivery });
    });
    const running = webhook.run();
    const obj = await webhook.send("/payloads/", { order_id: "ORD-1", n: 2, nested: { a: [1, "x"] } }, { headers: { "x-trace": "t1" } });
    const buf = await webhook.send("/payloads/", Buffer.from([0, 1, 2, 255]));
    const u8 = await webhook.send("/payloads/", new Uint8Array([9, 8, 7]));
    const str = await webhook.send("/payloads/", "just text");
    const raw = await webhook.send("/payloads/", Buffer.from('{"b":1,"a":2}'), { contentType: "application/json" });
    const [b1, b2] = await webhook.sendBatch([
      { path: "/payloads/", data: { batch: 1 } },
      { path: "/payloads/", data: Buffer.from("bytes") },
    ]);
    await until(webhook, "settled", () => settled.length === 7);
    await webhook.stop();
    await running;

    assert.deepEqual(
      broker.sends.map((s) => s.contentType),
      ["application/json", "application/octet-stream", "application/octet-stream", "application/json", "application/json", "application/json", "application/octet-stream"],
    );
    assert.equal(broker.sends[0]!.payload.toString(), '{"order_id":"ORD-1","n":2,"nested":{"a":[1,"x"]}}');
    assert.deepEqual(broker.sends[0]!.headers, { "x-trace": "t1" });

    assert.deepEqual(seen.get(obj)!.data, { order_id: "ORD-1", n: 2, nested: { a: [1, "x"] } });
    assert.equal(seen.get(obj)!.delivery.headers["x-trace"], "t1");
    assert.equal(seen.get(obj)!.delivery.attempt, 1);
    const bytes = seen.get(buf)!.data;
    assert.ok(Buffer.isBuffer(bytes));
    assert.deepEqual([...(bytes as Buffer)], [0, 1, 2, 255]);
    assert.ok(Buffer.isBuffer(seen.get(u8)!.data));
    assert.deepEqual([...(seen.get(u8)!.data as Buffer)], [9, 8, 7]);
    assert.equal(seen.get(str)!.data, "just text");
    assert.deepEqual(seen.get(raw)!.data, { b: 1, a: 2 });
    assert.deepEqual(seen.get(b1!)!.data, { batch: 1 });
    assert.equal((seen.get(b2!)!.data as Buffer).toString(), "bytes");
    assert.equal(broker.acks.length, 7);
  } finally {
    await cleanup();
  }
});

test("an application/json payload that is not JSON is dead-lettered without running the handler", T, async () => {
  const { broker, webhook, settled, cleanup } = await setup();
  try {
    let calls = 0;
    webhook.get("/badjson/", () => {
      calls++;
    });
    const running = webhook.run();
    await webhook.send("/badjson/", Buffer.from("{not json"), { contentType: "application/json" });
    await until(webhook, "settled", () => settled.length === 1);
    await webhook.stop();
    await running;
    assert.equal(calls, 0);
    assert.equal(broker.nacks.length, 1);
    assert.equal(broker.nacks[0]!.deadLetter, true);
    assert.match(broker.nacks[0]!.reason, /^invalid application\/json payload/);
  } finally {
    await cleanup();
  }
});

test("send rejects values that cannot be JSON and content types that need bytes", T, async () => {
  const { webhook, cleanup } = await setup();
  try {
    await assert.rejects(webhook.send("/x/", undefined), TypeError);
    await assert.rejects(webhook.send("/x/", { a: 1 }, { contentType: "text/plain" }), TypeError);
    await assert.rejects(webhook.send("/", { a: 1 }), (err: { code?: number }) => err.code === status.INVALID_ARGUMENT);
  } finally {
    await cleanup();
  }
});

test("publish(): TTL, delay, deliver-at and idempotency key go on the wire; subscribe start positions too", T, async () => {
  const { broker, webhook, cleanup } = await setup();
  try {
    const at = new Date("2030-01-02T03:04:05.678Z");
    const r = await webhook.publish("/opts/", { a: 1 }, { ttlMs: 60_000, delayMs: 1500, idempotencyKey: "k-1" });
    assert.deepEqual(Object.keys(r).sort(), ["duplicate", "messageId", "scheduleId"]);
    assert.equal(r.messageId, broker.messages[0]!.id);
    assert.equal(r.duplicate, false);
    await webhook.publishBatch([{ path: "/opts/", data: Buffer.from("x"), deliverAt: at }]);
    const [first, second] = broker.sends;
    assert.deepEqual(first!.ttl, { seconds: 60, nanos: 0 });
    assert.deepEqual(first!.delay, { seconds: 1, nanos: 500_000_000 });
    assert.equal(first!.deliverAt, undefined);
    assert.equal(first!.idempotencyKey, "k-1");
    assert.equal(second!.deliverAt?.getTime(), at.getTime());
    assert.equal(second!.ttl, undefined);
    assert.equal(second!.idempotencyKey, "");

    const starts = ["beginning", "now", { afterId: "1-0" }, { atTime: at }] as const;
    for (const start of starts) {
      const ac = new AbortController();
      const it = webhook.subscribe("/opts/", { start, signal: ac.signal, group: "replay" });
      const next = it.next();
      await until(broker, "subscribe", () => broker.subscribeRequests.length === starts.indexOf(start) + 1);
      ac.abort();
      await within(next, 5000, "iterator to end");
      await within(it.return(), 5000, "iterator to close");
    }
    assert.deepEqual(
      broker.subscribeRequests.map((r) => r.start),
      [
        { beginning: true, now: undefined, afterId: undefined, atTime: undefined },
        { beginning: undefined, now: true, afterId: undefined, atTime: undefined },
        { beginning: undefined, now: undefined, afterId: "1-0", atTime: undefined },
        { beginning: undefined, now: undefined, afterId: undefined, atTime: at },
      ],
    );
  } finally {
    await cleanup();
  }
});

test("concurrency: never more handlers at once than `concurrency`, even if the broker sends more", T, async () => {
  const { broker, webhook, settled, cleanup } = await setup({ ignoreMaxInFlight: true });
  try {
    let running = 0;
    let max = 0;
    let started = 0;
    const release = gate();
    const startedEvents = new (await import("node:events")).EventEmitter();
    webhook.get(
      "/conc/",
      async () => {
        running++;
        started++;
        max = Math.max(max, running);
        startedEvents.emit("started");
        await release.promise;
        running--;
      },
      { concurrency: 3 },
    );
    const run = webhook.run();
    await webhook.sendBatch(Array.from({ length: 10 }, (_, i) => ({ path: "/conc/", data: { i } })));
    await until(broker, "delivered", () => broker.delivered === 10);
    await until(startedEvents, "started", () => started === 3);
    // One more round trip on the same connection: the 10 deliveries are in the client by now.
    await webhook.send("/elsewhere/", {});
    assert.equal(running, 3);
    assert.equal(started, 3);
    release.open();
    await until(webhook, "settled", () => settled.length === 10);
    await webhook.stop();
    await run;
    assert.equal(max, 3);
    assert.equal(started, 10);
    assert.equal(broker.subscribeRequests[0]!.maxInFlight, 3);
    assert.equal(broker.acks.length, 10);
  } finally {
    await cleanup();
  }
});

test("lease extension: a slow handler's delivery is extended at about half the lease", T, async () => {
  const { broker, webhook, settled, cleanup } = await setup({}, { ackDeadlineMs: 300 });
  try {
    let expired = 0;
    broker.on("expired", () => expired++);
    webhook.get("/slow/", async (_data, delivery) => {
      // Stay busy until the SDK has extended the lease twice (> the 300 ms lease).
      await until(broker, "extend", () => broker.extends.filter((e) => e.receipt === delivery.receipt).length >= 2, 5000);
    });
    const started = Date.now();
    const run = webhook.run();
    const id = await webhook.send("/slow/", { slow: true });
    await until(webhook, "settled", () => settled.length === 1);
    const elapsed = Date.now() - started;
    await webhook.stop();
    await run;
    assert.ok(elapsed >= 150, `took ${elapsed} ms`);
    assert.equal(broker.subscribeRequests[0]!.ackDeadline?.nanos, 300_000_000);
    assert.ok(broker.extends.length >= 2);
    for (const e of broker.extends) assert.deepEqual(e.extension, { seconds: 0, nanos: 300_000_000 });
    assert.equal(expired, 0, "the lease never expired");
    assert.equal(broker.messages.find((m) => m.id === id)!.state, "acked");
    assert.equal(broker.messages.find((m) => m.id === id)!.attempt, 1);
    const after = broker.extends.length;
    // No more Extend calls once settled: a further Ack round trip shows none arrived.
    await webhook.send("/other/", {});
    assert.equal(broker.extends.length, after);
  } finally {
    await cleanup();
  }
});

test("reconnect: a stream ended with UNAVAILABLE is reopened, and in-flight deliveries can still be acked", T, async () => {
  const { broker, webhook, settled, cleanup } = await setup({}, { reconnect: { initialMs: 50, maxMs: 200 } });
  try {
    const reconnects: Array<{ path: string; error?: { code: number }; delayMs: number }> = [];
    webhook.on("reconnecting", (e) => reconnects.push(e));
    const firstRelease = gate();
    const got: string[] = [];
    const handled = new (await import("node:events")).EventEmitter();
    webhook.get("/reconnect/", async (data: { n: number }) => {
      got.push(`start ${data.n}`);
      handled.emit("start");
      if (data.n === 1) await firstRelease.promise;
    });
    const run = webhook.run();
    await until(broker, "subscribe", () => broker.subscribeRequests.length === 1);
    await webhook.send("/reconnect/", { n: 1 });
    await until(handled, "start", () => got.length === 1);

    broker.endStreams(status.UNAVAILABLE);
    await until(webhook, "reconnecting", () => reconnects.length === 1);
    assert.equal(reconnects[0]!.error?.code, status.UNAVAILABLE);
    assert.ok(reconnects[0]!.delayMs >= 25 && reconnects[0]!.delayMs <= 50, `delay ${reconnects[0]!.delayMs}`);
    await until(broker, "subscribe", () => broker.subscribeRequests.length === 2);

    // The handler that was running across the reconnect still acks.
    firstRelease.open();
    await until(webhook, "settled", () => settled.length === 1);
    assert.equal(settled[0]!.outcome.kind, "ack");
    assert.equal(broker.messages[0]!.state, "acked");

    // New messages arrive on the new stream.
    await webhook.send("/reconnect/", { n: 2 });
    await until(webhook, "settled", () => settled.length === 2);
    assert.deepEqual(got, ["start 1", "start 2"]);
    await webhook.stop();
    await run;
    assert.equal(broker.acks.length, 2);
  } finally {
    await cleanup();
  }
});

test("reconnect: a stream the server ends cleanly (OK) is reopened too", T, async () => {
  const { broker, webhook, settled, cleanup } = await setup({}, { reconnect: { initialMs: 20, maxMs: 100 } });
  try {
    const reconnects: Array<{ error?: unknown }> = [];
    webhook.on("reconnecting", (e) => reconnects.push(e));
    webhook.get("/ended/", () => undefined);
    const run = webhook.run();
    await until(broker, "subscribe", () => broker.subscribeRequests.length === 1);
    broker.endStreams(status.OK);
    await until(broker, "subscribe", () => broker.subscribeRequests.length === 2);
    assert.equal(reconnects.length, 1);
    assert.equal(reconnects[0]!.error, undefined);
    await webhook.send("/ended/", { after: "reopen" });
    await until(webhook, "settled", () => settled.length === 1);
    await webhook.stop();
    await run;
    assert.equal(broker.acks.length, 1);
  } finally {
    await cleanup();
  }
});

test("reconnect: keeps retrying with backoff while the broker is unreachable", T, async () => {
  // Reserve a port, then free it: nothing listens there at first.
  const probe = new FakeBroker();
  await probe.start();
  const port = probe.port;
  await probe.stop();
  const webhook = new Webhook(`127.0.0.1:${port}`, { reconnect: { initialMs: 20, maxMs: 80 } });
  const delays: number[] = [];
  webhook.on("reconnecting", (e: { delayMs: number; error?: { code: number } }) => {
    assert.equal(e.error?.code, status.UNAVAILABLE);
    delays.push(e.delayMs);
  });
  webhook.get("/down/", () => undefined);
  const run = webhook.run();
  try {
    await until(webhook, "reconnecting", () => delays.length >= 4);
    assert.ok(delays[0]! >= 10 && delays[0]! <= 20, `first ${delays[0]}`);
    assert.ok(delays[3]! >= 40 && delays[3]! <= 80, `fourth ${delays[3]}`);
  } finally {
    await webhook.close();
    await within(run, 5000, "run() to end after close()");
  }
});

test("graceful stop: cancels the streams, lets running handlers finish, nacks those that do not", T, async () => {
  const { broker, webhook, settled, cleanup } = await setup({ retryDelayMs: 60_000 });
  try {
    const quick = gate();
    const events = new (await import("node:events")).EventEmitter();
    const started: string[] = [];
    let stuckDelivery: Delivery | undefined;
    webhook.get(
      "/stop/",
      async (data: { name: string }, delivery) => {
        started.push(data.name);
        events.emit("started");
        if (data.name === "quick") return quick.promise;
        stuckDelivery = delivery;
        // Never finishes on its own; gives up when the SDK abandons it.
        await new Promise((resolve) => delivery.signal.addEventListener("abort", resolve));
      },
      { concurrency: 2 },
    );
    const run = webhook.run();
    const quickId = await webhook.send("/stop/", { name: "quick" });
    const stuckId = await webhook.send("/stop/", { name: "stuck" });
    await until(events, "started", () => started.length === 2);

    let cancelled = 0;
    broker.on("cancelled", () => cancelled++);
    const stopping = webhook.stop({ timeoutMs: 300 });
    await until(broker, "cancelled", () => cancelled === 1);
    // Stream is gone: a new message is not taken.
    await webhook.send("/stop/", { name: "late" });
    quick.open();
    await within(stopping, 5000, "stop()");
    await within(run, 1000, "run() after stop()");

    assert.deepEqual(started, ["quick", "stuck"]);
    assert.deepEqual(broker.acks.map((a) => a.receipts[0]!.split(":")[0]), [quickId]);
    assert.equal(broker.nacks.length, 1);
    assert.equal(broker.nacks[0]!.receipt.split(":")[0], stuckId);
    assert.match(broker.nacks[0]!.reason, /stop timeout/);
    assert.equal(stuckDelivery!.signal.aborted, true);
    assert.deepEqual(
      settled.map((s) => s.outcome.kind).sort(),
      ["abandoned", "ack"],
    );
    assert.equal(broker.messages.find((m) => m.path === "/stop" && m.state === "ready" && m.attempt === 0) !== undefined, true);
  } finally {
    await cleanup();
  }
});

test("run() rejects when the broker refuses the subscription (INVALID_ARGUMENT), and can run again", T, async () => {
  const { webhook, cleanup } = await setup();
  try {
    webhook.get("/", () => undefined);
    await assert.rejects(within(webhook.run(), 5000, "run()"), (err: { code?: number }) => err.code === status.INVALID_ARGUMENT);
    // The failed run cleaned up: a second run() is allowed (and refused the same way).
    await assert.rejects(within(webhook.run(), 5000, "second run()"), (err: { code?: number }) => err.code === status.INVALID_ARGUMENT);
  } finally {
    await cleanup();
  }
});

test("subscribe(): async iterator with ack / nack / extend; break cancels the stream", T, async () => {
  const { broker, webhook, cleanup } = await setup({ retryDelayMs: 60_000 });
  try {
    const ids = await webhook.sendBatch([
      { path: "/iter/", data: { n: 1 } },
      { path: "/iter/", data: Buffer.from("two") },
      { path: "/iter/", data: { n: 3 } },
      { path: "/iter/", data: { n: 4 } },
    ]);
    let cancelled = 0;
    broker.on("cancelled", () => cancelled++);
    const seen: unknown[] = [];
    for await (const d of webhook.subscribe("/iter/", { concurrency: 5, group: "g1", ackDeadlineMs: 10_000 })) {
      seen.push(d.data);
      if (seen.length === 1) {
        const until2 = await d.extend(20_000);
        assert.ok(until2 instanceof Date);
        await d.ack();
      } else if (seen.length === 2) {
        await d.nack({ delay: 2500 });
      } else if (seen.length === 3) {
        await d.nack({ deadLetter: true, reason: "nope" });
        break;
      }
    }
    await until(broker, "cancelled", () => cancelled === 1);
    assert.deepEqual(seen.slice(0, 1), [{ n: 1 }]);
    assert.equal((seen[1] as Buffer).toString(), "two");
    assert.deepEqual(seen[2], { n: 3 });
    const req = broker.subscribeRequests[0]!;
    assert.deepEqual(
      { path: req.path, group: req.group, maxInFlight: req.maxInFlight, ackDeadline: req.ackDeadline },
      { path: "/iter/", group: "g1", maxInFlight: 5, ackDeadline: { seconds: 10, nanos: 0 } },
    );
    assert.deepEqual(broker.extends.map((e) => [e.receipt.split(":")[0], e.extension]), [[ids[0], { seconds: 20, nanos: 0 }]]);
    assert.deepEqual(broker.acks.map((a) => a.receipts[0]!.split(":")[0]), [ids[0]]);
    const byId = (id: string) => broker.nacks.find((n) => n.receipt.split(":")[0] === id)!;
    assert.deepEqual(byId(ids[1]!).delay, { seconds: 2, nanos: 500_000_000 });
    assert.equal(byId(ids[2]!).deadLetter, true);
    assert.equal(byId(ids[2]!).reason, "nope");
    // The 4th was buffered but never handed out: given back with a Nack.
    await until(broker, "nack", () => broker.nacks.length === 3);
    assert.equal(byId(ids[3]!).deadLetter, false);
  } finally {
    await cleanup();
  }
});

test("subscribe(): an AbortSignal ends the iteration; settling twice is guarded", T, async () => {
  const { broker, webhook, cleanup } = await setup();
  try {
    await webhook.send("/iter2/", { only: true });
    const ac = new AbortController();
    const seen: Delivery[] = [];
    for await (const d of webhook.subscribe("/iter2/", { signal: ac.signal })) {
      seen.push(d);
      assert.equal(await d.ack(), 1 /* ACKED */);
      assert.equal(d.settled, true);
      assert.equal(await d.ack(), 1, "a second ack() returns the first result");
      await assert.rejects(d.nack(), /already acked/);
      ac.abort();
    }
    assert.equal(seen.length, 1);
    assert.equal(broker.acks.length, 1);
  } finally {
    await cleanup();
  }
});

test("processMessages(): pull, handle, settle (LeanMQ's process_messages)", T, async () => {
  const { broker, webhook, cleanup } = await setup({ retryDelayMs: 60_000 });
  try {
    const seen: unknown[] = [];
    webhook.get("/pull/", (data: { n: number }) => {
      seen.push(data);
      if (data.n === 2) throw new Error("no");
    });
    await webhook.sendBatch([1, 2, 3].map((n) => ({ path: "/pull/", data: { n } })));
    const processed = await webhook.processMessages({ count: 10 });
    assert.equal(processed, 3);
    assert.deepEqual(seen, [{ n: 1 }, { n: 2 }, { n: 3 }]);
    assert.equal(broker.acks.length, 2);
    assert.equal(broker.nacks.length, 1);
    assert.equal(broker.nacks[0]!.reason, "no");
    assert.equal(await webhook.processMessages(), 0);
  } finally {
    await cleanup();
  }
});
