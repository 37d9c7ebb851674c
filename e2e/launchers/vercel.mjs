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

import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { cleanEnv, freePort, repoRoot, requireFile, spawnCaptured } from "./process.mjs";

const STARTUP_TIMEOUT_MS = 20_000;
const START_ATTEMPTS = 3;

export function vercelBinary() {
  return process.env.FAL_PROXY_VERCEL_BIN || path.join(repoRoot, "target", "debug", "fal-proxy-vercel");
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
  // Nothing inherited may configure the function: only the suite's env does.
  const env = cleanEnv((name) => name.startsWith("FAL_") || name.startsWith("VERCEL"));
  const proc = spawnCaptured("fal-proxy-vercel", bin, [], {
    env: { ...env, ...configEnv, VERCEL_DEV_PORT: String(port), VERCEL_IPC_PATH: socketPath },
  });
  const cleanup = async () => {
    await bridge.close();
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    const started = await proc.untilExit(bridge.waitFor((m) => m.type === "server-started", STARTUP_TIMEOUT_MS));
    if (started.payload?.httpPort !== port) {
      throw new Error(`server-started reported port ${started.payload?.httpPort}, expected ${port}`);
    }
  } catch (err) {
    await proc.kill();
    await cleanup();
    throw err;
  }

  return {
    url: `http://127.0.0.1:${port}/api/fal/proxy`,
    logs: proc.output,
    ipcMessages: () => bridge.messages,
    waitForIpc: (predicate, ms = 10_000) => bridge.waitFor(predicate, ms),
    stop: () => proc.stop().finally(cleanup),
  };
}

export const vercelLauncher = {
  name: "vercel",
  // Vercel refuses request bodies over 4.5 MB; the function caps its own limit to match.
  capabilities: { timeout: true, maxRequestBytes: 4_500_000 },

  async start(configEnv) {
    const bin = vercelBinary();
    requireFile(bin, "build it with scripts/build-vercel.sh or set FAL_PROXY_VERCEL_BIN");
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
