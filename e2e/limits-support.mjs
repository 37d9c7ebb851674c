// Support for the rate-limit tests: a real redis-server per suite, a minimal Redis client,
// a minimal Upstash-style REST front backed by that redis-server, HS256 tokens, and time
// helpers that keep a test clear of a window's boundary.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import http from "node:http";
import net from "node:net";
import { freePort, sleep } from "./launchers/process.mjs";

export const JWT_SECRET = "limits-e2e-secret-at-least-32-bytes-long!";

/** An HS256 token for `sub`, valid for an hour (the claims of shared/src/auth/tests.rs). */
export function tokenFor(sub, secret = JWT_SECRET) {
  const b64 = (value) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, iat: now, exp: now + 3600 })}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

/**
 * Waits, when needed, so that the next `needSecs` seconds fall inside one window of
 * `windowSecs` (windows are aligned to the Unix epoch): counts then cannot reset mid-test.
 */
export async function clearOfBoundary(windowSecs, needSecs = 30) {
  const left = windowSecs - ((Date.now() / 1000) % windowSecs);
  if (left < needSecs) await sleep(left * 1000 + 1100);
}

/** Seconds left in the current window of `windowSecs`, as the proxy computes it. */
export function secondsLeft(windowSecs) {
  return windowSecs - (Math.floor(Date.now() / 1000) % windowSecs);
}

/** Starts `redis-server` on a free loopback port, nothing persisted. */
export async function startRedis(port) {
  port ??= await freePort();
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  proc.stdout.on("data", (c) => (output += c));
  proc.stderr.on("data", (c) => (output += c));
  const exited = new Promise((resolve) => proc.on("exit", resolve));
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      const client = await RedisClient.connect(port);
      await client.command(["PING"]);
      client.close();
      break;
    } catch (error) {
      if (proc.exitCode !== null || Date.now() > deadline) {
        throw new Error(`redis-server did not start on ${port}: ${error.message}\n${output}`);
      }
      await sleep(50);
    }
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      if (proc.exitCode === null) proc.kill("SIGTERM");
      await exited;
    },
  };
}

/** A minimal RESP2 client: one command at a time, in order, on one connection. */
export class RedisClient {
  static connect(port) {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, "127.0.0.1");
      socket.once("error", reject);
      socket.once("connect", () => {
        socket.off("error", reject);
        resolve(new RedisClient(socket));
      });
    });
  }

  constructor(socket) {
    this.socket = socket;
    this.buffer = Buffer.alloc(0);
    this.waiting = [];
    socket.on("data", (chunk) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      for (;;) {
        const parsed = parseReply(this.buffer, 0);
        if (!parsed) break;
        this.buffer = this.buffer.subarray(parsed.end);
        this.waiting.shift()?.(parsed.value);
      }
    });
    const fail = () => {
      for (const resolve of this.waiting.splice(0)) resolve(new Error("connection closed"));
    };
    socket.on("close", fail);
    socket.on("error", fail);
  }

  /** Sends `args` (strings); resolves with the reply (an Error object for an error reply). */
  command(args) {
    const parts = [`*${args.length}\r\n`];
    for (const arg of args) {
      const text = String(arg);
      parts.push(`$${Buffer.byteLength(text)}\r\n${text}\r\n`);
    }
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.socket.write(parts.join(""));
    });
  }

  close() {
    this.socket.destroy();
  }
}

function parseReply(buf, start) {
  const eol = buf.indexOf("\r\n", start);
  if (eol === -1) return null;
  const line = buf.toString("utf8", start + 1, eol);
  const next = eol + 2;
  switch (String.fromCharCode(buf[start])) {
    case "+":
      return { value: line, end: next };
    case "-":
      return { value: new Error(line), end: next };
    case ":":
      return { value: Number(line), end: next };
    case "$": {
      const len = Number(line);
      if (len === -1) return { value: null, end: next };
      if (buf.length < next + len + 2) return null;
      return { value: buf.toString("utf8", next, next + len), end: next + len + 2 };
    }
    case "*": {
      const count = Number(line);
      const items = [];
      let at = next;
      for (let i = 0; i < count; i++) {
        const item = parseReply(buf, at);
        if (!item) return null;
        items.push(item.value);
        at = item.end;
      }
      return { value: items, end: at };
    }
    default:
      throw new Error(`bad RESP reply: ${line}`);
  }
}

/**
 * A minimal front in the shape of Upstash's Redis REST API: `POST /` with a JSON array
 * command and `Authorization: Bearer <token>`; answers `{"result": ...}`, or `{"error": ...}`
 * with 400 (bad command) or 401 (bad token). Backed by the real redis-server on `redisPort`.
 */
export async function startRestFront(redisPort, token) {
  const redis = await RedisClient.connect(redisPort);
  const seen = { requests: 0, authorizations: new Set() };
  const server = http.createServer((req, res) => {
    const parts = [];
    req.on("data", (c) => parts.push(c));
    req.on("end", async () => {
      seen.requests++;
      seen.authorizations.add(req.headers.authorization ?? "");
      const answer = (status, body) => {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify(body));
      };
      if (req.method !== "POST" || req.url !== "/") return answer(404, { error: "not found" });
      if (req.headers.authorization !== `Bearer ${token}`) return answer(401, { error: "Unauthorized" });
      let command;
      try {
        command = JSON.parse(Buffer.concat(parts).toString("utf8"));
      } catch {
        return answer(400, { error: "ERR failed to parse command" });
      }
      if (!Array.isArray(command) || command.length === 0) return answer(400, { error: "ERR bad command" });
      const result = await redis.command(command);
      if (result instanceof Error) return answer(400, { error: result.message });
      answer(200, { result });
    });
  });
  const port = await freePort();
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    async stop() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      redis.close();
    },
  };
}

/** POSTs to the proxy at `url` for `target` with optional bearer token and headers. */
export async function call(url, target, { method = "POST", token, headers = {}, body = "{}" } = {}) {
  const h = { "x-fal-target-url": target, "content-type": "application/json", ...headers };
  if (token) h.authorization = `Bearer ${token}`;
  const res = await fetch(url, { method, headers: h, body: method === "GET" || method === "HEAD" ? undefined : body });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

/** The `r` (remaining) and `t` (reset) of each policy in a `RateLimit` header. */
export function parseRateLimit(value) {
  const out = {};
  for (const item of (value ?? "").split(",")) {
    const m = /^\s*"([^"]+)";r=(\d+);t=(\d+)\s*$/.exec(item);
    if (m) out[m[1]] = { r: Number(m[2]), t: Number(m[3]) };
  }
  return out;
}
