// What only the Vercel function does, on the real binary started as Vercel
// starts it (e2e/launchers/vercel.mjs): its conversation over the runtime's
// IPC socket, its platform limits, and what it does with a bad setting.
//
//   scripts/build-vercel.sh && cd e2e && node --test vercel-function.test.mjs

import { describe, it, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { vercelLauncher } from "./launchers/vercel.mjs";
import { startMockFal, patternBytes, sha256, SSE_EVENT_COUNT } from "./mock-fal.mjs";

const SERVER_KEY = "test-key-id:vercel-secret-value";
const SECRET = SERVER_KEY.split(":")[1];
const VERCEL_MAX_BODY_BYTES = 4_500_000;
const opts = { timeout: 60_000 };
const TARGET = "https://fal.run/fal-ai/flux/dev";

let invocation = 0;
/** The headers Vercel's front adds to each invocation, which turn on the IPC messages. */
function invocationHeaders() {
  invocation += 1;
  return { id: `inv-${invocation}`, request: invocation, headers: { "x-vercel-internal-invocation-id": `inv-${invocation}`, "x-vercel-internal-request-id": String(invocation) } };
}

const forRequest = (inv) => (m) => m.payload?.context?.invocationId === inv.id && m.payload?.context?.requestId === inv.request;
const decoded = (m) => Buffer.from(m.payload.message, "base64").toString("utf8");

describe("vercel function", () => {
  let mock;
  before(async () => {
    mock = await startMockFal();
  });
  after(async () => {
    await mock?.close();
  });
  beforeEach(() => mock.reset());

  describe("with FAL_KEY", () => {
    let fn;
    before(async () => {
      fn = await vercelLauncher.start({ FAL_KEY: SERVER_KEY, FAL_PROXY_UPSTREAM: mock.url });
    }, opts);
    after(async () => {
      await fn?.stop();
    }, opts);

    it("reports server-started with its port, and starts with the platform's limits", () => {
      const started = fn.ipcMessages().find((m) => m.type === "server-started");
      assert.equal(started.payload.httpPort, Number(new URL(fn.url).port));
      const { stderr } = fn.logs();
      assert.match(stderr, /body limit: 4500000 bytes/, stderr);
      assert.match(stderr, /upstream timeout: 290 s/, stderr);
    });

    it("logs one line per request over IPC, then ends the invocation", opts, async () => {
      const inv = invocationHeaders();
      const res = await fetch(fn.url, {
        method: "POST",
        headers: { ...inv.headers, "x-fal-target-url": TARGET, "content-type": "application/json" },
        body: JSON.stringify({ prompt: "logged" }),
      });
      assert.equal(res.status, 200);
      await res.arrayBuffer();
      const end = await fn.waitForIpc((m) => m.type === "end" && forRequest(inv)(m));
      assert.equal(end.payload.error, null);
      const mine = fn.ipcMessages().filter(forRequest(inv));
      assert.deepEqual(mine.map((m) => m.type), ["log", "end"]);
      assert.equal(mine[0].payload.level, "info");
      assert.match(decoded(mine[0]), /^fal-proxy: method=POST target=fal\.run\/fal-ai\/flux\/dev status=200 duration_ms=\d+ bytes=\d+$/);
      const upstream = mock.requests[0].headers;
      assert.deepEqual(Object.keys(upstream).filter((h) => h.startsWith("x-vercel")), [], "Vercel's headers stay here");
    });

    it("keeps the invocation open until a stream's last byte", opts, async () => {
      const inv = invocationHeaders();
      const res = await fetch(fn.url, {
        method: "POST",
        headers: { ...inv.headers, "x-fal-target-url": `${TARGET}/stream`, "content-type": "application/json", accept: "text/event-stream" },
        body: JSON.stringify({ prompt: "stream" }),
      });
      assert.equal(res.status, 200);
      const reader = res.body.getReader();
      const first = await reader.read();
      assert.match(Buffer.from(first.value).toString(), /^data:/m, "an event arrived");
      assert.equal(fn.ipcMessages().filter(forRequest(inv)).length, 0, "no end while the stream runs");
      let text = Buffer.from(first.value).toString();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += Buffer.from(value).toString();
      }
      assert.equal(text.match(/^data:/gm).length, SSE_EVENT_COUNT);
      await fn.waitForIpc((m) => m.type === "end" && forRequest(inv)(m));
      assert.deepEqual(fn.ipcMessages().filter(forRequest(inv)).map((m) => m.type), ["log", "end"]);
    });

    it("a request the proxy refuses is logged with its error, and still ends", opts, async () => {
      const inv = invocationHeaders();
      const res = await fetch(fn.url, {
        method: "POST",
        headers: { ...inv.headers, "x-fal-target-url": "https://api.fal.ai/v1/keys", "content-type": "application/json" },
        body: "{}",
      });
      assert.equal(res.status, 403);
      assert.equal((await res.json()).error_type, "target_not_allowed");
      await fn.waitForIpc((m) => m.type === "end" && forRequest(inv)(m));
      const log = fn.ipcMessages().find((m) => m.type === "log" && forRequest(inv)(m));
      assert.match(decoded(log), /status=403 .*error=target_not_allowed$/);
    });

    it(`a ${VERCEL_MAX_BODY_BYTES}-byte body (Vercel's limit) arrives intact`, opts, async () => {
      const bytes = patternBytes(VERCEL_MAX_BODY_BYTES, 21);
      const res = await fetch(fn.url, {
        method: "POST",
        headers: { "x-fal-target-url": TARGET, "content-type": "application/octet-stream" },
        body: bytes,
      });
      assert.equal(res.status, 200);
      assert.equal((await res.json()).received.sha256, sha256(bytes));
    });

    it("one byte more → the proxy's own 413 body_too_large, nothing upstream", opts, async () => {
      const res = await fetch(fn.url, {
        method: "POST",
        headers: { "x-fal-target-url": TARGET, "content-type": "application/octet-stream" },
        body: patternBytes(VERCEL_MAX_BODY_BYTES + 1, 22),
      });
      assert.equal(res.status, 413);
      assert.equal((await res.json()).error_type, "body_too_large");
      assert.equal(mock.requests.length, 0);
    });

    it("answers made before a large body is read arrive intact, every time", opts, async () => {
      const cases = [
        [patternBytes(VERCEL_MAX_BODY_BYTES - 1000, 23), "https://example.com/x", 403],
        [patternBytes(8 * 1024 * 1024, 24), TARGET, 413],
      ];
      for (let i = 0; i < 10; i++) {
        for (const [body, target, status] of cases) {
          const res = await fetch(fn.url, {
            method: "POST",
            headers: { "x-fal-target-url": target, "content-type": "application/octet-stream" },
            body,
          });
          assert.equal(res.status, status);
          await res.arrayBuffer();
        }
      }
      assert.equal(mock.requests.length, 0);
    });

    it("never writes the key to its output or its IPC messages", () => {
      const { stderr, stdout } = fn.logs();
      assert.ok(!stderr.includes(SECRET) && !stdout.includes(SECRET));
      for (const m of fn.ipcMessages()) {
        assert.ok(!JSON.stringify(m).includes(SECRET));
        if (m.type === "log") assert.ok(!decoded(m).includes(SECRET));
      }
    });
  });

  describe("with FAL_PROXY_LOG_FORMAT=json", () => {
    let fn;
    before(async () => {
      fn = await vercelLauncher.start({ FAL_KEY: SERVER_KEY, FAL_PROXY_UPSTREAM: mock.url, FAL_PROXY_LOG_FORMAT: "json" });
    }, opts);
    after(async () => {
      await fn?.stop();
    }, opts);

    it("the start-up lines and each request's IPC log message are one JSON object each", opts, async () => {
      const startup = fn.logs().stderr.split("\n").filter(Boolean).map((line) => JSON.parse(line));
      assert.ok(startup.some((l) => l.level === "info" && /^ready on vercel/.test(l.message)), JSON.stringify(startup));
      assert.ok(startup.some((l) => /^browsers: CORS is off/.test(l.message)), JSON.stringify(startup));

      const inv = invocationHeaders();
      const res = await fetch(`${fn.url}`, {
        method: "POST",
        headers: { ...inv.headers, "x-fal-target-url": `${TARGET}?seed=private`, "content-type": "application/json" },
        body: "{}",
      });
      assert.equal(res.status, 200);
      await res.arrayBuffer();
      await fn.waitForIpc((m) => m.type === "end" && forRequest(inv)(m));
      const [log] = fn.ipcMessages().filter((m) => m.type === "log" && forRequest(inv)(m));
      const line = JSON.parse(decoded(log));
      assert.deepEqual(Object.keys(line), ["level", "method", "target", "status", "duration_ms", "bytes"]);
      assert.equal(line.target, "fal.run/fal-ai/flux/dev");
      assert.equal(line.status, 200);

      const hinted = invocationHeaders();
      const preflight = await fetch(fn.url, {
        method: "OPTIONS",
        headers: { ...hinted.headers, origin: "http://localhost:5173", "access-control-request-method": "POST" },
      });
      assert.equal(preflight.status, 204);
      await fn.waitForIpc((m) => m.type === "end" && forRequest(hinted)(m));
      const lines = fn.ipcMessages().filter((m) => m.type === "log" && forRequest(hinted)(m));
      const parsed = lines.map((m) => ({ level: m.payload.level, line: JSON.parse(decoded(m)) }));
      const hint = parsed.find((p) => p.line.hint === "cors_off");
      assert.ok(hint, JSON.stringify(parsed));
      assert.equal(hint.level, "warn");
      assert.equal(hint.line.origin, "http://localhost:5173");
      assert.ok(parsed.some((p) => p.line.method === "OPTIONS" && p.line.origin === "http://localhost:5173"), JSON.stringify(parsed));
    });
  });

  describe("with an invalid setting", () => {
    const cases = [
      { env: { FAL_KEY: SERVER_KEY, FAL_PROXY_KEY_MODE: "everyone" }, variable: "FAL_PROXY_KEY_MODE", value: "everyone" },
      { env: { FAL_KEY: `bad key ${SECRET}` }, variable: "FAL_KEY", value: SECRET },
      { env: { FAL_KEY: SERVER_KEY, FAL_PROXY_MAX_BODY_BYTES: "5MB" }, variable: "FAL_PROXY_MAX_BODY_BYTES", value: "5MB" },
    ];
    for (const { env, variable, value } of cases) {
      it(`${variable}: starts, answers every request with a JSON 500 naming it, logs it once`, opts, async () => {
        const fn = await vercelLauncher.start({ FAL_PROXY_UPSTREAM: mock.url, ...env });
        try {
          for (const method of ["POST", "GET", "OPTIONS"]) {
            const res = await fetch(fn.url, {
              method,
              headers: { "x-fal-target-url": TARGET, origin: "https://app.example" },
            });
            assert.equal(res.status, 500);
            assert.match(res.headers.get("content-type"), /^application\/json/);
            const text = await res.text();
            const body = JSON.parse(text);
            assert.equal(body.error_type, "invalid_configuration");
            assert.ok(body.detail.includes(variable), body.detail);
            assert.ok(!text.includes(value), "the value is never echoed");
          }
          assert.equal(mock.requests.length, 0);
          const { stderr, stdout } = fn.logs();
          const lines = stderr.split("\n").filter((l) => l.includes(variable));
          assert.equal(lines.length, 1, stderr);
          assert.match(lines[0], /invalid_configuration/);
          if (variable === "FAL_KEY") assert.ok(!stderr.includes(SECRET) && !stdout.includes(SECRET));
        } finally {
          await fn.stop();
        }
      });
    }
  });
});
