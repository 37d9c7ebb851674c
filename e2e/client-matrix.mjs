// The client version matrix: every @fal-ai/client release installed in e2e/package.json
// (the `fal-client-X-Y-Z` npm aliases and `@fal-ai/client` itself) runs the flows an app
// uses through one proxy target: run, subscribe with logs, stream, queue cancel, storage
// upload (single and multipart) and the short-lived token.
//
//   cd e2e && node --test client-matrix-native.test.mjs   (and client-matrix-vercel.test.mjs)
//
// Releases before 1.10 send requests through a proxy only in a browser: their proxy
// middleware checks `typeof window` and, for the user agent, `window.document`. So this
// module makes them believe they run in one (a `window` with a `document`, set before
// any client is created) and gives every release `proxyUrl` as a string, as a browser app
// does. Nothing else of a browser is needed: the clients take `fetch` from their config,
// and this suite passes Node's, restricted to 127.0.0.1.
//
// One mock fal and one proxy process serve the whole matrix; each release gets its own
// describe. What each release sends (checked exactly, from the mock's record) is in
// `expectedForms` below and in the README's client section.

import { describe, it, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { startMockFal, patternBytes, sha256, SSE_EVENT_COUNT } from "./mock-fal.mjs";

const SERVER_KEY = "matrix-key-id:matrix-key-secret";
const KEY_SECRET = SERVER_KEY.split(":")[1];
const START_TIMEOUT = 60_000;
const opts = { timeout: 60_000 };
const ENDPOINT = "fal-ai/flux/dev";
const MIB = 1024 * 1024;
// The oldest 1.x on npm (1.0.2; every 1.x works through the proxy), the releases still in
// wide use, the last on rest.alpha.fal.ai (1.9.2) and the first on rest.fal.ai (1.9.3),
// the last before `proxyUrl` took `when` (1.9.6) and the newest (1.10.1, 2026-12-02).
const REQUIRED_RELEASES = ["1.0.2", "1.2.0", "1.6.2", "1.9.2", "1.9.3", "1.9.6", "1.10.1"];

// What a browser page has and Node does not, as far as the clients look (see above).
globalThis.window ??= { document: {} };

const readJson = (file) => JSON.parse(readFileSync(new URL(file, import.meta.url), "utf8"));
const packageJson = readJson("./package.json");
/** The version npm installed under `name` (some releases do not export their package.json). */
export const installedVersion = (name) => readJson(`./node_modules/${name}/package.json`).version;

/** Every client release the e2e package installs, oldest first: `{ name, version }`. */
export function installedReleases() {
  const names = Object.keys(packageJson.dependencies).filter((name) => name === "@fal-ai/client" || name.startsWith("fal-client-"));
  return names
    .map((name) => ({ name, version: installedVersion(name) }))
    .sort((a, b) => compareVersions(a.version, b.version));
}

function compareVersions(a, b) {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < 3; i++) if (pa[i] !== pb[i]) return pa[i] - pb[i];
  return 0;
}
const atLeast = (version, min) => compareVersions(version, min) >= 0;

/** The target URLs a release sends through a proxy for the token and for upload initiation. */
export function expectedForms(version) {
  // 1.9.3 moved the REST calls from rest.alpha.fal.ai to rest.fal.ai.
  const rest = atLeast(version, "1.9.3") ? "https://rest.fal.ai" : "https://rest.alpha.fal.ai";
  // 1.2.0 added the storage type and multipart uploads (files over 90 MiB).
  const v3 = atLeast(version, "1.2.0");
  return {
    token: `${rest}/tokens/`,
    initiate: `${rest}/storage/upload/initiate${v3 ? "?storage_type=fal-cdn-v3" : ""}`,
    initiateMultipart: v3 ? `${rest}/storage/upload/initiate-multipart?storage_type=fal-cdn-v3` : null,
  };
}

