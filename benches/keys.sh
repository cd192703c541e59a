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
#   - throughput and latency at KEYS_CONNS connections: KEYS_ROUNDS pairs of wrk runs of
#     KEYS_SECS s, one off and one on, in ABBA order (off-on, on-off, off-on, ...) so that
#     neither always goes first; each pair's on/off ratio compares two runs a few seconds
#     apart, so a machine that drifts (a VM's steal time, other work) moves both alike; the
#     figure is the median of the pairs' ratios, with its spread; each run records the
#     machine's steal time (/proc/stat) and load average, and each proxy's CPU time (user +
#     system, /proc) per request, which other work on the machine blurs less than req/s;
#   - instructions and allocator calls per request under valgrind's callgrind (the method
#     of benches/instructions.sh, deterministic, unlike req/s on a shared machine), off and
#     on: (total(W + N) - total(W)) / N with W = KEYS_COUNT requests first, so every key has
#     served once in both runs and the figure is the steady state.
#
#   cargo build --release --locked --bin proxy && cp target/release/proxy /tmp/proxy-keys
#   benches/keys.sh /tmp/proxy-keys
#
# Env: KEYS_COUNT=1000, KEYS_CONNS=64, KEYS_SECS=5, KEYS_ROUNDS=10 (pairs), KEYS_N=2000,
#      KEYS_PIN=split (wrk on CPU 0, nginx and the proxies on CPU 1; none: unpinned),
#      KEYS_CALLGRIND=1 (0: skip the callgrind figures),
#      KEYS_TIMELINE=0 (S > 0: then a fresh keys-on proxy serves wrk runs of 10 s back to back
#      for S s, and the report gives, per 10 s, req/s, its CPU µs per request and its resident
#      memory: whether what keys cost grows as a key's windows fill over the first minute),
#      KEYS_OUT=benches/results/keys.md (written between its markers `<!-- keys.sh begin -->`
#      and `<!-- keys.sh end -->`: what the file holds outside them is kept);
#      CALLGRIND_KEEP=DIR keeps the callgrind files
#      (benches/callgrind_per_request.py DIR/on.callgrind.W DIR/on.callgrind.W+N N: by function).
# Needs nginx, wrk, valgrind, sqlite3 (Debian). Loopback only; stops what it started.
set -euo pipefail
BIN=$(realpath "${1:?usage: benches/keys.sh PROXY}")
cd "$(dirname "$0")/.."
COUNT=${KEYS_COUNT:-1000}
CONNS=${KEYS_CONNS:-64}
SECS=${KEYS_SECS:-5}
ROUNDS=${KEYS_ROUNDS:-10}
CALLGRIND=${KEYS_CALLGRIND:-1}
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

# stat_ticks: "steal total" of all CPUs so far, in clock ticks (/proc/stat's cpu line).
stat_ticks() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t; exit }' /proc/stat; }
# round PAIR NAME: one wrk run against that proxy; appends "PAIR NAME rps p50 p99 errors
# requests cpu_ticks steal_ticks total_ticks load1" to the results: the proxy's CPU time,
# the machine's steal time and all its CPU time during the run, the load average after.
round() {
  local before line steal0 total0 steal1 total1
  before=$(cpu_ticks "$(cat "$work/$2.pid")")
  read -r steal0 total0 < <(stat_ticks)
  if [ "$2" = on ]; then
    line=$(BENCH_KEYS=$work/keys.txt wrk_chat "$(cat "$work/$2.url")" "$CONNS" "$SECS")
  else
    line=$(BENCH_BEARER=$TOKEN wrk_chat "$(cat "$work/$2.url")" "$CONNS" "$SECS")
  fi
  read -r steal1 total1 < <(stat_ticks)
  echo "$1 $2 $line $(($(cpu_ticks "$(cat "$work/$2.pid")") - before)) $((steal1 - steal0))" \
    "$((total1 - total0)) $(cut -d' ' -f1 /proc/loadavg)" >>"$work/results"
}
# ABBA: odd pairs off first, even pairs on first.
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then round "$r" off; round "$r" on; else round "$r" on; round "$r" off; fi
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
# The timeline: a fresh keys-on proxy (home "tl", the same keys.toml), wrk runs of 10 s.
TIMELINE=${KEYS_TIMELINE:-0}
: >"$work/timeline"
if [ "$TIMELINE" -gt 0 ]; then
  mkdir -p "$work/tl"
  cp -p "$work/keys.toml" "$work/tl/keys.toml"
  start tl
  tl_pid=$(cat "$work/tl.pid")
  for t in $(seq 10 10 "$TIMELINE"); do
    before=$(cpu_ticks "$tl_pid")
    line=$(BENCH_KEYS=$work/keys.txt wrk_chat "$(cat "$work/tl.url")" "$CONNS" 10)
    echo "$t $line $(($(cpu_ticks "$tl_pid") - before)) $(awk '/^VmRSS/ {print $2}' "/proc/$tl_pid/status")" >>"$work/timeline"
  done
  kill -TERM "$tl_pid"
