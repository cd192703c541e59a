#!/usr/bin/env bash
# benches/compare.sh BEFORE_PROXY AFTER_PROXY — two release builds of `proxy` side by side
# in one run, for "before and after" ratios that share the machine's state: both front the
# same nginx fixed-answer upstream (benches/nginx/fixed-upstream.conf) and are loaded in
# alternation (A B A B …, COMPARE_ROUNDS rounds), so drift in the machine's load lands on
# both. Reports the median of each cell and the ratio after/before.
#
#   git worktree add --detach /tmp/before <rev> && (cd /tmp/before && cargo build --release --bin proxy)
#   cargo build --release --locked --bin proxy
#   benches/compare.sh /tmp/before/target/release/proxy target/release/proxy
#
# Env: COMPARE_SECS=5 (per wrk run), COMPARE_ROUNDS=3, COMPARE_CONNS="1 64",
#      COMPARE_OUT=benches/results/compare.md. Loopback only; stops what it started.
set -euo pipefail
BEFORE=$(realpath "${1:?usage: benches/compare.sh BEFORE_PROXY AFTER_PROXY}")
AFTER=$(realpath "${2:?usage: benches/compare.sh BEFORE_PROXY AFTER_PROXY}")
cd "$(dirname "$0")/.."
SECS=${COMPARE_SECS:-5}
ROUNDS=${COMPARE_ROUNDS:-3}
CONNS=${COMPARE_CONNS:-1 64}
OUT=${COMPARE_OUT:-benches/results/compare.md}

. benches/lib.sh
need_apt nginx:nginx-light wrk:wrk
start_nginx

# start NAME BINARY: a proxy in front of nginx; sets $url. (Not called as $(start …):
# a subshell would record the PID where cleanup never sees it, leaving the proxy running.)
start() {
  local home=$work/$1 port
  mkdir -p "$home"
  port=$(free_port)
  "$2" --home "$home" --port "$port" --upstream "http://127.0.0.1:$nginx_port/json/v1" >"$home.out" 2>&1 &
  pids+=($!)
  url="http://127.0.0.1:$port"
  wait_http "$url/health/ready" || { cat "$home.out" >&2; exit 1; }
}
start before "$BEFORE"
before_url=$url
start after "$AFTER"
after_url=$url

run() { # URL CONNS -> "rps p50_us p99_us errors"
  wrk -t1 -c"$2" -d"${SECS}"s --timeout 10s -s benches/wrk/chat.lua "$1/v1/chat/completions" -- json \
    | awk '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                       print v["rps"], v["p50_us"], v["p99_us"], v["errors"] + v["non2xx"] }'
}
for c in $CONNS; do
  for r in $(seq "$ROUNDS"); do
    echo "before $c $(run "$before_url" "$c")" >>"$work/results"
    echo "after $c $(run "$after_url" "$c")" >>"$work/results"
  done
done

python3 - "$work/results" "$SECS" "$ROUNDS" "$BEFORE" "$AFTER" >"$OUT" <<'EOF'
import statistics, sys, os
path, secs, rounds, before, after = sys.argv[1:6]
cells = {}
for line in open(path):
    who, conns, rps, p50, p99, errors = line.split()
    cells.setdefault((int(conns), who), []).append((float(rps), float(p50), float(p99), int(errors)))
print("# Before / after, one run\n")
print(f"benches/compare.sh, {secs} s per wrk run, {rounds} alternating rounds, medians; "
      f"load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}.\n")
print(f"- before: `{before}`\n- after: `{after}`\n")
print("| connections | build | req/s | p50 µs | p99 µs | errors |")
print("| ---: | --- | ---: | ---: | ---: | ---: |")
for conns in sorted({c for c, _ in cells}):
    med = {}
    for who in ("before", "after"):
        runs = cells[(conns, who)]
        med[who] = [statistics.median(r[i] for r in runs) for i in range(3)] + [sum(r[3] for r in runs)]
        rps, p50, p99, errors = med[who]
        print(f"| {conns} | {who} | {rps:.0f} | {p50:.0f} | {p99:.0f} | {errors} |")
    ratio = med["after"][0] / med["before"][0]
    print(f"| {conns} | **after/before** | **{ratio:.3f}** | {med['after'][1] - med['before'][1]:+.0f} | {med['after'][2] - med['before'][2]:+.0f} | |")
EOF
cat "$OUT"
