#!/usr/bin/env node
// `prepare`: build dist/ with tsc, then its ES module entry (esm-wrapper.js).
//
// `npm install ./clients/node` links this folder into the consumer and runs
// `prepare` here without installing this folder's dependencies, so when they
// are missing this script first installs them (from package-lock.json) into
// this folder's node_modules: tsc to build, and the runtime dependencies the
// linked dist/ loads.
"use strict";
const { spawnSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");

const root = path.resolve(__dirname, "..");

// Is `name` installed where Node would find it from here (this folder's
// node_modules or a parent's, e.g. hoisted by workspaces)?
function resolvable(name) {
  for (let dir = root; ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, "node_modules", name, "package.json"))) return true;
    if (path.dirname(dir) === dir) return false;
  }
}

function run(cmd, args, env) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: "inherit", env });
  if (r.error) throw r.error;
  if (r.status !== 0) process.exit(r.status ?? 1);
}

const needed = ["typescript", "@grpc/grpc-js", "@bufbuild/protobuf", "@types/node", "@opentelemetry/api"];
if (!needed.every(resolvable)) {
  console.error(`leanmq-grpc: installing build dependencies in ${root}`);
  // Drop the outer npm's settings that would redirect this install (global,
  // prefix, omit, save, workspaces...); keep registry, cache and proxy ones.
  const env = { ...process.env };
  for (const key of Object.keys(env)) {
    if (/^npm_config_(global|location|prefix|save.*|omit|include.*|only|production|dev|dry_run|install_links|workspaces?|package_lock.*|ignore_scripts|foreground_scripts|audit|fund)$/i.test(key)) {
      delete env[key];
    }
  }
  const npm = process.env.npm_execpath && /\.[cm]?js$/.test(process.env.npm_execpath)
    ? [process.execPath, [process.env.npm_execpath]]
    : [process.platform === "win32" ? "npm.cmd" : "npm", []];
  run(npm[0], [...npm[1], "ci", "--include=dev", "--ignore-scripts", "--no-audit", "--no-fund"], env);
}

const tsc = require.resolve("typescript/bin/tsc", { paths: [root] });
run(process.execPath, [tsc, "-p", path.join(root, "tsconfig.json")], process.env);
run(process.execPath, [path.join(__dirname, "esm-wrapper.js")], process.env);
