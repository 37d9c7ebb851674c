// Rate limits on the Cloudflare Worker under `wrangler dev` (workerd, local): the
// RateLimiter Durable Object as the store, and Upstash's REST API (a minimal REST front
// over a real redis-server) reached with the Worker's own fetch.
//   scripts/build-worker.sh && cd e2e && node --test limits-worker.test.mjs

import { describe, it, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { startMockFal } from "./mock-fal.mjs";
import { workerLauncher } from "./launchers/worker.mjs";
import { JWT_SECRET, call, clearOfBoundary, parseRateLimit, secondsLeft, startRedis, startRestFront, tokenFor } from "./limits-support.mjs";

const SERVER_KEY = "test-key-id:test-key-secret";
const HOUR = 3600;
const opts = { timeout: 90_000 };

let mock;
const started = [];

async function workerWith(env) {
  const target = await workerLauncher.start({
    FAL_KEY: SERVER_KEY,
    FAL_PROXY_UPSTREAM: mock.url,
    FAL_PROXY_AUTH_JWT_SECRET: JWT_SECRET,
    ...env,
  });
  started.push(target);
  return target;
}

const submissions = () => mock.requests.filter((r) => r.method === "POST");

before(async () => {
  mock = await startMockFal();
  await clearOfBoundary(HOUR, 180);
}, { timeout: 240_000 });

after(async () => {
  for (const target of started) await target.stop();
  await mock?.close();
}, { timeout: 60_000 });

beforeEach(() => mock.reset());

describe("the Durable Object store (FAL_PROXY_RATE_STORE=durable-object)", () => {
  let worker;
  before(async () => {
    worker = await workerWith({ FAL_PROXY_RATE_LIMIT: "5/h,100/day", FAL_PROXY_RATE_STORE: "durable-object" });
  }, opts);

  it("40 simultaneous submissions from one user let exactly 5 through", opts, async () => {
    const token = tokenFor("worker-user-a");
    const answers = await Promise.all(
      Array.from({ length: 40 }, () => call(worker.url, "https://queue.fal.run/fal-ai/flux/dev", { token })),
    );
    const statuses = answers.map((a) => a.status);
    assert.equal(statuses.filter((s) => s === 200).length, 5, statuses.join());
    assert.equal(statuses.filter((s) => s === 429).length, 35, statuses.join());
    assert.equal(submissions().length, 5);
    const refused = answers.find((a) => a.status === 429);
    assert.equal(refused.json.error_type, "rate_limited");
    assert.ok(Math.abs(Number(refused.headers.get("retry-after")) - secondsLeft(HOUR)) <= 3);
    assert.equal(parseRateLimit(refused.headers.get("ratelimit"))["5/h"].r, 0);
    const remaining = answers
      .filter((a) => a.status === 200)
      .map((a) => parseRateLimit(a.headers.get("ratelimit"))["5/h"].r)
      .sort();
    assert.deepEqual(remaining, [0, 1, 2, 3, 4]);
  });

  it("another user has their own budget; a limited user's polls still pass", opts, async () => {
    const other = await call(worker.url, "https://fal.run/fal-ai/flux/dev", { token: tokenFor("worker-user-b") });
    assert.equal(other.status, 200);
    assert.equal(parseRateLimit(other.headers.get("ratelimit"))["5/h"].r, 4);
    const poll = await call(worker.url, "https://queue.fal.run/fal-ai/flux/requests/unknown/status", {
      method: "GET",
      token: tokenFor("worker-user-a"),
    });
    assert.equal(poll.status, 404, "the poll reached the (mock) fal, which does not know the id");
    assert.equal(poll.headers.get("ratelimit"), null);
  });
});

describe("Upstash's REST API from the Worker", () => {
  let redis;
  let front;
  let worker;
  const restToken = "worker-rest-token-secret";
  before(async () => {
    redis = await startRedis();
    front = await startRestFront(redis.port, restToken);
    worker = await workerWith({
      FAL_PROXY_RATE_LIMIT: "3/h",
      FAL_PROXY_RATE_STORE: front.url,
      FAL_PROXY_RATE_STORE_TOKEN: restToken,
    });
  }, opts);
  after(async () => {
    await front?.stop();
    await redis?.stop();
  });

  it("counts exactly through the REST front", opts, async () => {
    const token = tokenFor("worker-user-c");
    const answers = await Promise.all(
      Array.from({ length: 12 }, () => call(worker.url, "https://queue.fal.run/fal-ai/flux/dev", { token })),
    );
    const statuses = answers.map((a) => a.status);
    assert.equal(statuses.filter((s) => s === 200).length, 3, statuses.join());
    assert.equal(statuses.filter((s) => s === 429).length, 9, statuses.join());
    assert.ok(front.seen.requests >= 12);
    const { stdout, stderr } = worker.logs ? worker.logs() : { stdout: "", stderr: "" };
    assert.ok(!(stdout + stderr).includes(restToken), "no store token in the log");
  });
});
