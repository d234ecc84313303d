// `token` and TLS against a real leanmqd started with --auth-tokens (and
// --tls-cert/--tls-key). Skipped when leanmqd, redis-server, redis-cli or
// openssl is missing.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { credentials, status, type ServiceError } from "@grpc/grpc-js";
import { Webhook, type Delivery } from "leanmq-grpc";
import { within } from "./helpers";
import {
  Leanmqd,
  Redis,
  SDK_TOKEN,
  SEND_ONLY_TOKEN,
  selfSignedCert,
  skipReason,
  tempDir,
  writeTokensFile,
} from "./real-broker";

const T = { timeout: 30_000 };

const sdkPath = (label: string) => `/sdk/${label}/${randomBytes(4).toString("hex")}`;
const queueOf = (p: string) => p.replace(/^\/+|\/+$/g, "").replace(/\//g, "_");

function codeOf(err: unknown): number | undefined {
  return (err as Partial<ServiceError>)?.code;
}

/** Resolves once `cond()` holds; rejects after `ms`. */
async function eventually(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test("token must be a non-empty string without whitespace", () => {
  for (const token of ["", "two words", "line\n"]) {
    assert.throws(() => new Webhook("127.0.0.1:1", { token }), TypeError);
  }
  new Webhook("127.0.0.1:1", { token: "fine" }).close();
});

describe("leanmqd with --auth-tokens", { skip: skipReason() }, () => {
  let tmp: ReturnType<typeof tempDir>;
  let redis: Redis;
  let broker: Leanmqd;
  const open: Webhook[] = [];
  const webhook = (token?: string) => {
    const w = new Webhook(broker.target, { token, stopTimeoutMs: 2000 });
    w.on("warning", () => undefined);
    open.push(w);
    return w;
  };

  before(async () => {
    tmp = tempDir();
    redis = await Redis.start(tmp.dir);
    broker = await Leanmqd.start(redis.url, ["--auth-tokens", writeTokensFile(tmp.dir)]);
  });

  after(async () => {
    await Promise.all(open.map((w) => w.close()));
    await broker?.stop();
    await redis?.stop();
    tmp?.remove();
  });

  test("no token or an unknown one: UNAUTHENTICATED", T, async () => {
    for (const token of [undefined, "not-a-known-token"]) {
      const w = webhook(token);
      const path = sdkPath("anon");
      await assert.rejects(w.send(path, { n: 1 }), (err) => codeOf(err) === status.UNAUTHENTICATED);
      w.get(path, () => undefined);
      await assert.rejects(within(w.run(), 10_000, "run"), (err) => codeOf(err) === status.UNAUTHENTICATED);
    }
  });

  test("the right token sends, runs a handler and acks", T, async () => {
    const w = webhook(SDK_TOKEN);
    const path = sdkPath("run");
    const got: unknown[] = [];
    let subscribed!: () => void;
    const isSubscribed = new Promise<void>((resolve) => (subscribed = resolve));
    w.on("subscribed", () => subscribed());
    w.get(path, (data: unknown) => {
      got.push(data);
    });
    const running = w.run();
    await within(isSubscribed, 10_000, "subscribed");
    const id = await w.send(path, { order_id: "ORD-1" });
    assert.ok(id);
    const q = queueOf(path);
    await eventually(() => got.length === 1, 10_000, "delivery");
    await eventually(() => redis.pending(`webhook:${q}`, `${q}-group`) === 0, 10_000, "ack");
    await w.stop();
    await running;
    assert.deepEqual(got, [{ order_id: "ORD-1" }]);
  });

  test("the right token subscribes with the iterator and acks", T, async () => {
    const w = webhook(SDK_TOKEN);
    const path = sdkPath("iter");
    const abort = new AbortController();
    const it = w.subscribe(path, { signal: abort.signal });
    const first = it.next(); // opens the stream
    let d: Delivery | undefined;
    // The stream may open after a first send; send until one is delivered.
    const sender = (async () => {
      while (d === undefined && !abort.signal.aborted) {
        await w.send(path, Buffer.from("iterated"));
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    })();
    d = (await within(first, 10_000, "delivery")).value as Delivery;
    assert.equal(d.payload.toString(), "iterated");
    await d.ack();
    abort.abort();
    await it.return(undefined);
    await sender;
  });

  test("a send-only token: sends in its grant, PERMISSION_DENIED subscribing /sdk/x", T, async () => {
    const w = webhook(SEND_ONLY_TOKEN);
    assert.ok(await w.send(`/other/${randomBytes(4).toString("hex")}`, { ok: true }));
    const path = sdkPath("denied");
    await assert.rejects(w.send(path, { n: 1 }), (err) => codeOf(err) === status.PERMISSION_DENIED);
    const it = w.subscribe(path);
    await assert.rejects(within(it.next(), 10_000, "subscribe"), (err) => {
      assert.equal(codeOf(err), status.PERMISSION_DENIED);
      assert.match((err as Error).message, /subscribe/);
      return true;
    });
    w.get(path, () => undefined);
    await assert.rejects(within(w.run(), 10_000, "run"), (err) => codeOf(err) === status.PERMISSION_DENIED);
  });
});

describe("leanmqd with TLS", { skip: skipReason("openssl") }, () => {
  test("send and receive over TLS with a token", T, async () => {
    const tmp = tempDir();
    let redis: Redis | undefined;
    let broker: Leanmqd | undefined;
    let w: Webhook | undefined;
    try {
      redis = await Redis.start(tmp.dir);
      const { cert, key } = selfSignedCert(tmp.dir);
      const creds = credentials.createSsl(readFileSync(cert));
      broker = await Leanmqd.start(
        redis.url,
        ["--tls-cert", cert, "--tls-key", key, "--auth-tokens", writeTokensFile(tmp.dir)],
        creds,
      );
      w = new Webhook(broker.target, {
        credentials: creds,
        token: SDK_TOKEN,
        // Node's TLS takes no IP address as the server name: check the certificate's DNS name.
        channelOptions: { "grpc.ssl_target_name_override": "localhost" },
      });
      const path = sdkPath("tls");
      const got: unknown[] = [];
      w.get(path, (data: unknown) => {
        got.push(data);
      });
      await w.send(path, { secure: true });
      assert.equal(await w.processMessages({ waitMs: 5000 }), 1);
      assert.deepEqual(got, [{ secure: true }]);
      const q = queueOf(path);
      assert.equal(redis.pending(`webhook:${q}`, `${q}-group`), 0);
    } finally {
      await w?.close();
      await broker?.stop();
      await redis?.stop();
      tmp.remove();
    }
  });
});
