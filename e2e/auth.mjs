// End-to-end cases for app-user authentication (FAL_PROXY_AUTH_*), run against every target:
// the real @fal-ai/client adds `Authorization: Bearer <jwt>` with its requestMiddleware, the
// tokens are signed here with keys made at test time, and the provider's JWKS is served on
// 127.0.0.1 by jwks-server.mjs. Nothing reaches the internet.
//
// `defineAuthSuite(launcher)` registers the cases with node:test (see suite.mjs for launchers).

import { describe, it, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { createFalClient, ApiError } from "@fal-ai/client";
import { startMockFal } from "./mock-fal.mjs";
import { makeKey, signHs256, startJwksServer } from "./jwks-server.mjs";
import { SERVER_KEY } from "./suite.mjs";

const ISSUER = "https://auth.example.test";
const AUDIENCE = "my-app";
const ORIGIN = "https://app.example";
const HMAC_SECRET = "an-e2e-hmac-secret-of-more-than-32-bytes";
/** The proxy fetches a key set at most once per this interval (the core's REFETCH_INTERVAL_SECS). */
const REFETCH_INTERVAL_MS = 10_000;
/** The proxy gives up on a key set after this long (the core's KEY_SET_TIMEOUT). */
const KEY_SET_TIMEOUT_MS = 5_000;

const START_TIMEOUT = 60_000;
const opts = { timeout: 30_000 };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => Math.floor(Date.now() / 1000);

export function defineAuthSuite(launcher) {
  describe(`app-user authentication [${launcher.name}]`, () => {
    let mock;
    let jwks;
    let target;
    const tokensUsed = new Set();
    const rsa = makeKey("rsa", "rsa-1");
    const ec = makeKey("ec", "ec-1");
    const claims = (extra = {}) => ({ sub: "user-42", iss: ISSUER, aud: AUDIENCE, iat: now(), exp: now() + 600, ...extra });
    const token = (key, extra, header) => {
      const t = key.sign(claims(extra), header);
      tokensUsed.add(t);
      return t;
    };

    before(async () => {
      mock = await startMockFal();
      jwks = await startJwksServer();
      jwks.publish([rsa, ec]);
      target = await launcher.start({
        FAL_PROXY_UPSTREAM: mock.url,
        FAL_KEY: SERVER_KEY,
        FAL_PROXY_ALLOWED_ORIGINS: ORIGIN,
        FAL_PROXY_AUTH_JWKS_URL: jwks.url,
        FAL_PROXY_AUTH_JWT_SECRET: HMAC_SECRET,
        FAL_PROXY_AUTH_ISSUER: ISSUER,
        FAL_PROXY_AUTH_AUDIENCE: `another-app,${AUDIENCE}`,
      });
    }, { timeout: START_TIMEOUT });
    after(async () => {
      await target?.stop();
      await jwks?.close();
      await mock?.close();
    }, { timeout: START_TIMEOUT });
    beforeEach(() => mock.reset());

    /** The real client, sending `Authorization: Bearer <getToken()>` on every request when given one. */
    const client = (getToken) =>
      createFalClient({
        proxyUrl: { url: target.url, when: "always" },
        requestMiddleware: async (request) =>
          getToken ? { ...request, headers: { ...request.headers, authorization: `Bearer ${getToken()}` } } : request,
      });

    const post = (headers = {}) =>
      fetch(target.url, {
        method: "POST",
        headers: { "x-fal-target-url": "https://fal.run/fal-ai/flux/dev", "content-type": "application/json", ...headers },
        body: "{}",
      });

    function assertNoBearerUpstream() {
      for (const rec of mock.requests) {
        assert.equal(rec.headers.authorization, `Key ${SERVER_KEY}`, "the server key goes upstream, not the bearer");
        for (const [name, value] of Object.entries(rec.headers)) {
          for (const t of tokensUsed) assert.ok(!String(value).includes(t.split(".")[2]), `${name} carries a token upstream`);
        }
      }
    }

    it("signed-in users run and subscribe; the key set is fetched once for many requests", opts, async () => {
      const fal = client(() => token(rsa));
      // The first request fetches the key set. (Concurrent first requests share one fetch
      // on the native targets; on Workers each may fetch its own: see the README.)
      assert.ok((await fal.run("fal-ai/flux/dev", { input: { prompt: "first" } })).data);
      const runs = await Promise.all(
        Array.from({ length: 8 }, (_, i) => fal.run("fal-ai/flux/dev", { input: { prompt: `cat ${i}` } })),
      );
      for (const result of runs) assert.ok(result.data, "run returned data");
      const updates = [];
      const result = await fal.subscribe("fal-ai/flux/dev", {
        input: { prompt: "a dog" },
        logs: true,
        pollInterval: 50,
        onQueueUpdate: (u) => updates.push(u),
      });
      assert.ok(result.data);
      assert.ok(updates.some((u) => u.status === "COMPLETED"));
      // ES256 and HS256 tokens pass too.
      assert.ok((await client(() => token(ec)).run("fal-ai/flux/dev", { input: {} })).data);
      const hs = signHs256(HMAC_SECRET, claims());
      tokensUsed.add(hs);
      assert.ok((await client(() => hs).run("fal-ai/flux/dev", { input: {} })).data);
      assert.equal(jwks.state.fetches, 1, "one JWKS fetch for every request");
      assert.ok(mock.requests.length >= 12);
      assertNoBearerUpstream();
    });

    it("no token, a Basic header, an expired, forged or foreign token: 401 unauthenticated, CORS headers, nothing upstream", opts, async () => {
      const foreign = makeKey("rsa", "rsa-1"); // same kid, another key
      const forged = (() => {
        const [h, , s] = token(rsa).split(".");
        const p = Buffer.from(JSON.stringify(claims({ sub: "admin" }))).toString("base64url");
        return `${h}.${p}.${s}`;
      })();
      const cases = {
        "no authorization": {},
        "a Basic header": { authorization: "Basic dXNlcjpwYXNz" },
        "an expired token": { authorization: `Bearer ${token(rsa, { exp: now() - 120 })}` },
        "a token not yet valid": { authorization: `Bearer ${token(rsa, { nbf: now() + 3600 })}` },
        "another issuer": { authorization: `Bearer ${token(rsa, { iss: "https://evil.example" })}` },
        "another audience": { authorization: `Bearer ${token(rsa, { aud: "someone-else" })}` },
        "a tampered payload": { authorization: `Bearer ${forged}` },
        "a key from another key set": { authorization: `Bearer ${foreign.sign(claims())}` },
        "alg none": { authorization: `Bearer ${Buffer.from('{"alg":"none"}').toString("base64url")}.${Buffer.from(JSON.stringify(claims())).toString("base64url")}.` },
        "HS256 signed with the wrong secret": { authorization: `Bearer ${signHs256("not-the-secret-not-the-secret-not-the", claims())}` },
      };
      for (const [name, headers] of Object.entries(cases)) {
        const res = await post({ origin: ORIGIN, ...headers });
        const body = await res.json();
        assert.equal(res.status, 401, name);
        assert.equal(body.error_type, "unauthenticated", name);
        assert.ok(body.detail.length > 0, name);
        assert.equal(res.headers.get("www-authenticate"), "Bearer", name);
        assert.equal(res.headers.get("access-control-allow-origin"), ORIGIN, `${name}: the page can read the 401`);
      }
      // The real client without a token sees the 401 as an ApiError with the detail.
      await assert.rejects(client().run("fal-ai/flux/dev", { input: {} }), (error) => {
        assert.ok(error instanceof ApiError);
        assert.equal(error.status, 401);
        assert.equal(error.body.error_type, "unauthenticated");
        return true;
      });
      await sleep(30);
      assert.equal(mock.requests.length, 0, "nothing reached fal");
    });

    it("a CORS preflight needs no token", opts, async () => {
      const res = await fetch(target.url, {
        method: "OPTIONS",
        headers: { origin: ORIGIN, "access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type,x-fal-target-url" },
      });
      assert.equal(res.status, 204);
      assert.equal(res.headers.get("access-control-allow-origin"), ORIGIN);
      assert.match(res.headers.get("access-control-allow-headers") ?? "", /authorization/i);
    });

    it("rotation: a token from a newly published key passes after one refetch; garbage kids cost at most one fetch per interval", { timeout: 40_000 }, async () => {
      const fresh = makeKey("ed", "ed-2");
      jwks.publish([rsa, ec, fresh]);
      const before = jwks.state.fetches;
      await sleep(Math.max(0, jwks.state.lastFetchAt + REFETCH_INTERVAL_MS + 200 - Date.now()));
      const res = await post({ authorization: `Bearer ${token(fresh)}` });
      assert.equal(res.status, 200, await res.text());
      assert.equal(jwks.state.fetches, before + 1, "one refetch");
      for (let i = 0; i < 20; i++) {
        const garbage = await post({ authorization: `Bearer ${token(fresh, {}, { kid: `garbage-${i}` })}` });
        assert.equal(garbage.status, 401);
      }
      assert.equal(jwks.state.fetches, before + 1, "garbage kids within the interval fetch nothing");
    });

    it("the provider goes down: cached keys keep working and its failures are not retried in a loop", { timeout: 40_000 }, async () => {
      jwks.state.mode = "down";
      try {
        await sleep(Math.max(0, jwks.state.lastFetchAt + REFETCH_INTERVAL_MS + 200 - Date.now()));
        const before = jwks.state.fetches;
        const unknown = await post({ authorization: `Bearer ${token(rsa, {}, { kid: "rotated-away" })}` });
        assert.equal(unknown.status, 401);
        assert.equal(jwks.state.fetches, before + 1, "the proxy tried to refresh, and failed");
        for (let i = 0; i < 5; i++) {
          const ok = await post({ authorization: `Bearer ${token(rsa)}` });
          assert.equal(ok.status, 200, "the cached keys keep working");
        }
        assert.equal(jwks.state.fetches, before + 1, "no retry within the interval");
      } finally {
        jwks.state.mode = "ok";
      }
    });

    it("no token and no user id appears in the proxy's log; the line carries a user tag", opts, async () => {
      const res = await post({ authorization: `Bearer ${token(rsa)}` });
      assert.equal(res.status, 200);
      await sleep(200);
      const { stdout, stderr } = target.logs();
      const logs = `${stdout}\n${stderr}`;
      assert.match(logs, /user=[0-9a-f]{12}/, "the request line names the user by tag");
      assert.ok(!logs.includes("user-42"), "no subject in the log");
      for (const t of tokensUsed) {
        assert.ok(!logs.includes(t.split(".")[2]), "no token signature in the log");
        assert.ok(!logs.includes(t.split(".")[1]), "no token payload in the log");
      }
      assert.ok(!logs.includes(HMAC_SECRET), "no secret in the log");
    });
  });

  // Security review (authreview): natively, a request whose client goes away while it is
  // fetching the key set drops that fetch, and a dropped fetch does not count against the
  // refetch interval: a stream of abandoned garbage-kid requests is a stream of JWKS fetches.
  if (launcher.name === "native") {
    describe(`app-user authentication, abandoned key-set fetches [${launcher.name}]`, () => {
      let mock;
      let jwks;
      let target;
      const ed = makeKey("ed", "ed-1");

      before(async () => {
        mock = await startMockFal();
        jwks = await startJwksServer();
        jwks.publish([ed]);
        target = await launcher.start({
          FAL_PROXY_UPSTREAM: mock.url,
          FAL_KEY: SERVER_KEY,
          FAL_PROXY_AUTH_JWKS_URL: jwks.url,
        });
      }, { timeout: START_TIMEOUT });
      after(async () => {
        await target?.stop();
        await jwks?.close();
        await mock?.close();
      }, { timeout: START_TIMEOUT });

      it("garbage kids whose clients hang up during a slow JWKS answer cost at most one fetch per interval", { timeout: 40_000 }, async () => {
        const send = (kid, signal) =>
          fetch(target.url, {
            method: "POST",
            headers: {
              "x-fal-target-url": "https://fal.run/fal-ai/flux/dev",
              "content-type": "application/json",
              authorization: `Bearer ${ed.sign({ sub: "u", exp: now() + 600 }, { kid })}`,
            },
            body: "{}",
            signal,
          });
        const warm = await send("ed-1");
        assert.equal(warm.status, 200, await warm.text());
        assert.equal(jwks.state.fetches, 1);
        jwks.state.mode = "hang";
        await sleep(Math.max(0, jwks.state.lastFetchAt + REFETCH_INTERVAL_MS + 200 - Date.now()));
        for (let i = 0; i < 10; i++) {
          const controller = new AbortController();
          const pending = send(`garbage-${i}`, controller.signal).catch(() => "aborted");
          await sleep(300);
          controller.abort();
          await pending;
        }
        await sleep(200);
        assert.ok(jwks.state.fetches <= 2, `10 abandoned garbage-kid requests: ${jwks.state.fetches - 1} JWKS fetches`);
        assert.equal(mock.requests.length, 1, "only the warm-up reached fal");
      });
    });
  }

  describe(`app-user authentication, provider unreachable and nothing cached [${launcher.name}]`, () => {
    let mock;
    let jwks;
    let target;
    const rsa = makeKey("rsa", "rsa-1");

    before(async () => {
      mock = await startMockFal();
      jwks = await startJwksServer();
      jwks.state.mode = "hang";
      target = await launcher.start({
        FAL_PROXY_UPSTREAM: mock.url,
        FAL_KEY: SERVER_KEY,
        FAL_PROXY_AUTH_JWKS_URL: jwks.url,
      });
    }, { timeout: START_TIMEOUT });
    after(async () => {
      await target?.stop();
      await jwks?.close();
      await mock?.close();
    }, { timeout: START_TIMEOUT });

    it("a JWKS that never answers: 503 auth_unavailable within the key-set timeout, then at once, nothing upstream", { timeout: 40_000 }, async () => {
      const authorization = `Bearer ${rsa.sign({ sub: "u", exp: now() + 600 })}`;
      const send = () =>
        fetch(target.url, {
          method: "POST",
          headers: { "x-fal-target-url": "https://fal.run/fal-ai/flux/dev", "content-type": "application/json", authorization },
          body: "{}",
        });
      let started = Date.now();
      const first = await send();
      const firstMs = Date.now() - started;
      assert.equal(first.status, 503, await first.text());
      assert.ok(firstMs >= KEY_SET_TIMEOUT_MS - 500 && firstMs < KEY_SET_TIMEOUT_MS + 5_000, `first answer after ${firstMs} ms`);
      started = Date.now();
      const second = await send();
      const body = await second.json();
      assert.equal(second.status, 503);
      assert.equal(body.error_type, "auth_unavailable");
      assert.ok(Date.now() - started < 2_000, "no second wait within the interval");
      assert.equal(jwks.state.fetches, 1);
      assert.equal(mock.requests.length, 0, "nothing reached fal");
    });
  });
}
