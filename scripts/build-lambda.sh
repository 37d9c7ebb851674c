#!/usr/bin/env bash
# Builds what the Lambda target's tests run: the debug fal-proxy-lambda binary,
# which cargo-lambda's emulator (e2e/launchers/lambda.mjs) then starts with a
# no-op `cargo run`. Fast when nothing changed.
#
#   scripts/build-lambda.sh            debug build for the tests
#   scripts/build-lambda.sh --release  also a native release build, to see its size
#
# Deploying builds for arm64 through `sam build` instead (see template.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked -p fal-proxy-lambda
if [[ "${1:-}" == "--release" ]]; then
  cargo build --locked --release -p fal-proxy-lambda
  ls -l target/release/fal-proxy-lambda
fi