/** The mock's record path for a fal URL (FAL_PROXY_UPSTREAM maps https://HOST/P to <mock>/HOST/P). */
const mockPath = (falUrl) => falUrl.replace(/^https:\/\//, "/");

// The multipart test file: just over the clients' 90 MiB threshold, made of 1 MiB blocks
// so the expected hash of each 10 MiB part can be computed once.
const MULTIPART_SIZE = 90 * MIB + 4096;
const PART_SIZE = 10 * MIB;
let largeFile;
function largeUpload() {
  if (!largeFile) {
    const block = patternBytes(MIB, 11);
    const tail = patternBytes(MULTIPART_SIZE % MIB, 12);
    const blocks = [...Array(Math.floor(MULTIPART_SIZE / MIB)).fill(block), tail];
    const all = Buffer.concat(blocks);
    const parts = [];
    for (let start = 0; start < all.length; start += PART_SIZE) {
      const part = all.subarray(start, start + PART_SIZE);
      parts.push({ sha256: sha256(part), length: part.length });
    }
    largeFile = { blob: new Blob(blocks, { type: "video/mp4" }), sha256: sha256(all), length: all.length, parts };
  }
  return largeFile;
}

export function defineMatrix(launcher, releases = installedReleases()) {
  let mock;
  let proxy;
  const leaks = [];

  /** fetch for the clients: loopback only; direct calls to fal go to the mock. */
  function clientFetch(input, init) {
    let url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    const u = new URL(url);
    if (u.hostname !== "127.0.0.1") {
      // Only the client-mode stream goes to fal directly (with the token it fetched).
      if (!u.searchParams.has("fal_jwt_token")) throw new Error(`client tried to reach ${u.href} directly (blocked)`);
      url = `${mock.url}/${u.host}${u.pathname}${u.search}`;
    }
    return fetch(url, init).then((res) => {
      if (url.startsWith(proxy.url)) {
        const headers = JSON.stringify([...res.headers]);
        res
          .clone()
          .text()
          .then((body) => {
            if (headers.includes(KEY_SECRET) || body.includes(KEY_SECRET)) leaks.push(url);
          })
          .catch(() => {});
      }
      return res;
    });
  }

  describe(`client release matrix [${launcher.name}]`, () => {
    before(async () => {
      mock = await startMockFal();
      proxy = await launcher.start({ FAL_KEY: SERVER_KEY, FAL_PROXY_UPSTREAM: mock.url });
    }, { timeout: START_TIMEOUT });
    after(async () => {
      await proxy?.stop();
      await mock?.close();
    }, { timeout: START_TIMEOUT });
    beforeEach(() => mock.reset());

    for (const { name, version } of releases) {
      describe(`@fal-ai/client ${version} (${name})`, () => {
        const forms = expectedForms(version);
        let client;
        before(async () => {
          const { createFalClient } = await import(name);
          client = () => createFalClient({ proxyUrl: proxy.url, fetch: clientFetch });
        });

        /** Every request that reached fal's REST hosts, as `METHOD https://host/path?query`. */
        const restCalls = () =>
          mock.requests.filter((r) => /^\/rest\./.test(r.pathname)).map((r) => `${r.method} https:/${r.path}`);

        /** The one forwarded request to `falUrl` (method checked), with the server key on it. */
        function forwarded(method, falUrl) {
          const found = mock.requests.filter((r) => r.path === mockPath(falUrl));
          const seen = mock.requests.map((r) => `${r.method} ${r.path}`).join(", ");
          assert.equal(found.length, 1, `one ${method} ${falUrl} through the proxy; upstream saw: ${seen}`);
          assert.equal(found[0].method, method);
          assert.equal(found[0].headers.authorization, `Key ${SERVER_KEY}`);
          assert.equal(found[0].headers["x-fal-target-url"], undefined);
          return found[0];
        }

        it("run", opts, async () => {
          const { data, requestId } = await client().run(ENDPOINT, { input: { prompt: `run ${version}` } });
          assert.equal(data.prompt, `run ${version}`);
          assert.ok(requestId, "x-fal-request-id reached the client");
          forwarded("POST", `https://fal.run/${ENDPOINT}`);
        });

        it("subscribe with logs", opts, async () => {
          const updates = [];
          const { data, requestId } = await client().subscribe(ENDPOINT, {
            input: { prompt: `subscribe ${version}` },
            logs: true,
            pollInterval: 50,
            onQueueUpdate: (update) => updates.push(update),
          });
          assert.equal(data.seed, 42);
          assert.ok(mock.queue.get(requestId), "the result is the submitted request's");
          assert.deepEqual(
            [...new Set(updates.map((u) => u.status))],
            ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"],
          );
          const completed = updates.at(-1);
          assert.deepEqual(completed.logs.map((l) => l.message), ["Loading model", "Generating"]);
          forwarded("POST", `https://queue.fal.run/${ENDPOINT}`);
          const statusCalls = mock.requests.filter((r) => r.pathname === `/queue.fal.run/fal-ai/flux/requests/${requestId}/status`);
          assert.ok(statusCalls.length >= 3);
          assert.ok(statusCalls.every((r) => r.query.get("logs") === "1" && r.headers.authorization === `Key ${SERVER_KEY}`));
          forwarded("GET", `https://queue.fal.run/fal-ai/flux/requests/${requestId}`);
        });

        it("stream", opts, async () => {
          const stream = await client().stream(ENDPOINT, { input: { prompt: `stream ${version}` } });
          const steps = [];
          stream.on("data", (event) => steps.push(event.step));
          const final = await stream.done();
          assert.deepEqual(steps, [...Array(SSE_EVENT_COUNT).keys()]);
          assert.equal(final.done, true);
          assert.equal(final.prompt, `stream ${version}`);
          const rec = forwarded("POST", `https://fal.run/${ENDPOINT}/stream`);
          assert.match(rec.headers.accept, /text\/event-stream/);
        });

        it("queue cancel", opts, async () => {
          const fal = client();
          const { request_id: requestId } = await fal.queue.submit(ENDPOINT, { input: { prompt: "cancel me" } });
          await fal.queue.cancel(ENDPOINT, { requestId });
          assert.equal(mock.queue.get(requestId).cancelled, true);
          forwarded("PUT", `https://queue.fal.run/fal-ai/flux/requests/${requestId}/cancel`);
        });

        it(`storage upload: initiate at ${forms.initiate}`, opts, async () => {
          const bytes = patternBytes(200_000, 5);
          const fileUrl = await client().storage.upload(new Blob([bytes], { type: "image/png" }));
          assert.match(fileUrl, /^https:\/\/v3\.fal\.media\/files\/mock\//);
          const rec = forwarded("POST", forms.initiate);
          assert.deepEqual(restCalls(), [`POST ${forms.initiate}`]);
          assert.equal(rec.json.content_type, "image/png");
          const uploaded = mock.uploads.get(fileUrl.split("/").at(-2));
          assert.ok(uploaded, "the bytes went to upload_url");
          assert.equal(uploaded.sha256, sha256(bytes));
        });

        const multipartTitle = forms.initiateMultipart
          ? `storage upload over 90 MiB: multipart, initiate at ${forms.initiateMultipart}`
          : `storage upload over 90 MiB: one part (no multipart before 1.2.0), initiate at ${forms.initiate}`;
        it(multipartTitle, opts, async () => {
          const file = largeUpload();
          const fileUrl = await client().storage.upload(file.blob);
          const id = fileUrl.split("/").at(-2);
          assert.deepEqual(restCalls(), [`POST ${forms.initiateMultipart ?? forms.initiate}`]);
          if (!forms.initiateMultipart) {
            forwarded("POST", forms.initiate);
            assert.equal(mock.uploads.get(id)?.sha256, file.sha256);
            return;
          }
          const rec = forwarded("POST", forms.initiateMultipart);
          assert.equal(rec.json.content_type, "video/mp4");
          const upload = mock.multipartUploads.get(id);
          assert.ok(upload, "parts went to upload_url");
          assert.deepEqual(
            [...upload.parts.entries()].sort(([a], [b]) => a - b).map(([, part]) => part),
            file.parts,
          );
          assert.deepEqual(
            upload.completed,
            file.parts.map((part, i) => ({ partNumber: i + 1, etag: `"${part.sha256}"` })),
          );
          assert.equal(mock.uploads.size, 0, "no single-part upload");
        });

        it(`token: POST ${forms.token} (client-mode stream)`, opts, async () => {
          const warn = console.warn;
          console.warn = () => {}; // releases since 1.9 warn that the default token provider is deprecated
          let final;
          try {
            const stream = await client().stream(ENDPOINT, { input: { prompt: "token" }, connectionMode: "client" });
            final = await stream.done();
          } finally {
            console.warn = warn;
          }
          assert.equal(final.done, true);
          const rec = forwarded("POST", forms.token);
          assert.deepEqual(restCalls(), [`POST ${forms.token}`]);
          assert.deepEqual(rec.json, { allowed_apps: ["flux"], token_expiration: 120 });
          assert.equal(mock.tokens.length, 1);
          // The token came back intact: the client used it for its direct call to fal.
          const direct = mock.requests.find((r) => r.pathname === `/fal.run/${ENDPOINT}/stream`);
          assert.equal(direct.query.get("fal_jwt_token"), mock.tokens[0].token);
          assert.equal(direct.headers.authorization, undefined, "the direct call carries the token, not the key");
        });
      });
    }

    it("the matrix covers the releases it must", () => {
      for (const { name, version } of releases) {
        if (name !== "@fal-ai/client") assert.equal(name, `fal-client-${version.replaceAll(".", "-")}`, "alias names its release");
      }
      const versions = releases.map((r) => r.version);
      for (const required of REQUIRED_RELEASES) assert.ok(versions.includes(required), `${required} is in the matrix`);
    });

    describe("after every release", () => {
      it("no proxy response carried the server key", async () => {
        await new Promise((r) => setTimeout(r, 50)); // let the last clones be read
        assert.deepEqual(leaks, []);
      });
    });
  });
}
