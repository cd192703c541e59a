#!/usr/bin/env bash
# benches/instructions.sh PROXY [N] — user-space instructions per proxied request, counted by
# valgrind's callgrind: deterministic, so a loaded machine does not blur it (unlike req/s).
# Runs PROXY twice under callgrind in front of the nginx fixed-answer upstream: once with no
# request and once with N sequential keep-alive chat requests (default 2000); prints
# (total(N) - total(0)) / N, and the same for calls to the C allocator (malloc, calloc,
# realloc, ...: allocations per request, counted from callgrind's call counts by
# benches/callgrind_allocs.py). Compare two builds by running it on each.
#   benches/instructions.sh target/release/proxy
#   CALLGRIND_KEEP=DIR benches/instructions.sh ...   also keeps both callgrind files in DIR
#     (callgrind_annotate DIR/callgrind.N: where the instructions go, by function)
# Needs valgrind and nginx (Debian); loopback only; stops what it started.
set -euo pipefail
BIN=$(realpath "${1:?usage: benches/instructions.sh PROXY [N]}")
N=${2:-2000}
cd "$(dirname "$0")/.."
. benches/lib.sh
need_apt valgrind:valgrind nginx:nginx-light
start_nginx

# total N: callgrind's instruction total for a proxy that served N requests.
total() {
  local n=$1 port
  port=$(free_port)
  mkdir -p "$work/home$n"
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.$n" "$BIN" --home "$work/home$n" \
    --port "$port" --upstream "http://127.0.0.1:$nginx_port/json/v1" >"$work/out$n" 2>&1 &
  local pid=$!
  wait_http "http://127.0.0.1:$port/health/ready" 1200 || { cat "$work/out$n" >&2; exit 1; }
  python3 - "$port" "$n" <<'PY'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
body = '{"model":"m","messages":[{"role":"user","content":"hi"}]}'
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = c.getresponse(); r.read(); assert r.status == 200, r.status
PY
  kill -TERM "$pid"
  wait "$pid" || true
  if [ -n "${CALLGRIND_KEEP:-}" ]; then mkdir -p "$CALLGRIND_KEEP" && cp "$work/callgrind.$n" "$CALLGRIND_KEEP/"; fi
  echo "$(awk '/^(summary|totals):/ {print $2; exit}' "$work/callgrind.$n") $(python3 benches/callgrind_allocs.py "$work/callgrind.$n")"
}
read -r zero zero_allocs < <(total 0)
read -r many many_allocs < <(total "$N")
echo "$BIN: $(((many - zero) / N)) instructions and $(((many_allocs - zero_allocs) / N)) allocations per request (callgrind, N=$N)"
