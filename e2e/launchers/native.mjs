// Launcher for the native fal-proxy server binary.
//
// Binary: $FAL_PROXY_SERVER_BIN, else <repo>/target/debug/fal-proxy-server.
// The server is started with HOST=127.0.0.1 PORT=0 plus the suite's config env and must
// print a line containing `listening on http://127.0.0.1:<port>` to stderr once bound.

import path from "node:path";
import { cleanEnv, repoRoot, requireFile, spawnCaptured } from "./process.mjs";

const STARTUP_TIMEOUT_MS = 20_000;

export function serverBinary() {
  return process.env.FAL_PROXY_SERVER_BIN || path.join(repoRoot, "target", "debug", "fal-proxy-server");
}

export const nativeLauncher = {
  name: "native",
  capabilities: { timeout: true },

  async start(configEnv) {
    const bin = serverBinary();
    requireFile(bin, "build it with `cargo build -p fal-proxy-server` or set FAL_PROXY_SERVER_BIN");
    // Nothing inherited may configure the proxy: only the suite's env does.
    const env = { ...cleanEnv((name) => name.startsWith("FAL_") || name === "HOST" || name === "PORT") };
    const proc = spawnCaptured("fal-proxy-server", bin, [], { env: { ...env, HOST: "127.0.0.1", PORT: "0", ...configEnv } });
    let match;
    try {
      match = await proc.waitForOutput(/listening on (http:\/\/127\.0\.0\.1:([1-9]\d*))/, STARTUP_TIMEOUT_MS);
    } catch (error) {
      await proc.kill();
      throw error;
    }
    return { url: `${match[1]}/api/fal/proxy`, logs: proc.output, stop: proc.stop };
  },
};

export default nativeLauncher;
