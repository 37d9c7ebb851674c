#!/usr/bin/env bash
# Installs the Vercel CLI outside the clone and prints a shell `export` line
# for it:
#
#   eval "$(scripts/tools/vercel.sh)"
#
# exports
#   FAL_PROXY_VERCEL_CLI  the `vercel` binary; e2e/vercel-routes.test.mjs runs
#                         `vercel build` with it, offline, to check the routes
#                         vercel.json produces
#
# The exact packages are pinned by e2e/vercel-build/package.json and its
# package-lock.json (vercel 64.0.2, with its `sandbox` dependency overridden
# to 4.5.0, which this CLI version needs to install). They are installed with
# `npm install --ignore-scripts` from that lock file (not `npm ci`, which
# refuses it: the CLI's optional native packages for other platforms are not
# in the lock because npm could not resolve them) into
# ${FAL_PROXY_TOOLS:-$HOME/.cache/fal-proxy/tools}/vercel-64.0.2 (~360 MB,
# ~30 s). Idempotent: an install made from the same lock file is reused.
# Needs node and npm, and the npm registry. Everything but the export line
# goes to stderr.
set -euo pipefail

VERCEL_VERSION=64.0.2

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
spec="$repo/e2e/vercel-build"
tools="${FAL_PROXY_TOOLS:-$HOME/.cache/fal-proxy/tools}"
dir="$tools/vercel-$VERCEL_VERSION"
lock_hash=$(cat "$spec/package.json" "$spec/package-lock.json" | sha256sum | cut -d' ' -f1)

if [[ ! -x "$dir/node_modules/.bin/vercel" || "$(cat "$dir/.complete" 2>/dev/null)" != "$lock_hash" ]]; then
  echo "installing npm vercel@$VERCEL_VERSION into $dir" >&2
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$spec/package.json" "$spec/package-lock.json" "$dir/"
  (cd "$dir" && npm install --no-save --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  "$dir/node_modules/.bin/vercel" --version >&2
  echo "$lock_hash" > "$dir/.complete"
fi

printf 'export FAL_PROXY_VERCEL_CLI=%q\n' "$dir/node_modules/.bin/vercel"
