// Checks vercel.json's routing against the routes `vercel build` really emits.
//
//   eval "$(scripts/tools/vercel.sh)" && cd e2e && node --test vercel-routes.test.mjs
//
// Runs the real Vercel CLI ($FAL_PROXY_VERCEL_CLI, else
// e2e/vercel-build/node_modules/.bin/vercel) offline on a stub of this
// project in a temporary directory: the real vercel.json, .vercelignore,
// public/ and every file under api/, with a stub function source and
// manifest (same [[bin]] name and path, and a local stand-in crate named
// vercel_runtime), so the builder detects and "compiles" the function in a
// second instead of making a release build of the real one. Then it follows
// the emitted routes for the paths a fal client uses, the way Vercel's router
// does (filesystem first, then the rewrites, each re-checked against the
// filesystem). Also checks the function's config, and what .vercelignore
// keeps out of an upload (with `git check-ignore`: the CLI's ignore rules
// are gitignore's).

import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "..");
const ENTRY = "api/fal/proxy/[...path].rs";
const FUNCTION = "/api/fal/proxy/[...path]";
const BIN = "fal-proxy-vercel";
const BUILD_TIMEOUT_MS = 180_000;

function vercelCli() {
  const cli = process.env.FAL_PROXY_VERCEL_CLI || path.join(here, "vercel-build", "node_modules", ".bin", "vercel");
  if (!existsSync(cli)) {
    throw new Error(`Vercel CLI not found at ${cli}: run \`eval "$(scripts/tools/vercel.sh)"\` first`);
  }
  return cli;
}

/** A copy of what decides routing, with a stub function that compiles in a second. */
function stubProject(dir, vercelJson) {
  writeFileSync(path.join(dir, "vercel.json"), JSON.stringify(vercelJson, null, 2));
  cpSync(path.join(repoRoot, ".vercelignore"), path.join(dir, ".vercelignore"));
  cpSync(path.join(repoRoot, "public"), path.join(dir, "public"), { recursive: true });
  cpSync(path.join(repoRoot, "api"), path.join(dir, "api"), { recursive: true });
  writeFileSync(path.join(dir, ENTRY), "fn main() {\n    vercel_runtime::stub();\n}\n");
  writeFileSync(
    path.join(dir, "Cargo.toml"),
    [
      "[package]",
      `name = "${BIN}"`,
      'version = "0.1.0"',
      'edition = "2024"',
      "publish = false",
      "autobins = false",
      "",
      "[[bin]]",
      `name = "${BIN}"`,
      `path = "${ENTRY}"`,
      "",
      "[dependencies]",
      'vercel_runtime = { path = "stub-runtime" }',
      "",
      "[workspace]",
      "",
    ].join("\n"),
  );
  mkdirSync(path.join(dir, "stub-runtime", "src"), { recursive: true });
  writeFileSync(
    path.join(dir, "stub-runtime", "Cargo.toml"),
    '[package]\nname = "vercel_runtime"\nversion = "2.4.1"\nedition = "2024"\npublish = false\n',
  );
  writeFileSync(path.join(dir, "stub-runtime", "src", "lib.rs"), "pub fn stub() {}\n");
  mkdirSync(path.join(dir, ".vercel"));
  writeFileSync(
    path.join(dir, ".vercel", "project.json"),
    JSON.stringify({ projectId: "prj_offline", orgId: "team_offline", settings: { framework: null } }),
  );
}

