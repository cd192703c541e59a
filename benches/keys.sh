#!/usr/bin/env bash
# benches/keys.sh PROXY — what client keys cost on one host (docs/keys.md), in one run: the
# same build of `proxy` in front of the nginx fixed-answer upstream, with keys
#   off   no keys.toml: every request sends the operator's token (server.auth_token_env),
#         nothing is metered (what every warden before keys did);
#   on    KEYS_COUNT (1,000) keys in keys.toml, made by `proxy keys create`, each with an rpm
#         and a token budget far from reached, so every request is looked up, admitted
#         (rpm window, budget reservation), settled and written to the SQLite ledger; one
#         client per key: each request sends the next key in turn, cycling through all of
#         them (benches/wrk/chat.lua with BENCH_KEYS).
# Two figures:
#   - throughput and latency at KEYS_CONNS connections: off and on loaded in alternation,
#     KEYS_ROUNDS rounds of KEYS_SECS s each, medians and the on/off ratio, so machine
#     drift lands on both; and each proxy's CPU time (user + system, /proc) per request
#     over all its rounds, which other work on the machine blurs less than req/s;
#   - instructions and allocator calls per request under valgrind's callgrind (the method
#     of benches/instructions.sh, deterministic, unlike req/s on a shared machine), off and
#     on: (total(W + N) - total(W)) / N with W = KEYS_COUNT requests first, so every key has
#     served once in both runs and the figure is the steady state.
#
#   cargo build --release --locked --bin proxy && cp target/release/proxy /tmp/proxy-keys
#   benches/keys.sh /tmp/proxy-keys
#
# Env: KEYS_COUNT=1000, KEYS_CONNS=64, KEYS_SECS=10, KEYS_ROUNDS=5, KEYS_N=2000,
#      KEYS_PIN=split (wrk on CPU 0, nginx and the proxies on CPU 1; none: unpinned),
#      KEYS_OUT=benches/results/keys.md; CALLGRIND_KEEP=DIR keeps the callgrind files
#      (benches/callgrind_per_request.py DIR/on.callgrind.W DIR/on.callgrind.W+N N: by function).
# Needs nginx, wrk, valgrind, sqlite3 (Debian). Loopback only; stops what it started.
set -euo pipefail
BIN=$(realpath "${1:?usage: benches/keys.sh PROXY}")
cd "$(dirname "$0")/.."
COUNT=${KEYS_COUNT:-1000}
CONNS=${KEYS_CONNS:-64}
SECS=${KEYS_SECS:-10}
ROUNDS=${KEYS_ROUNDS:-5}
N=${KEYS_N:-2000}
OUT=${KEYS_OUT:-benches/results/keys.md}
TOKEN=sk-bench-0123456789
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

. benches/lib.sh
need_apt nginx:nginx-light wrk:wrk valgrind:valgrind sqlite3:sqlite3
start_nginx

# KEYS_PIN=split (the default, on 2 or more CPUs): wrk on CPU 0, nginx and both proxies on
# CPU 1, as benches/run.sh does: the load generator then takes nothing from the proxies, and
# each round's req/s is what one core serving nginx and the proxy gives. none: no pinning.
serve_pin=()
if [ "${KEYS_PIN:-split}" = split ] && [ "$(nproc)" -ge 2 ]; then
  wrk_pin=(taskset -c 0)
  serve_pin=(taskset -c 1)
  for p in "${pids[@]}" $(pgrep -P "${pids[0]}" || true); do taskset -a -p -c 1 "$p" >/dev/null; done
  arrangement="wrk pinned to CPU 0, nginx and the proxies to CPU 1 (\`taskset\`)"
else
  arrangement="nothing pinned"
fi

# The keys, in the "on" home; the callgrind homes get a copy of its keys.toml.
mkdir -p "$work/on" "$work/off"
create_keys "$BIN" "$work/on" "$COUNT" client --rpm 1000000000 --budget-tokens 1000000000000 \
  --period month >"$work/keys.txt"
[ "$(wc -l <"$work/keys.txt")" -eq "$COUNT" ] || { echo "keys.sh: $COUNT keys were not made" >&2; exit 1; }

# start NAME: a proxy serving the home $work/NAME; records its URL and PID.
start() {
  local port
  port=$(free_port)
  WARDEN_AUTH_TOKEN=$TOKEN "${serve_pin[@]}" "$BIN" --home "$work/$1" --port "$port" \
    --upstream "http://127.0.0.1:$nginx_port/json/v1" >"$work/$1.out" 2>&1 &
  pids+=($!)
  echo $! >"$work/$1.pid"
  echo "http://127.0.0.1:$port" >"$work/$1.url"
  wait_http "http://127.0.0.1:$port/health/ready" || { cat "$work/$1.out" >&2; exit 1; }
}
start off
start on
curl -s "$(cat "$work/on.url")/health" | grep -q "\"count\":$COUNT" \
  || { echo "keys.sh: the proxy does not have the $COUNT keys in force" >&2; exit 1; }

# round NAME: one wrk run against that proxy; appends "NAME rps p50 p99 errors requests
# cpu_ticks" (the proxy's CPU time during the run) to the results.
round() {
  local before line
  before=$(cpu_ticks "$(cat "$work/$1.pid")")
  line=$(wrk_chat "$(cat "$work/$1.url")" "$CONNS" "$SECS")
  echo "$1 $line $(($(cpu_ticks "$(cat "$work/$1.pid")") - before))" >>"$work/results"
}
for r in $(seq "$ROUNDS"); do
  BENCH_BEARER=$TOKEN round off
  BENCH_KEYS=$work/keys.txt round on
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# Every answered request has its ledger row: stop the proxy (its drain writes the last
# batch), then count.
kill -TERM "$(cat "$work/on.pid")"
for _ in $(seq 1 600); do kill -0 "$(cat "$work/on.pid")" 2>/dev/null || break; sleep 0.1; done
rows=$(sqlite3 "$work/on/data/usage.db" 'SELECT count(*) FROM usage')

