#!/usr/bin/env bash
# Runs every test: static checks, the Rust unit/contract/binary tests, then
# every deploy target built and run for real under the end-to-end suite (the
# real @fal-ai/client against a mock fal on 127.0.0.1). Installs what it
# needs; tools go under ${FAL_PROXY_TOOLS:-~/.cache/fal-proxy/tools}, keyed
# by version, so a second run reuses them. Nothing here reaches fal.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

step "toolchain and tools"
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
eval "$(scripts/tools/lambda.sh)"   # cargo-lambda (the Lambda emulator), cfn-lint
eval "$(scripts/tools/vercel.sh)"   # the Vercel CLI, for an offline `vercel build`
eval "$(scripts/tools/worker.sh)"   # worker-build, wasm-bindgen, wasm-opt, esbuild
scripts/tools/apt.sh chromium fonts-liberation   # the browser tests of the playground page
scripts/tools/apt.sh redis-server                # the rate-limit store the limits tests start
npm ci --no-audit --no-fund --loglevel=error            # wrangler
(cd e2e && npm ci --no-audit --no-fund --loglevel=error) # @fal-ai/client (and older releases as fal-client-X-Y-Z), playwright-core

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo clippy -p fal-proxy-core -p fal-proxy-worker --target wasm32-unknown-unknown -- -D warnings
scripts/check-template.sh
scripts/build-playground.sh --check   # the committed public/playground.js is what its source builds

step "Rust tests (unit, contract, doc, the server, Lambda runtime API)"
cargo test --workspace --all-features

step "fuzz: every target of fuzz/ for a few seconds (cargo fuzz, nightly; the long run is in the README)"
eval "$(scripts/tools/fuzz.sh)"   # cargo-fuzz, and the nightly toolchain libFuzzer needs
cargo fmt --manifest-path fuzz/Cargo.toml --check
(cd fuzz && cargo +nightly fuzz build -s none &&
  for target in $(cargo +nightly fuzz list); do
    cargo +nightly fuzz run -s none "$target" -- -max_total_time="${FAL_PROXY_FUZZ_SECS:-3}" -rss_limit_mb=1024 2>&1 | tail -n 1
    [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "fuzz target $target failed; see fuzz/artifacts/$target" >&2; exit 1; }
  done)

step "build the targets"
cargo build --locked -p fal-proxy-server
scripts/build-vercel.sh
scripts/build-lambda.sh
scripts/build-worker.sh
scripts/check-worker-size.sh

step "end-to-end: the real @fal-ai/client against every target"
(cd e2e && node --test --test-concurrency=1 \
  native.test.mjs \
  vercel.test.mjs vercel-function.test.mjs vercel-routes.test.mjs \
  lambda.test.mjs \
  worker.test.mjs \
  limits.test.mjs limits-worker.test.mjs \
  playground.test.mjs)

step "end-to-end: every tested @fal-ai/client release (1.0.2 to 1.10.1) through the native server and the Vercel function"
(cd e2e && node --test --test-concurrency=1 client-matrix-native.test.mjs client-matrix-vercel.test.mjs)

step "done"