/** Runs `vercel build` offline in a fresh stub project; returns what it emitted. */
async function vercelBuild(vercelJson) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "fal-proxy-vercel-build-"));
  try {
    stubProject(dir, vercelJson);
    const env = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (k.startsWith("VERCEL") || k.startsWith("NOW_") || k.startsWith("CARGO_TARGET") || k === "RUSTFLAGS") continue;
      env[k] = v;
    }
    Object.assign(env, { VERCEL_BUILD_IMAGE: "1", VERCEL_TELEMETRY_DISABLED: "1", CI: "1", NO_COLOR: "1" });
    const globalConfig = path.join(dir, ".vercel-global");
    mkdirSync(globalConfig);
    const log = await new Promise((resolve, reject) => {
      execFile(
        vercelCli(),
        ["build", "--yes", "--global-config", globalConfig],
        { cwd: dir, env, timeout: BUILD_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 },
        (err, stdout, stderr) => {
          if (err) reject(new Error(`vercel build failed: ${err.message}\n${stdout}\n${stderr}`));
          else resolve(`${stdout}${stderr}`);
        },
      );
    });
    const output = path.join(dir, ".vercel", "output");
    const config = JSON.parse(readFileSync(path.join(output, "config.json"), "utf8"));
    const functions = new Map();
    const walk = (sub) => {
      for (const entry of readdirSync(path.join(output, "functions", sub), { withFileTypes: true })) {
        const rel = path.posix.join(sub, entry.name);
        if (entry.isDirectory() && entry.name.endsWith(".func")) {
          const vc = JSON.parse(readFileSync(path.join(output, "functions", rel, ".vc-config.json"), "utf8"));
          functions.set(`/${rel.replace(/\.func$/, "")}`, vc);
        } else if (entry.isDirectory()) {
          walk(rel);
        }
      }
    };
    if (existsSync(path.join(output, "functions"))) walk("");
    const statics = new Set();
    const walkStatic = (sub) => {
      for (const entry of readdirSync(path.join(output, "static", sub), { withFileTypes: true })) {
        const rel = path.posix.join(sub, entry.name);
        if (entry.isDirectory()) walkStatic(rel);
        else statics.add(`/${rel}`);
      }
    };
    if (existsSync(path.join(output, "static"))) walkStatic("");
    return { config, functions, statics, log };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Follows the emitted routes for one request path, as Vercel's router does for
 * these route kinds: the filesystem (static files, functions) is checked at
 * `handle: filesystem`; after it, a matching `dest` rewrites the path (adding
 * its query, if any) and, with `check`, is looked up in the filesystem again;
 * a matching `status` without `dest` ends with that status. Returns
 * { fn, query } for a function, { file } for a static file, or { status }.
 */
function resolve(build, url) {
  const u = new URL(url, "https://proxy.example");
  const query = new URLSearchParams(u.search);
  let p = u.pathname;
  const lookup = () => {
    if (build.functions.has(p)) return { fn: p, query: query.toString() };
    const file = p.endsWith("/") ? `${p}index.html` : p;
    if (build.statics.has(file)) return { file };
    return null;
  };
  let afterFilesystem = false;
  for (const route of build.config.routes) {
    if (route.handle) {
      if (route.handle === "filesystem") {
        const hit = lookup();
        if (hit) return hit;
        afterFilesystem = true;
        continue;
      }
      break; // error/miss/hit phases only run for misses and hits: the request is a 404 by now
    }
    const m = new RegExp(route.src).exec(p);
    if (!m) continue;
    if (!route.dest) {
      if (route.status) return { status: route.status };
      continue;
    }
    const dest = route.dest.replace(/\$(\d+|[A-Za-z_]\w*)/g, (_, g) => (/^\d+$/.test(g) ? m[Number(g)] : m.groups?.[g]) ?? "");
    const [destPath, destQuery] = dest.split("?");
    p = destPath;
    for (const [k, v] of new URLSearchParams(destQuery ?? "")) query.append(k, v);
    if (route.status) return { status: route.status };
    if (route.check && afterFilesystem) {
      const hit = lookup();
      if (hit) return hit;
    }
  }
  return { status: 404 };
}

const vercelJson = JSON.parse(readFileSync(path.join(repoRoot, "vercel.json"), "utf8"));