# Callgrind: the same build, the same two configurations, sequential keep-alive requests.
cp -p "$work/on/keys.toml" "$work/keys.toml"
# A fresh home for each run (keys.toml copied in): both start from an empty ledger, so
# the start-up (which reads the ledger back) costs the same in both.
counts() { # NAME KEYS_FILE -> "instructions allocations" per request, steady state
  local zero zero_a many many_a n
  for n in "$COUNT" "$((COUNT + N))"; do
    mkdir -p "$work/cg-$1-$n"
    [ -z "$2" ] || cp -p "$work/keys.toml" "$work/cg-$1-$n/keys.toml"
  done
  read -r zero zero_a < <(WARDEN_AUTH_TOKEN=$TOKEN callgrind_total "$BIN" "$work/cg-$1-$COUNT" "$COUNT" "$2" "$1")
  read -r many many_a < <(WARDEN_AUTH_TOKEN=$TOKEN callgrind_total "$BIN" "$work/cg-$1-$((COUNT + N))" "$((COUNT + N))" "$2" "$1")
  echo "$(((many - zero) / N)) $(((many_a - zero_a) / N))"
}
read -r off_ir off_allocs < <(BENCH_BEARER=$TOKEN counts off "")
read -r on_ir on_allocs < <(counts on "$work/keys.txt")

python3 - "$work" "$BIN" "$COUNT" "$CONNS" "$SECS" "$ROUNDS" "$N" "$load_start" "$load_end" "$rows" \
  "$off_ir" "$off_allocs" "$on_ir" "$on_allocs" "$arrangement" "${KEYS_PIN:-split}" >"$OUT" <<'PY'
import os, statistics, sys
(work, binary, count, conns, secs, rounds, n, load_start, load_end, rows,
 off_ir, off_allocs, on_ir, on_allocs, arrangement, pin) = sys.argv[1:17]
cells = {"off": [], "on": []}
for line in open(f"{work}/results"):
    keys, rps, p50, p99, errors, requests, ticks = line.split()
    cells[keys].append((float(rps), float(p50), float(p99), int(errors), int(requests), int(ticks)))
med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in cells.items()}
ratio = med["on"][0] / med["off"][0]
print(f"# Keys on one host: what {int(count):,} keys cost, one run\n")
print(f"benches/keys.sh: the same build with keys off (the operator's token, nothing metered) and "
      f"on ({int(count):,} keys, each with an rpm and a token budget; each request sends the next "
      f"key in turn, so all of them are used; every request is admitted, settled and written to "
      f"the ledger), in front of the nginx fixed-answer upstream; wrk, {conns} connections, "
      f"{secs} s per run, {rounds} rounds alternating off and on, medians.\n")
print(f"- build: `{binary}`")
print(f"- {arrangement}")
print(f"- load average: {load_start} at the start, {load_end} after the wrk rounds "
      f"(2 cores, shared with other work)\n")
hz = os.sysconf("SC_CLK_TCK")
cpu = {k: sum(r[5] for r in v) / hz * 1e6 / max(sum(r[4] for r in v), 1) for k, v in cells.items()}
print("| keys | req/s | vs off | p50 µs | p99 µs | errors | requests | proxy CPU µs / request | vs off |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for k in ("off", "on"):
    rps, p50, p99 = med[k]
    errors = sum(r[3] for r in cells[k])
    requests = sum(r[4] for r in cells[k])
    print(f"| {k} | {rps:.0f} | {rps / med['off'][0] * 100:.1f}% | {p50:.0f} | {p99:.0f} | "
          f"{errors} | {requests} | {cpu[k]:.1f} | {cpu[k] / cpu['off'] * 100:.1f}% |")
print(f"\nThroughput with keys on: **{ratio:.2f}×** keys off (goal ≥ 0.9×). Each round's req/s, "
      f"off / on: " + ", ".join(f"{a[0]:.0f} / {b[0]:.0f}" for a, b in zip(cells["off"], cells["on"])) + ".")
on_requests = sum(r[4] for r in cells["on"])
print(f"\nLedger rows written by the keys-on proxy: {rows} for {on_requests} requests wrk counted "
      f"as answered (a row also for each request cut off when a run ended).\n")
print("Under callgrind, user-space instructions and allocator calls per request (steady state: "
      f"the difference between {int(count) + int(n)} and {count} sequential requests, over {n}):\n")
print("| keys | instructions / request | vs off | allocations / request |")
print("| --- | ---: | ---: | ---: |")
for k, ir, allocs in (("off", off_ir, off_allocs), ("on", on_ir, on_allocs)):
    print(f"| {k} | {int(ir):,} | {int(ir) / int(off_ir) * 100:.1f}% | {allocs} |")
print(f"\nCommand: `KEYS_PIN={pin} KEYS_COUNT={count} KEYS_CONNS={conns} KEYS_SECS={secs} KEYS_ROUNDS={rounds} "
      f"KEYS_N={n} benches/keys.sh {binary}`.")
PY
cat "$OUT"
