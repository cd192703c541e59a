#!/usr/bin/env bash
# benches/traces.sh PROXY [BEFORE_PROXY] — what traces cost, in one run: the same release
# build of `proxy` in front of the nginx fixed-answer upstream with telemetry
#   off        no [telemetry] (the default),
#   live       exporting to a live OTLP/HTTP receiver on loopback (a small Python server
#              that accepts every POST /v1/traces),
#   down       exporting to a closed loopback port (every batch fails and is dropped),
# and, when BEFORE_PROXY is given, that build too (e.g. main before traces existed), so
# "off" can be compared with it. Two figures per configuration:
#   - instructions per request (benches/instructions.sh: callgrind, deterministic);
#   - c=64 throughput with wrk, the configurations loaded in alternation
#     (TRACES_ROUNDS rounds of TRACES_SECS s each), medians, so machine drift lands on all.
# Also prints the spans exported and dropped, read from each proxy's /metrics.
#
#   cargo build --release --locked --bin proxy && benches/traces.sh target/release/proxy
#
# Env: TRACES_SECS=5, TRACES_ROUNDS=3, TRACES_N=2000 (requests under callgrind),
#      TRACES_OUT=benches/results/traces.md. Needs nginx, wrk, valgrind (Debian).
# Loopback only; stops what it started.
set -euo pipefail
BIN=$(realpath "${1:?usage: benches/traces.sh PROXY [BEFORE_PROXY]}")
BEFORE=${2:+$(realpath "$2")}
cd "$(dirname "$0")/.."
SECS=${TRACES_SECS:-5}
ROUNDS=${TRACES_ROUNDS:-3}
N=${TRACES_N:-2000}
OUT=${TRACES_OUT:-benches/results/traces.md}

. benches/lib.sh
need_apt nginx:nginx-light wrk:wrk valgrind:valgrind
start_nginx

# The live receiver: answers 200 to every POST (an empty ExportTraceServiceResponse).
receiver_port=$(free_port)
python3 - "$receiver_port" >"$work/receiver.out" 2>&1 <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
pids+=($!)
for _ in $(seq 1 100); do
  curl -s -o /dev/null -X POST "http://127.0.0.1:$receiver_port/v1/traces" && break
  sleep 0.05
done
live="http://127.0.0.1:$receiver_port"
down="http://127.0.0.1:$(free_port)"

configs=(off live down)
[ -n "$BEFORE" ] && configs+=(before)
binary() { if [ "$1" = before ]; then echo "$BEFORE"; else echo "$BIN"; fi; }
endpoint() { case $1 in live) echo "$live" ;; down) echo "$down" ;; *) echo "" ;; esac; }

# Instructions per request, one configuration after the other (callgrind is deterministic).
for c in "${configs[@]}"; do
  line=$(OTEL_EXPORTER_OTLP_ENDPOINT=$(endpoint "$c") benches/instructions.sh "$(binary "$c")" "$N")
  echo "$c ${line##*: }" | awk '{print $1, $2}' >>"$work/instructions"
done

# start NAME: a proxy for configuration NAME; records its URL in $work/NAME.url.
start() {
  local home=$work/$1 port
  mkdir -p "$home"
  port=$(free_port)
  OTEL_EXPORTER_OTLP_ENDPOINT=$(endpoint "$1") "$(binary "$1")" --home "$home" --port "$port" \
    --upstream "http://127.0.0.1:$nginx_port/json/v1" >"$home.out" 2>&1 &
  pids+=($!)
  echo "http://127.0.0.1:$port" >"$work/$1.url"
  wait_http "http://127.0.0.1:$port/health/ready" || { cat "$home.out" >&2; exit 1; }
}
for c in "${configs[@]}"; do start "$c"; done

run() { # URL -> "rps p50_us p99_us errors"
  wrk -t1 -c64 -d"${SECS}"s --timeout 10s -s benches/wrk/chat.lua "$1/v1/chat/completions" -- json \
    | awk '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                       print v["rps"], v["p50_us"], v["p99_us"], v["errors"] + v["non2xx"] }'
}
for r in $(seq "$ROUNDS"); do
  for c in "${configs[@]}"; do
    echo "$c $(run "$(cat "$work/$c.url")")" >>"$work/results"
  done
done
sleep 1 # the last batch of the live proxy reaches the receiver
for c in "${configs[@]}"; do
  m=$(curl -s "$(cat "$work/$c.url")/metrics")
  exported=$(awk '/^warden_telemetry_spans_exported_total /{print $2}' <<<"$m")
  dropped=$(awk '/^warden_telemetry_spans_dropped_total /{print $2}' <<<"$m")
  echo "$c ${exported:--} ${dropped:--}" >>"$work/spans"
done

python3 - "$work" "$SECS" "$ROUNDS" "$N" "$BIN" "${BEFORE:-}" >"$OUT" <<'EOF'
import statistics, sys
work, secs, rounds, n, binary, before = sys.argv[1:7]
instr = dict(line.split() for line in open(f"{work}/instructions"))
spans = {l.split()[0]: l.split()[1:] for l in open(f"{work}/spans")}
cells = {}
for line in open(f"{work}/results"):
    c, rps, p50, p99, errors = line.split()
    cells.setdefault(c, []).append((float(rps), float(p50), float(p99), int(errors)))
print("# What traces cost, one run\n")
print(f"benches/traces.sh: callgrind over {n} sequential requests; wrk c=64, {secs} s per run, "
      f"{rounds} alternating rounds, medians; load average at the end: "
      f"{' '.join(open('/proc/loadavg').read().split()[:3])}.\n")
print(f"- build: `{binary}`" + (f"\n- before: `{before}`" if before else "") + "\n")
print("| telemetry | instructions/request | vs off | req/s (c=64) | vs off | p50 µs | p99 µs | errors | spans exported | spans dropped |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
base_i = float(instr["off"])
base_r = statistics.median(r[0] for r in cells["off"])
for c in cells:
    runs = cells[c]
    rps = statistics.median(r[0] for r in runs)
    p50 = statistics.median(r[1] for r in runs)
    p99 = statistics.median(r[2] for r in runs)
    errors = sum(r[3] for r in runs)
    i = float(instr[c])
    exported, dropped = spans.get(c, ["-", "-"])
    print(f"| {c} | {i:.0f} | {i / base_i:.3f} | {rps:.0f} | {rps / base_r:.3f} | {p50:.0f} | {p99:.0f} | {errors} | {exported} | {dropped} |")
EOF
cat "$OUT"
