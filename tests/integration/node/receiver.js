#!/usr/bin/env node
// HTTPS callback receiver for the kzhook integration tests: verifies every delivery with the
// `standardwebhooks` npm package, exactly as a receiver written from the README would.
//
//   node receiver.js --cert server.pem --key server.key [--port 0]
//
// Prints "listening <port>" on stdout once ready. Endpoints:
//   GET  <any path>?validationToken=T   answers T (the kzhook callback handshake)
//   POST /__secret {"path", "secret"}   registers the signingSecret used for deliveries to path
//   GET  /__results                     {"results": [...]} every delivery seen, in order
//   POST /__quit                        exits
//   POST <registered path>              new Webhook(secret).verify(rawBody, headers):
//                                       200 when it verifies, 401 when it does not
// A result: {path, ok, error, status, id, timestamp, signature, eventId, bodyBytes, bodyB64
// (bodies up to 64 KiB), payload (the object verify() returned, when ok)}.
"use strict";

const fs = require("node:fs");
const https = require("node:https");
const { Webhook } = require("standardwebhooks");

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

const secrets = new Map();
const results = [];

function send(res, status, body, type) {
  const buf = Buffer.isBuffer(body) ? body : Buffer.from(String(body), "utf8");
  res.writeHead(status, { "Content-Type": type || "text/plain", "Content-Length": buf.length });
  res.end(buf);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

async function handle(req, res) {
  const url = new URL(req.url, "https://localhost");
  const raw = await readBody(req);
  if (req.method === "GET" && url.searchParams.has("validationToken")) {
    return send(res, 200, url.searchParams.get("validationToken"));
  }
  if (req.method === "GET" && url.pathname === "/__results") {
    return send(res, 200, JSON.stringify({ results }), "application/json");
  }
  if (req.method === "POST" && url.pathname === "/__secret") {
    const { path, secret } = JSON.parse(raw.toString("utf8"));
    secrets.set(path, secret);
    return send(res, 200, "{}", "application/json");
  }
  if (req.method === "POST" && url.pathname === "/__quit") {
    send(res, 200, "bye");
    setImmediate(() => process.exit(0));
    return;
  }
  if (req.method !== "POST") {
    return send(res, 405, "method not allowed");
  }
  const r = {
    path: url.pathname,
    ok: false,
    error: null,
    status: 0,
    id: req.headers["webhook-id"] || null,
    timestamp: req.headers["webhook-timestamp"] || null,
    signature: req.headers["webhook-signature"] || null,
    callbackToken: req.headers["kz-callback-token"] || null,
    contentType: req.headers["content-type"] || null,
    bodyBytes: raw.length,
    bodyB64: raw.length <= 65536 ? raw.toString("base64") : null,
    eventId: null,
    payload: null,
  };
  const secret = secrets.get(url.pathname);
  if (!secret) {
    r.error = "no secret registered for " + url.pathname;
    r.status = 404;
  } else {
    try {
      const payload = new Webhook(secret).verify(raw, req.headers);
      r.ok = true;
      r.status = 200;
      r.eventId = payload.eventId;
      r.payload = raw.length <= 65536 ? payload : { eventId: payload.eventId, truncated: true };
    } catch (e) {
      r.error = String((e && e.message) || e);
      r.status = 401;
    }
  }
  results.push(r);
  return send(res, r.status, r.ok ? "verified" : "rejected: " + r.error);
}

const server = https.createServer(
  { cert: fs.readFileSync(arg("--cert")), key: fs.readFileSync(arg("--key")) },
  (req, res) => {
    handle(req, res).catch((e) => {
      try {
        send(res, 500, "receiver error: " + e);
      } catch (_) {
        /* connection gone */
      }
    });
  }
);
server.keepAliveTimeout = 30000;
server.listen(Number(arg("--port", "0")), "127.0.0.1", () => {
  process.stdout.write("listening " + server.address().port + "\n");
});
process.on("SIGTERM", () => process.exit(0));
