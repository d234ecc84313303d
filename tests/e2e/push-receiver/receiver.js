// Test code: an HTTP receiver for leanmqd's push delivery. Every POST is
// verified with the npm `standardwebhooks` package (the verifier is not
// ours); each verified one is printed as a JSON line
// {"id", "attempt", "body", "status"} on stdout, a refused one as {"refused": why}.
//
//   node receiver.js SECRET [SECRET...]
// Prints {"port": N} first, once listening on 127.0.0.1:0.
"use strict";
const http = require("node:http");
const { Webhook } = require("standardwebhooks");

const hooks = process.argv.slice(2).map((s) => new Webhook(s));
// ANSWERS="500,410": the statuses of the first verified POSTs, in order; then 204.
const answers = (process.env.ANSWERS || "").split(",").filter(Boolean).map(Number);
if (hooks.length === 0) {
  console.error("usage: node receiver.js SECRET [SECRET...]");
  process.exit(2);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    const headers = {
      "webhook-id": req.headers["webhook-id"] || "",
      "webhook-timestamp": req.headers["webhook-timestamp"] || "",
      "webhook-signature": req.headers["webhook-signature"] || "",
    };
    // Each secret on its own: a rotation must verify under every one.
    const errors = [];
    for (const wh of hooks) {
      try {
        wh.verify(body, headers);
      } catch (e) {
        errors.push(String(e && e.message ? e.message : e));
      }
    }
    if (errors.length > 0) {
      process.stdout.write(JSON.stringify({ refused: errors.join("; ") }) + "\n");
      res.writeHead(400).end("bad signature");
      return;
    }
    const status = answers.length > 0 ? answers.shift() : 204;
    process.stdout.write(
      JSON.stringify({ id: headers["webhook-id"], attempt: req.headers["leanmq-attempt"], body, status }) + "\n",
    );
    res.writeHead(status).end();
  });
});

server.listen(0, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + "\n");
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
