// End-to-end test suite for fal-proxy.
//
// Run (native server; build it first with `cargo build -p fal-proxy-server`):
//   cd e2e && npm ci && node --test native.test.mjs
// Binary path: $FAL_PROXY_SERVER_BIN, default <repo>/target/debug/fal-proxy-server.
//
// `defineSuite(launcher)` registers every test with node:test. A launcher is
//   { name, capabilities?: { timeout?: boolean, maxRequestBytes?: number }, async start(env) -> { url, stop() } }
// `maxRequestBytes`: the largest request body the platform delivers (the proxy caps its limit to it).
// where `url` is the full proxy URL ending in /api/fal/proxy. The suite starts the target a
// few times with different configuration env; FAL_PROXY_UPSTREAM always points at the
// in-process mock fal upstream (mock-fal.mjs), so nothing here ever talks to the real fal.ai.
// Tests are grouped per configuration (describe + before/after) to keep starts few.

import { describe, it, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { createFalClient, ApiError, ValidationError } from "@fal-ai/client";
import {
  startMockFal,
  patternBytes,
  sha256,
  BIG_RESPONSE_SIZE,
  SLOW_DELAY_MS,
  SSE_EVENT_COUNT,
  SSE_INTERVAL_MS,
  VALIDATION_ERROR_BODY,
  SERVER_ERROR_BODY,
  GZIP_RESPONSE_BODY,
} from "./mock-fal.mjs";

export const SERVER_KEY = "test-key-id:test-key-secret";
export const USER_KEY = "user-key-id:user-key-secret";
const ALLOWED_ORIGIN = "https://app.example";
const EVIL_ORIGIN = "https://evil.example";
const CLIENT_UA = "@fal-ai/client/1.10.1";

const START_TIMEOUT = 60_000;
const TEST_TIMEOUT = 30_000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Parse a comma separated header value into lower-cased tokens. */
const tokens = (v) =>
  (v ?? "")
    .split(",")
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);

