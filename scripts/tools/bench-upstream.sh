# Sourced by scripts/bench-ab.sh and scripts/bench-callgrind.sh: the load
# they share. `bench_upstream WORK PORT` writes into WORK the wrk script
# (`WORK/post.lua`: a 1 KiB JSON POST to fal.run/fal-ai/flux/dev, as
# bench/src/main.rs sends) and starts a static nginx on 127.0.0.1:PORT
# answering every request with the bench mock's JSON (pid in
# `WORK/upstream.pid`, for the caller's cleanup).
bench_upstream() {
  local work=$1 port=$2
  local result='{"images":[{"url":"https://v3.fal.media/files/bench/image.png","width":1024,"height":1024,"content_type":"image/png"}],"seed":42,"has_nsfw_concepts":[false],"prompt":"a cat"}'
  cat > "$work/upstream.conf" <<CONF
worker_processes 1;
pid $work/upstream.pid;
error_log $work/upstream.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_max_body_size 64m;
  server {
    listen 127.0.0.1:$port;
    location / { default_type application/json; return 200 '$result'; }
  }
}
CONF
  python3 -c 'import json; print(json.dumps({"prompt": "x" * 980}), end="")' > "$work/body.json"
  cat > "$work/post.lua" <<LUA
local f = io.open("$work/body.json"); local body = f:read("*a"); f:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-fal-target-url"] = "https://fal.run/fal-ai/flux/dev"
LUA
  nginx -p "$work" -c "$work/upstream.conf"
}
