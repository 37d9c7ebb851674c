#!/usr/bin/env bash
# Bundles the playground's script (playground/main.js and the real @fal-ai/client, both
# pinned in playground/package.json) into public/playground.js with esbuild. The bundle
# is committed: Vercel serves public/ as it is, the Worker serves it as assets and the
# native server embeds it, so no deploy needs Node. Run this after changing the script
# or the client's version, and commit the result.
#   scripts/build-playground.sh           rebuild public/playground.js
#   scripts/build-playground.sh --check   fail if the committed bundle is not what the source builds
set -euo pipefail
cd "$(dirname "$0")/../playground"

# The check installs exactly the locked versions; a rebuild reuses what is installed.
if [[ ${1:-} == --check || ! -d node_modules/@fal-ai/client || ! -x node_modules/.bin/esbuild ]]; then
  npm ci --no-audit --no-fund --loglevel=error >&2
fi

out=../public/playground.js
if [[ ${1:-} == --check ]]; then
  out=$(mktemp --suffix=.js)
  trap 'rm -f "$out"' EXIT
fi

node_modules/.bin/esbuild main.js --bundle --format=iife --platform=browser --target=es2020 \
  --minify --legal-comments=none --log-level=warning --metafile=node_modules/.meta.json \
  --banner:js="/* fal-proxy playground: built by scripts/build-playground.sh from playground/main.js and @fal-ai/client (see playground/package.json). Do not edit. Licenses of the bundled packages at the end. */" \
  --outfile="$out"

# The notices of the bundled packages (MIT, ISC, BSD-2-Clause ask for them), at the end.
node - "$out" <<'JS'
const fs = require("node:fs");
const out = process.argv[2];
const meta = JSON.parse(fs.readFileSync("node_modules/.meta.json", "utf8"));
const names = new Set();
for (const input of Object.keys(Object.values(meta.outputs)[0].inputs)) {
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(input);
  if (m) names.add(m[1]);
}
let notes = "";
for (const name of [...names].sort()) {
  const dir = `node_modules/${name}`;
  const pkg = JSON.parse(fs.readFileSync(`${dir}/package.json`, "utf8"));
  const file = fs.readdirSync(dir).find((f) => /^licen[cs]e/i.test(f));
  const text = file ? fs.readFileSync(`${dir}/${file}`, "utf8").trim() : `License: ${pkg.license} (the package ships no license file)`;
  notes += `\n\n${name}@${pkg.version} (${pkg.license})\n\n${text.replaceAll("*/", "* /")}`;
}
fs.appendFileSync(out, `/*! Bundled packages:${notes}\n*/\n`);
JS

if [[ ${1:-} == --check ]]; then
  if ! cmp -s "$out" ../public/playground.js; then
    echo "public/playground.js is stale: run scripts/build-playground.sh and commit it" >&2
    exit 1
  fi
  echo "public/playground.js is up to date" >&2
fi
