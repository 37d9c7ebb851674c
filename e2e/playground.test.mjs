// The playground page (public/) in a real browser: Debian's Chromium, headless, driven by
// playwright-core, against the native server (and once the Worker under `wrangler dev`)
// with the mock fal on 127.0.0.1. One browser is launched for the whole file.
//
//   cargo build -p fal-proxy-server && (cd e2e && npm ci && node --test playground.test.mjs)
//
// The Worker case needs the built Worker (scripts/build-worker.sh) and wrangler (`npm ci`
// at the root). Chromium: $CHROMIUM_BIN, else /usr/bin/chromium (`scripts/tools/apt.sh
// chromium`). Screenshots of every state go to e2e/artifacts/playground/ (git-ignored).
//
// Result images: the mock answers with fal's CDN URLs (https://v3.fal.media/...), which the
// page's Content-Security-Policy allows; the browser's requests for them are routed to the
// mock, which serves a real PNG. So the policy under test is the one deployed, and nothing
// leaves 127.0.0.1: every other request off the page's origin is aborted and fails the test.

import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startMockFal, MOCK_PNG } from "./mock-fal.mjs";
import { nativeLauncher } from "./launchers/native.mjs";
import { signHs256 } from "./jwks-server.mjs";
import { workerLauncher } from "./launchers/worker.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "..");
const ARTIFACTS = path.join(here, "artifacts", "playground");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const AXE_SOURCE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const USER_KEY = "fal_test-visitor-key-0123456789wxyz";
const SERVER_KEY = "test-key-id:test-key-secret";
const APP_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJl";
const DESKTOP = { width: 1440, height: 900 };
const PHONE = { width: 375, height: 812 };
const START = { timeout: 60_000 };
const opts = { timeout: 45_000 };

let browser;
let mock;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  mock = await startMockFal();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
}, START);

after(async () => {
  await browser?.close();
  await mock?.close();
});

/** A native server for the enclosing describe, with the mock behind it. */
function nativeServer(env) {
  const state = {};
  before(async () => {
    state.target = await nativeLauncher.start({ FAL_PROXY_UPSTREAM: mock.url, ...env });
    state.origin = new URL(state.target.url).origin;
  }, START);
  after(async () => state.target?.stop(), START);
  return state;
}

/**
 * A browser context (its own localStorage) for the enclosing describe. `page()` opens a tab
 * that records what it sends to the proxy, CSP violations, console errors and any request
 * that would leave 127.0.0.1.
 */
function browserContext(server, { initScript } = {}) {
  const state = { pages: [] };
  before(async () => {
    state.context = await browser.newContext({ viewport: DESKTOP, colorScheme: "light", serviceWorkers: "block" });
    state.escaped = [];
    await state.context.route(
      (url) => url.hostname !== "127.0.0.1",
      async (route) => {
        const url = new URL(route.request().url());
        if (url.protocol === "https:" && (url.hostname === "fal.media" || url.hostname.endsWith(".fal.media"))) {
          // fal's CDN, played by the mock (which maps https://HOST/PATH to /HOST/PATH).
          const res = await fetch(`${mock.url}/${url.hostname}${url.pathname}${url.search}`);
          const body = Buffer.from(await res.arrayBuffer());
          return route.fulfill({ status: res.status, contentType: res.headers.get("content-type") ?? undefined, body });
        }
        state.escaped.push(url.href);
        return route.abort();
      },
    );
    if (initScript) await state.context.addInitScript(initScript);
    await state.context.addInitScript(() => {
      window.__csp = [];
      document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
    });
  }, START);
  after(async () => state.context?.close());

  state.page = async () => {
    const page = await state.context.newPage();
    const record = { proxy: [], errors: [] };
    page.on("request", (request) => {
      if (request.url().startsWith(`${server.origin}/api/fal/proxy`)) {
        record.proxy.push(request.allHeaders().then((headers) => ({ method: request.method(), url: request.url(), headers })));
      }
    });
    page.on("pageerror", (error) => record.errors.push(`pageerror: ${error.message}`));
    page.on("console", (message) => {
      // The browser logs every 4xx a request gets; the 422 and 403 cases make some on purpose.
      if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
        record.errors.push(`console: ${message.text()}`);
      }
    });
    page.record = record;
    state.pages.push(page);
    return page;
  };
  /** What the page sent to the proxy so far (headers as the browser sent them). */
  state.proxyRequests = (page) => Promise.all(page.record.proxy);
  /** No CSP violation, no script error, nothing off 127.0.0.1 but fal's CDN. */
  state.clean = async (page) => {
    assert.deepEqual(await page.evaluate(() => window.__csp), [], "no Content-Security-Policy violation");
    assert.deepEqual(page.record.errors, [], "no script or console errors");
    assert.deepEqual(state.escaped, [], "nothing left 127.0.0.1 except fal's CDN (routed to the mock)");
  };
  return state;
}

