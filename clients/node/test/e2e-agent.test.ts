import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import * as path from "node:path";
import { FakeBroker } from "./fake-broker";
import { within } from "./helpers";

const AGENT = path.resolve(__dirname, "../../dist/e2e-agent.js");
const T = { timeout: 20_000 };

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the agent (asynchronously: the fake broker lives in this process). */
function agent(args: string[], onStderr?: (text: string) => void): { done: Promise<Ran> } {
  const child = spawn(process.execPath, [AGENT, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (b: Buffer) => (stdout += b.toString()));
  child.stderr.on("data", (b: Buffer) => {
    stderr += b.toString();
    onStderr?.(stderr);
  });
  const done = once(child, "close").then(([code]) => ({ code: code as number | null, stdout, stderr }));
  return { done: within(done, 15_000, `agent ${args[0]}`).catch((err) => {
    child.kill();
    throw err;
  }) };
}

test("e2e agent: send --json / --hex print the message id", T, async () => {
  const broker = new FakeBroker();
  const target = await broker.start();
  try {
    const a = await agent(["send", "--target", target, "--path", "/e2e/json/", "--json", '{"a": 1}', "--header", "k=v"]).done;
    assert.equal(a.code, 0, a.stderr);
    assert.equal(a.stdout.trim(), broker.messages[0]!.id);
    assert.equal(broker.sends[0]!.contentType, "application/json");
    assert.equal(broker.sends[0]!.payload.toString(), '{"a": 1}');
    assert.deepEqual(broker.sends[0]!.headers, { k: "v" });
    const b = await agent(["send", "--target", target, "--path", "/e2e/bin/", "--hex", "00ff10"]).done;
    assert.equal(b.code, 0, b.stderr);
    assert.equal(b.stdout.trim(), broker.messages[1]!.id);
    assert.equal(broker.sends[1]!.contentType, "application/octet-stream");
    assert.deepEqual([...broker.sends[1]!.payload], [0, 255, 16]);
    const c = await agent([
      "send", "--target", target, "--path", "/e2e/opts/", "--json", "[]",
      "--ttl", "90", "--delay", "0.25", "--idempotency-key", "key-1",
    ]).done;
    assert.equal(c.code, 0, c.stderr);
    assert.deepEqual(broker.sends[2]!.ttl, { seconds: 90, nanos: 0 });
    assert.deepEqual(broker.sends[2]!.delay, { seconds: 0, nanos: 250_000_000 });
    assert.equal(broker.sends[2]!.idempotencyKey, "key-1");
    const bad = await agent(["send", "--target", target, "--path", "/x/"]).done;
    assert.equal(bad.code, 2);
    const badStart = await agent(["consume", "--target", target, "--path", "/x/", "--count", "1", "--start", "yesterday"]).done;
    assert.equal(badStart.code, 2);
  } finally {
    await broker.stop();
  }
});

test("e2e agent: consume prints READY, one JSON line per delivery, settles per --mode, exits after --count", T, async () => {
  const broker = new FakeBroker({ retryDelayMs: 10 });
  const target = await broker.start();
  try {
    // ok: two deliveries, acked.
    let sent: Promise<void> | undefined;
    const ok = agent(["consume", "--target", target, "--path", "/e2e/ok/", "--group", "g", "--count", "2"], (err) => {
      if (!sent && err.includes("READY")) sent = sendDirect(broker, "/e2e/ok/", 2);
    });
    const r = await ok.done;
    await sent;
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /^READY$/m);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.equal(lines.length, 2);
    assert.deepEqual(Object.keys(lines[0]).sort(), ["attempt", "content_type", "headers", "message_id", "path", "payload_hex"]);
    assert.deepEqual(lines[0], {
      message_id: broker.messages[0]!.id,
      path: "/e2e/ok",
      content_type: "application/json",
      payload_hex: Buffer.from('{"i":0}').toString("hex"),
      attempt: 1,
      headers: { h: "0" },
    });
    assert.equal(broker.subscribeRequests[0]!.group, "g");
    assert.equal(broker.acks.length, 2);

    // deadletter: Nack{dead_letter, reason "e2e dead letter"}.
    await sendDirect(broker, "/e2e/dl/", 1);
    const dl = await agent(["consume", "--target", target, "--path", "/e2e/dl/", "--group", "g", "--count", "1", "--mode", "deadletter"]).done;
    assert.equal(dl.code, 0, dl.stderr);
    assert.deepEqual(
      broker.nacks.map((n) => [n.deadLetter, n.reason]),
      [[true, "e2e dead letter"]],
    );

    // fail: plain Nack, redelivered; attempt counts up.
    await sendDirect(broker, "/e2e/fail/", 1);
    const fail = await agent(["consume", "--target", target, "--path", "/e2e/fail/", "--group", "g", "--count", "2", "--mode", "fail"]).done;
    assert.equal(fail.code, 0, fail.stderr);
    const attempts = fail.stdout.trim().split("\n").map((l) => JSON.parse(l).attempt);
    assert.deepEqual(attempts, [1, 2]);
    assert.deepEqual(broker.nacks.slice(1).map((n) => [n.deadLetter, n.reason]), [[false, "e2e failure"], [false, "e2e failure"]]);

    // --start and an absent --group reach the Subscribe request.
    await sendDirect(broker, "/e2e/start/", 1);
    const st = await agent(["consume", "--target", target, "--path", "/e2e/start/", "--count", "1", "--start", "beginning"]).done;
    assert.equal(st.code, 0, st.stderr);
    assert.equal(broker.subscribeRequests.at(-1)!.group, "");
    assert.equal(broker.subscribeRequests.at(-1)!.start?.beginning, true);

    // sleep with a short ack deadline: the lease is extended, then acked.
    await sendDirect(broker, "/e2e/sleep/", 1);
    const sleep = await agent([
      "consume", "--target", target, "--path", "/e2e/sleep/", "--group", "g", "--count", "1",
      "--mode", "sleep:0.5", "--ack-deadline", "0.2",
    ]).done;
    assert.equal(sleep.code, 0, sleep.stderr);
    assert.ok(broker.extends.length >= 2, `extends: ${broker.extends.length}`);
    assert.deepEqual(broker.subscribeRequests.at(-1)!.ackDeadline, { seconds: 0, nanos: 200_000_000 });
    assert.equal(broker.messages.at(-1)!.state, "acked");
    assert.equal(broker.messages.at(-1)!.attempt, 1);
  } finally {
    await broker.stop();
  }
});

async function sendDirect(broker: FakeBroker, p: string, n: number): Promise<void> {
  const { Webhook } = await import("leanmq-grpc");
  const w = new Webhook(broker.target);
  try {
    for (let i = 0; i < n; i++) await w.send(p, { i }, { headers: { h: String(i) } });
  } finally {
    await w.close();
  }
}