fi

off_ir=- off_allocs=- on_ir=- on_allocs=-
if [ "$CALLGRIND" != 0 ]; then
  read -r off_ir off_allocs < <(BENCH_BEARER=$TOKEN counts off "")
  read -r on_ir on_allocs < <(counts on "$work/keys.txt")
fi

# The generated part goes between the markers; what the file holds outside them stays
# (a file without them keeps its old text after the new part).
python3 - "$work" "$BIN" "$COUNT" "$CONNS" "$SECS" "$ROUNDS" "$N" "$load_start" "$load_end" "$rows" \
  "$off_ir" "$off_allocs" "$on_ir" "$on_allocs" "$arrangement" "${KEYS_PIN:-split}" "$CALLGRIND" \
  "$TIMELINE" >"$work/report.md" <<'PY'
import os, statistics, sys
(work, binary, count, conns, secs, rounds, n, load_start, load_end, rows,
 off_ir, off_allocs, on_ir, on_allocs, arrangement, pin, callgrind, timeline) = sys.argv[1:19]
hz = os.sysconf("SC_CLK_TCK")
runs = []  # (pair, keys, rps, p50, p99, errors, requests, cpu_ticks, steal, total, load1)
for line in open(f"{work}/results"):
    f = line.split()
    runs.append((int(f[0]), f[1], float(f[2]), float(f[3]), float(f[4]), int(f[5]), int(f[6]),
                 int(f[7]), int(f[8]), int(f[9]), float(f[10])))
cells = {k: [r for r in runs if r[1] == k] for k in ("off", "on")}
pairs = {}
for r in runs:
    pairs.setdefault(r[0], {})[r[1]] = r
pairs = [pairs[p] for p in sorted(pairs)]


def cpu_us(r):  # the proxy's CPU µs per request in one run
    return r[7] / hz * 1e6 / max(r[6], 1)


def spread(values):
    if len(values) < 2:
        return f"{values[0]:.2f}"
    q = statistics.quantiles(values, n=4, method="inclusive")
    return f"{min(values):.2f}–{max(values):.2f} (interquartile {q[0]:.2f}–{q[2]:.2f})"


ratios = [p["on"][2] / p["off"][2] for p in pairs]
cpu_ratios = [cpu_us(p["on"]) / cpu_us(p["off"]) for p in pairs]
ratio = statistics.median(ratios)
med = {k: [statistics.median(r[i] for r in v) for i in (2, 3, 4)] for k, v in cells.items()}
cpu = {k: sum(r[7] for r in v) / hz * 1e6 / max(sum(r[6] for r in v), 1) for k, v in cells.items()}
steal = [r[8] / max(r[9], 1) * 100 for r in runs]
print("<!-- keys.sh begin: written by benches/keys.sh; edit outside the markers -->")
print(f"# Keys on one host: what {int(count):,} keys cost, one run\n")
print(f"benches/keys.sh: the same build with keys off (the operator's token, nothing metered) and "
      f"on ({int(count):,} keys, each with an rpm and a token budget; each request sends the next "
      f"key in turn, so all of them are used; every request is admitted, settled and written to "
      f"the ledger), in front of the nginx fixed-answer upstream; wrk, {conns} connections, "
      f"{rounds} pairs of {secs} s runs, one off and one on, in ABBA order (off first in odd "
      f"pairs, on first in even ones); the ratio is the median of the pairs' on/off ratios.\n")
print(f"- build: `{binary}`")
print(f"- {arrangement}")
print(f"- load average: {load_start} at the start, {load_end} after the wrk runs "
      f"({os.cpu_count()} CPUs)")
