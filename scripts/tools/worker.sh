#!/usr/bin/env bash
# Installs the tools that build the Cloudflare Worker (worker/) without
# downloads from code-hosting sites, which fail on offline CI machines.
#
#   eval "$(scripts/tools/worker.sh)"
#
# Installs, once per version, under ${FAL_PROXY_TOOLS:-$HOME/.cache/fal-proxy/tools}:
#   worker-build-0.8.7/bin/worker-build       cargo install --debug (a release build takes ~15 min)
#   wasm-bindgen-cli-<V>/bin/wasm-bindgen     V = the wasm-bindgen version in Cargo.lock, exactly
#                                             (the CLI and the library must match)
#   binaryen-132.0.0/node_modules/.bin/wasm-opt   from npm (the version worker-build 0.8.7 wants)
#   esbuild-0.27.3/node_modules/.bin/esbuild      from npm (the version wrangler 4.86.0 ships)
# and prints `export` lines on stdout: WORKER_BUILD_BIN, and WASM_BINDGEN_BIN,
# WASM_OPT_BIN, ESBUILD_BIN, which worker-build uses instead of downloading.
# Progress goes to stderr. Safe to run again: installed versions are reused.
# Needs cargo, npm, and the registries (crates.io, npm).
set -euo pipefail

WORKER_BUILD_VERSION=0.8.7
BINARYEN_VERSION=132.0.0
ESBUILD_VERSION=0.27.3

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tools=${FAL_PROXY_TOOLS:-$HOME/.cache/fal-proxy/tools}
mkdir -p "$tools"

wasm_bindgen_version=$(awk '
  $0 == "name = \"wasm-bindgen\"" { found = 1; next }
  found && /^version = / { gsub(/"/, "", $3); print $3; exit }
' "$repo/Cargo.lock")
if [[ -z $wasm_bindgen_version ]]; then
  echo "tools/worker.sh: no wasm-bindgen in Cargo.lock (run cargo fetch?)" >&2
  exit 1
fi

say() { echo "tools/worker.sh: $*" >&2; }

# cargo_tool <crate> <version> <binary> [extra cargo install flags...]
cargo_tool() {
  local crate=$1 version=$2 binary=$3
  shift 3
  local root="$tools/$crate-$version"
  if [[ ! -x $root/bin/$binary ]]; then
    say "installing $crate $version into $root (debug build, a minute or two)"
    cargo install "$crate" --version "=$version" --debug --root "$root" "$@" >&2
  fi
  [[ -x $root/bin/$binary ]] || { say "$root/bin/$binary missing after install"; exit 1; }
}

# npm_tool <package> <version> <binary>
npm_tool() {
  local package=$1 version=$2 binary=$3
  local dir="$tools/$package-$version"
  if [[ ! -x $dir/node_modules/.bin/$binary ]]; then
    say "installing npm $package@$version into $dir"
    mkdir -p "$dir"
    npm install --prefix "$dir" --no-save --no-audit --no-fund --loglevel=error \
      "$package@$version" >&2
  fi
  [[ -x $dir/node_modules/.bin/$binary ]] || { say "$dir/node_modules/.bin/$binary missing after install"; exit 1; }
}

# worker-build's own lock file pins what it was released with; without
# --locked, newer dependencies may not build.
cargo_tool worker-build "$WORKER_BUILD_VERSION" worker-build --locked
# No --locked here: wasm-bindgen-cli's lock file holds a yanked crate.
cargo_tool wasm-bindgen-cli "$wasm_bindgen_version" wasm-bindgen
npm_tool binaryen "$BINARYEN_VERSION" wasm-opt
npm_tool esbuild "$ESBUILD_VERSION" esbuild

echo "export WORKER_BUILD_BIN='$tools/worker-build-$WORKER_BUILD_VERSION/bin/worker-build'"
echo "export WASM_BINDGEN_BIN='$tools/wasm-bindgen-cli-$wasm_bindgen_version/bin/wasm-bindgen'"
echo "export WASM_OPT_BIN='$tools/binaryen-$BINARYEN_VERSION/node_modules/.bin/wasm-opt'"
echo "export ESBUILD_BIN='$tools/esbuild-$ESBUILD_VERSION/node_modules/.bin/esbuild'"