const byRole = (page, role, name) => page.getByRole(role, { name, exact: true });

/** Loads the page and waits until it knows the key mode. */
async function load(page, origin) {
  const response = await page.goto(`${origin}/`);
  assert.equal(response.status(), 200);
  await page.waitForFunction(() => document.getElementById("key-chip")?.textContent !== "Loading…");
  return response;
}

/**
 * axe-core's WCAG 2 A/AA rules (contrast included) on the page as it is: no violation. It is
 * evaluated through the DevTools protocol, which the page's CSP does not govern.
 */
async function assertAccessible(page, what) {
  if (!(await page.evaluate(() => "axe" in window))) await page.evaluate(AXE_SOURCE);
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { runOnly: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] });
    return result.violations.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
  });
  assert.deepEqual(violations, [], `accessibility of ${what}`);
}

/**
 * Screenshots at 1440 and 375 px, light and dark, into the artifacts folder; and the
 * accessibility check in both colour schemes.
 */
async function screenshots(page, name) {
  for (const [size, viewport] of [["1440", DESKTOP], ["375", PHONE]]) {
    await page.setViewportSize(viewport);
    for (const colorScheme of ["light", "dark"]) {
      await page.emulateMedia({ colorScheme });
      await page.screenshot({ path: path.join(ARTIFACTS, `${name}-${size}-${colorScheme}.png`), fullPage: true });
      if (size === "1440") await assertAccessible(page, `${name}, ${colorScheme}`);
    }
  }
  await page.setViewportSize(DESKTOP);
  await page.emulateMedia({ colorScheme: "light" });
}

/** Keeps every text the status line shows, for checking the queue's progress afterwards. */
async function watchStatus(page) {
  await page.evaluate(() => {
    window.__status = [];
    const status = document.getElementById("status");
    new MutationObserver(() => window.__status.push(status.textContent)).observe(status, {
      childList: true,
      characterData: true,
      subtree: true,
    });
  });
}

async function saveKey(page, key) {
  await byRole(page, "button", "Settings").click();
  const dialog = page.getByRole("dialog");
  await dialog.waitFor({ state: "visible" });
  const input = dialog.getByLabel("fal API key", { exact: true });
  assert.equal(await input.getAttribute("type"), "password");
  await input.fill(key);
  await byRole(dialog, "button", "Save").click();
  await dialog.waitFor({ state: "hidden" });
}

/** Generates with `model` and waits for the run to end; returns the status texts seen. */
async function generate(page, model, prompt = "a lighthouse at dusk, oil painting") {
  await page.getByLabel("Model", { exact: true }).fill(model);
  await page.getByLabel("Prompt", { exact: true }).fill(prompt);
  await watchStatus(page);
  const before = mock.requests.length;
  await byRole(page, "button", "Generate").click();
  // The form is busy from the click (set before the first request) until the run ends.
  await page.waitForFunction(() => document.getElementById("generate-form").getAttribute("aria-busy") === "false", null, {
    timeout: 20_000,
  });
  return { status: await page.evaluate(() => window.__status), upstream: mock.requests.slice(before) };
}

