// Launcher for the native fal-proxy server binary.
//
// Binary: $FAL_PROXY_SERVER_BIN, else <repo>/target/debug/fal-proxy-server.
// The server is started with HOST=127.0.0.1 PORT=0 plus the suite's config env and must
// print a line containing `listening on http://127.0.0.1:<port>` to stderr once bound.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "..", "..");
const STARTUP_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 10_000;
const LOG_KEEP = 64 * 1024;

export function serverBinary() {
  return process.env.FAL_PROXY_SERVER_BIN || path.join(repoRoot, "target", "debug", "fal-proxy-server");
}

/** Inherited environment minus anything that could change the proxy's configuration. */
function baseEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith("FAL_") || k === "HOST" || k === "PORT") continue;
    env[k] = v;
  }
  return env;
}

export const nativeLauncher = {
  name: "native",
  capabilities: { timeout: true },

  async start(configEnv) {
    const bin = serverBinary();
    if (!existsSync(bin)) {
      throw new Error(
        `fal-proxy server binary not found at ${bin} ` +
          "(build it with `cargo build -p fal-proxy-server` or set FAL_PROXY_SERVER_BIN)",
      );
    }
    const child = spawn(bin, [], {
      env: { ...baseEnv(), HOST: "127.0.0.1", PORT: "0", ...configEnv },
      stdio: ["ignore", "pipe", "pipe"],
    });

    let stderr = "";
    let stdout = "";
    const keep = (s) => (s.length > LOG_KEEP ? s.slice(-LOG_KEEP) : s);
    // Keep draining both pipes for the whole lifetime so the server never blocks on logging.
    child.stdout.setEncoding("utf8");
    child.stderr.setEncoding("utf8");
    child.stdout.on("data", (d) => {
      stdout = keep(stdout + d);
    });

    const exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => resolve({ code, signal }));
    });
    let exitInfo = null;
    exited.then((info) => {
      exitInfo = info;
    });

    const describeLogs = () =>
      `\n--- stderr ---\n${stderr || "(empty)"}\n--- stdout ---\n${stdout || "(empty)"}`;

    const url = await new Promise((resolve, reject) => {
      let settled = false;
      const finish = (fn, v) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        fn(v);
      };
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        finish(reject, new Error(`fal-proxy server did not report "listening on" within ${STARTUP_TIMEOUT_MS} ms${describeLogs()}`));
      }, STARTUP_TIMEOUT_MS);
      child.stderr.on("data", (d) => {
        stderr = keep(stderr + d);
        const m = /listening on (http:\/\/127\.0\.0\.1:(\d+))/.exec(stderr);
        if (m && Number(m[2]) > 0) finish(resolve, m[1]);
      });
      child.once("error", (err) => finish(reject, new Error(`failed to spawn ${bin}: ${err.message}`)));
      exited.then(({ code, signal }) =>
        finish(reject, new Error(`fal-proxy server exited during startup (code ${code}, signal ${signal})${describeLogs()}`)),
      );
    });

    return {
      url: `${url}/api/fal/proxy`,
      logs: () => ({ stderr, stdout }),
      async stop() {
        if (exitInfo) {
          throw new Error(
            `fal-proxy server had already exited (code ${exitInfo.code}, signal ${exitInfo.signal})${describeLogs()}`,
          );
        }
        child.kill("SIGTERM");
        let timer;
        const res = await Promise.race([
          exited,
          new Promise((r) => {
            timer = setTimeout(() => r(null), STOP_TIMEOUT_MS);
          }),
        ]);
        clearTimeout(timer);
        if (res === null) {
          child.kill("SIGKILL");
          await exited;
          throw new Error(`fal-proxy server did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM${describeLogs()}`);
        }
      },
    };
  },
};

export default nativeLauncher;
