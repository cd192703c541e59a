#!/usr/bin/env bash
# benches/reverse-proxy.sh PROXY [BEFORE_PROXY] — warden against nginx configured as a plain
# keep-alive reverse proxy (`proxy_pass` to an upstream block with `keepalive 64`), all in
# front of the same nginx fixed-answer upstream (benches/nginx/fixed-upstream.conf), and
# BEFORE_PROXY too when given: wrk c=1 and c=64, 5 s per run, 3 rounds with the
# arrangements loaded in alternation (so machine drift lands on all). Prints wrk's RESULT
# line per run (benches/wrk/chat.lua) and the load average; take medians.
#   benches/reverse-proxy.sh target/release/proxy
# Needs nginx and wrk (Debian). Loopback only; stops what it started.
set -euo pipefail
BIN=$(realpath "${1:?usage: benches/reverse-proxy.sh PROXY [BEFORE_PROXY]}")
BEFORE=${2:+$(realpath "$2")}
cd "$(dirname "$0")/.."
. benches/lib.sh
need_apt nginx:nginx-light wrk:wrk
start_nginx
rp_port=$(free_port)
mkdir -p "$work/rp"
cat > "$work/rp/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/rp/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/rp/cb; proxy_temp_path $work/rp/p; fastcgi_temp_path $work/rp/f; uwsgi_temp_path $work/rp/u; scgi_temp_path $work/rp/s;
    keepalive_requests 1000000;
    upstream fixed { server 127.0.0.1:$nginx_port; keepalive 64; }
    server {
        listen 127.0.0.1:$rp_port;
        location / { proxy_pass http://fixed/json/v1/; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
CONF
nginx -c "$work/rp/nginx.conf" -p "$work/rp" -e "$work/rp/error.log" &
pids+=($!)
port=$(free_port); mkdir -p "$work/home"
"$BIN" --home "$work/home" --port "$port" --upstream "http://127.0.0.1:$nginx_port/json/v1" > "$work/proxy.out" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$port/health/ready" 200
who_all="nginx-rp warden"
if [ -n "$BEFORE" ]; then
  bport=$(free_port); mkdir -p "$work/bhome"
  "$BEFORE" --home "$work/bhome" --port "$bport" --upstream "http://127.0.0.1:$nginx_port/json/v1" > "$work/bproxy.out" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$bport/health/ready" 200
  who_all="nginx-rp warden-before warden"
fi
for _ in $(seq 1 100); do curl -fs -o /dev/null -X POST "http://127.0.0.1:$rp_port/chat/completions" -d "{}" && break; sleep 0.05; done
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for c in 1 64; do
  for round in 1 2 3; do
    for who in $who_all; do
      if [ $who = warden ]; then url="http://127.0.0.1:$port/v1/chat/completions"; elif [ $who = warden-before ]; then url="http://127.0.0.1:$bport/v1/chat/completions"; else url="http://127.0.0.1:$rp_port/chat/completions"; fi
      t=$(( c < 2 ? 1 : 2 ))
      out=$(wrk -t$t -c$c -d5s --latency -s benches/wrk/chat.lua "$url" 2>&1)
      echo "c=$c round=$round $who $(echo "$out" | grep RESULT)"
    done
  done
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
