#!/usr/bin/env bash
# The bench command: the native server's cost per request beside nginx doing
# the same minimal job and the official Node proxy (@fal-ai/server-proxy with
# Express, installed from npm into bench/reference; skip it with
# --no-reference), all against one mock fal on 127.0.0.1, under the same wrk
# load: requests/s, p50/p99 and CPU per request at 1 and 32 connections;
# 20 MB up and 10 MB down (MB/s, CPU per MB); time to the first SSE event;
# memory at start, after 100,000 requests and with 10,000 idle keep-alive
# connections; then what a counted request adds with FAL_PROXY_RATE_LIMIT
# (memory, and a redis-server on loopback: needs redis-server on PATH).
# Release builds; three to four minutes once built. Loopback only, bounded in
# time. Installs nginx-light and wrk (Debian) if missing.
#
# `scripts/bench.sh --soak` instead sends 100,000 requests at concurrency 64
# (plain, streaming and refused) through the native server, checks every
# answer, and fails on any unexpected one or when the server's resident memory
# at the end is more than 10% away from what it was after a warm-up. Not in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p fal-proxy-server -p fal-proxy-bench
if [[ "${1:-}" == "--soak" ]]; then
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
  exec target/release/fal-proxy-bench --soak target/release/fal-proxy-server
fi
scripts/tools/apt.sh nginx-light wrk
reference=()
if [[ "${1:-}" != "--no-reference" ]]; then
  (cd bench/reference && npm ci --no-audit --no-fund --loglevel=error)
  reference=(bench/reference/server.mjs)
fi
# 10,000 idle connections need more descriptors than the usual 1024: raise
# the soft limit for this script and what it starts, up to the hard limit.
ulimit -n "$(ulimit -Hn)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), node $(node --version), $(nginx -v 2>&1 | cut -d: -f2 | xargs), wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}')"
target/release/fal-proxy-bench target/release/fal-proxy-server "${reference[@]}"
echo
echo "== rate limits: what a counted request adds (memory, redis-server on loopback)"
target/release/fal-proxy-bench-limits target/release/fal-proxy-server