describe("vercel.json against `vercel build` (offline, stub function)", () => {
  let build;
  let bare;
  const started = Date.now();

  before(async () => {
    const { rewrites, ...withoutRewrites } = vercelJson;
    [build, bare] = await Promise.all([vercelBuild(vercelJson), vercelBuild(withoutRewrites)]);
  }, { timeout: 2 * BUILD_TIMEOUT_MS });

  after(() => {
    if (build) console.log(`# vercel build (twice, in parallel) took ${Date.now() - started} ms`);
  });

  it("emits exactly one function, the Rust executable, streaming, with maxDuration", () => {
    assert.deepEqual([...build.functions.keys()], [FUNCTION], "helper files under api/ must not become functions");
    const vc = build.functions.get(FUNCTION);
    assert.equal(vc.runtime, "executable");
    assert.equal(vc.runtimeLanguage, "rust");
    assert.equal(vc.supportsResponseStreaming, true);
    assert.equal(vc.maxDuration, vercelJson.functions[ENTRY].maxDuration);
    assert.ok(vc.maxDuration >= 60 && vc.maxDuration <= 300, `maxDuration ${vc.maxDuration} within the Hobby plan's 300 s`);
    assert.equal(path.posix.basename(vc.filePathMap?.[vc.handler] ?? ""), BIN, "the function is the [[bin]] of the root package");
  });

  const proxied = [
    "/api/fal/proxy", // what `fal.config({ proxyUrl: "/api/fal/proxy" })` requests, for every call
    "/api/fal/proxy/",
    "/api/fal/proxy?fal_webhook=https%3A%2F%2Fhooks.example%2Fcb",
    "/api/fal/proxy/fal-ai",
    "/api/fal/proxy/fal-ai/flux/dev",
    "/api/fal/proxy/fal-ai/flux/requests/0b9f2f4e/status?logs=1",
    "/api/fal/proxy/info", // the key mode, which the playground reads
  ];
  for (const url of proxied) {
    it(`${url} reaches the function, its query unchanged`, () => {
      const hit = resolve(build, url);
      assert.equal(hit.fn, FUNCTION, JSON.stringify(hit));
      assert.equal(hit.query, new URL(url, "https://x.example").searchParams.toString(), "no query parameter is added");
    });
  }

  for (const url of ["/api/fal/proxyfoo", "/api/fal", "/api/other"]) {
    it(`${url} does not reach the function`, () => {
      const hit = resolve(build, url);
      assert.equal(hit.fn, undefined, JSON.stringify(hit));
      assert.equal(hit.status, 404, JSON.stringify(hit));
    });
  }

  it("/ serves public/index.html", () => {
    assert.deepEqual(resolve(build, "/"), { file: "/index.html" });
  });

  it("every file of the playground is served as it is, with the page's security headers", () => {
    const files = readdirSync(path.join(repoRoot, "public")).filter((f) => f !== "_headers");
    for (const file of files) {
      const url = file === "index.html" ? "/" : `/${file}`;
      assert.deepEqual(resolve(build, url), { file: `/${file}` }, url);
      // Header routes come before the filesystem and continue (`continue: true`).
      const headers = {};
      for (const route of build.config.routes) {
        if (route.handle) break;
        if (route.headers && new RegExp(route.src).test(url)) Object.assign(headers, route.headers);
      }
      const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
      assert.equal(lower["x-content-type-options"], "nosniff", url);
      assert.equal(lower["referrer-policy"], "no-referrer", url);
      assert.match(lower["content-security-policy"] ?? "", /script-src 'self';/, url);
      assert.doesNotMatch(lower["content-security-policy"], /unsafe/, url);
    }
  });

  it("without the rewrite, [...path] alone would miss the bare route and deeper paths", () => {
    assert.equal(resolve(bare, "/api/fal/proxy").status, 404);
    assert.equal(resolve(bare, "/api/fal/proxy/fal-ai/flux/dev").status, 404);
    assert.equal(resolve(bare, "/api/fal/proxy/one").fn, FUNCTION);
  });
});

describe(".vercelignore (gitignore rules, which the CLI's ignore follows)", () => {
  let dir;
  /** The paths of `paths` that .vercelignore excludes from an upload, by `git check-ignore`. */
  const ignoredOf = (paths) =>
    new Promise((resolve, reject) => {
      execFile("git", ["check-ignore", "--no-index", "--stdin"], { cwd: dir }, (err, stdout) => {
        if (err && err.code !== 1) reject(err); // 1: none of them is ignored
        else resolve(new Set(stdout.split("\n").filter(Boolean)));
      }).stdin.end(paths.join("\n"));
    });

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "fal-proxy-vercelignore-"));
    await new Promise((resolve, reject) =>
      execFile("git", ["init", "--quiet", dir], (err) => (err ? reject(err) : resolve())),
    );
    cpSync(path.join(repoRoot, ".vercelignore"), path.join(dir, ".gitignore"));
  });
  after(() => dir && rmSync(dir, { recursive: true, force: true }));

  it("uploads the whole Cargo workspace, the function and public/", async () => {
    const manifest = readFileSync(path.join(repoRoot, "Cargo.toml"), "utf8");
    const members = JSON.parse(/^members\s*=\s*(\[[^\]]*\])/m.exec(manifest)[1]);
    const kept = [
      "Cargo.toml",
      "Cargo.lock",
      "rust-toolchain.toml",
      "vercel.json",
      ENTRY,
      ...readdirSync(path.join(repoRoot, "api", "fal", "proxy")).map((f) => `api/fal/proxy/${f}`),
      "public/index.html",
      "public/playground.js",
      "public/playground.css",
      ...members.flatMap((m) => [`${m}/Cargo.toml`, `${m}/src/lib.rs`, `${m}/src/main.rs`]),
    ];
    assert.deepEqual([...(await ignoredOf(kept))], [], "these must be uploaded");
  });

  it("keeps build output, node_modules, tests and local secrets out", async () => {
    const dropped = [
      "target/debug/fal-proxy-vercel",
      "target/release/deps/x.rlib",
      "e2e/node_modules/@fal-ai/client/package.json",
      "e2e/suite.mjs",
      ".dev.vars",
      "worker/.dev.vars",
      ".vercel/project.json",
      "public/_headers",
      "playground/main.js",
    ];
    const ignored = await ignoredOf(dropped);
    assert.deepEqual(dropped.filter((p) => !ignored.has(p)), [], "these must not be uploaded");
  });
});