/** The result image(s), each checked to be decoded and shown. */
async function shownImages(page) {
  const result = page.getByRole("region", { name: "Result", exact: true });
  const images = result.getByRole("img");
  await images.first().waitFor({ state: "visible" });
  await page.waitForFunction(() => [...document.querySelectorAll("#images img")].every((img) => img.complete));
  return images.evaluateAll((list) => list.map((img) => ({ src: img.src, naturalWidth: img.naturalWidth, alt: img.alt })));
}

const queueRequests = (records) => records.filter((r) => r.pathname.startsWith("/queue.fal.run/"));

describe("playground on the native server, user mode (no server key)", () => {
  const server = nativeServer({
    // Every app the tests use; anything else is the proxy's own 403 (shown with its detail).
    FAL_PROXY_ALLOW_ENDPOINTS: "fal-ai/flux/**,fal-ai/validation-error,fal-ai/slow",
  });
  const browserState = browserContext(server, {
    // The embedding app's hook: the page calls it before every proxy request.
    initScript: `window.falProxyAuthToken = async () => ${JSON.stringify(APP_TOKEN)};`,
  });
  let page;

  before(async () => {
    page = await browserState.page();
  });

  it("the page and its files carry the security headers; no inline script", opts, async () => {
    const response = await load(page, server.origin);
    const headers = response.headers();
    const csp = headers["content-security-policy"];
    assert.ok(csp, "Content-Security-Policy is set");
    const directives = Object.fromEntries(csp.split(";").map((d) => d.trim().split(/\s+/)).map(([k, ...v]) => [k, v]));
    assert.deepEqual(directives["default-src"], ["'none'"]);
    assert.deepEqual(directives["script-src"], ["'self'"]);
    assert.deepEqual(directives["connect-src"], ["'self'"]);
    assert.ok(!csp.includes("unsafe"), csp);
    assert.equal(headers["x-content-type-options"], "nosniff");
    assert.equal(headers["referrer-policy"], "no-referrer");

    const html = readFileSync(path.join(repoRoot, "public", "index.html"), "utf8");
    for (const script of html.match(/<script\b[^>]*>/g) ?? []) assert.match(script, /\ssrc="\/[^"]+"/, "scripts have a src");
    assert.doesNotMatch(html, /<script\b[^>]*>\s*[^<\s]/, "no inline script");
    assert.doesNotMatch(html, /\son[a-z]+\s*=/i, "no inline event handlers");
    assert.doesNotMatch(html, /\sstyle\s*=|<style/i, "no inline styles");
  });

  it("the native server serves every file of public/ as it is, with the same headers as Vercel and the Worker", opts, async () => {
    const vercel = JSON.parse(readFileSync(path.join(repoRoot, "vercel.json"), "utf8"));
    const vercelHeaders = Object.fromEntries(
      vercel.headers.find((h) => h.source === "/(.*)").headers.map(({ key, value }) => [key.toLowerCase(), value]),
    );
    const workerHeaders = {};
    const rules = readFileSync(path.join(repoRoot, "public", "_headers"), "utf8").split("\n");
    assert.equal(rules.find((l) => l.startsWith("/")), "/*", "_headers has one rule, for every file");
    for (const line of rules.filter((l) => /^\s+\S/.test(l))) {
      const [, name, value] = /^\s+([^:]+):\s*(.*)$/.exec(line);
      workerHeaders[name.toLowerCase()] = value;
    }
    assert.deepEqual(workerHeaders, vercelHeaders, "public/_headers and vercel.json agree");

    const files = readdirSync(path.join(repoRoot, "public")).filter((f) => f !== "_headers");
    assert.ok(files.includes("playground.js") && files.includes("index.html"));
    for (const file of files) {
      const res = await fetch(`${server.origin}/${file === "index.html" ? "" : file}`);
      assert.equal(res.status, 200, file);
      const body = Buffer.from(await res.arrayBuffer());
      assert.ok(body.equals(readFileSync(path.join(repoRoot, "public", file))), `${file} is served byte for byte`);
      for (const [name, value] of Object.entries(vercelHeaders)) assert.equal(res.headers.get(name), value, `${file}: ${name}`);
    }
    const headersFile = await fetch(`${server.origin}/_headers`);
    assert.equal(headersFile.status, 404);
    await headersFile.arrayBuffer();
  });

  it("GET /api/fal/proxy/info tells the key mode, and nothing else", opts, async () => {
    const res = await fetch(`${server.origin}/api/fal/proxy/info`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { key_mode: "user" });
  });

  it("no key: the card is shown, Generate is disabled, nothing reaches the mock", opts, async () => {
    mock.reset();
    await load(page, server.origin);
    const card = page.locator("#key-card");
    assert.ok(await card.isVisible(), "the card is shown");
    assert.match(await card.innerText(), /add your fal API key/);
    assert.ok(await byRole(page, "button", "Generate").isDisabled(), "Generate is disabled");
    assert.equal(await page.locator("#key-chip").innerText(), "No key");
    // Enter in a field does not submit either.
    await page.getByLabel("Prompt", { exact: true }).fill("a cat");
    await page.getByLabel("Model", { exact: true }).press("Enter");
    await page.waitForTimeout(500);
    assert.equal(mock.requests.length, 0, "nothing reached the mock");
    const sent = await browserState.proxyRequests(page);
    assert.ok(sent.every((r) => r.url.endsWith("/api/fal/proxy/info")), "only the key-mode lookup was made");
    await screenshots(page, "1-user-mode-no-key");

    // The card's button opens Settings.
    await card.getByRole("button").click();
    const dialog = page.getByRole("dialog");
    await dialog.waitFor({ state: "visible" });
    assert.equal(await dialog.evaluate((d) => d.tagName), "DIALOG");
    assert.ok(await dialog.getByLabel("fal API key", { exact: true }).isVisible());
    await screenshots(page, "2-settings-dialog");
    await byRole(dialog, "button", "Close").click();
    await dialog.waitFor({ state: "hidden" });
    await browserState.clean(page);
  });

  it("a key that does not look like a fal key gets an inline message, not a save", opts, async () => {
    await byRole(page, "button", "Settings").click();
    const dialog = page.getByRole("dialog");
    await dialog.getByLabel("fal API key", { exact: true }).fill("sk-this-is-not-a-fal-key");
    await byRole(dialog, "button", "Save").click();
    const error = dialog.locator("#key-error");
    await error.waitFor({ state: "visible" });
    assert.match(await error.innerText(), /fal_/);
    assert.ok(await dialog.isVisible(), "the dialog stays open");
    assert.equal(await page.evaluate(() => Object.keys(localStorage).length), 0, "nothing was saved");
    await screenshots(page, "3-invalid-key");
    await byRole(dialog, "button", "Close").click();
  });

  it("Settings → paste a fal_ key → Save → reload: kept, masked, the card is gone", opts, async () => {
    await saveKey(page, USER_KEY);
    await page.reload();
    await page.waitForFunction(() => document.getElementById("key-chip")?.textContent !== "Loading…");
    assert.ok(!(await page.locator("#key-card").isVisible()), "the card is gone");
    assert.ok(await byRole(page, "button", "Generate").isEnabled());
    assert.equal(await page.locator("#key-chip").innerText(), `Your key •••• ${USER_KEY.slice(-4)}`);
    await byRole(page, "button", "Settings").click();
    const dialog = page.getByRole("dialog");
    assert.match(await dialog.innerText(), new RegExp(`Saved key: •••• ${USER_KEY.slice(-4)}`));
    assert.equal(await dialog.getByLabel("fal API key", { exact: true }).inputValue(), "", "the key is not put back in the field");
    const shown = await page.evaluate(() => document.documentElement.outerHTML + document.body.innerText);
    assert.ok(!shown.includes(USER_KEY.slice(0, -4)), "the page shows at most the key's last four characters");
    await byRole(dialog, "button", "Close").click();
  });

  it("Generate runs: queue status and logs shown, the image displayed, fal sees only the visitor's key", opts, async () => {
    mock.reset();
    const { status, upstream } = await generate(page, "fal-ai/flux/schnell");
    const images = await shownImages(page);
    assert.equal(images.length, 1);
    assert.match(images[0].src, /^https:\/\/v3\.fal\.media\/files\/mock\/.+\.png$/);
    assert.ok(images[0].naturalWidth > 0, "the image was decoded");
    assert.equal(images[0].naturalWidth, 96, "it is the mock's PNG");
    assert.match(images[0].alt, /a lighthouse at dusk/);
    assert.ok(status.some((s) => /^In queue, position \d+\.$/.test(s)), `queue position shown: ${status}`);
    assert.ok(status.includes("Running…"), `status shown: ${status}`);
    assert.match(await page.locator("#status").innerText(), /^Done in \d+\.\d s\.$/);
    const logs = await page.getByRole("list", { name: "Logs" }).innerText();
    assert.match(logs, /Loading model/);
    assert.match(logs, /Generating/);

    const queue = queueRequests(upstream);
    assert.ok(queue.length >= 3, "submit, status, result");
    assert.equal(queue[0].method, "POST");
    assert.equal(queue[0].pathname, "/queue.fal.run/fal-ai/flux/schnell");
    assert.deepEqual(queue[0].json, { prompt: "a lighthouse at dusk, oil painting" });
    for (const record of queue) {
      assert.equal(record.headers.authorization, `Key ${USER_KEY}`, record.path);
      assert.equal(record.headers["x-fal-user-key"], undefined, record.path);
    }
    assert.ok(upstream.some((r) => r.pathname.startsWith("/v3.fal.media/files/mock/")), "the image came from the mock");

    // What the browser sent: the key only to the proxy, in x-fal-user-key, with the app's token.
    const sent = (await browserState.proxyRequests(page)).filter((r) => !r.url.endsWith("/info"));
    assert.ok(sent.length >= 3);
    for (const request of sent) {
      assert.equal(request.headers["x-fal-user-key"], USER_KEY);
      assert.equal(request.headers.authorization, `Bearer ${APP_TOKEN}`, "the embedding app's token reaches the proxy");
      assert.match(request.headers["x-fal-target-url"], /^https:\/\/queue\.fal\.run\//);
    }
    assert.ok(queue.every((r) => !JSON.stringify(r.headers).includes(APP_TOKEN)), "the app's token is not forwarded to fal");
    await screenshots(page, "4-result");
    await browserState.clean(page);
  });

  it("a 422 shows its field error beside the form", opts, async () => {
    mock.reset();
    await generate(page, "fal-ai/validation-error");
    const error = page.locator("#prompt-error");
    await error.waitFor({ state: "visible" });
    assert.equal(await error.innerText(), "field required");
    assert.equal(await page.getByLabel("Prompt", { exact: true }).getAttribute("aria-invalid"), "true");
    assert.match(await page.getByRole("alert").innerText(), /422/);
    assert.equal(queueRequests(mock.requests)[0].headers.authorization, `Key ${USER_KEY}`);
    await screenshots(page, "5-validation-error");
  });

  it("a refusal by the proxy shows its detail", opts, async () => {
    mock.reset();
    await generate(page, "fal-ai/not-on-the-list");
    const alert = page.getByRole("alert");
    assert.match(await alert.innerText(), /The proxy refused the request \(403\): This fal endpoint is not allowed by this proxy\./);
    assert.equal(mock.requests.length, 0);
    assert.equal(await page.locator("#result-empty").innerText(), "Images you generate appear here.");
    await screenshots(page, "6-proxy-refusal");
  });

  it("Cancel reaches the mock as the queue's PUT", opts, async () => {
    mock.reset();
    await page.getByLabel("Model", { exact: true }).fill("fal-ai/slow");
    await watchStatus(page);
    await byRole(page, "button", "Generate").click();
    await page.waitForFunction(() => document.getElementById("status").textContent === "Running…");
    assert.ok(await byRole(page, "button", "Cancel").isVisible(), "Cancel is shown while it runs");
    assert.ok(await byRole(page, "button", "Generate").isDisabled());
    await screenshots(page, "7-running");
    await byRole(page, "button", "Cancel").click();
    await page.waitForFunction(() => document.getElementById("status").textContent === "Cancelled.");
    const [submit] = queueRequests(mock.requests);
    const id = submit && [...mock.queue.keys()][0];
    const cancels = mock.requests.filter((r) => r.method === "PUT");
    assert.equal(cancels.length, 1, "one cancel");
    assert.equal(cancels[0].pathname, `/queue.fal.run/fal-ai/slow/requests/${id}/cancel`);
    assert.equal(cancels[0].headers.authorization, `Key ${USER_KEY}`);
    assert.ok(mock.queue.get(id).cancelled);
    assert.ok(await byRole(page, "button", "Cancel").isHidden());
    assert.ok(await byRole(page, "button", "Generate").isEnabled());
    // Polling stopped.
    const seen = mock.requests.length;
    await page.waitForTimeout(1200);
    assert.equal(mock.requests.length, seen, "no more status polls after Cancel");
  });

  it("Clear key: the card is back", opts, async () => {
    await byRole(page, "button", "Settings").click();
    await byRole(page.getByRole("dialog"), "button", "Clear key").click();
    await page.locator("#key-card").waitFor({ state: "visible" });
    assert.ok(await byRole(page, "button", "Generate").isDisabled());
    assert.equal(await page.evaluate(() => Object.keys(localStorage).length), 0);
    await page.reload();
    await page.locator("#key-card").waitFor({ state: "visible" });
    await browserState.clean(page);
  });
});

describe("playground on the native server, server mode", () => {
  const server = nativeServer({ FAL_KEY: SERVER_KEY });
  const browserState = browserContext(server);

  it("no card, Settings says the site's key is used, Generate works without a key", opts, async () => {
    const page = await browserState.page();
    await load(page, server.origin);
    assert.ok(!(await page.locator("#key-card").isVisible()), "no card");
    assert.equal(await page.locator("#key-chip").innerText(), "Using this site's key");
    await byRole(page, "button", "Settings").click();
    const dialog = page.getByRole("dialog");
    assert.match(await dialog.innerText(), /uses its own fal key/);
    assert.ok(!(await dialog.getByLabel("fal API key", { exact: true }).isVisible()), "no key to enter");
    await screenshots(page, "8-server-mode-settings");
    await byRole(dialog, "button", "Close").click();

    mock.reset();
    await generate(page, "fal-ai/flux/dev");
    const [image] = await shownImages(page);
    assert.ok(image.naturalWidth > 0);
    for (const record of queueRequests(mock.requests)) assert.equal(record.headers.authorization, `Key ${SERVER_KEY}`);
    const sent = await browserState.proxyRequests(page);
    assert.ok(sent.every((r) => r.headers["x-fal-user-key"] === undefined), "no visitor key is sent");
    assert.ok(sent.every((r) => r.headers.authorization === undefined), "no token without the hook");
    await screenshots(page, "9-server-mode-result");
    await browserState.clean(page);
  });
});

describe("playground on the native server, user-or-server mode", () => {
  const server = nativeServer({ FAL_KEY: SERVER_KEY, FAL_PROXY_KEY_MODE: "user-or-server" });
  const browserState = browserContext(server);

  it("the site's key without a saved key, the visitor's once saved", opts, async () => {
    const page = await browserState.page();
    await load(page, server.origin);
    assert.ok(!(await page.locator("#key-card").isVisible()), "no card");
    mock.reset();
    await generate(page, "fal-ai/flux/dev");
    assert.equal(queueRequests(mock.requests)[0].headers.authorization, `Key ${SERVER_KEY}`);

    await saveKey(page, USER_KEY);
    // The auth hook may also be set after the page has loaded (a same-origin parent does so).
    await page.evaluate(() => {
      window.falProxyAuthToken = () => "set.after.load";
    });
    mock.reset();
    await generate(page, "fal-ai/flux/dev");
    assert.equal(queueRequests(mock.requests)[0].headers.authorization, `Key ${USER_KEY}`);
    assert.ok((await shownImages(page))[0].naturalWidth > 0);
    const sent = (await browserState.proxyRequests(page)).filter((r) => r.headers["x-fal-user-key"]);
    assert.ok(sent.length >= 3 && sent.every((r) => r.headers.authorization === "Bearer set.after.load"));
    await browserState.clean(page);
  });
});

describe("playground on the native server, server mode with app-user authentication", () => {
  const SECRET = "a-playground-hmac-secret-of-at-least-32-bytes";
  const token = signHs256(SECRET, { sub: "signed-in-user", exp: Math.floor(Date.now() / 1000) + 3600 });
  const server = nativeServer({ FAL_KEY: SERVER_KEY, FAL_PROXY_AUTH_JWT_SECRET: SECRET });
  const signedIn = browserContext(server, { initScript: `window.falProxyAuthToken = async () => ${JSON.stringify(token)};` });
  const signedOut = browserContext(server);

  it("the embedding app's token lets Generate run; the token never reaches fal", opts, async () => {
    const page = await signedIn.page();
    await load(page, server.origin);
    mock.reset();
    await generate(page, "fal-ai/flux/dev");
    assert.ok((await shownImages(page))[0].naturalWidth > 0);
    const upstream = queueRequests(mock.requests);
    assert.ok(upstream.length >= 3);
    for (const record of upstream) assert.equal(record.headers.authorization, `Key ${SERVER_KEY}`);
    const sent = (await signedIn.proxyRequests(page)).filter((r) => r.headers["x-fal-target-url"]);
    assert.ok(sent.length >= 3);
    assert.ok(sent.every((r) => r.headers.authorization === `Bearer ${token}`), "every proxied request carries the token");
    await signedIn.clean(page);
  });

  it("without a token the proxy's 401 is shown in words, and nothing reaches fal", opts, async () => {
    const page = await signedOut.page();
    await load(page, server.origin);
    mock.reset();
    await generate(page, "fal-ai/flux/dev");
    const alert = page.getByRole("alert");
    assert.match(await alert.innerText(), /\(401\): Sign in first/);
    assert.equal(mock.requests.length, 0);
  });
});

describe("FAL_PROXY_PLAYGROUND=off", () => {
  const server = nativeServer({ FAL_PROXY_PLAYGROUND: "off" });

  it("the native server serves no page, and the proxy still answers", opts, async () => {
    for (const file of ["", "playground.js"]) {
      const res = await fetch(`${server.origin}/${file}`);
      assert.equal(res.status, 404);
      assert.equal((await res.json()).error_type, "not_found");
    }
    const info = await fetch(`${server.origin}/api/fal/proxy/info`);
    assert.deepEqual(await info.json(), { key_mode: "user" });
  });
});

describe("playground on the Worker (wrangler dev, static assets)", () => {
  const server = {};
  before(async () => {
    server.target = await workerLauncher.start({ FAL_PROXY_UPSTREAM: mock.url });
    server.origin = new URL(server.target.url).origin;
  }, START);
  after(async () => server.target?.stop(), START);
  const browserState = browserContext(server);

  it("the same page loads, with its headers, and runs once", opts, async () => {
    const page = await browserState.page();
    const response = await load(page, server.origin);
    const headers = response.headers();
    const vercel = JSON.parse(readFileSync(path.join(repoRoot, "vercel.json"), "utf8"));
    for (const { key, value } of vercel.headers.find((h) => h.source === "/(.*)").headers) {
      assert.equal(headers[key.toLowerCase()], value, key);
    }
    const rules = await fetch(`${server.origin}/_headers`);
    assert.equal(rules.status, 404, "the header rules are not served as a file");
    await rules.arrayBuffer();
    assert.ok(await page.locator("#key-card").isVisible(), "user mode: the card");
    await saveKey(page, USER_KEY);
    mock.reset();
    const { status } = await generate(page, "fal-ai/flux/schnell");
    assert.ok(status.includes("Running…"), `${status}`);
    const [image] = await shownImages(page);
    assert.ok(image.naturalWidth > 0);
    for (const record of queueRequests(mock.requests)) assert.equal(record.headers.authorization, `Key ${USER_KEY}`);
    await screenshots(page, "10-worker-result");
    await browserState.clean(page);
  });
});

it("the mock's PNG is a real PNG", () => {
  assert.ok(MOCK_PNG.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])));
});
