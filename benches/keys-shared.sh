#!/usr/bin/env bash
# benches/keys-shared.sh PROXY — what one limit across hosts costs, in one run: the same
# build of `proxy` in front of the nginx fixed-answer upstream, every request sent with a
# client key that has an rpm and a budget (both far from reached, so every request is
# admitted and settled), with the key's counters
#   local      in the proxy's memory (keys.shared = false, the default),
#   shared     in NATS JetStream KV (keys.shared = true; a nats-server -js on loopback).
# Two figures per configuration, the configurations loaded in alternation
# (KEYS_ROUNDS rounds of KEYS_SECS s each), medians, so machine drift lands on both:
#   - c=1: latency of one request at a time (p50, p99): the admission's KV round trip
#     shows here;
#   - c=64: throughput and latency with 64 connections on the one key.

#
#   cargo build --release --locked --bin proxy && benches/keys-shared.sh target/release/proxy
#
# Env: KEYS_SECS=5, KEYS_ROUNDS=3, KEYS_OUT=benches/results/keys-shared.md.
# Needs nginx, wrk, nats-server (Debian). Loopback only; stops what it started.
set -euo pipefail
BIN=$(realpath "${1:?usage: benches/keys-shared.sh PROXY}")
cd "$(dirname "$0")/.."
SECS=${KEYS_SECS:-5}
ROUNDS=${KEYS_ROUNDS:-3}
OUT=${KEYS_OUT:-benches/results/keys-shared.md}
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

. benches/lib.sh
need_apt nginx:nginx-light wrk:wrk nats-server:nats-server
start_nginx

nats_port=$(free_port)
mkdir -p "$work/js"
monitor_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" -m "$monitor_port" -js -sd "$work/js" >"$work/nats.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.05; done

# start NAME SHARED: a proxy with a key `bench`; records its URL and the key's secret.
start() {
  local home=$work/$1 port
  mkdir -p "$home"
  cat >"$home/warden.toml" <<TOML
[upstream]
url = "http://127.0.0.1:$nginx_port/json/v1"

[nats]
url = "nats://127.0.0.1:$nats_port"

[keys]
shared = $2
TOML
  create_keys "$BIN" "$home" 1 "bench-$1" --rpm 1000000000 --budget-tokens 1000000000000 \
    --period total >"$work/$1.key"
  port=$(free_port)
  "$BIN" --home "$home" --port "$port" >"$home.out" 2>&1 &
  pids+=($!)
  echo "http://127.0.0.1:$port" >"$work/$1.url"
  wait_http "http://127.0.0.1:$port/health/ready" || { cat "$home.out" >&2; exit 1; }
}
start local false
start shared true
# The shared proxy's counters are reachable before measuring.
for _ in $(seq 1 200); do
  curl -s "$(cat "$work/shared.url")/health" | grep -q '"shared":"ok"' && break
  sleep 0.05
done

run() { # NAME CONNECTIONS -> "rps p50_us p99_us errors requests"
  BENCH_BEARER=$(cat "$work/$1.key") wrk_chat "$(cat "$work/$1.url")" "$2" "$SECS"
}
for r in $(seq "$ROUNDS"); do
  for c in local shared; do
    for conns in 1 64; do
      echo "$c $conns $(run "$c" "$conns")" >>"$work/results"
    done
  done
done

# KV writes: the WARDEN_LIMITS stream's last sequence (one per write).
sleep 0.5 # the last settlements' flush
curl -s "http://127.0.0.1:$monitor_port/jsz?streams=true" >"$work/jsz.json"

python3 - "$work" "$SECS" "$ROUNDS" "$BIN" "$load_start" >"$OUT" <<'PY'
import json, statistics, sys
work, secs, rounds, binary, load_start = sys.argv[1:6]
cells = {}
shared_requests = 0
for line in open(f"{work}/results"):
    c, conns, rps, p50, p99, errors, requests = line.split()
    cells.setdefault((c, int(conns)), []).append((float(rps), float(p50), float(p99), int(errors)))
    if c == "shared":
        shared_requests += int(requests)
writes = 0
for account in json.load(open(f"{work}/jsz.json")).get("account_details", []):
    for stream in account.get("stream_detail", []):
        if stream["name"] == "KV_WARDEN_LIMITS":
            writes = stream["state"]["last_seq"]
print("# One limit across hosts: what shared key counters cost, one run\n")
print(f"benches/keys-shared.sh: wrk, {secs} s per run, {rounds} alternating rounds, medians; "
      f"a client key with an rpm and a budget on every request; nats-server -js on loopback; "
      f"load average {load_start} at the start, "
      f"{' '.join(open('/proc/loadavg').read().split()[:3])} at the end (2 cores, shared with other work).\n")
print(f"- build: `{binary}`\n")
print("| counters | connections | req/s | vs local | p50 µs | vs local | p99 µs | errors |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for conns in (1, 64):
    base = cells[("local", conns)]
    base_r = statistics.median(r[0] for r in base)
    base_p = statistics.median(r[1] for r in base)
    for c in ("local", "shared"):
        runs = cells[(c, conns)]
        rps = statistics.median(r[0] for r in runs)
        p50 = statistics.median(r[1] for r in runs)
        p99 = statistics.median(r[2] for r in runs)
        errors = sum(r[3] for r in runs)
        print(f"| {c} | {conns} | {rps:.0f} | {rps / base_r * 100:.1f}% | {p50:.0f} | "
              f"{p50 - base_p:+.0f} | {p99:.0f} | {errors} |")
print(f"\nKV writes to `WARDEN_LIMITS` (its stream's last sequence): {writes} for "
      f"{shared_requests} requests through the shared proxy, "
      f"{writes / max(shared_requests, 1):.3f} a request (admissions, settlements, renewals).")
print(f"\nCommand: `KEYS_SECS={secs} KEYS_ROUNDS={rounds} benches/keys-shared.sh {binary}`.")
PY
cat "$OUT"
