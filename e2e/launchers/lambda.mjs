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

import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { cleanEnv, freePort, repoRoot, requireFile, spawnCaptured, untilProxyAnswers } from "./process.mjs";

const BIN_NAME = "fal-proxy-lambda";
const READY_TIMEOUT_MS = 50_000;

/** Lambda's 6 MB event limit, less base64 on a binary body: see MAX_BODY_BYTES in lambda/src/main.rs. */
export const LAMBDA_MAX_REQUEST_BYTES = 4_500_000;

function cargoLambda() {
  return process.env.CARGO_LAMBDA_BIN || "cargo-lambda";
}

/** Inherited environment minus anything that could configure the proxy or the emulator. */
function baseEnv() {
  const env = cleanEnv((name) => name.startsWith("FAL_") || name.startsWith("AWS_") || name.startsWith("CARGO_LAMBDA"));
  return { ...env, CARGO_TERM_COLOR: "never" };
}

/** A dotenv line for one variable; single quotes keep commas, `*` and `#` literal. */
function envLine(name, value) {
  const text = String(value);
  if (/[\r\n]/.test(text)) throw new Error(`${name}: newlines cannot go through an env file`);
  if (!text.includes("'")) return `${name}='${text}'`;
  return `${name}="${text.replace(/["\\$]/g, "\\$&")}"`;
}

/** One emulator run; resolves once the function answers a request itself. */
async function startOnce(envFile) {
  const port = await freePort();
  const args = ["lambda", "watch", "--ignore-changes", "--disable-cors"];
  args.push("--invoke-address", "127.0.0.1", "--invoke-port", String(port), "--env-file", envFile);
  const proc = spawnCaptured("cargo-lambda", cargoLambda(), args, { cwd: path.join(repoRoot, "lambda"), env: baseEnv() }, { group: true });

  const url = `http://127.0.0.1:${port}/lambda-url/${BIN_NAME}/api/fal/proxy`;
  try {
    // The first request starts the function, so it may take a while.
    await untilProxyAnswers(proc, url, READY_TIMEOUT_MS);
  } catch (error) {
    await proc.kill();
    // A busy port makes the emulator exit (with status 0): the caller retries.
    if (error.exitedEarly) return { retry: true, reason: error.message };
    if (error.message.startsWith("cannot run")) error.message += ': eval "$(scripts/tools/lambda.sh)" installs it';
    throw error;
  }
  return { url, logs: proc.output, stop: proc.stop };
}

export const lambdaLauncher = {
  name: "lambda",
  capabilities: { timeout: true, maxRequestBytes: LAMBDA_MAX_REQUEST_BYTES },

  async start(configEnv) {
    const binary = path.join(repoRoot, "target", "debug", BIN_NAME);
    requireFile(binary, "build it with scripts/build-lambda.sh");
    const dir = await mkdtemp(path.join(os.tmpdir(), "fal-proxy-lambda-"));
    const envFile = path.join(dir, "function.env");
    const lines = Object.entries(configEnv).map(([k, v]) => envLine(k, v));
    await writeFile(envFile, lines.join("\n") + "\n", { mode: 0o600 });
    try {
      let reason = "";
      for (let attempt = 0; attempt < 3; attempt++) {
        const started = await startOnce(envFile);
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
