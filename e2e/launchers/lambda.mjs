// Launcher for the AWS Lambda target: the fal-proxy-lambda binary behind
// cargo-lambda's emulator of the Lambda runtime and of a function URL
// (`cargo-lambda lambda watch`).
//
// Needs cargo-lambda ($CARGO_LAMBDA_BIN, else `cargo-lambda` on PATH; install it
// with `eval "$(scripts/tools/lambda.sh)"`) and the debug build of the function
// (scripts/build-lambda.sh): the emulator runs it with `cargo run`, which is then
// a no-op build.
//
// Each start() runs one emulator on a free 127.0.0.1 port with:
//   --ignore-changes  no rebuilds while the suite runs
//   --disable-cors    the emulator would otherwise answer CORS itself; the proxy's
//                     CORS is what is under test (a deployed function URL has no
//                     CORS configuration either, see template.yaml)
//   --env-file        the suite's configuration, written to a private temp file
//                     (--env-var would split values on commas)
// The emulator gets its own process group, and stop() ends that group: the
// emulator and the function process it started.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "..", "..");
const BIN_NAME = "fal-proxy-lambda";
const READY_TIMEOUT_MS = 50_000;
const STOP_TIMEOUT_MS = 10_000;
const LOG_KEEP = 64 * 1024;

/** Lambda's 6 MB event limit, less base64 on a binary body: see MAX_BODY_BYTES in lambda/src/main.rs. */
export const LAMBDA_MAX_REQUEST_BYTES = 4_500_000;

function cargoLambda() {
  return process.env.CARGO_LAMBDA_BIN || "cargo-lambda";
}

/** Inherited environment minus anything that could configure the proxy or the emulator. */
function baseEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith("FAL_") || k.startsWith("AWS_") || k.startsWith("CARGO_LAMBDA")) continue;
    env[k] = v;
  }
  env.CARGO_TERM_COLOR = "never";
  return env;
}

/** A dotenv line for one variable; single quotes keep commas, `*` and `#` literal. */
function envLine(name, value) {
  const text = String(value);
  if (/[\r\n]/.test(text)) throw new Error(`${name}: newlines cannot go through an env file`);
  if (!text.includes("'")) return `${name}='${text}'`;
  return `${name}="${text.replace(/["\\$]/g, "\\$&")}"`;
}

async function freePort() {
  const server = net.createServer();
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** One emulator run; resolves once the function answers a request itself. */
async function startOnce(configEnv, envFile) {
  const port = await freePort();
  const child = spawn(
    cargoLambda(),
    [
      "lambda",
      "watch",
      "--ignore-changes",
      "--disable-cors",
      "--invoke-address",
      "127.0.0.1",
      "--invoke-port",
      String(port),
      "--env-file",
      envFile,
    ],
    { cwd: path.join(repoRoot, "lambda"), env: baseEnv(), stdio: ["ignore", "pipe", "pipe"], detached: true },
  );

  let stdout = "";
  let stderr = "";
  const keep = (s) => (s.length > LOG_KEEP ? s.slice(-LOG_KEEP) : s);
  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  child.stdout.on("data", (d) => (stdout = keep(stdout + d)));
  child.stderr.on("data", (d) => (stderr = keep(stderr + d)));
  const logs = () => `\n--- emulator and function output ---\n${stderr + stdout || "(empty)"}`;

  let exitInfo = null;
  const exited = new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
  });
  const spawnError = new Promise((resolve) => child.once("error", resolve));

  const killGroup = (signal) => {
    try {
      process.kill(-child.pid, signal);
    } catch {
      // already gone
    }
  };

  const url = `http://127.0.0.1:${port}/lambda-url/${BIN_NAME}/api/fal/proxy`;
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (exitInfo) {
      // A busy port makes the emulator exit (with status 0): the caller retries.
      return { retry: true, reason: `emulator exited (code ${exitInfo.code}, signal ${exitInfo.signal})${logs()}` };
    }
    if (Date.now() > deadline) {
      killGroup("SIGKILL");
      await exited;
      throw new Error(`the Lambda function did not answer within ${READY_TIMEOUT_MS} ms${logs()}`);
    }
    const failed = await Promise.race([spawnError, sleep(0).then(() => null)]);
    if (failed) throw new Error(`cannot run ${cargoLambda()} (${failed.message}): eval "$(scripts/tools/lambda.sh)" installs it`);
    try {
      // No x-fal-target-url: the proxy itself answers (400), nothing goes upstream.
      // The first request starts the function, so it may take a while.
      const res = await fetch(url, { signal: AbortSignal.timeout(Math.max(1000, deadline - Date.now())) });
      const body = await res.json().catch(() => null);
      if (body && typeof body.error_type === "string") break;
    } catch {
      // not listening yet
    }
    await sleep(200);
  }

  return {
    url,
    logs: () => ({ stderr, stdout }),
    async stop() {
      if (exitInfo) throw new Error(`the emulator had already exited (code ${exitInfo.code}, signal ${exitInfo.signal})${logs()}`);
      killGroup("SIGTERM");
      let timer;
      const done = await Promise.race([exited, new Promise((r) => (timer = setTimeout(() => r(null), STOP_TIMEOUT_MS)))]);
      clearTimeout(timer);
      if (done === null) {
        killGroup("SIGKILL");
        await exited;
        throw new Error(`the emulator did not stop within ${STOP_TIMEOUT_MS} ms of SIGTERM${logs()}`);
      }
      // Whatever the function process did on its own, end it with its group.
      killGroup("SIGKILL");
    },
  };
}

export const lambdaLauncher = {
  name: "lambda",
  capabilities: { timeout: true, maxRequestBytes: LAMBDA_MAX_REQUEST_BYTES },

  async start(configEnv) {
    const binary = path.join(repoRoot, "target", "debug", BIN_NAME);
    if (!existsSync(binary)) {
      throw new Error(`${binary} is missing: build it with scripts/build-lambda.sh`);
    }
    const dir = await mkdtemp(path.join(os.tmpdir(), "fal-proxy-lambda-"));
    const envFile = path.join(dir, "function.env");
    const lines = Object.entries(configEnv).map(([k, v]) => envLine(k, v));
    await writeFile(envFile, lines.join("\n") + "\n", { mode: 0o600 });
    try {
      let reason = "";
      for (let attempt = 0; attempt < 3; attempt++) {
        const started = await startOnce(configEnv, envFile);
        if (!started.retry) {
          const stop = started.stop;
          return { ...started, stop: () => stop().finally(() => rm(dir, { recursive: true, force: true })) };
        }
        reason = started.reason;
      }
      throw new Error(`the Lambda emulator would not start: ${reason}`);
    } catch (error) {
      await rm(dir, { recursive: true, force: true });
      throw error;
    }
  },
};

export default lambdaLauncher;