print(f"- steal time (the hypervisor's, all CPUs, /proc/stat): median {statistics.median(steal):.1f}%, "
      f"at most {max(steal):.1f}% of a run's CPU time\n")
print(f"Throughput with keys on: **{ratio:.2f}×** keys off (goal ≥ 0.9×), the median of "
      f"{len(ratios)} pairs; spread {spread(ratios)}. The proxy's CPU time per request, on/off: "
      f"median of the pairs {statistics.median(cpu_ratios):.2f}×, spread {spread(cpu_ratios)}.\n")
print("| keys | req/s (median) | vs off | p50 µs | p99 µs | errors | requests | proxy CPU µs / request | vs off |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for k in ("off", "on"):
    rps, p50, p99 = med[k]
    errors = sum(r[5] for r in cells[k])
    requests = sum(r[6] for r in cells[k])
    print(f"| {k} | {rps:.0f} | {rps / med['off'][0] * 100:.1f}% | {p50:.0f} | {p99:.0f} | "
          f"{errors} | {requests} | {cpu[k]:.1f} | {cpu[k] / cpu['off'] * 100:.1f}% |")
print("\nEach pair (steal: the machine's steal time during the pair's two runs, as a share of "
      "its CPU time; load: the 1-minute load average after each run):\n")
print("| pair | order | off req/s | on req/s | on / off | CPU µs / request off / on | CPU on / off | steal % | load |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for i, p in enumerate(pairs, 1):
    off, on = p["off"], p["on"]
    order = "off, on" if i % 2 else "on, off"
    st = (off[8] + on[8]) / max(off[9] + on[9], 1) * 100
    print(f"| {i} | {order} | {off[2]:.0f} | {on[2]:.0f} | {on[2] / off[2]:.2f} | "
          f"{cpu_us(off):.1f} / {cpu_us(on):.1f} | {cpu_us(on) / cpu_us(off):.2f} | {st:.1f} | "
          f"{off[10]:.2f}, {on[10]:.2f} |")
on_requests = sum(r[6] for r in cells["on"])
print(f"\nLedger rows written by the keys-on proxy: {rows} for {on_requests} requests wrk counted "
      f"as answered (a row also for each request cut off when a run ended).\n")
if callgrind != "0":
    print("Under callgrind, user-space instructions and allocator calls per request (steady state: "
          f"the difference between {int(count) + int(n)} and {count} sequential requests, over {n}):\n")
    print("| keys | instructions / request | vs off | allocations / request |")
    print("| --- | ---: | ---: | ---: |")
    for k, ir, allocs in (("off", off_ir, off_allocs), ("on", on_ir, on_allocs)):
        print(f"| {k} | {int(ir):,} | {int(ir) / int(off_ir) * 100:.1f}% | {allocs} |")
    print()
steps = [line.split() for line in open(f"{work}/timeline") if line.strip()]
if steps:
    print(f"Over time: a fresh keys-on proxy serving wrk runs of 10 s back to back (the same keys and "
          f"connections), per run its req/s, its CPU time per request and its resident memory:\n")
    print("| seconds | req/s | proxy CPU µs / request | RSS MiB |")
    print("| ---: | ---: | ---: | ---: |")
    for f in steps:  # t rps p50 p99 errors requests cpu_ticks rss_kib
        print(f"| {f[0]} | {float(f[1]):.0f} | {int(f[6]) / hz * 1e6 / max(int(f[5]), 1):.1f} | "
              f"{int(f[7]) / 1024:.0f} |")
    print()
print(f"Command: `KEYS_PIN={pin} KEYS_COUNT={count} KEYS_CONNS={conns} KEYS_SECS={secs} KEYS_ROUNDS={rounds} "
      f"KEYS_N={n} KEYS_CALLGRIND={callgrind} KEYS_TIMELINE={timeline} benches/keys.sh {binary}`.")
print("<!-- keys.sh end -->")
PY
python3 - "$OUT" "$work/report.md" <<'PY'
import os, sys
out, report = sys.argv[1], open(sys.argv[2]).read()
begin, end = "<!-- keys.sh begin", "<!-- keys.sh end -->"
old = open(out).read() if os.path.exists(out) else ""
if begin in old and end in old:
    new = old[:old.index(begin)] + report + old[old.index(end) + len(end) + 1:]
else:
    new = report + ("\n" + old if old else "")
open(out, "w").write(new)
PY
cat "$work/report.md"
