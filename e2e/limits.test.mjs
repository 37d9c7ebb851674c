// Rate limits and quotas (FAL_PROXY_RATE_LIMIT and friends) through the real native server
// binary, against the mock fal, a real redis-server started here once per suite, and a
// minimal Upstash-style REST front backed by that redis-server.
//   cd e2e && node --test limits.test.mjs
// Needs `redis-server` on PATH (scripts/test.sh installs Debian's) and the server binary.

import { describe, it, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { createFalClient, ApiError } from "@fal-ai/client";
import { spawn } from "node:child_process";
import { startMockFal } from "./mock-fal.mjs";
import { nativeLauncher, serverBinary } from "./launchers/native.mjs";
import { vercelLauncher } from "./launchers/vercel.mjs";
import {
  JWT_SECRET,
  call,
  clearOfBoundary,
  parseRateLimit,
  secondsLeft,
  startRedis,
  startRestFront,
  tokenFor,
} from "./limits-support.mjs";

const SERVER_KEY = "test-key-id:test-key-secret";
const HOUR = 3600;
const opts = { timeout: 60_000 };

let mock;
let redis;
const started = [];

/** Starts a native server with `env` (plus the key and the mock upstream). */
async function proxyWith(env) {
  const target = await nativeLauncher.start({ FAL_KEY: SERVER_KEY, FAL_PROXY_UPSTREAM: mock.url, ...env });
  started.push(target);
  return target;
}

/** Everything a started target has logged. */
const logsOf = (target) => {
  const { stdout, stderr } = target.logs();
  return stdout + stderr;
};

const submissions = () => mock.requests.filter((r) => r.method === "POST");

before(async () => {
  mock = await startMockFal();
  redis = await startRedis();
  // Every test below runs within one hour window.
  await clearOfBoundary(HOUR, 120);
}, { timeout: 180_000 });

after(async () => {
  for (const target of started) await target.stop();
  await redis?.stop();
  await mock?.close();
}, { timeout: 60_000 });

beforeEach(() => mock.reset());

describe("per user (authentication on, memory store)", () => {
  let proxy;
  before(async () => {
    proxy = await proxyWith({
      FAL_PROXY_AUTH_JWT_SECRET: JWT_SECRET,
      FAL_PROXY_RATE_LIMIT: "3/h,100/day",
      FAL_PROXY_ALLOWED_ORIGINS: "https://app.example",
    });
  }, opts);

  it("counts each user's runs, refuses the fourth with 429, Retry-After and RateLimit, and sends it nowhere", opts, async () => {
    const alice = tokenFor("user-alice");
    for (let left = 2; left >= 0; left--) {
      const ok = await call(proxy.url, "https://fal.run/fal-ai/flux/dev", { token: alice });
      assert.equal(ok.status, 200, ok.text);
      assert.equal(ok.headers.get("ratelimit-policy"), '"3/h";q=3;w=3600, "100/day";q=100;w=86400');
      const limit = parseRateLimit(ok.headers.get("ratelimit"));
      assert.equal(limit["3/h"].r, left);
      assert.equal(limit["100/day"].r, 97 + left);
      assert.ok(Math.abs(limit["3/h"].t - secondsLeft(HOUR)) <= 2, ok.headers.get("ratelimit"));
    }
    const refused = await call(proxy.url, "https://fal.run/fal-ai/flux/dev", {
      token: alice,
      headers: { origin: "https://app.example" },
    });
    assert.equal(refused.status, 429);
    assert.equal(refused.json.error_type, "rate_limited");
    assert.match(refused.json.detail, /3\/h.*try again in \d+ seconds/);
    const retryAfter = Number(refused.headers.get("retry-after"));
    assert.ok(Math.abs(retryAfter - secondsLeft(HOUR)) <= 2, `retry-after ${retryAfter}`);
    assert.equal(parseRateLimit(refused.headers.get("ratelimit"))["3/h"].r, 0);
    const exposed = refused.headers.get("access-control-expose-headers").split(/,\s*/);
    for (const name of ["ratelimit", "ratelimit-policy", "retry-after"]) assert.ok(exposed.includes(name), exposed.join());
    assert.equal(submissions().length, 3, "the refused run never reached fal");

    // Another user has a budget of their own.
    const bob = await call(proxy.url, "https://fal.run/fal-ai/flux/dev", { token: tokenFor("user-bob") });
    assert.equal(bob.status, 200);
    assert.equal(parseRateLimit(bob.headers.get("ratelimit"))["3/h"].r, 2);
    // Unsigned requests are refused by authentication first, and cost nobody anything.
    const anonymous = await call(proxy.url, "https://fal.run/fal-ai/flux/dev");
    assert.equal(anonymous.status, 401);
  });

  it("a limited user's queue polls, results and cancels still pass, uncounted (real @fal-ai/client)", opts, async () => {
    const carol = tokenFor("user-carol");
    const fal = createFalClient({
      proxyUrl: { url: proxy.url, when: "always" },
      credentials: undefined,
      // The app's sign-in token on every request the client makes through the proxy.
      requestMiddleware: async (req) => ({ ...req, headers: { ...(req.headers ?? {}), authorization: `Bearer ${carol}` } }),
    });
    const ids = [];
    for (let i = 0; i < 3; i++) {
      const { request_id } = await fal.queue.submit("fal-ai/flux/dev", { input: { prompt: `cat ${i}` } });
      ids.push(request_id);
    }
    await assert.rejects(
      fal.queue.submit("fal-ai/flux/dev", { input: { prompt: "one too many" } }),
      (error) => error instanceof ApiError && error.status === 429 && error.body?.error_type === "rate_limited",
    );
    // fal.subscribe-style polling: many status calls, then the result.
    for (let i = 0; i < 6; i++) {
      const status = await fal.queue.status("fal-ai/flux/dev", { requestId: ids[0] });
      assert.ok(status.status);
    }
    const result = await fal.queue.result("fal-ai/flux/dev", { requestId: ids[0] });
    assert.ok(result.data);
    const cancel = await call(proxy.url, `https://queue.fal.run/fal-ai/flux/requests/${ids[1]}/cancel`, {
      method: "PUT",
      token: carol,
    });
    assert.notEqual(cancel.status, 429);
    assert.equal(cancel.headers.get("ratelimit"), null, "a poll carries no RateLimit: it was not counted");
    // A POST dressed as a poll is a submission: counted, and refused.
    const dressed = await call(proxy.url, `https://queue.fal.run/fal-ai/flux/requests/${ids[0]}/status`, {
      token: carol,
    });
    assert.equal(dressed.status, 429);
  });

  it("40 simultaneous submissions against a budget of 3 let exactly 3 through", opts, async () => {
    const dave = tokenFor("user-dave");
    const answers = await Promise.all(
      Array.from({ length: 40 }, () => call(proxy.url, "https://queue.fal.run/fal-ai/flux/dev", { token: dave })),
    );
    const statuses = answers.map((a) => a.status);
    assert.equal(statuses.filter((s) => s === 200).length, 3, statuses.join());
    assert.equal(statuses.filter((s) => s === 429).length, 37, statuses.join());
    assert.equal(submissions().length, 3);
  });
});

describe("weighted endpoints (FAL_PROXY_ENDPOINT_COSTS)", () => {
  let proxy;
  before(async () => {
    proxy = await proxyWith({
      FAL_PROXY_AUTH_JWT_SECRET: JWT_SECRET,
      FAL_PROXY_RATE_LIMIT: "12/h",
      FAL_PROXY_ENDPOINT_COSTS: "fal-ai/kling-video/**=5,fal-ai/flux/dev=2",
    });
  }, opts);

  it("spends each endpoint's cost; a refused video costs nothing and cheaper requests still fit", opts, async () => {
    const erin = tokenFor("user-erin");
    const kling = "https://queue.fal.run/fal-ai/kling-video/v2/master/text-to-video";
    const r = async (target) => {
      const answer = await call(proxy.url, target, { token: erin });
      return [answer.status, parseRateLimit(answer.headers.get("ratelimit"))["12/h"]?.r];
    };
    assert.deepEqual(await r(kling), [200, 7]);
    // Case and doubled slashes do not make a video cheap.
    assert.deepEqual(await r("https://queue.fal.run/fal-ai/Kling-Video/v2/master/text-to-video"), [200, 2]);
    assert.deepEqual(await r(kling), [429, 2]);
    assert.deepEqual(await r("https://fal.run/fal-ai/flux/dev"), [200, 0]);
    assert.deepEqual(await r("https://fal.run/fal-ai/flux/schnell"), [429, 0]);
    assert.equal(submissions().length, 3);
  });

  it("token mints and upload initiates count; status polls do not", opts, async () => {
    const frank = tokenFor("user-frank");
    const mint = await call(proxy.url, "https://rest.fal.ai/tokens/", {
      token: frank,
      body: JSON.stringify({ allowed_apps: ["flux"], token_expiration: 120 }),
    });
    assert.equal(mint.status, 201 === mint.status ? 201 : mint.status);
    assert.equal(parseRateLimit(mint.headers.get("ratelimit"))["12/h"].r, 11);
    const upload = await call(proxy.url, "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3", {
      token: frank,
      body: JSON.stringify({ content_type: "image/png", file_name: "a.png" }),
    });
    assert.equal(parseRateLimit(upload.headers.get("ratelimit"))["12/h"].r, 10);
  });
});

describe("per address (authentication off)", () => {
  it("counts the peer address; a forged x-forwarded-for changes nothing unless the operator trusts the header", opts, async () => {
    const direct = await proxyWith({ FAL_PROXY_RATE_LIMIT: "2/h" });
    const spoof = (ip) => ({ headers: { "x-forwarded-for": ip } });
    const target = "https://fal.run/fal-ai/flux/dev";
    assert.equal((await call(direct.url, target, spoof("203.0.113.1"))).status, 200);
    assert.equal((await call(direct.url, target, spoof("203.0.113.2"))).status, 200);
    assert.equal((await call(direct.url, target, spoof("203.0.113.3"))).status, 429);

    // Behind the operator's own load balancer, the address it appends counts (the last one).
    const balanced = await proxyWith({ FAL_PROXY_RATE_LIMIT: "2/h", FAL_PROXY_CLIENT_IP_HEADER: "x-forwarded-for" });
    const via = (forged, real) => ({ headers: { "x-forwarded-for": `${forged}, ${real}` } });
    assert.equal((await call(balanced.url, target, via("1.1.1.1", "198.51.100.7"))).status, 200);
    assert.equal((await call(balanced.url, target, via("1.1.1.2", "198.51.100.7"))).status, 200);
    assert.equal((await call(balanced.url, target, via("1.1.1.3", "198.51.100.7"))).status, 429);
    assert.equal((await call(balanced.url, target, via("1.1.1.3", "198.51.100.8"))).status, 200);
    // IPv6 clients are one identity per /64.
    assert.equal((await call(balanced.url, target, spoof("2001:db8:7:7::1"))).status, 200);
    assert.equal((await call(balanced.url, target, spoof("2001:db8:7:7:ffff::2"))).status, 200);
    assert.equal((await call(balanced.url, target, spoof("2001:db8:7:7::3"))).status, 429);
    assert.equal((await call(balanced.url, target, spoof("2001:db8:7:8::1"))).status, 200);
  });
});

describe("the Vercel function (its x-forwarded-for, memory per instance)", () => {
  it("counts per address as Vercel reports it, and says memory counts per instance", opts, async () => {
    const fn = await vercelLauncher.start({ FAL_KEY: SERVER_KEY, FAL_PROXY_UPSTREAM: mock.url, FAL_PROXY_RATE_LIMIT: "2/h" });
    started.push(fn);
    const from = (ip) => ({ headers: { "x-forwarded-for": ip } });
    const target = "https://fal.run/fal-ai/flux/dev";
    assert.equal((await call(fn.url, target, from("203.0.113.50"))).status, 200);
    assert.equal((await call(fn.url, target, from("203.0.113.50"))).status, 200);
    const refused = await call(fn.url, target, from("203.0.113.50"));
    assert.equal(refused.status, 429);
    assert.equal(refused.json.error_type, "rate_limited");
    assert.equal((await call(fn.url, target, from("203.0.113.51"))).status, 200);
    assert.match(logsOf(fn), /each instance counts alone/);
  });
});

describe("two server instances sharing one redis-server", () => {
  let a;
  let b;
  before(async () => {
    const env = { FAL_PROXY_AUTH_JWT_SECRET: JWT_SECRET, FAL_PROXY_RATE_LIMIT: "5/h,50/day", FAL_PROXY_RATE_STORE: redis.url };
    [a, b] = await Promise.all([proxyWith(env), proxyWith(env)]);
  }, opts);

  it("share one budget, alternately", opts, async () => {
    const gina = tokenFor("user-gina");
    const statuses = [];
    for (let i = 0; i < 8; i++) {
      const answer = await call((i % 2 ? b : a).url, "https://fal.run/fal-ai/flux/dev", { token: gina });
      statuses.push(answer.status);
    }
    assert.deepEqual(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
  });

  it("40 simultaneous submissions over both instances let exactly 5 through", opts, async () => {
    const hank = tokenFor("user-hank");
    const answers = await Promise.all(
      Array.from({ length: 40 }, (_, i) => call((i % 2 ? b : a).url, "https://queue.fal.run/fal-ai/flux/dev", { token: hank })),
    );
    const statuses = answers.map((x) => x.status);
    assert.equal(statuses.filter((s) => s === 200).length, 5, statuses.join());
    assert.equal(statuses.filter((s) => s === 429).length, 35, statuses.join());
    assert.equal(submissions().length, 5);
    const remaining = answers.filter((x) => x.status === 429).map((x) => parseRateLimit(x.headers.get("ratelimit"))["5/h"].r);
    assert.ok(remaining.every((r) => r === 0), remaining.join());
  });
});

describe("the store going down", () => {
  let flaky;
  let closed;
  let open;
  before(async () => {
    flaky = await startRedis();
    const env = { FAL_PROXY_AUTH_JWT_SECRET: JWT_SECRET, FAL_PROXY_RATE_LIMIT: "100/h", FAL_PROXY_RATE_STORE: flaky.url };
    closed = await proxyWith(env);
    open = await proxyWith({ ...env, FAL_PROXY_RATE_STORE_FAILURE: "open" });
  }, opts);
  after(() => flaky?.stop());

  it("fails closed with 503 rate_store_unavailable (nothing upstream), or open; polls pass either way", opts, async () => {
    const ivy = tokenFor("user-ivy");
    const run = "https://fal.run/fal-ai/flux/dev";
    assert.equal((await call(closed.url, run, { token: ivy })).status, 200);
    await flaky.stop();
    mock.reset();
    const down = await call(closed.url, run, { token: ivy });
    assert.equal(down.status, 503);
    assert.equal(down.json.error_type, "rate_store_unavailable");
    assert.equal(mock.requests.length, 0);
    assert.match(logsOf(closed), /rate_store=unavailable/);
    const passed = await call(open.url, run, { token: ivy });
    assert.equal(passed.status, 200);
    assert.equal(passed.headers.get("ratelimit"), null);
    const poll = await call(closed.url, "https://queue.fal.run/fal-ai/flux/requests/unknown/status", { method: "GET", token: ivy });
    assert.equal(poll.status, 404, "the poll reached the (mock) fal, which does not know the id");
    // Back up: counting resumes (the count was lost with the server's memory).
    flaky = await startRedis(flaky.port);
    const back = await call(closed.url, run, { token: ivy });
    assert.equal(back.status, 200);
    assert.equal(parseRateLimit(back.headers.get("ratelimit"))["100/h"].r, 99);
  });
});

describe("Upstash's REST API (a minimal REST front over the real redis-server)", () => {
  const token = "rest-token-very-secret-123";
  let front;
  let proxy;
  let wrongToken;
  before(async () => {
    front = await startRestFront(redis.port, token);
    const env = { FAL_PROXY_AUTH_JWT_SECRET: JWT_SECRET, FAL_PROXY_RATE_LIMIT: "4/h", FAL_PROXY_RATE_STORE: front.url };
    proxy = await proxyWith({ ...env, FAL_PROXY_RATE_STORE_TOKEN: token });
    wrongToken = await proxyWith({ ...env, FAL_PROXY_RATE_STORE_TOKEN: "not-the-token" });
  }, opts);
  after(() => front?.stop());

  it("counts exactly through EVAL over REST, with the token as a bearer and never in a log", opts, async () => {
    const jack = tokenFor("user-jack");
    const answers = await Promise.all(
      Array.from({ length: 20 }, () => call(proxy.url, "https://queue.fal.run/fal-ai/flux/dev", { token: jack })),
    );
    const statuses = answers.map((x) => x.status);
    assert.equal(statuses.filter((s) => s === 200).length, 4, statuses.join());
    assert.equal(statuses.filter((s) => s === 429).length, 16, statuses.join());
    assert.ok(front.seen.authorizations.has(`Bearer ${token}`));
    const refused = await call(wrongToken.url, "https://fal.run/fal-ai/flux/dev", { token: jack });
    assert.equal(refused.status, 503, "a store that refuses the token cannot answer: closed");
    for (const target of [proxy, wrongToken]) {
      assert.ok(!logsOf(target).includes(token) && !logsOf(target).includes("not-the-token"), "no store token in the log");
      assert.match(logsOf(target), /Upstash REST at 127\.0\.0\.1/);
    }
  });
});

describe("bad store settings stop the server at start", () => {
  for (const [store, reason] of [
    ["redis://:hunter2-password@127.0.0.1:6379/notanumber", /FAL_PROXY_RATE_STORE/],
    ["durable-object", /FAL_PROXY_RATE_STORE/],
    ["ftp://127.0.0.1", /FAL_PROXY_RATE_STORE/],
  ]) {
    it(`FAL_PROXY_RATE_STORE=${store.replace(/:[^:@]*@/, ":***@")}`, opts, async () => {
      const proc = spawn(serverBinary(), [], {
        env: { PATH: process.env.PATH, HOST: "127.0.0.1", PORT: "0", FAL_KEY: SERVER_KEY, FAL_PROXY_RATE_LIMIT: "5/h", FAL_PROXY_RATE_STORE: store },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let output = "";
      proc.stdout.on("data", (c) => (output += c));
      proc.stderr.on("data", (c) => (output += c));
      const code = await new Promise((resolve) => proc.on("exit", resolve));
      assert.notEqual(code, 0, output);
      assert.match(output, reason);
      assert.ok(!output.includes("hunter2"), output);
      assert.doesNotMatch(output, /listening on/);
    });
  }
});
