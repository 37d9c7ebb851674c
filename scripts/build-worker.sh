#!/usr/bin/env bash
# Builds the Cloudflare Worker (worker/) for release into worker/build/:
# index.js (the entry wrangler.toml names) and index_bg.wasm.
#
#   scripts/build-worker.sh           build if any input changed (a no-op otherwise)
#   scripts/build-worker.sh --force   build regardless
#
# Installs its tools first through scripts/tools/worker.sh (worker-build,
# wasm-bindgen, wasm-opt, esbuild; nothing is downloaded from code-hosting
# sites). wrangler runs this as its [build] command, twice per `wrangler dev`
# start, so an unchanged tree returns at once: the inputs' hash is kept in
# worker/build/.inputs. Prints the gzipped wasm size.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
out=worker/build
stamp=$out/.inputs

force=0
for arg in "$@"; do
  case $arg in
    --force) force=1 ;;
    *) echo "usage: scripts/build-worker.sh [--force]" >&2; exit 2 ;;
  esac
done

inputs_hash() {
  {
    find worker/src shared/src -type f -name '*.rs' -print0 | sort -z | xargs -0 sha256sum
    sha256sum Cargo.toml Cargo.lock rust-toolchain.toml worker/Cargo.toml shared/Cargo.toml \
      scripts/build-worker.sh scripts/tools/worker.sh
  } | sha256sum | cut -d' ' -f1
}

hash=$(inputs_hash)
if [[ $force == 0 && -f $stamp && $(cat "$stamp") == "$hash" && -f $out/index.js && -f $out/index_bg.wasm ]]; then
  exit 0
fi

eval "$("$repo/scripts/tools/worker.sh")"
rm -f "$stamp"
echo "build-worker.sh: building worker/ for wasm32 (release)" >&2
# For this wasm build only (profiles live in the root Cargo.toml):
# - strip=false: wasm-bindgen reads the `target_features` section that
#   stripping removes (worker-build warns otherwise);
# - opt-level=z: 178 KB gzipped instead of 206 KB at opt-level 3; the Worker
#   waits on the network, not on its own code.
(cd worker && CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
  "$WORKER_BUILD_BIN" --release)
# worker-build keeps the name section (function names for stack traces):
# about 40 KB gzipped that the 300 KB budget cannot spare now that the
# Worker verifies JWTs and counts limits. Panics are not expected on a
# request path; a trace without names still shows where.
# The same explicit features worker-build enables: --all-features would let
# binaryen write encodings (compact imports) that workerd cannot load.
features=(mutable-globals sign-ext nontrapping-float-to-int bulk-memory multivalue reference-types exception-handling)
"$WASM_OPT_BIN" "${features[@]/#/--enable-}" --strip-debug "$out/index_bg.wasm" -o "$out/index_bg.wasm"
echo "$hash" > "$stamp"
echo "build-worker.sh: $out/index_bg.wasm: $(wc -c < "$out/index_bg.wasm") bytes, $(gzip -9 -c "$out/index_bg.wasm" | wc -c) bytes gzipped" >&2