export function defineSuite(launcher) {
  const capabilities = { timeout: true, ...(launcher.capabilities ?? {}) };
  const opts = { timeout: TEST_TIMEOUT };

  let mock;
  // Everything the proxy returned to a client while a server key was configured, for the
  // final "the server key never leaks" test.
  const observed = [];
  const pendingObservations = [];

  function observe(where, headers, body) {
    observed.push({ where, headers: [...headers.entries()], body: Buffer.from(body ?? []) });
  }

  /** Start a target for the enclosing describe; returns a getter for its proxy URL. */
  function useTarget(env, { watchLeaks = true } = {}) {
    const state = { target: null, url: null, watchLeaks };
    before(async () => {
      state.target = await launcher.start({ FAL_PROXY_UPSTREAM: mock.url, ...env });
      assert.match(state.target.url, /^http:\/\/.+\/api\/fal\/proxy$/, "launcher must return the full proxy URL");
      state.url = state.target.url;
    }, { timeout: START_TIMEOUT });
    after(async () => {
      if (state.target) await state.target.stop();
    }, { timeout: START_TIMEOUT });
    return state;
  }

  /**
   * fetch() the proxy. `target` goes into x-fal-target-url (omitted if undefined).
   * Returns { status, headers, body: Buffer, text, json }.
   */
  async function proxyFetch(t, target, { method = "POST", headers = {}, body, path = "" } = {}) {
    const h = { ...headers };
    if (target !== undefined) h["x-fal-target-url"] = target;
    if (body !== undefined && !Object.keys(h).some((k) => k.toLowerCase() === "content-type")) {
      h["content-type"] = "application/json";
    }
    const res = await fetch(t.url + path, { method, headers: h, body });
    const buf = Buffer.from(await res.arrayBuffer());
    if (t.watchLeaks) observe(`${method} ${target}`, res.headers, buf);
    let json;
    try {
      json = JSON.parse(buf.toString("utf8"));
    } catch {
      json = undefined;
    }
    return { status: res.status, headers: res.headers, body: buf, text: buf.toString("utf8"), json };
  }

  /** Low-level request with node:http (full control over framing). */
  function rawRequest(t, { method = "POST", path = "", headers = {}, chunks = [] }) {
    const u = new URL(t.url + path);
    return new Promise((resolve, reject) => {
      const req = http.request(
        { host: u.hostname, port: u.port, path: u.pathname + u.search, method, headers },
        (res) => {
          const parts = [];
          res.on("data", (c) => parts.push(c));
          res.on("end", () => {
            const buf = Buffer.concat(parts);
            let json;
            try {
              json = JSON.parse(buf.toString("utf8"));
            } catch {
              json = undefined;
            }
            if (t.watchLeaks) observe(`${method} raw`, new Headers(Object.entries(res.headers).map(([k, v]) => [k, String(v)])), buf);
            resolve({ status: res.statusCode, headers: res.headers, body: buf, json });
          });
          res.on("error", reject);
        },
      );
      req.on("error", (err) => {
        // The server may answer (e.g. 413) and close before the whole body is written.
        if (err.code === "EPIPE" || err.code === "ECONNRESET") return;
        reject(err);
      });
      const writeNext = (i) => {
        if (i >= chunks.length) return req.end();
        req.write(chunks[i], () => setTimeout(() => writeNext(i + 1), 5));
      };
      writeNext(0);
    });
  }

  /** fetch used by the fal client: loopback only, proxy responses checked for leaks. */
  function clientFetch(t, { rewriteExternal = false } = {}) {
    return async (input, init) => {
      let url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
      const u = new URL(url);
      if (u.hostname !== "127.0.0.1") {
        if (!rewriteExternal) throw new Error(`test client tried to reach ${u.href} directly (blocked)`);
        // Emulate the client's direct connection to fal by sending it to the mock.
        url = `${mock.url}/${u.host}${u.pathname}${u.search}`;
      }
      const res = await fetch(url, init);
      if (t.watchLeaks && url.startsWith(t.url)) {
        const clone = res.clone();
        pendingObservations.push(
          clone
            .arrayBuffer()
            .then((b) => observe(`client ${init?.method ?? "GET"} ${url}`, res.headers, Buffer.from(b)))
            .catch(() => observe(`client ${url} (body unread)`, res.headers, Buffer.alloc(0))),
        );
      }
      return res;
    };
  }

  function makeClient(t, { userKey, credentials, rewriteExternal } = {}) {
    return createFalClient({
      proxyUrl: { url: t.url, when: "always" },
      credentials, // undefined: never pick up FAL_KEY from the test runner's environment
      fetch: clientFetch(t, { rewriteExternal }),
      ...(userKey
        ? { requestMiddleware: async (req) => ({ ...req, headers: { ...(req.headers ?? {}), "x-fal-user-key": userKey } }) }
        : {}),
    });
  }

  function expectProxyError(res, status, errorType) {
    const ctx = `response: ${res.status} ${res.text?.slice(0, 300)}`;
    assert.equal(res.status, status, ctx);
    const ct = typeof res.headers.get === "function" ? res.headers.get("content-type") : res.headers["content-type"];
    assert.match(ct ?? "", /^application\/json/i, `content-type; ${ctx}`);
    assert.ok(res.json && typeof res.json === "object", `JSON body; ${ctx}`);
    assert.equal(res.json.error_type, errorType, ctx);
    assert.equal(typeof res.json.detail, "string", `detail must be a sentence; ${ctx}`);
    assert.ok(res.json.detail.length > 0, ctx);
  }

  function describeRequests() {
    return mock.requests.map((r) => `${r.method} ${r.path}`).join(", ") || "(none)";
  }

  async function expectNothingUpstream() {
    await sleep(30); // let any (wrongly) forwarded request arrive
    assert.equal(mock.requests.length, 0, `upstream must receive nothing, got: ${describeRequests()}`);
  }

  function onlyRequest() {
    assert.equal(mock.requests.length, 1, `expected exactly one upstream request, got: ${describeRequests()}`);
    return mock.requests[0];
  }

  /** Common assertions for every request the proxy forwarded. */
  function assertForwarded(t, rec, { key }) {
    const h = rec.headers;
    assert.equal(h.authorization, `Key ${key}`, "authorization sent upstream");
    const authCount = rec.rawHeaders.filter((_, i) => i % 2 === 0 && rec.rawHeaders[i].toLowerCase() === "authorization").length;
    assert.equal(authCount, 1, "exactly one authorization header upstream");
    assert.equal(h["x-fal-target-url"], undefined, "x-fal-target-url must not be forwarded");
    assert.equal(h["x-fal-user-key"], undefined, "x-fal-user-key must not be forwarded");
    assert.equal(h.cookie, undefined, "cookie must not be forwarded");
    assert.match(h["x-fal-client-proxy"] ?? "", /^fal-proxy\//, "x-fal-client-proxy header");
    const proxyHost = new URL(t.url).host;
    assert.notEqual(h.host, proxyHost, "Host pointing at the proxy must not be forwarded");
  }

  async function collectSse(res) {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    const events = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const now = Date.now();
      buf += decoder.decode(value, { stream: true });
      let idx;
      while ((idx = buf.search(/\r?\n\r?\n/)) !== -1) {
        const block = buf.slice(0, idx);
        buf = buf.slice(idx).replace(/^\r?\n\r?\n/, "");
        const data = block
          .split(/\r?\n/)
          .filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trimStart())
          .join("\n");
        if (data) events.push({ at: now, data: JSON.parse(data) });
      }
    }
    return events;
  }

  function assertIncremental(arrivals, rec) {
    assert.equal(rec.events.length, SSE_EVENT_COUNT, "mock sent all events");
    const lastSent = rec.events[rec.events.length - 1];
    const firstArrival = arrivals[0];
    assert.ok(
      firstArrival < lastSent - 2 * SSE_INTERVAL_MS,
      `first event must arrive well before the last was sent (first arrived ${firstArrival - rec.events[0]} ms after ` +
        `first send, last sent ${lastSent - rec.events[0]} ms after first send): the proxy buffers the stream`,
    );
  }

  describe(`fal-proxy e2e [${launcher.name}]`, () => {
    before(async () => {
      mock = await startMockFal();
    });
    after(async () => {
      await mock?.close();
    });
    beforeEach(() => {
      mock.reset();
    });

    // ------------------------------------------------------------------ main config
    describe("main config: FAL_KEY + allowed origins", () => {
      const t = useTarget({ FAL_KEY: SERVER_KEY, FAL_PROXY_ALLOWED_ORIGINS: ALLOWED_ORIGIN });

      describe("real client flows", () => {
        it("run(): POST fal.run through the proxy with the server key", opts, async () => {
          const fal = makeClient(t);
          const { data, requestId } = await fal.run("fal-ai/flux/dev", { input: { prompt: "a cat" } });
          const rec = onlyRequest();
          assert.equal(rec.method, "POST");
          assert.equal(rec.path, "/fal.run/fal-ai/flux/dev");
          assertForwarded(t, rec, { key: SERVER_KEY });
          assert.deepEqual(rec.json, { prompt: "a cat" });
          assert.equal(rec.headers["content-type"], "application/json");
          assert.equal(rec.headers.accept, "application/json");
          assert.equal(rec.headers["user-agent"], CLIENT_UA);
          assert.equal(data.prompt, "a cat");
          assert.equal(data.images.length, 1);
          assert.ok(requestId, "x-fal-request-id reaches the client");
          assert.equal(requestId, data.images[0].url.split("/").pop().replace(".png", ""));
        });

        it("subscribe() (polling with logs): submit, status polls, result", opts, async () => {
          const fal = makeClient(t);
          const updates = [];
          let enqueued;
          const { data, requestId } = await fal.subscribe("fal-ai/flux/dev", {
            input: { prompt: "a dog" },
            logs: true,
            pollInterval: 50,
            onEnqueue: (id) => (enqueued = id),
            onQueueUpdate: (u) => updates.push(u),
          });
          assert.ok(enqueued);
          assert.equal(requestId, enqueued);
          assert.equal(data.prompt, "a dog");
          assert.deepEqual(
            updates.map((u) => u.status),
            ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"],
          );
          assert.ok(updates[2].logs.length > 0, "logs reach the client");
          const base = `/queue.fal.run/fal-ai/flux/requests/${enqueued}`;
          assert.deepEqual(
            mock.requests.map((r) => `${r.method} ${r.path}`),
            [
              "POST /queue.fal.run/fal-ai/flux/dev",
              `GET ${base}/status?logs=1`,
              `GET ${base}/status?logs=1`,
              `GET ${base}/status?logs=1`,
              `GET ${base}`,
            ],
          );
          for (const rec of mock.requests) assertForwarded(t, rec, { key: SERVER_KEY });
          assert.equal(mock.requests[0].headers["x-fal-queue-priority"], "normal");
          assert.deepEqual(mock.requests[0].json, { prompt: "a dog" });
        });

        it("subscribe() (streaming status): status/stream SSE then result", opts, async () => {
          const fal = makeClient(t);
          const updates = [];
          const { data } = await fal.subscribe("fal-ai/flux/dev", {
            input: { prompt: "streamed status" },
            mode: "streaming",
            logs: true,
            onQueueUpdate: (u) => updates.push({ at: Date.now(), status: u.status }),
          });
          assert.equal(data.prompt, "streamed status");
          assert.deepEqual(
            updates.map((u) => u.status),
            ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"],
          );
          const streamRec = mock.requests.find((r) => r.pathname.endsWith("/status/stream"));
          assert.ok(streamRec, `status stream requested; got ${describeRequests()}`);
          assert.equal(streamRec.method, "GET");
          assert.match(streamRec.path, /^\/queue\.fal\.run\/fal-ai\/flux\/requests\/[^/]+\/status\/stream\?logs=1$/);
          assertForwarded(t, streamRec, { key: SERVER_KEY });
          // status updates must be delivered as they are produced
          const lastSent = streamRec.events[streamRec.events.length - 1];
          assert.ok(updates[0].at < lastSent - SSE_INTERVAL_MS, "first status update arrives before the last is sent");
        });

        it("queue.submit/status/result/cancel with priority, hint, webhook and custom x-fal-* headers", opts, async () => {
          const fal = makeClient(t);
          const sub = await fal.queue.submit("fal-ai/flux/dev", {
            input: { prompt: "queued" },
            priority: "low",
            hint: "runner-7",
            webhookUrl: "https://hooks.example/cb?a=1",
            headers: { "X-Fal-Request-Id": "client-req-123", "x-fal-custom-feature": "on" },
          });
          const id = sub.request_id;
          assert.ok(id);
          assert.equal(sub.status_url, `https://queue.fal.run/fal-ai/flux/requests/${id}/status`);
          const submitRec = onlyRequest();
          assertForwarded(t, submitRec, { key: SERVER_KEY });
          assert.equal(submitRec.method, "POST");
          assert.equal(
            submitRec.path,
            `/queue.fal.run/fal-ai/flux/dev?fal_webhook=${encodeURIComponent("https://hooks.example/cb?a=1")}`,
          );
          assert.equal(submitRec.headers["x-fal-queue-priority"], "low");
          assert.equal(submitRec.headers["x-fal-runner-hint"], "runner-7");
          assert.equal(submitRec.headers["x-fal-request-id"], "client-req-123");
          assert.equal(submitRec.headers["x-fal-custom-feature"], "on");

          const status = await fal.queue.status("fal-ai/flux/dev", { requestId: id, logs: false });
          assert.equal(status.status, "IN_QUEUE");
          const result = await fal.queue.result("fal-ai/flux/dev", { requestId: id });
          assert.equal(result.data.prompt, "queued");
          assert.equal(result.requestId, id);
          await fal.queue.cancel("fal-ai/flux/dev", { requestId: id });

          const [, statusRec, resultRec, cancelRec] = mock.requests;
          assert.equal(mock.requests.length, 4, describeRequests());
          assert.equal(`${statusRec.method} ${statusRec.path}`, `GET /queue.fal.run/fal-ai/flux/requests/${id}/status?logs=0`);
          assert.equal(`${resultRec.method} ${resultRec.path}`, `GET /queue.fal.run/fal-ai/flux/requests/${id}`);
          assert.equal(`${cancelRec.method} ${cancelRec.path}`, `PUT /queue.fal.run/fal-ai/flux/requests/${id}/cancel`);
          assert.equal(cancelRec.bodyLength, 0, "body-less PUT stays body-less");
          assert.ok(cancelRec.complete);
          for (const rec of mock.requests) assertForwarded(t, rec, { key: SERVER_KEY });
          assert.equal(mock.queue.get(id).cancelled, true);
        });

        it("stream(): SSE events arrive incrementally through the client", opts, async () => {
          const fal = makeClient(t);
          const stream = await fal.stream("fal-ai/flux/dev", { input: { prompt: "live" } });
          const arrivals = [];
          const events = [];
          stream.on("data", (d) => {
            arrivals.push(Date.now());
            events.push(d);
          });
          const final = await stream.done();
          const rec = onlyRequest();
          assert.equal(`${rec.method} ${rec.path}`, "POST /fal.run/fal-ai/flux/dev/stream");
          assertForwarded(t, rec, { key: SERVER_KEY });
          // the client sends both its default Accept and the stream one; fetch joins them
          assert.ok(tokens(rec.headers.accept).includes("text/event-stream"), `accept: ${rec.headers.accept}`);
          assert.deepEqual(
            events.map((e) => e.step),
            [...Array(SSE_EVENT_COUNT).keys()],
          );
          assert.equal(final.done, true);
          assert.equal(final.prompt, "live");
          assertIncremental(arrivals, rec);
        });

        it("realtime token: POST rest.fal.ai/tokens/ through the proxy (stream connectionMode client)", opts, async () => {
          const fal = makeClient(t, { rewriteExternal: true });
          const warn = console.warn;
          console.warn = () => {}; // the default token provider logs a deprecation warning
          let final;
          try {
            const stream = await fal.stream("fal-ai/flux/dev", { input: { prompt: "tok" }, connectionMode: "client" });
            final = await stream.done();
          } finally {
            console.warn = warn;
          }
          assert.equal(final.done, true);
          const tokenRec = mock.requests.find((r) => r.pathname === "/rest.fal.ai/tokens/");
          assert.ok(tokenRec, `token request forwarded; got ${describeRequests()}`);
          assert.equal(tokenRec.method, "POST");
          assertForwarded(t, tokenRec, { key: SERVER_KEY });
          assert.deepEqual(tokenRec.json, { allowed_apps: ["flux"], token_expiration: 120 });
          assert.equal(mock.tokens.length, 1);
          // the token (a JSON string) came back intact: the client used it for the direct stream call
          const streamRec = mock.requests.find((r) => r.pathname === "/fal.run/fal-ai/flux/dev/stream");
          assert.ok(streamRec);
          assert.equal(streamRec.query.get("fal_jwt_token"), mock.tokens[0].token);
        });

        it("storage.upload(): initiate through the proxy, bytes PUT to upload_url", opts, async () => {
          const fal = makeClient(t);
          const bytes = patternBytes(300_000, 3);
          const fileUrl = await fal.storage.upload(new Blob([bytes], { type: "image/png" }));
          const initRec = mock.requests.find((r) => r.pathname === "/rest.fal.ai/storage/upload/initiate");
          assert.ok(initRec, `initiate forwarded; got ${describeRequests()}`);
          assert.equal(initRec.method, "POST");
          assert.equal(initRec.path, "/rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3");
          assertForwarded(t, initRec, { key: SERVER_KEY });
          assert.equal(initRec.json.content_type, "image/png");
          const id = fileUrl.split("/").at(-2);
          assert.match(fileUrl, /^https:\/\/v3\.fal\.media\/files\/mock\//);
          const up = mock.uploads.get(id);
          assert.ok(up, "bytes were uploaded");
          assert.equal(up.length, bytes.length);
          assert.equal(up.sha256, sha256(bytes));
        });

        it("run() with a Blob input: upload then run with the file URL", opts, async () => {
          const fal = makeClient(t);
          const bytes = patternBytes(5000, 9);
          const { data } = await fal.run("fal-ai/flux/dev", {
            input: { prompt: "edit", image_url: new Blob([bytes], { type: "image/jpeg" }) },
          });
          assert.match(data.input.image_url, /^https:\/\/v3\.fal\.media\/files\/mock\//);
          const runRec = mock.requests.find((r) => r.pathname === "/fal.run/fal-ai/flux/dev");
          assertForwarded(t, runRec, { key: SERVER_KEY });
          assert.equal(mock.uploads.size, 1);
        });

        it("upstream 422 reaches the client intact as ValidationError", opts, async () => {
          const fal = makeClient(t);
          const err = await fal.run("fal-ai/validation-error", { input: {} }).then(
            () => assert.fail("expected a ValidationError"),
            (e) => e,
          );
          assert.ok(err instanceof ValidationError, `got ${err?.name}: ${err?.message}`);
          assert.equal(err.status, 422);
          assert.deepEqual(err.body, VALIDATION_ERROR_BODY);
          assert.deepEqual(err.getFieldErrors("prompt").map((e) => e.msg), ["field required"]);
          assert.ok(err.requestId, "x-fal-request-id passes through on errors");
          assertForwarded(t, onlyRequest(), { key: SERVER_KEY });
        });

        it("upstream 500 reaches the client intact as ApiError", opts, async () => {
          const fal = makeClient(t);
          const err = await fal.run("fal-ai/server-error", { input: { prompt: "x" } }).then(
            () => assert.fail("expected an ApiError"),
            (e) => e,
          );
          assert.ok(err instanceof ApiError, `got ${err?.name}: ${err?.message}`);
          assert.ok(!(err instanceof ValidationError));
          assert.equal(err.status, 500);
          assert.deepEqual(err.body, SERVER_ERROR_BODY);
          assertForwarded(t, onlyRequest(), { key: SERVER_KEY });
        });
      });

      describe("routing and methods", () => {
        for (const method of ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]) {
          it(`${method} is forwarded`, opts, async () => {
            const body = ["POST", "PUT", "PATCH"].includes(method) ? JSON.stringify({ prompt: method }) : undefined;
            const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", { method, body });
            assert.equal(res.status, 200, res.text);
            assert.equal(res.headers.get("x-mock-method"), method);
            const rec = onlyRequest();
            assert.equal(rec.method, method);
            assert.equal(rec.path, "/fal.run/fal-ai/flux/dev");
            assertForwarded(t, rec, { key: SERVER_KEY });
            if (body) {
              assert.equal(rec.body.toString(), body);
              assert.equal(res.json.received.sha256, sha256(Buffer.from(body)));
            } else {
              assert.equal(rec.bodyLength, 0);
            }
            if (method === "HEAD") assert.equal(res.body.length, 0);
          });
        }

        it("query string is forwarded unchanged", opts, async () => {
          const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev?foo=bar&x=%2F1&sp=a%20b", { method: "GET" });
          assert.equal(res.status, 200, res.text);
          assert.equal(onlyRequest().path, "/fal.run/fal-ai/flux/dev?foo=bar&x=%2F1&sp=a%20b");
        });

        it("paths below /api/fal/proxy are accepted (target comes from the header)", opts, async () => {
          const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", {
            path: "/some/sub/path",
            body: JSON.stringify({ prompt: "sub" }),
          });
          assert.equal(res.status, 200, res.text);
          const rec = onlyRequest();
          assert.equal(rec.path, "/fal.run/fal-ai/flux/dev");
          assertForwarded(t, rec, { key: SERVER_KEY });
        });

        it("PROPFIND → 405 method_not_allowed, nothing upstream", opts, async () => {
          const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", { method: "PROPFIND" });
          expectProxyError(res, 405, "method_not_allowed");
          await expectNothingUpstream();
        });

        for (const path of ["/api/fal/proxyfoo", "/api/other", "/"]) {
          it(`requests outside /api/fal/proxy (${path}) are not forwarded`, opts, async () => {
            const origin = new URL(t.url).origin;
            const res = await fetch(origin + path, {
              method: "POST",
              headers: { "x-fal-target-url": "https://fal.run/fal-ai/flux/dev", "content-type": "application/json" },
              body: "{}",
            });
            await res.arrayBuffer();
            assert.ok(res.status >= 400 && res.status < 500, `status ${res.status}`);
            await expectNothingUpstream();
          });
        }

        it("x-fal-request-id response header reaches the client", opts, async () => {
          const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", { body: "{}" });
          assert.equal(res.status, 200);
          const id = res.headers.get("x-fal-request-id");
          assert.ok(id);
          assert.equal(res.json.images[0].url, `https://v3.fal.media/files/mock/${id}.png`);
        });
      });

      describe("target URL validation (nothing reaches upstream)", () => {
        it("missing x-fal-target-url → 400 missing_target_url", opts, async () => {
          const res = await proxyFetch(t, undefined, { body: "{}" });
          expectProxyError(res, 400, "missing_target_url");
          await expectNothingUpstream();
        });

        const invalid = [
          "",
          "not a url",
          "/fal-ai/flux/dev",
          "fal.run/fal-ai/flux/dev",
          "https://",
          "https://fal.run/fal-ai/flux/dev#fragment",
        ];
        for (const target of invalid) {
          it(`invalid target ${JSON.stringify(target)} → 400 invalid_target_url`, opts, async () => {
            const res = await proxyFetch(t, target, { body: "{}" });
            expectProxyError(res, 400, "invalid_target_url");
            await expectNothingUpstream();
          });
        }

        const notAllowed = [
          "http://fal.run/fal-ai/flux/dev",
          "https://example.com/fal-ai/flux/dev",
          "https://fal.run.evil.example/x",
          "https://queue.fal.run.evil.example/fal-ai/flux/dev",
          "https://evilfal.run/x",
          "https://fal.run@evil.example/",
          "https://fal.run:8443/fal-ai/flux/dev",
          "https://127.0.0.1/fal-ai/flux/dev",
          "https://[::1]/fal-ai/flux/dev",
          "https://api.fal.ai/v1/models",
          "https://rest.fal.ai/other",
          "https://rest.alpha.fal.ai/other",
          "https://rest.alpha.fal.ai/storage/upload/complete-multipart",
          "https://rest.alpha.fal.ai.evil.example/tokens/",
        ];
        for (const target of notAllowed) {
          it(`target ${target} → 403 target_not_allowed`, opts, async () => {
            const res = await proxyFetch(t, target, { body: "{}" });
            expectProxyError(res, 403, "target_not_allowed");
            await expectNothingUpstream();
          });
        }

        it("the older REST host's forms (client releases up to 1.9.2) are forwarded unchanged", opts, async () => {
          for (const target of [
            "https://rest.alpha.fal.ai/tokens/",
            "https://rest.alpha.fal.ai/storage/upload/initiate",
            "https://rest.alpha.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
            "https://rest.alpha.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
          ]) {
            mock.reset();
            const res = await proxyFetch(t, target, { body: JSON.stringify({ content_type: "image/png", file_name: "a.png" }) });
            assert.ok(res.status === 200 || res.status === 201, `${target}: ${res.status} ${res.text}`);
            const rec = onlyRequest();
            assert.equal(`${rec.method} ${rec.path}`, `POST ${target.replace("https:/", "")}`);
            assertForwarded(t, rec, { key: SERVER_KEY });
          }
        });

        it("path traversal out of rest.fal.ai/tokens/ is refused", opts, async () => {
          for (const target of ["https://rest.fal.ai/tokens/../admin", "https://rest.fal.ai/tokens/%2e%2e/admin"]) {
            const res = await proxyFetch(t, target, { body: "{}" });
            assert.ok([400, 403].includes(res.status), `${target}: status ${res.status} ${res.text}`);
            assert.ok(["invalid_target_url", "target_not_allowed"].includes(res.json?.error_type), `${target}: ${res.text}`);
          }
          await expectNothingUpstream();
        });
      });

      describe("headers and keys", () => {
        it("browser Authorization, Cookie, x-fal-user-key are dropped; server key is used", opts, async () => {
          const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", {
            body: JSON.stringify({ prompt: "h" }),
            headers: {
              authorization: "Key attacker-id:attacker-secret",
              cookie: "session=abc; other=1",
              "x-fal-user-key": USER_KEY,
            },
          });
          assert.equal(res.status, 200, res.text);
          const rec = onlyRequest();
          assertForwarded(t, rec, { key: SERVER_KEY });
          assert.ok(!JSON.stringify(rec.rawHeaders).includes("attacker-secret"));
          assert.ok(!JSON.stringify(rec.rawHeaders).includes("user-key-secret"));
        });

        it("content-type, accept, user-agent and other x-fal-* headers are forwarded", opts, async () => {
          const res = await proxyFetch(t, "https://queue.fal.run/fal-ai/flux/dev", {
            body: JSON.stringify({ prompt: "fwd" }),
            headers: {
              "content-type": "application/json; charset=utf-8",
              accept: "application/json",
              "user-agent": "e2e-agent/1.0",
              "x-fal-queue-priority": "low",
              "x-fal-request-id": "req-abc-123",
              "x-fal-runner-hint": "hint-1",
              "x-fal-request-timeout": "30",
              "x-fal-object-lifecycle-preference": '{"expiration_duration_seconds":3600}',
            },
          });
          assert.equal(res.status, 200, res.text);
          const h = onlyRequest().headers;
          assert.equal(h["content-type"], "application/json; charset=utf-8");
          assert.equal(h.accept, "application/json");
          assert.equal(h["user-agent"], "e2e-agent/1.0");
          assert.equal(h["x-fal-queue-priority"], "low");
          assert.equal(h["x-fal-request-id"], "req-abc-123");
          assert.equal(h["x-fal-runner-hint"], "hint-1");
          assert.equal(h["x-fal-request-timeout"], "30");
          assert.equal(h["x-fal-object-lifecycle-preference"], '{"expiration_duration_seconds":3600}');
          assert.match(h["x-fal-client-proxy"] ?? "", /^fal-proxy\//);
        });

        it("Host header sent through node:http raw request is not forwarded", opts, async () => {
          const res = await rawRequest(t, {
            headers: {
              host: new URL(t.url).host,
              "x-fal-target-url": "https://fal.run/fal-ai/flux/dev",
              "content-type": "application/json",
              "content-length": "2",
            },
            chunks: ["{}"],
          });
          assert.equal(res.status, 200, res.body.toString());
          assertForwarded(t, onlyRequest(), { key: SERVER_KEY });
        });
      });

      describe("CORS (FAL_PROXY_ALLOWED_ORIGINS)", () => {
        it("preflight from an allowed origin → 204 with CORS headers, not forwarded", opts, async () => {
          const res = await proxyFetch(t, undefined, {
            method: "OPTIONS",
            headers: {
              origin: ALLOWED_ORIGIN,
              "access-control-request-method": "POST",
              "access-control-request-headers": "content-type,x-fal-target-url",
            },
          });
          assert.equal(res.status, 204, res.text);
          assert.equal(res.headers.get("access-control-allow-origin"), ALLOWED_ORIGIN);
          assert.ok(tokens(res.headers.get("access-control-allow-methods")).includes("post"), res.headers.get("access-control-allow-methods"));
          assert.ok(
            tokens(res.headers.get("access-control-allow-headers")).includes("x-fal-target-url"),
            `allow-headers: ${res.headers.get("access-control-allow-headers")}`,
          );
          await expectNothingUpstream();
        });

        it("preflight carrying x-fal-target-url is still not forwarded", opts, async () => {
          const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", {
            method: "OPTIONS",
            headers: { origin: ALLOWED_ORIGIN, "access-control-request-method": "POST" },
          });
          assert.equal(res.status, 204, res.text);
          await expectNothingUpstream();
        });

        it("request from an allowed origin gets allow-origin, vary, expose-headers", opts, async () => {
          const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", {
            body: JSON.stringify({ prompt: "cors" }),
            headers: { origin: ALLOWED_ORIGIN },
          });
          assert.equal(res.status, 200, res.text);
          assert.equal(res.headers.get("access-control-allow-origin"), ALLOWED_ORIGIN);
          assert.ok(tokens(res.headers.get("vary")).includes("origin"), `vary: ${res.headers.get("vary")}`);
          assert.ok(
            tokens(res.headers.get("access-control-expose-headers")).includes("x-fal-request-id"),
            `expose-headers: ${res.headers.get("access-control-expose-headers")}`,
          );
          assertForwarded(t, onlyRequest(), { key: SERVER_KEY });
        });

        it("request from another origin → 403 origin_not_allowed, nothing upstream", opts, async () => {
          const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", {
            body: "{}",
            headers: { origin: EVIL_ORIGIN },
          });
          expectProxyError(res, 403, "origin_not_allowed");
          assert.notEqual(res.headers.get("access-control-allow-origin"), EVIL_ORIGIN);
          await expectNothingUpstream();
        });

        it("preflight from another origin → 403 origin_not_allowed, nothing upstream", opts, async () => {
          const res = await proxyFetch(t, undefined, {
            method: "OPTIONS",
            headers: {
              origin: EVIL_ORIGIN,
              "access-control-request-method": "POST",
              "access-control-request-headers": "content-type,x-fal-target-url",
            },
          });
          expectProxyError(res, 403, "origin_not_allowed");
          assert.notEqual(res.headers.get("access-control-allow-origin"), EVIL_ORIGIN);
          await expectNothingUpstream();
        });

        it("look-alike origins are refused", opts, async () => {
          for (const origin of ["https://app.example.evil.example", "http://app.example", "https://app.example:8443"]) {
            const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", { body: "{}", headers: { origin } });
            expectProxyError(res, 403, "origin_not_allowed");
          }
          await expectNothingUpstream();
        });

        it("request without Origin is allowed", opts, async () => {
          const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", { body: "{}" });
          assert.equal(res.status, 200, res.text);
          assertForwarded(t, onlyRequest(), { key: SERVER_KEY });
        });
      });

      describe("bodies and streaming", () => {
        // A platform with a smaller payload limit (Lambda) declares it; the proxy caps its own
        // limit there, so the 20 MB body is a clear 413 and a body at the limit passes intact.
        const requestCap = capabilities.maxRequestBytes;
        const bigBody = requestCap === undefined ? 20 * 1000 * 1000 : requestCap;
        it(`${bigBody} byte request body arrives upstream intact`, opts, async () => {
          const bytes = patternBytes(bigBody, 5);
          const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", {
            body: bytes,
            headers: { "content-type": "application/octet-stream" },
          });
          assert.equal(res.status, 200, res.text.slice(0, 300));
          const rec = onlyRequest();
          assert.equal(rec.bodyLength, bytes.length);
          assert.equal(rec.sha256, sha256(bytes));
          assert.equal(rec.headers["content-type"], "application/octet-stream");
          assert.equal(res.json.received.sha256, sha256(bytes));
        });

        if (requestCap !== undefined) {
          it("20 MB request body over the platform's limit → 413 body_too_large, nothing upstream", opts, async () => {
            const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", {
              body: patternBytes(20 * 1000 * 1000, 5),
              headers: { "content-type": "application/octet-stream" },
            });
            expectProxyError(res, 413, "body_too_large");
            await expectNothingUpstream();
          });
        }

        it("a 3 MB chunked request body (no content-length) arrives upstream complete and intact", opts, async () => {
          const data = patternBytes(3_000_000, 21);
          const res = await rawRequest(t, {
            headers: {
              "x-fal-target-url": "https://fal.run/fal-ai/flux/dev",
              "content-type": "application/octet-stream",
              "transfer-encoding": "chunked",
            },
            chunks: Array.from({ length: 30 }, (_, i) => data.subarray(i * 100_000, (i + 1) * 100_000)),
          });
          assert.equal(res.status, 200, res.body.toString().slice(0, 300));
          const rec = onlyRequest();
          assert.ok(rec.complete, "upstream saw the end of the body");
          assert.equal(rec.bodyLength, data.length);
          assert.equal(rec.sha256, sha256(data));
        });

        it("10 MB response body reaches the client intact", opts, async () => {
          const res = await proxyFetch(t, "https://fal.run/fal-ai/big-response", { body: "{}" });
          assert.equal(res.status, 200);
          assert.equal(res.body.length, BIG_RESPONSE_SIZE);
          assert.equal(sha256(res.body), mock.bigResponseSha256);
        });

        it("a body over the default 32 MiB limit → 413 body_too_large, nothing upstream", opts, async () => {
          const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", {
            body: patternBytes(32 * 1024 * 1024 + 1, 6),
            headers: { "content-type": "application/octet-stream" },
          });
          expectProxyError(res, 413, "body_too_large");
          await expectNothingUpstream();
        });

        it("a gzip-encoded upstream response is decoded correctly by the client", opts, async () => {
          const res = await proxyFetch(t, "https://fal.run/fal-ai/gzip-response", { body: "{}" });
          assert.equal(res.status, 200);
          assert.deepEqual(res.json, GZIP_RESPONSE_BODY);
          const fal = makeClient(t);
          const { data } = await fal.run("fal-ai/gzip-response", { input: { prompt: "gz" } });
          assert.deepEqual(data, GZIP_RESPONSE_BODY);
        });

        it("SSE through raw fetch is delivered incrementally", opts, async () => {
          const res = await fetch(t.url, {
            method: "POST",
            headers: {
              "x-fal-target-url": "https://fal.run/fal-ai/flux/dev/stream",
              "content-type": "application/json",
              accept: "text/event-stream",
            },
            body: JSON.stringify({ prompt: "raw" }),
          });
          assert.equal(res.status, 200);
          assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
          const events = await collectSse(res);
          assert.deepEqual(
            events.map((e) => e.data.step),
            [...Array(SSE_EVENT_COUNT).keys()],
          );
          const rec = onlyRequest();
          assertForwarded(t, rec, { key: SERVER_KEY });
          assertIncremental(
            events.map((e) => e.at),
            rec,
          );
        });
      });
    });

    // ------------------------------------------------------------------ user key mode
    describe("user key mode (no FAL_KEY)", () => {
      const t = useTarget({}, { watchLeaks: false });

      it("without x-fal-user-key → 401 missing_user_key, nothing upstream", opts, async () => {
        const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", { body: "{}" });
        expectProxyError(res, 401, "missing_user_key");
        await expectNothingUpstream();
      });

      it("a browser Authorization header is not a user key → 401 missing_user_key", opts, async () => {
        const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", {
          body: "{}",
          headers: { authorization: `Key ${USER_KEY}` },
        });
        expectProxyError(res, 401, "missing_user_key");
        await expectNothingUpstream();
      });

      it("invalid user key → 400 invalid_user_key, nothing upstream", opts, async () => {
        const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", {
          body: "{}",
          headers: { "x-fal-user-key": "user key with spaces" },
        });
        expectProxyError(res, 400, "invalid_user_key");
        await expectNothingUpstream();
      });

      it("x-fal-user-key is used as the key (real client run)", opts, async () => {
        const fal = makeClient(t, { userKey: USER_KEY });
        const { data } = await fal.run("fal-ai/flux/dev", { input: { prompt: "mine" } });
        assert.equal(data.prompt, "mine");
        assertForwarded(t, onlyRequest(), { key: USER_KEY });
      });

      it("client without a user key gets ApiError 401 with the proxy's error body", opts, async () => {
        const fal = makeClient(t);
        const err = await fal.run("fal-ai/flux/dev", { input: { prompt: "x" } }).then(
          () => assert.fail("expected ApiError"),
          (e) => e,
        );
        assert.ok(err instanceof ApiError, String(err));
        assert.equal(err.status, 401);
        assert.equal(err.body?.error_type, "missing_user_key");
        await expectNothingUpstream();
      });
    });

    // ------------------------------------------------------------------ user-or-server
    describe("user-or-server key mode", () => {
      const t = useTarget({ FAL_KEY: SERVER_KEY, FAL_PROXY_KEY_MODE: "user-or-server" });

      it("uses the user key when sent", opts, async () => {
        const fal = makeClient(t, { userKey: USER_KEY });
        const { data } = await fal.subscribe("fal-ai/flux/dev", { input: { prompt: "u" }, pollInterval: 50 });
        assert.equal(data.prompt, "u");
        assert.ok(mock.requests.length >= 3);
        for (const rec of mock.requests) assertForwarded(t, rec, { key: USER_KEY });
      });

      it("falls back to FAL_KEY without a user key", opts, async () => {
        const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", { body: JSON.stringify({ prompt: "s" }) });
        assert.equal(res.status, 200, res.text);
        assertForwarded(t, onlyRequest(), { key: SERVER_KEY });
      });
    });

    // ------------------------------------------------------------------ allow-list (glob)
    describe('endpoint allow-list "fal-ai/flux/**"', () => {
      const t = useTarget({ FAL_KEY: SERVER_KEY, FAL_PROXY_ALLOW_ENDPOINTS: "fal-ai/flux/**" });

      it("run fal-ai/flux/dev is allowed", opts, async () => {
        const fal = makeClient(t);
        const { data } = await fal.run("fal-ai/flux/dev", { input: { prompt: "ok" } });
        assert.equal(data.prompt, "ok");
        assertForwarded(t, onlyRequest(), { key: SERVER_KEY });
      });

      it("subscribe + cancel for fal-ai/flux/dev (status/result/cancel under fal-ai/flux/requests) are allowed", opts, async () => {
        const fal = makeClient(t);
        const { data, requestId } = await fal.subscribe("fal-ai/flux/dev", { input: { prompt: "q" }, pollInterval: 50 });
        assert.equal(data.prompt, "q");
        await fal.queue.cancel("fal-ai/flux/dev", { requestId });
        const paths = mock.requests.map((r) => `${r.method} ${r.pathname}`);
        assert.ok(paths.includes(`GET /queue.fal.run/fal-ai/flux/requests/${requestId}/status`), paths.join(", "));
        assert.ok(paths.includes(`GET /queue.fal.run/fal-ai/flux/requests/${requestId}`), paths.join(", "));
        assert.ok(paths.includes(`PUT /queue.fal.run/fal-ai/flux/requests/${requestId}/cancel`), paths.join(", "));
      });

      it("storage initiate stays allowed", opts, async () => {
        const fal = makeClient(t);
        const url = await fal.storage.upload(new Blob([Buffer.from("hello")], { type: "text/plain" }));
        assert.match(url, /^https:\/\/v3\.fal\.media\//);
        assert.ok(mock.requests.some((r) => r.pathname === "/rest.fal.ai/storage/upload/initiate"));
      });

      it("storage initiate on the older REST host (client releases up to 1.9.2) stays allowed", opts, async () => {
        const target = "https://rest.alpha.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3";
        const res = await proxyFetch(t, target, { body: JSON.stringify({ content_type: "text/plain", file_name: "a.txt" }) });
        assert.equal(res.status, 200, res.text);
        assert.equal(onlyRequest().path, "/rest.alpha.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3");
      });

      const blocked = [
        ["POST", "https://fal.run/fal-ai/other-app"],
        ["POST", "https://fal.run/fal-ai/flux-pro/v1"],
        ["POST", "https://queue.fal.run/fal-ai/other-app"],
        ["GET", "https://queue.fal.run/fal-ai/other-app/requests/0b9f2f4e-1111-4222-8333-444455556666/status"],
        ["GET", "https://queue.fal.run/fal-ai/other-app/requests/0b9f2f4e-1111-4222-8333-444455556666"],
        ["PUT", "https://queue.fal.run/fal-ai/other-app/requests/0b9f2f4e-1111-4222-8333-444455556666/cancel"],
        ["GET", "https://queue.fal.run/fal-ai/flux-pro/requests/0b9f2f4e-1111-4222-8333-444455556666/status"],
        ["GET", "https://fal.run/fal-ai/x%2F..%2F..%2Fflux%2Fdev"],
        ["POST", "https://rest.fal.ai/tokens/"],
        ["POST", "https://rest.alpha.fal.ai/tokens/"],
      ];
      for (const [method, target] of blocked) {
        it(`${method} ${target} → 403 endpoint_not_allowed, nothing upstream`, opts, async () => {
          const res = await proxyFetch(t, target, { method, body: method === "POST" ? "{}" : undefined });
          expectProxyError(res, 403, "endpoint_not_allowed");
          await expectNothingUpstream();
        });
      }

      it("real client run of a blocked app throws ApiError 403 endpoint_not_allowed", opts, async () => {
        const fal = makeClient(t);
        const err = await fal.run("fal-ai/other-app", { input: { prompt: "x" } }).then(
          () => assert.fail("expected ApiError"),
          (e) => e,
        );
        assert.ok(err instanceof ApiError, String(err));
        assert.equal(err.status, 403);
        assert.equal(err.body?.error_type, "endpoint_not_allowed");
        await expectNothingUpstream();
      });

      it("path traversal cannot escape the allow-list", opts, async () => {
        for (const target of [
          "https://fal.run/fal-ai/flux/../other-app/x",
          "https://fal.run/fal-ai/flux/%2e%2e/other-app/x",
          "https://fal.run/fal-ai/flux/dev/../../other-app",
        ]) {
          const res = await proxyFetch(t, target, { body: "{}" });
          assert.ok([400, 403].includes(res.status), `${target}: status ${res.status} ${res.text}`);
          assert.ok(
            ["invalid_target_url", "endpoint_not_allowed"].includes(res.json?.error_type),
            `${target}: ${res.text}`,
          );
        }
        await expectNothingUpstream();
      });
    });

    // ------------------------------------------------------------------ allow-list (exact)
    describe('endpoint allow-list "fal-ai/flux/dev,fal-ai/recraft/*"', () => {
      const t = useTarget({ FAL_KEY: SERVER_KEY, FAL_PROXY_ALLOW_ENDPOINTS: "fal-ai/flux/dev,fal-ai/recraft/*" });

      it("subscribe to fal-ai/flux/dev works (status/result live under fal-ai/flux)", opts, async () => {
        const fal = makeClient(t);
        const { data } = await fal.subscribe("fal-ai/flux/dev", { input: { prompt: "exact" }, pollInterval: 50 });
        assert.equal(data.prompt, "exact");
        assert.equal(mock.requests.length, 5, describeRequests());
      });

      it("fal-ai/recraft/v3 (single-segment glob) is allowed", opts, async () => {
        const res = await proxyFetch(t, "https://fal.run/fal-ai/recraft/v3", { body: JSON.stringify({ prompt: "r" }) });
        assert.equal(res.status, 200, res.text);
        assertForwarded(t, onlyRequest(), { key: SERVER_KEY });
      });

      for (const target of [
        "https://fal.run/fal-ai/flux/schnell",
        "https://queue.fal.run/fal-ai/flux/schnell",
        "https://fal.run/fal-ai/recraft/v3/text-to-image",
        "https://fal.run/fal-ai/other-app",
        // the app's queue paths pass only with the method the client uses for them
        "https://queue.fal.run/fal-ai/flux/requests/abc/status",
        "https://queue.fal.run/fal-ai/flux/requests/abc/anything",
      ]) {
        it(`POST ${target} → 403 endpoint_not_allowed`, opts, async () => {
          const res = await proxyFetch(t, target, { body: "{}" });
          expectProxyError(res, 403, "endpoint_not_allowed");
          await expectNothingUpstream();
        });
      }

      it("status of another app's request → 403 endpoint_not_allowed", opts, async () => {
        const res = await proxyFetch(t, "https://queue.fal.run/fal-ai/other-app/requests/abc/status", { method: "GET" });
        expectProxyError(res, 403, "endpoint_not_allowed");
        await expectNothingUpstream();
      });
    });

    // ------------------------------------------------------------------ limits
    describe("limits: FAL_PROXY_MAX_BODY_BYTES=1000, FAL_PROXY_TIMEOUT_SECS=1", () => {
      const t = useTarget({ FAL_KEY: SERVER_KEY, FAL_PROXY_MAX_BODY_BYTES: "1000", FAL_PROXY_TIMEOUT_SECS: "1" });

      it("a 1000-byte body (at the limit) passes intact", opts, async () => {
        const bytes = patternBytes(1000, 11);
        const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", {
          body: bytes,
          headers: { "content-type": "application/octet-stream" },
        });
        assert.equal(res.status, 200, res.text);
        assert.equal(onlyRequest().sha256, sha256(bytes));
      });

      it("a 2000-byte POST → 413 body_too_large, nothing upstream", opts, async () => {
        const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", {
          body: patternBytes(2000, 12),
          headers: { "content-type": "application/octet-stream" },
        });
        expectProxyError(res, 413, "body_too_large");
        await expectNothingUpstream();
      });

      it("a 1000-byte chunked POST (no content-length, at the limit) arrives upstream complete and intact", opts, async () => {
        const data = patternBytes(1000, 14);
        const res = await rawRequest(t, {
          headers: {
            "x-fal-target-url": "https://fal.run/fal-ai/flux/dev",
            "content-type": "application/octet-stream",
            "transfer-encoding": "chunked",
          },
          chunks: [data.subarray(0, 400), data.subarray(400, 800), data.subarray(800)],
        });
        assert.equal(res.status, 200, res.body.toString());
        const rec = onlyRequest();
        assert.ok(rec.complete, "upstream saw the end of the body");
        assert.equal(rec.bodyLength, data.length);
        assert.equal(rec.sha256, sha256(data));
      });

      it("a 2000-byte chunked POST (no content-length) → 413 body_too_large, never completed upstream", opts, async () => {
        const data = patternBytes(2000, 13);
        const res = await rawRequest(t, {
          headers: {
            "x-fal-target-url": "https://fal.run/fal-ai/flux/dev",
            "content-type": "application/octet-stream",
            "transfer-encoding": "chunked",
          },
          chunks: [data.subarray(0, 500), data.subarray(500, 1000), data.subarray(1000, 1500), data.subarray(1500)],
        });
        assert.equal(res.status, 413, res.body.toString());
        assert.equal(res.json?.error_type, "body_too_large");
        await sleep(50);
        const completed = mock.requests.filter((r) => r.complete && !r.aborted);
        assert.equal(completed.length, 0, `oversized body must not be delivered upstream: ${describeRequests()}`);
      });

      it(
        "upstream slower than FAL_PROXY_TIMEOUT_SECS → 504 upstream_timeout",
        { ...opts, skip: capabilities.timeout === false ? `launcher ${launcher.name} does not support upstream timeouts` : false },
        async () => {
          const started = Date.now();
          const res = await proxyFetch(t, "https://fal.run/fal-ai/slow", { body: "{}" });
          const elapsed = Date.now() - started;
          expectProxyError(res, 504, "upstream_timeout");
          assert.ok(elapsed < SLOW_DELAY_MS - 500, `proxy must give up after ~1 s, took ${elapsed} ms`);
          assert.equal(mock.requests.length, 1, "the request did reach upstream");
        },
      );

      it(
        "a stream that keeps sending is not cut by FAL_PROXY_TIMEOUT_SECS",
        { ...opts, skip: capabilities.timeout === false ? `launcher ${launcher.name} does not support upstream timeouts` : false },
        async () => {
          const res = await fetch(t.url, {
            method: "POST",
            headers: { "x-fal-target-url": "https://fal.run/fal-ai/flux/dev/stream", "content-type": "application/json" },
            body: JSON.stringify({ prompt: "long" }),
          });
          assert.equal(res.status, 200);
          const events = await collectSse(res);
          // the mock stream lasts (SSE_EVENT_COUNT - 1) * SSE_INTERVAL_MS > 1 s
          assert.equal(events.length, SSE_EVENT_COUNT);
          assert.equal(events.at(-1).data.done, true);
        },
      );

      it("fast requests still work with the short timeout", opts, async () => {
        const res = await proxyFetch(t, "https://fal.run/fal-ai/flux/dev", { body: JSON.stringify({ prompt: "fast" }) });
        assert.equal(res.status, 200, res.text);
        assert.equal(res.json.prompt, "fast");
      });
    });

    // ------------------------------------------------------------------ unreachable upstream
    describe("upstream unreachable", () => {
      let closedPort;
      before(async () => {
        const srv = net.createServer();
        await new Promise((r) => srv.listen(0, "127.0.0.1", r));
        closedPort = srv.address().port;
        await new Promise((r) => srv.close(r));
      });
      const state = { target: null, url: null, watchLeaks: true };
      before(async () => {
        state.target = await launcher.start({
          FAL_KEY: SERVER_KEY,
          FAL_PROXY_UPSTREAM: `http://127.0.0.1:${closedPort}`,
          FAL_PROXY_LOG_FORMAT: "json",
        });
        state.url = state.target.url;
      }, { timeout: START_TIMEOUT });
      after(async () => {
        if (state.target) await state.target.stop();
      }, { timeout: START_TIMEOUT });

      it("closed upstream port → 502 upstream_unreachable", opts, async () => {
        const res = await proxyFetch(state, "https://fal.run/fal-ai/flux/dev", { body: "{}" });
        expectProxyError(res, 502, "upstream_unreachable");
      });

      /** The target's JSON log lines so far (a platform may put a prefix before each). */
      const jsonLogLines = () => {
        const { stdout, stderr } = state.target.logs();
        // wrangler colours console.warn lines; the JSON is the logged string.
        const plain = `${stderr}\n${stdout}`.replace(/\x1b\[[0-9;]*m/g, "");
        return plain.split("\n").flatMap((line) => {
          const at = line.indexOf('{"level":');
          if (at === -1) return [];
          try {
            return [JSON.parse(line.slice(at))];
          } catch {
            return [];
          }
        });
      };
      const waitForLog = async (predicate) => {
        for (let i = 0; i < 100; i++) {
          const found = jsonLogLines().find(predicate);
          if (found) return found;
          await sleep(50);
        }
        const { stdout, stderr } = state.target.logs();
        assert.fail(`no such JSON log line; stderr:\n${stderr}\nstdout:\n${stdout}`);
      };

      it("FAL_PROXY_LOG_FORMAT=json: the request's line is JSON and names the cause, never the key or query", opts, async () => {
        const res = await proxyFetch(state, "https://fal.run/fal-ai/flux/schnell?private=query-text", { body: "{}" });
        expectProxyError(res, 502, "upstream_unreachable");
        const line = await waitForLog((l) => l.target === "fal.run/fal-ai/flux/schnell");
        assert.equal(line.level, "info");
        assert.equal(line.method, "POST");
        assert.equal(line.status, 502);
        assert.equal(line.error, "upstream_unreachable");
        // workerd reports a refused connection as "Network connection lost.", which could
        // be anything: the Worker says unknown. The reqwest targets know.
        const known = launcher.name === "worker" ? ["unknown"] : ["connect"];
        assert.ok(known.includes(line.cause), `cause ${line.cause}`);
        assert.equal(typeof line.duration_ms, "number");
        const { stdout, stderr } = state.target.logs();
        assert.ok(!`${stdout}${stderr}`.includes("query-text"), "no query in the log");
        assert.ok(!`${stdout}${stderr}`.includes(SERVER_KEY.split(":")[1]), "no key in the log");
      });

      it("FAL_PROXY_LOG_FORMAT=json: a cross-origin preflight while CORS is off logs a JSON hint naming the setting", opts, async () => {
        const res = await fetch(state.url, {
          method: "OPTIONS",
          headers: { origin: "http://localhost:5173", "access-control-request-method": "POST", "access-control-request-headers": "content-type,x-fal-target-url" },
        });
        assert.equal(res.status, 204);
        assert.equal(res.headers.get("access-control-allow-origin"), null, "CORS stays off");
        const hint = await waitForLog((l) => l.hint === "cors_off");
        assert.equal(hint.level, "warn");
        assert.equal(hint.origin, "http://localhost:5173");
        assert.match(hint.message, /FAL_PROXY_ALLOWED_ORIGINS=http:\/\/localhost:5173/);
      });
    });

    // ------------------------------------------------------------------ leaks
    it("no response body or header returned to a client contains the server key", opts, async () => {
      await Promise.all(pendingObservations);
      assert.ok(observed.length >= 50, `too few responses observed (${observed.length}); did the targets start?`);
      const secret = SERVER_KEY.split(":")[1];
      for (const o of observed) {
        for (const [k, v] of o.headers) {
          assert.ok(!v.includes(secret), `${o.where}: header ${k} leaks the server key`);
        }
        assert.equal(o.body.indexOf(secret), -1, `${o.where}: body leaks the server key`);
      }
    });
  });
}
