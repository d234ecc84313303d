// A real leanmqd (and a private redis-server) for the auth and TLS tests.
// The binary is $LEANMQD or the repository's target/debug/leanmqd; the tests
// skip when it, redis-server or redis-cli (or openssl for TLS) is missing.
// Nothing here builds leanmqd.
import { execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { accessSync, constants, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { Client, Metadata, credentials as grpcCredentials, type ChannelCredentials } from "@grpc/grpc-js";

/** The repository root (this file runs from clients/node/build/test/). */
const REPO = path.resolve(__dirname, "../../../..");

/**
 * Three tokens: one may send to and subscribe to /sdk/>, one may only send
 * to /other/>, and one may also administer /sdk/> (the Admin tests).
 */
export const SDK_TOKEN = "sdk-token-3f9c1b7e";
export const SEND_ONLY_TOKEN = "send-only-token-8d2a4c6f";
export const ADMIN_TOKEN = "admin-token-5e1d9a27";

export function leanmqdBinary(): string | undefined {
  const given = process.env.LEANMQD;
  const bin = given ? path.resolve(REPO, given) : path.join(REPO, "target", "debug", "leanmqd");
  try {
    if (!statSync(bin).isFile()) return undefined;
    accessSync(bin, constants.X_OK);
    return bin;
  } catch {
    return undefined;
  }
}

function onPath(tool: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${tool}`], { stdio: "ignore" }).status === 0;
}

/** Why the real-broker tests cannot run here, or false when they can. */
export function skipReason(...tools: string[]): string | false {
  const missing = ["redis-server", "redis-cli", ...tools].filter((t) => !onPath(t));
  if (!leanmqdBinary()) missing.push("leanmqd (set LEANMQD or build target/debug/leanmqd)");
  return missing.length > 0 ? `missing: ${missing.join(", ")}` : false;
}

/** What `leanmqd hash-token` prints for `token`. */
export function tokenHash(token: string): string {
  return `sha256:${createHash("sha256").update(token, "utf8").digest("hex")}`;
}

export function writeTokensFile(dir: string): string {
  const file = path.join(dir, "tokens.toml");
  writeFileSync(
    file,
    `[[tokens]]
name = "sdk"
hash = "${tokenHash(SDK_TOKEN)}"
send = ["/sdk/>"]
subscribe = ["/sdk/>"]

[[tokens]]
name = "send-only"
hash = "${tokenHash(SEND_ONLY_TOKEN)}"
send = ["/other/>"]

[[tokens]]
name = "admin"
hash = "${tokenHash(ADMIN_TOKEN)}"
send = ["/sdk/>"]
subscribe = ["/sdk/>"]
admin = ["/sdk/>"]
`,
  );
  return file;
}

/** A throwaway certificate for localhost and 127.0.0.1 in `dir`. */
export function selfSignedCert(dir: string): { cert: string; key: string } {
  const cert = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  execFileSync(
    "openssl",
    [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
      "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "1",
    ],
    { stdio: "ignore", timeout: 60_000 },
  );
  return { cert, key };
}

export function tempDir(): { dir: string; remove(): void } {
  const dir = mkdtempSync(path.join(tmpdir(), "leanmq-node-auth-"));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** `signal` (SIGTERM), then SIGKILL if it has not exited within 10 s. */
async function stopChild(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill(signal);
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}

export class Redis {
  private constructor(
    readonly port: number,
    private readonly child: ChildProcess,
  ) {}

  static async start(dir: string): Promise<Redis> {
    const port = await freePort();
    const child = spawn(
      "redis-server",
      ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no"],
      { stdio: "ignore" },
    );
    const r = new Redis(port, child);
    const deadline = Date.now() + 10_000;
    while (r.cli("PING") !== "PONG") {
      if (child.exitCode !== null || Date.now() > deadline) {
        await stopChild(child);
        throw new Error("redis-server did not start");
      }
      await sleep(20);
    }
    return r;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  cli(...args: string[]): string {
    const r = spawnSync("redis-cli", ["-p", String(this.port), ...args], { encoding: "utf8", timeout: 10_000 });
    return (r.stdout ?? "").trim();
  }

  /** Entries of `stream` delivered to `group` and not acked. */
  pending(stream: string, group: string): number {
    const first = this.cli("XPENDING", stream, group).split("\n")[0] ?? "";
    return /^\d+$/.test(first) ? Number(first) : -1;
  }

  stop(): Promise<void> {
    return stopChild(this.child);
  }
}

/** grpc.health.v1 Check for the whole server (it needs no token): SERVING? */
function serving(target: string, creds: ChannelCredentials): Promise<boolean> {
  // The certificate's name (also its IP), which node's TLS wants as the server name.
  const client = new Client(target, creds, { "grpc.ssl_target_name_override": "localhost" });
  return new Promise<boolean>((resolve) => {
    client.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      (b: Buffer) => b,
      (b: Buffer) => b,
      Buffer.alloc(0),
      new Metadata(),
      { deadline: Date.now() + 500 },
      (err, res) => resolve(!err && res !== undefined && res.equals(Buffer.from([0x08, 0x01]))),
    );
  }).finally(() => client.close());
}

export class Leanmqd {
  private log = "";
  private child!: ChildProcess;

  private constructor(
    readonly target: string,
    private readonly argv: string[],
    private readonly creds: ChannelCredentials,
  ) {}

  /** Starts leanmqd with `args` and waits until health (over `creds`) says SERVING. */
  static async start(redisUrl: string, args: string[], creds = grpcCredentials.createInsecure()): Promise<Leanmqd> {
    const target = `127.0.0.1:${await freePort()}`;
    const d = new Leanmqd(target, ["--listen", target, "--redis-url", redisUrl, ...args], creds);
    await d.spawn();
    return d;
  }

  private async spawn(): Promise<void> {
    const child = spawn(leanmqdBinary()!, this.argv, { stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    child.stdout?.on("data", (b: Buffer) => (this.log += b.toString()));
    child.stderr?.on("data", (b: Buffer) => (this.log += b.toString()));
    const deadline = Date.now() + 20_000;
    while (!(await serving(this.target, this.creds))) {
      if (child.exitCode !== null || Date.now() > deadline) {
        await stopChild(child);
        throw new Error(`leanmqd did not start serving:\n${this.log.slice(-2000)}`);
      }
      await sleep(50);
    }
  }

  /** Stops leanmqd with `signal` and starts it again on the same address and arguments. */
  async restart(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    await stopChild(this.child, signal);
    await this.spawn();
  }

  stop(): Promise<void> {
    return stopChild(this.child);
  }
}
