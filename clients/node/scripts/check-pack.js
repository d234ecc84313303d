#!/usr/bin/env node
// The package as users get it: `npm pack`, install the tarball into an empty
// project outside this folder, then load it both ways, require() (CommonJS)
// and import() (ES module), and type-check both with tsc. Also checks what
// the tarball holds: the two entry points, their types, the LICENSE, and no
// tests or build leftovers.
"use strict";
const { spawnSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const root = path.resolve(__dirname, "..");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "leanmq-node-pack-"));
const npm = process.platform === "win32" ? "npm.cmd" : "npm";

function run(cmd, args, cwd) {
  const r = spawnSync(cmd, args, { cwd, encoding: "utf8" });
  if (r.error) throw r.error;
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} exited ${r.status}\n${r.stdout}\n${r.stderr}`);
  }
  return r.stdout;
}

function fail(msg) {
  throw new Error(`check-pack: ${msg}`);
}

try {
  const packed = JSON.parse(run(npm, ["pack", "--json", "--pack-destination", tmp], root));
  const { filename, files } = packed[0];
  const names = new Set(files.map((f) => f.path));
  for (const want of ["package.json", "LICENSE", "README.md", "dist/index.js", "dist/index.d.ts", "dist/index.mjs", "dist/index.d.mts"]) {
    if (!names.has(want)) fail(`${want} is missing from the tarball`);
  }
  for (const n of names) {
    if (/^(test|build|node_modules|scripts|\.venv)\//.test(n)) fail(`${n} should not be in the tarball`);
  }
  console.log(`check-pack: ${filename}, ${files.length} files`);

  const app = path.join(tmp, "app");
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "app", private: true, version: "0.0.0" }));
  // Runtime dependencies come from the registry (or npm's cache), as for a user.
  run(npm, ["install", "--no-audit", "--no-fund", "--prefer-offline", path.join(tmp, filename)], app);

  fs.writeFileSync(
    path.join(app, "cjs.cjs"),
    `const m = require("leanmq-grpc");
const assert = require("node:assert/strict");
assert.equal(typeof m.Webhook, "function");
assert.equal(typeof m.DeadLetterError, "function");
assert.equal(typeof m.traceContext, "function");
assert.ok(require.resolve("leanmq-grpc").endsWith("dist/index.js"));
console.log("require:", Object.keys(m).length, "exports");
`,
  );
  fs.writeFileSync(
    path.join(app, "esm.mjs"),
    `import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { Webhook, DeadLetterError, traceContext } from "leanmq-grpc";
const ns = await import("leanmq-grpc");
const cjs = createRequire(import.meta.url)("leanmq-grpc");
assert.equal(typeof Webhook, "function");
assert.equal(typeof traceContext, "function");
// One module behind both entry points: the same classes either way.
assert.equal(Webhook, cjs.Webhook);
assert.equal(DeadLetterError, cjs.DeadLetterError);
assert.ok(import.meta.resolve("leanmq-grpc").endsWith("dist/index.mjs"));
assert.deepEqual(Object.keys(ns).sort(), Object.keys(cjs).filter((k) => k !== "__esModule").sort());
console.log("import:", Object.keys(ns).length, "exports");
`,
  );
  process.stdout.write(run(process.execPath, ["cjs.cjs"], app));
  process.stdout.write(run(process.execPath, ["esm.mjs"], app));

  // The types of both entry points, as a TypeScript user resolves them.
  fs.writeFileSync(path.join(app, "types.mts"), `import { Webhook, type Delivery } from "leanmq-grpc";
const w: Webhook = new Webhook("127.0.0.1:50051");
w.get("/x", (_data: unknown, d: Delivery) => void d.messageId);
`);
  fs.writeFileSync(path.join(app, "types.cts"), `import lm = require("leanmq-grpc");
const w: lm.Webhook = new lm.Webhook("127.0.0.1:50051");
w.get("/x", (_data: unknown, d: lm.Delivery) => void d.messageId);
`);
  const tsc = require.resolve("typescript/bin/tsc", { paths: [root] });
  const types = path.dirname(require.resolve("@types/node/package.json", { paths: [root] }));
  run(process.execPath, [tsc, "--noEmit", "--strict", "--module", "node16", "--moduleResolution", "node16",
    "--target", "es2022", "--skipLibCheck", "--typeRoots", path.dirname(types), "--types", "node",
    "types.mts", "types.cts"], app);
  console.log("check-pack: types resolve for import and require");
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
