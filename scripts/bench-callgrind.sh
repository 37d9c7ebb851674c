#!/usr/bin/env bash
# User-space instructions per proxied request, with valgrind's callgrind:
#
#   scripts/bench-callgrind.sh [--conns C] [--keep DIR] BINARY
#
# Starts BINARY under callgrind against a static nginx upstream on
# 127.0.0.1, gives it 3 s of wrk load (the 1 KiB JSON POST of
# scripts/bench-ab.sh, C connections), zeroes the counters
# (callgrind_control -z), loads it for 6 s more, dumps the counters
# (callgrind_control -d) and divides by the requests served in those 6 s.
# Instruction counts are repeatable on a busy machine (the same binary gives
# the same figure within about 0.3%); wall-clock is not. Keeps the profile
# for callgrind_annotate in DIR with --keep DIR. Used for the
# README's instruction tables ("Benchmark"). Installs valgrind, nginx-light
# and wrk (Debian) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/bench-upstream.sh
source scripts/tools/bench-upstream.sh
conns=32 keep=""
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --conns) conns=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ $# -eq 1 ]] || { echo "usage: $0 [--conns C] [--keep DIR] BINARY" >&2; exit 2; }
binary=$1
scripts/tools/apt.sh valgrind nginx-light wrk >&2
work=$(mktemp -d)
vg=""
cleanup() {
  if [[ -n "$vg" ]]; then
    kill "$vg" 2>/dev/null || true
    wait "$vg" 2>/dev/null || true
  fi
  [[ -f "$work/upstream.pid" ]] && kill "$(cat "$work/upstream.pid")" 2>/dev/null || true
  sleep 0.2
  rm -rf "$work"
}
trap cleanup EXIT
key="bench-id:bench-secret" up_port=19110 port=19310
bench_upstream "$work" "$up_port"
PORT=$port FAL_KEY=$key FAL_PROXY_UPSTREAM=http://127.0.0.1:$up_port \
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "$binary" \
  2> "$work/valgrind.log" &
vg=$!
url="http://127.0.0.1:$port/api/fal/proxy"
for _ in $(seq 120); do
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break
  sleep 0.5
done
wrk -t1 -c"$conns" -d3s -s "$work/post.lua" "$url" > /dev/null
callgrind_control -z "$vg" > /dev/null 2>&1 || { echo "callgrind_control -z failed" >&2; exit 1; }
out=$(wrk -t1 -c"$conns" -d6s -s "$work/post.lua" "$url")
callgrind_control -d "$vg" > /dev/null 2>&1 || { echo "callgrind_control -d failed" >&2; exit 1; }
sleep 1
if grep -q "Non-2xx" <<< "$out"; then echo "answers other than 2xx" >&2; exit 1; fi
requests=$(awk '/requests in/ {print $1}' <<< "$out")
dump=$(ls "$work"/callgrind.out.* 2>/dev/null | head -1)
[[ -n "$dump" ]] || { echo "no callgrind dump; valgrind said:" >&2; tail -5 "$work/valgrind.log" >&2; exit 1; }
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$binary at $conns connections: $requests requests, $((total / requests)) instructions per request"
if [[ -n "$keep" ]]; then mkdir -p "$keep" && cp "$dump" "$keep/"; fi
