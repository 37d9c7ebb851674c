#!/usr/bin/env bash
# The bench command: the native server's own cost against a mock fal on
# 127.0.0.1 (requests/s, p50/p99 at concurrency 1, 16 and 64, time to the
# first SSE event, memory), beside the same calls made straight to the mock.
# Release builds; takes about a minute after they are built. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p fal-proxy-server -p fal-proxy-bench
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
target/release/fal-proxy-bench target/release/fal-proxy-server
