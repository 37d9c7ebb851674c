#!/usr/bin/env bash
# Interleaved A/B of server binaries beside nginx doing the same minimal job:
#
#   scripts/bench-ab.sh [--rounds N] [--secs S] [--conns C] BINARY...
#
# For each round, each binary and then nginx get 1 s of wrk warm-up and S
# seconds of load (a 1 KiB JSON POST to fal.run/fal-ai/flux/dev,
# keep-alive, C connections); CPU per request is the process's user and
# system time from /proc/<pid>/stat over the requests served, summed over
# the rounds. The upstream is a static nginx on 127.0.0.1 (cheaper and
# steadier than the bench's mock, so the proxies' own costs show). Used for
# the A/B figures in the README ("Benchmark"). Each proxy logs to a file, as
# nginx does. Loopback only, bounded.
# Installs nginx-light and wrk (Debian) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/bench-upstream.sh
source scripts/tools/bench-upstream.sh
rounds=3 secs=4 conns=32
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --secs) secs=$2; shift 2 ;;
    --conns) conns=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [--rounds N] [--secs S] [--conns C] BINARY..." >&2; exit 2; }
scripts/tools/apt.sh nginx-light wrk >&2
work=$(mktemp -d)
pids=()
cleanup() {
  if [[ ${#pids[@]} -gt 0 ]]; then
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  for conf in upstream proxy; do
    [[ -f "$work/$conf.pid" ]] && kill "$(cat "$work/$conf.pid")" 2>/dev/null || true
  done
  sleep 0.2
  rm -rf "$work"
}
trap cleanup EXIT
key="bench-id:bench-secret"
up_port=19100 nginx_port=19200 first_port=19300
# The same minimal job as NGINX_CONF in bench/src/main.rs.
cat > "$work/proxy.conf" <<CONF
worker_processes 2;
pid $work/proxy.pid;
error_log $work/proxy.err warn;
events { worker_connections 16384; }
http {
  log_format fal '\$request_method \$fal_target status=\$status duration=\$request_time bytes=\$bytes_sent';
  access_log $work/proxy.access fal;
  map \$http_x_fal_target_url \$fal_path {
    default "";
    "~^https://(?<fal_host>fal\.run|queue\.fal\.run)(?<fal_rest>/.*)\$" /\$fal_host\$fal_rest;
  }
  map \$http_x_fal_target_url \$fal_target {
    default "-";
    "~^https://(?<h>[^/?#]+)(?<p>/[^?#]*)" \$h\$p;
  }
  upstream fal { server 127.0.0.1:$up_port; keepalive 64; keepalive_requests 1000000; }
  client_max_body_size 64m;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$nginx_port;
    location /api/fal/proxy {
      if (\$fal_path = "") { return 403; }
      proxy_pass http://fal\$fal_path;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Key $key";
      proxy_set_header Cookie "";
      proxy_set_header x-fal-target-url "";
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
CONF
bench_upstream "$work" "$up_port"
nginx -p "$work" -c "$work/proxy.conf"
names=() ports=()
port=$first_port
for binary in "$@"; do
  PORT=$port FAL_KEY=$key FAL_PROXY_UPSTREAM=http://127.0.0.1:$up_port \
    "$binary" 2> "$work/proxy-$port.log" &
  pids+=($!) names+=("$binary") ports+=($port)
  port=$((port + 1))
done
for port in "${ports[@]}" "$nginx_port"; do
  for _ in $(seq 50); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && continue 2
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$port" >&2
  exit 1
done
master=$(cat "$work/proxy.pid")
nginx_pids="$master $(pgrep -P "$master" | xargs)"
names+=(nginx) ports+=($nginx_port)
ticks=$(getconf CLK_TCK)
cpu() { local user=0 sys=0 u s; for pid in $1; do read -r u s < <(cut -d' ' -f14,15 "/proc/$pid/stat"); user=$((user + u)) sys=$((sys + s)); done; echo "$user $sys"; }
declare -a U S R
for _ in $(seq "$rounds"); do
  for i in "${!names[@]}"; do
    if [[ "${names[$i]}" == nginx ]]; then watched=$nginx_pids; else watched=${pids[$i]}; fi
    url="http://127.0.0.1:${ports[$i]}/api/fal/proxy"
    wrk -t1 -c"$conns" -d1s -s "$work/post.lua" "$url" > /dev/null
    read -r u0 s0 < <(cpu "$watched")
    out=$(wrk -t1 -c"$conns" -d"${secs}s" -s "$work/post.lua" "$url")
    read -r u1 s1 < <(cpu "$watched")
    if grep -q "Non-2xx\|Socket errors" <<< "$out"; then
      echo "${names[$i]}: answers other than 2xx, or socket errors:" >&2
      echo "$out" >&2
      exit 1
    fi
    U[$i]=$(( ${U[$i]:-0} + u1 - u0 )) S[$i]=$(( ${S[$i]:-0} + s1 - s0 ))
    R[$i]=$(( ${R[$i]:-0} + $(awk '/requests in/ {print $1}' <<< "$out") ))
  done
done
echo "| proxy | requests | user µs/request | system µs/request | CPU µs/request |"
echo "|---|---|---|---|---|"
for i in "${!names[@]}"; do
  [[ ${R[$i]} -gt 0 ]] || { echo "${names[$i]} served no requests" >&2; exit 1; }
  awk -v n="${names[$i]}" -v u="${U[$i]}" -v s="${S[$i]}" -v r="${R[$i]}" -v t="$ticks" \
    'BEGIN { printf "| %s | %d | %.1f | %.1f | %.1f |\n", n, r, u/t/r*1e6, s/t/r*1e6, (u+s)/t/r*1e6 }'
done
