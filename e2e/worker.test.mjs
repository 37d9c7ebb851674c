// Runs the e2e suite against the Cloudflare Worker under `wrangler dev` (workerd), plus the
// Worker's own cases (configuration errors, wasm size).
//   npm ci && scripts/build-worker.sh && (cd e2e && npm ci && node --test worker.test.mjs)
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { gzipSync } from "node:zlib";
import { defineAuthSuite } from "./auth.mjs";
import { defineSuite, SERVER_KEY } from "./suite.mjs";
import { workerLauncher, wranglerToml } from "./launchers/worker.mjs";

defineSuite(workerLauncher);
defineAuthSuite(workerLauncher);

/** The release wasm, gzipped, must stay under this (the README states the figure). */
const MAX_GZIPPED_WASM_BYTES = 300_000;

describe("fal-proxy worker specifics", () => {
  it("the release wasm is under 300 KB gzipped", () => {
    const wasm = readFileSync(path.join(path.dirname(wranglerToml().main), "index_bg.wasm"));
    const gzipped = gzipSync(wasm, { level: 9 }).length;
    assert.ok(gzipped < MAX_GZIPPED_WASM_BYTES, `index_bg.wasm is ${gzipped} bytes gzipped`);
  });

  describe("a bad setting → 500 invalid_configuration naming the variable, not the value", () => {
    let target;
    before(async () => {
      target = await workerLauncher.start({
        FAL_KEY: SERVER_KEY,
        FAL_PROXY_KEY_MODE: "secret-sauce-mode",
        FAL_PROXY_UPSTREAM: "http://127.0.0.1:9",
      });
    }, { timeout: 60_000 });
    after(async () => {
      await target?.stop();
    }, { timeout: 60_000 });

    it("answers every request with the JSON error", { timeout: 30_000 }, async () => {
      const res = await fetch(target.url, {
        method: "POST",
        headers: { "x-fal-target-url": "https://fal.run/fal-ai/flux/dev", "content-type": "application/json" },
        body: "{}",
      });
      const text = await res.text();
      assert.equal(res.status, 500, text);
      assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
      const body = JSON.parse(text);
      assert.equal(body.error_type, "invalid_configuration");
      assert.match(body.detail, /FAL_PROXY_KEY_MODE/);
      assert.ok(!text.includes("secret-sauce-mode"), "the value is not echoed");
      assert.ok(!text.includes(SERVER_KEY.split(":")[1]), "no key in the body");
    });
  });
});
