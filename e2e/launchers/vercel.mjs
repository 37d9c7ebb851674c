// Launcher for the Vercel function binary, started the way Vercel starts it.
//
// Binary: $FAL_PROXY_VERCEL_BIN, else <repo>/target/debug/fal-proxy-vercel
// (build it with scripts/build-vercel.sh).
//
// vercel_runtime serves HTTP/1.1 on 127.0.0.1:$VERCEL_DEV_PORT and, when
// $VERCEL_IPC_PATH names a Unix socket, connects to it and reports over it
// (NUL-ended JSON): `server-started` with its port once it listens, then per
// request `log` and `end` messages when the request carries Vercel's
// internal invocation headers. This launcher plays Vercel's side of that
// socket: it holds the socket, starts the binary, waits for `server-started`,
// and keeps every message for tests to inspect (`ipcMessages()`).

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "..", "..");
const STARTUP_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 10_000;
const START_ATTEMPTS = 3;
const LOG_KEEP = 64 * 1024;

export function vercelBinary() {
  return process.env.FAL_PROXY_VERCEL_BIN || path.join(repoRoot, "target", "debug", "fal-proxy-vercel");
}

/** Inherited environment minus anything that could change the function's configuration. */
function baseEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith("FAL_") || k.startsWith("VERCEL")) continue;
    env[k] = v;
  }
  return env;
}

/** A port that was free a moment ago (the runtime cannot bind port 0 and report it). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Vercel's side of the IPC socket: accepts the runtime's connection, splits NUL-ended JSON. */
async function ipcBridge(socketPath) {
  const messages = [];
  const waiters = [];
  const sockets = new Set();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    let pending = Buffer.alloc(0);
    socket.on("data", (chunk) => {
      pending = Buffer.concat([pending, chunk]);
      let nul;
      while ((nul = pending.indexOf(0)) !== -1) {
        const text = pending.subarray(0, nul).toString("utf8");
        pending = pending.subarray(nul + 1);
        let message;
        try {
          message = JSON.parse(text);
        } catch {
          message = { type: "unparsable", text };
        }
        messages.push(message);
        for (const w of [...waiters]) w();
      }
    });
    socket.on("error", () => {});
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, resolve);
  });
  return {
    messages,
    /** Resolves with the first message matching `predicate`, or rejects after `ms`. */
    waitFor(predicate, ms) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const found = messages.find(predicate);
          if (!found) return false;
          clearTimeout(timer);
          waiters.splice(waiters.indexOf(check), 1);
          resolve(found);
          return true;
        };
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(check), 1);
          reject(new Error(`no matching IPC message within ${ms} ms; got ${JSON.stringify(messages)}`));
        }, ms);
        waiters.push(check);
        check();
      });
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

async function startOnce(configEnv, bin) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "fal-proxy-vercel-"));
  const socketPath = path.join(dir, "ipc.sock");
  const bridge = await ipcBridge(socketPath);
  const port = await freePort();
  const child = spawn(bin, [], {
    env: { ...baseEnv(), ...configEnv, VERCEL_DEV_PORT: String(port), VERCEL_IPC_PATH: socketPath },
    stdio: ["ignore", "pipe", "pipe"],
  });

  let stderr = "";
  let stdout = "";
  const keep = (s) => (s.length > LOG_KEEP ? s.slice(-LOG_KEEP) : s);
  // Drain both pipes for the whole lifetime so the function never blocks on logging.
  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  child.stdout.on("data", (d) => (stdout = keep(stdout + d)));
  child.stderr.on("data", (d) => (stderr = keep(stderr + d)));

  let exitInfo = null;
  const exited = new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
  });
  const cleanup = async () => {
    await bridge.close();
    rmSync(dir, { recursive: true, force: true });
  };
  const describeLogs = () =>
    `\n--- stderr ---\n${stderr || "(empty)"}\n--- stdout ---\n${stdout || "(empty)"}`;

  try {
    const started = await Promise.race([
      bridge.waitFor((m) => m.type === "server-started", STARTUP_TIMEOUT_MS),
      exited.then(({ code, signal }) => {
        throw Object.assign(
          new Error(`fal-proxy-vercel exited during startup (code ${code}, signal ${signal})${describeLogs()}`),
          { exitedEarly: true },
        );
      }),
      new Promise((_, reject) => child.once("error", (err) => reject(new Error(`failed to spawn ${bin}: ${err.message}`)))),
    ]);
    if (started.payload?.httpPort !== port) {
      throw new Error(`server-started reported port ${started.payload?.httpPort}, expected ${port}`);
    }
  } catch (err) {
    if (!exitInfo) {
      child.kill("SIGKILL");
      await exited;
    }
    await cleanup();
    throw err;
  }

  return {
    url: `http://127.0.0.1:${port}/api/fal/proxy`,
    logs: () => ({ stderr, stdout }),
    ipcMessages: () => bridge.messages,
    waitForIpc: (predicate, ms = 10_000) => bridge.waitFor(predicate, ms),
    async stop() {
      if (exitInfo) {
        await cleanup();
        throw new Error(
          `fal-proxy-vercel had already exited (code ${exitInfo.code}, signal ${exitInfo.signal})${describeLogs()}`,
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
        await cleanup();
        throw new Error(`fal-proxy-vercel did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM${describeLogs()}`);
      }
      await cleanup();
    },
  };
}

export const vercelLauncher = {
  name: "vercel",
  // Vercel refuses request bodies over 4.5 MB; the function caps its own limit to match.
  capabilities: { timeout: true, maxRequestBytes: 4_500_000 },

  async start(configEnv) {
    const bin = vercelBinary();
    if (!existsSync(bin)) {
      throw new Error(
        `fal-proxy-vercel binary not found at ${bin} ` +
          "(build it with scripts/build-vercel.sh or set FAL_PROXY_VERCEL_BIN)",
      );
    }
    // The port is chosen before the binary binds it; retry if another process took it meanwhile.
    for (let attempt = 1; ; attempt++) {
      try {
        return await startOnce(configEnv, bin);
      } catch (err) {
        if (!err.exitedEarly || attempt >= START_ATTEMPTS) throw err;
      }
    }
  },
};

export default vercelLauncher;
