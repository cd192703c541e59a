#!/usr/bin/env bash
# benches/cpu.sh PROXY... — CPU time and context switches per proxied request, each PROXY
# in turn (ROUNDS rounds, alternating, default 3), in front of the nginx fixed-answer
# upstream, with wrk at CONNS connections (default 1) for SECS s (default 10) of
# non-streamed chat requests. Per run: "proxy round rps p50_us cpu_us_per_request
# switches_per_request" (CPU: user + system of the proxy, from /proc; switches: voluntary
# and involuntary, all its threads). CPU time is less blurred by a loaded machine than
# req/s, but not immune to it; compare builds in the same run.
#   benches/cpu.sh target/bench/before target/bench/after
#   ROUNDS=5 CONNS=8 SECS=5 benches/cpu.sh A B
# Needs wrk and nginx (Debian); loopback only; stops what it started.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: benches/cpu.sh PROXY..." >&2; exit 2; }
bins=()
for b in "$@"; do bins+=("$(realpath "$b")"); done
cd "$(dirname "$0")/.."
. benches/lib.sh
need_apt wrk:wrk nginx:nginx-light
start_nginx
ROUNDS=${ROUNDS:-3} CONNS=${CONNS:-1} SECS=${SECS:-10}
hz=$(getconf CLK_TCK)
# switches PID: context switches so far, all threads.
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
for round in $(seq 1 "$ROUNDS"); do
  for bin in "${bins[@]}"; do
    port=$(free_port)
    home=$work/home.$round.$(basename "$bin")
    mkdir -p "$home"
    "$bin" --home "$home" --port "$port" --upstream "http://127.0.0.1:$nginx_port/json/v1" \
      >"$home.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_http "http://127.0.0.1:$port/health/ready" || { cat "$home.log" >&2; exit 1; }
    wrk_chat "http://127.0.0.1:$port" "$CONNS" 1 >/dev/null # warm-up
    ticks0=$(cpu_ticks "$pid") sw0=$(switches "$pid")
    read -r rps p50 _p99 errors requests < <(wrk_chat "http://127.0.0.1:$port" "$CONNS" "$SECS")
    ticks=$(($(cpu_ticks "$pid") - ticks0)) sw=$(($(switches "$pid") - sw0))
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    [ "$errors" = 0 ] || echo "warning: $errors errors" >&2
    awk -v b="$bin" -v r="$round" -v rps="$rps" -v p50="$p50" -v t="$ticks" -v hz="$hz" \
      -v n="$requests" -v sw="$sw" \
      'BEGIN { printf "%s %d %s %s %.1f %.2f\n", b, r, rps, p50, t * 1e6 / hz / n, sw / n }'
  done
done
