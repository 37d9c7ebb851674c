// Launcher for the Cloudflare Worker (worker/) under `wrangler dev` (workerd, local mode).
//
// Needs the prebuilt Worker (`scripts/build-worker.sh`, which writes worker/build/) and
// wrangler from the top-level package.json (`npm ci` at the repository root).
//
// Each start gets its own temporary directory holding a generated wrangler.json (the entry
// point, compatibility date and [assets] directory of the top-level wrangler.toml, the
// settings as [vars], no [build] step: the wasm is used as built) and a .dev.vars with the
// key settings, which is how secrets reach a local Worker. So starts never share
// configuration, and nothing in the user's own wrangler.toml [vars] or .dev.vars leaks into
// a test. Ports (HTTP and inspector) are picked free per start. stop() sends SIGTERM to wrangler, which stops workerd; a
// wrangler that does not exit in time gets SIGKILL for its whole process group.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { cleanEnv, freePort, repoRoot, requireFile, spawnCaptured, untilProxyAnswers } from "./process.mjs";

export { repoRoot };
const STARTUP_TIMEOUT_MS = 45_000;

/** Settings that are secrets on Cloudflare (`wrangler secret put`); the rest are vars. */
const SECRET_NAMES = new Set(["FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "FAL_PROXY_RATE_STORE_TOKEN"]);

/** The wrangler binary: $WRANGLER_BIN, else the repository's node_modules. */
export function wranglerBinary() {
  if (process.env.WRANGLER_BIN) return process.env.WRANGLER_BIN;
  return path.join(repoRoot, "node_modules", ".bin", "wrangler");
}

/** Environment for every wrangler run: offline, no telemetry, no prompts. */
export function wranglerEnv() {
  const env = cleanEnv((name) => name.startsWith("FAL_") || name.startsWith("CLOUDFLARE_") || name.startsWith("WRANGLER_"));
  return {
    ...env,
    CLOUDFLARE_CF_FETCH_ENABLED: "false",
    WRANGLER_SEND_METRICS: "false",
    WRANGLER_SEND_ERROR_REPORTS: "false",
    CI: "true",
  };
}

/**
 * `main`, `compatibility_date` and the `[assets]` `directory` (the playground page) from the
 * top-level wrangler.toml (plain `key = "value"` lines).
 */
export function wranglerToml() {
  const text = readFileSync(path.join(repoRoot, "wrangler.toml"), "utf8");
  const field = (key) => {
    const m = new RegExp(`^${key}\\s*=\\s*"([^"]+)"`, "m").exec(text);
    if (!m) throw new Error(`wrangler.toml has no ${key} = "..." line`);
    return m[1];
  };
  return {
    main: path.resolve(repoRoot, field("main")),
    compatibilityDate: field("compatibility_date"),
    assets: path.resolve(repoRoot, field("directory")),
  };
}

/** .dev.vars is dotenv: double-quoted values with \\ and " escaped. */
function dotenvLine(name, value) {
  if (/[\r\n]/.test(value)) throw new Error(`${name}: line breaks are not supported in .dev.vars`);
  return `${name}="${value.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"\n`;
}

export const workerLauncher = {
  name: "worker",
  capabilities: { timeout: true },

  async start(configEnv) {
    const wrangler = wranglerBinary();
    requireFile(wrangler, "run `npm ci` at the repository root");
    const { main, compatibilityDate, assets } = wranglerToml();
    requireFile(main, "build the Worker with scripts/build-worker.sh");

    const dir = mkdtempSync(path.join(os.tmpdir(), "fal-proxy-worker-"));
    const vars = {};
    let devVars = "";
    for (const [name, value] of Object.entries(configEnv)) {
      if (value === undefined) continue;
      if (SECRET_NAMES.has(name)) devVars += dotenvLine(name, String(value));
      else vars[name] = String(value);
    }
    writeFileSync(
      path.join(dir, "wrangler.json"),
      JSON.stringify(
        {
          name: "fal-proxy-e2e",
          main,
          compatibility_date: compatibilityDate,
          assets: { directory: assets },
          vars,
          // The rate limiter of FAL_PROXY_RATE_STORE=durable-object, as in wrangler.toml.
          durable_objects: { bindings: [{ name: "FAL_PROXY_RATE_LIMITER", class_name: "RateLimiter" }] },
          migrations: [{ tag: "v1", new_sqlite_classes: ["RateLimiter"] }],
        },
        null,
        2,
      ),
    );
    writeFileSync(path.join(dir, ".dev.vars"), devVars);

    const port = await freePort();
    let inspectorPort = await freePort();
    while (inspectorPort === port) inspectorPort = await freePort();
    const args = [
      "dev",
      "--config", path.join(dir, "wrangler.json"),
      "--ip", "127.0.0.1",
      "--port", String(port),
      "--inspector-port", String(inspectorPort),
      "--persist-to", path.join(dir, "state"),
      "--show-interactive-dev-session=false",
      "--log-level", "log",
    ];
    // Its own process group: SIGTERM reaches wrangler and workerd, and nothing outlives stop().
    const proc = spawnCaptured("wrangler dev", wrangler, args, { cwd: dir, env: wranglerEnv() }, { group: true });
    const cleanup = () => rmSync(dir, { recursive: true, force: true });
    const origin = `http://127.0.0.1:${port}`;
    try {
      // Ready when the Worker itself answers ("/" is the playground page, an asset; a
      // request to the proxy without a target gets the proxy's JSON 400).
      await untilProxyAnswers(proc, `${origin}/api/fal/proxy`, STARTUP_TIMEOUT_MS);
    } catch (error) {
      await proc.kill();
      cleanup();
      throw error;
    }
    return { url: `${origin}/api/fal/proxy`, logs: proc.output, stop: () => proc.stop().finally(cleanup) };
  },
};

export default workerLauncher;
