#!/usr/bin/env bash
# Checks that the Worker's release wasm stays under 300 KB gzipped (the
# README states the figure). Build it first with scripts/build-worker.sh.
#
#   scripts/check-worker-size.sh [limit-in-bytes]     default 300000 (300 KB)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
wasm=$repo/worker/build/index_bg.wasm
limit=${1:-300000}

if [[ ! -f $wasm ]]; then
  echo "check-worker-size.sh: $wasm not found (run scripts/build-worker.sh)" >&2
  exit 1
fi
raw=$(wc -c < "$wasm")
gzipped=$(gzip -9 -c "$wasm" | wc -c)
echo "worker wasm: $raw bytes, $gzipped bytes gzipped (limit $limit)"
if (( gzipped >= limit )); then
  echo "check-worker-size.sh: the gzipped wasm is over the limit" >&2
  exit 1
fi
