#!/usr/bin/env bash
# Builds what the Vercel target's tests run: the debug fal-proxy-vercel
# binary (the function in api/fal/proxy/[...path].rs), which
# e2e/launchers/vercel.mjs starts the way Vercel does. Fast when nothing
# changed.
#
#   scripts/build-vercel.sh            debug build for the tests
#   scripts/build-vercel.sh --release  also the release build Vercel makes, to see its size
#
# Deploying needs none of this: Vercel builds the function itself (see the
# README). The offline route check needs the Vercel CLI from
# scripts/tools/vercel.sh, not this build.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked -p fal-proxy-vercel
if [[ "${1:-}" == "--release" ]]; then
  cargo build --locked --release -p fal-proxy-vercel
  ls -l target/release/fal-proxy-vercel
fi
