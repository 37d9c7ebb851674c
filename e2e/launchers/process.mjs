// Child-process plumbing shared by the launchers: a process whose output is drained for its
// whole life (the tail is kept for error messages), an exit promise, and a stop that fails
// loudly when the process had died early or will not exit.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const LOG_KEEP = 64 * 1024;
const STOP_TIMEOUT_MS = 10_000;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The inherited environment without the variables `dropped(name)` names. */
export function cleanEnv(dropped) {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !dropped(name)));
}

/** A 127.0.0.1 port that was free a moment ago. */
export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Throws with `hint` when `file` does not exist. */
export function requireFile(file, hint) {
  if (!existsSync(file)) throw new Error(`${file} is missing: ${hint}`);
}

/**
 * Spawns `command` with both pipes captured. With `group`, the process leads a new process
 * group, and signals go to the whole group (an emulator and the function it started).
 */
export function spawnCaptured(label, command, args, options = {}, { group = false } = {}) {
  const child = spawn(command, args, { ...options, stdio: ["ignore", "pipe", "pipe"], detached: group });
  const output = { stdout: "", stderr: "" };
  const listeners = new Set();
  for (const stream of ["stdout", "stderr"]) {
    child[stream].setEncoding("utf8");
    child[stream].on("data", (data) => {
      output[stream] = (output[stream] + data).slice(-LOG_KEEP);
      for (const listener of listeners) listener();
    });
  }
  let exitInfo = null;
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve((exitInfo = { code, signal }))));
  const failed = new Promise((resolve) => child.once("error", resolve));
  const describe = () =>
    `\n--- ${label} stderr ---\n${output.stderr || "(empty)"}\n--- ${label} stdout ---\n${output.stdout || "(empty)"}`;
  const signal = (name) => {
    try {
      if (group) process.kill(-child.pid, name);
      else child.kill(name);
    } catch {
      // already gone
    }
  };

  const proc = {
    child,
    exited,
    describe,
    output: () => ({ ...output }),
    exitInfo: () => exitInfo,

    /** `promise`, unless the process fails to spawn or exits first (then a rejection with its output). */
    untilExit(promise) {
      return Promise.race([
        promise,
        exited.then(({ code, signal: sig }) => {
          throw Object.assign(new Error(`${label} exited during startup (code ${code}, signal ${sig})${describe()}`), {
            exitedEarly: true,
          });
        }),
        failed.then((error) => {
          throw new Error(`cannot run ${command}: ${error.message}`);
        }),
      ]);
    },

    /** The first match of `pattern` in stderr (then stdout) within `ms`. */
    waitForOutput(pattern, ms) {
      let timer;
      let listener;
      const found = new Promise((resolve, reject) => {
        listener = () => {
          const match = pattern.exec(output.stderr) ?? pattern.exec(output.stdout);
          if (match) resolve(match);
        };
        listeners.add(listener);
        listener();
        timer = setTimeout(() => reject(new Error(`${label} did not print ${pattern} within ${ms} ms${describe()}`)), ms);
      });
      return proc.untilExit(found).finally(() => {
        clearTimeout(timer);
        listeners.delete(listener);
      });
    },

    /** SIGKILL, and wait for the exit. */
    async kill() {
      if (!exitInfo) {
        signal("SIGKILL");
        await exited;
      }
    },

    /** SIGTERM; fails if the process had exited already or does not exit in time. */
    async stop() {
      if (exitInfo) {
        throw new Error(`${label} had already exited (code ${exitInfo.code}, signal ${exitInfo.signal})${describe()}`);
      }
      signal("SIGTERM");
      let timer;
      const done = await Promise.race([exited, new Promise((r) => (timer = setTimeout(() => r(null), STOP_TIMEOUT_MS)))]);
      clearTimeout(timer);
      if (done === null) {
        await proc.kill();
        throw new Error(`${label} did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM${describe()}`);
      }
      // Whatever is left of the group (a function process the emulator started) ends too.
      if (group) signal("SIGKILL");
    },
  };
  return proc;
}

/**
 * Polls `url` until the proxy itself answers (a JSON error with an `error_type`, which it
 * makes without contacting fal), for targets that cannot say when they are ready.
 */
export async function untilProxyAnswers(proc, url, ms) {
  const deadline = Date.now() + ms;
  const ready = (async () => {
    for (;;) {
      if (Date.now() > deadline) throw new Error(`the proxy at ${url} did not answer within ${ms} ms${proc.describe()}`);
      try {
        const res = await fetch(url, { signal: AbortSignal.timeout(Math.max(1000, Math.min(5000, deadline - Date.now()))) });
        const body = await res.json().catch(() => null);
        if (body && typeof body.error_type === "string") return;
      } catch {
        // not listening yet
      }
      await sleep(150);
    }
  })();
  return proc.untilExit(ready);
}
