#!/usr/bin/env bash
# benches/run.sh — warden's performance, measured side by side in one run.
#
#   benches/run.sh           the full run: writes benches/results/latest.md and prints it
#   benches/run.sh --soak    a soak at moderate load: proxy RSS sampled every 10 s,
#                            first/last/max written to benches/results/soak.md
#
# What the full run does, all on 127.0.0.1 and all bounded in time:
#   1. installs what is missing: Debian's nginx-light, wrk, hyperfine; LiteLLM
#      (`litellm[proxy]` from PyPI) into a venv under target/bench-venv, so the system
#      Python is untouched. If LiteLLM cannot be installed or started, it says so and
#      goes on without it.
#   2. builds `cargo build --release --locked --bins`.
#   3. starts nginx with benches/nginx/fixed-upstream.conf (a fixed chat.completion at
#      /json/v1, a fixed SSE stream at /sse/v1), two warden proxies (`--home` a temp
#      dir, upstream = nginx's /json/v1 and /sse/v1) and LiteLLM's proxy pointed at the
#      same nginx locations (models `nginx-json` and `nginx-sse`).
#   4. runs wrk (benches/wrk/chat.lua POSTs the request) at 1, 16 and 64 connections for
#      BENCH_DURATION seconds each against: nginx directly, warden, LiteLLM; non-streaming
#      and streaming. Reports requests/s, p50 and p99 latency, the ratio to direct and the
#      latency the gateway adds (gateway − direct).
#      Also the gateway's CPU time per request (utime + stime over the run, /proc).
#   5. measures warden's RSS idle and after load (VmRSS), cold start to ready (median of
#      BENCH_STARTS runs), and — only when those binaries exist in the build — `daemon
#      start` to ready, `preflight --json` wall time (hyperfine) and the watchdog's RSS.
#
# Environment:
#   BENCH_DURATION=10      seconds per wrk run (3 is enough while developing)
#   BENCH_CONNS="1 16 64"  connection counts
#   BENCH_PIN=split        split: wrk on CPU 0, nginx + gateways on CPU 1 (taskset): less
#                          noise, but the gateway shares one core with nginx. The run then
#                          also measures nginx and warden unpinned at the highest connection
#                          count, where the gateway can use every core.
#                          none: no pinning for any run
#   BENCH_LITELLM=1        0 skips LiteLLM
#   BENCH_STARTS=20        runs for the start-up medians
#   BENCH_SOAK_SECS=600    soak length; BENCH_SOAK_CONNS=8 and BENCH_SOAK_DELAY_MS=2
#                          (each connection waits that long between requests)
#   BENCH_OUT              output file (default benches/results/latest.md or soak.md)
#   BENCH_BIN_DIR          use the binaries in this folder instead of building (say, a
#                          copy of target/release/proxy from before a change, to compare)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

mode=full
case "${1:-}" in
  --soak) mode=soak ;;
  "") ;;
  -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: benches/run.sh [--soak]" >&2; exit 2 ;;
esac

DURATION=${BENCH_DURATION:-10}
CONNS=${BENCH_CONNS:-"1 16 64"}
PIN=${BENCH_PIN:-split}
WITH_LITELLM=${BENCH_LITELLM:-1}
STARTS=${BENCH_STARTS:-20}
SOAK_SECS=${BENCH_SOAK_SECS:-600}
SOAK_CONNS=${BENCH_SOAK_CONNS:-8}
SOAK_DELAY_MS=${BENCH_SOAK_DELAY_MS:-2}
if [ "$mode" = soak ]; then OUT=${BENCH_OUT:-benches/results/soak.md}; else OUT=${BENCH_OUT:-benches/results/latest.md}; fi

say() { echo "bench: $*" >&2; }

# --- 1. tools --------------------------------------------------------------------------
need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v hyperfine >/dev/null || need_apt+=(hyperfine)
command -v taskset >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing ${need_apt[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

venv=$root/target/bench-venv
litellm_note=""
if [ "$mode" = full ] && [ "$WITH_LITELLM" = 1 ] && [ ! -x "$venv/bin/litellm" ]; then
  say "installing litellm[proxy] into $venv (once)"
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q 'litellm[proxy]'; } >"$root/target/bench-litellm-install.log" 2>&1; then
    litellm_note="LiteLLM could not be installed (see target/bench-litellm-install.log); its columns are empty."
    say "$litellm_note"
  fi
fi

# --- 2. build --------------------------------------------------------------------------
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  bin=$(cd "$BENCH_BIN_DIR" && pwd)
  say "using the binaries in $bin (no build)"
else
  say "building (release, locked)"
  cargo build --release --locked --bins >&2
  bin=$root/target/release
fi

# --- processes, ports, pinning -----------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/warden-bench.XXXXXX")
pids=()
# Stops what this script started: each PID it recorded, and that process's own children.
kill_tree() {
  local pid=$1 child
  for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do kill_tree "$child"; done
  kill "$pid" 2>/dev/null || true
}
cleanup() {
  local p
  for p in "${pids[@]}"; do kill_tree "$p"; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The bearer benches/wrk/chat.lua sends: LiteLLM's master key and warden's auth token,
# so both gateways authenticate every request (nginx ignores it).
TOKEN=sk-bench-0123456789

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cpus=$(nproc)
if [ "$PIN" = split ] && [ "$cpus" -ge 2 ]; then
  LOAD=(taskset -c 0)
  SERVE=(taskset -c 1)
  wrk_threads=1
  arrangement="wrk pinned to CPU 0; nginx and the gateways pinned to CPU 1 (\`taskset\`)"
else
  LOAD=()
  SERVE=()
  wrk_threads=2
  arrangement="no pinning: the scheduler places wrk, nginx and the gateways on $cpus CPUs"
fi

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# RSS of a process and all its descendants (LiteLLM may fork workers).
rss_tree_kib() {
  local pid=$1 total child
  total=$(rss_kib "$pid")
  for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
    total=$((total + $(rss_tree_kib "$child")))
  done
  echo "$total"
}
jq_field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
# CPU ticks (utime + stime) of a process and its descendants.
cpu_ticks() {
  local pid=$1 total child
  total=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
  for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
    total=$((total + $(cpu_ticks "$child")))
  done
  echo "$total"
}
clk_tck=$(getconf CLK_TCK)
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

wait_http() { # URL [tries of 0.1 s]
  local i
  for i in $(seq "${2:-100}"); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  return 1
}

start_nginx() {
  nginx_port=$(free_port)
  mkdir -p "$work/nginx"
  sed "s/@PORT@/$nginx_port/g; s#@WORK@#$work/nginx#g" benches/nginx/fixed-upstream.conf >"$work/nginx/nginx.conf"
  "${SERVE[@]}" nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -e "$work/nginx/error.log" &
  nginx_pid=$!
  pids+=($nginx_pid)
  wait_http "http://127.0.0.1:$nginx_port/json/v1/models" || { say "nginx did not start"; cat "$work/nginx/error.log" >&2; exit 1; }
}

# start_proxy NAME UPSTREAM_PATH -> sets proxy_pid, proxy_url
start_proxy() {
  local home=$work/home-$1 port
  mkdir -p "$home"
  port=$(free_port)
  WARDEN_AUTH_TOKEN=$TOKEN "${SERVE[@]}" "$bin/proxy" --home "$home" --port "$port" \
    --upstream "http://127.0.0.1:$nginx_port/$2/v1" >"$work/$1.out" 2>&1 &
  proxy_pid=$!
  pids+=($proxy_pid)
  proxy_url=http://127.0.0.1:$port
  wait_http "$proxy_url/health/ready" || { say "proxy did not start"; cat "$work/$1.out" >&2; exit 1; }
}

# wrk_run URL json|stream CONNS SECS [MODEL] [DELAY_MS] -> the RESULT line
wrk_run() {
  local threads=$wrk_threads
  [ "$3" -lt "$threads" ] && threads=$3
  "${LOAD[@]}" wrk -t"$threads" -c"$3" -d"$4"s --timeout 10s -s benches/wrk/chat.lua "$1" -- "$2" "${5:-}" "${6:-0}" \
    | grep '^RESULT' || echo "RESULT rps=0 p50_us=0 p99_us=0 requests=0 errors=1 non2xx=0"
}
field() { sed -n "s/.* $2=\([0-9.]*\).*/\1/p; s/^RESULT $2=\([0-9.]*\).*/\1/p" <<<"$1" | head -1; }

machine() {
  local model mem
  model=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
  mem=$(free -g | awk '/^Mem:/ {print $2}')
  echo "$cpus × ${model:-unknown CPU}, ${mem} GiB RAM, $(uname -sr)"
}
revision() {
  local rev
  rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || rev="$rev (+ uncommitted changes)"
  echo "$rev"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start_nginx

# --- soak ------------------------------------------------------------------------------
if [ "$mode" = soak ]; then
  start_proxy soak json
  sleep 1
  idle=$(rss_kib "$proxy_pid")
  say "soak: ${SOAK_SECS}s, $SOAK_CONNS connections, ${SOAK_DELAY_MS} ms between requests per connection"
  wrk_run "$proxy_url/v1/chat/completions" json "$SOAK_CONNS" "$SOAK_SECS" nginx-json "$SOAK_DELAY_MS" >"$work/soak.result" &
  wrk_pid=$!
  pids+=($wrk_pid)
  samples=()
  t=0
  while kill -0 "$wrk_pid" 2>/dev/null; do
    sleep 10
    t=$((t + 10))
    kill -0 "$wrk_pid" 2>/dev/null || break
    samples+=("$(rss_kib "$proxy_pid")")
    say "soak: ${t}s RSS $(mib "${samples[-1]}")"
  done
  wait "$wrk_pid" || true
  after=$(rss_kib "$proxy_pid")
  result=$(cat "$work/soak.result")
  first=${samples[0]:-0}; last=${samples[-1]:-0}; max=0
  for s in "${samples[@]}"; do [ "$s" -gt "$max" ] && max=$s; done
  mkdir -p "$(dirname "$OUT")"
  {
    echo "## warden soak: ${SOAK_SECS} s at moderate load"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), commit $(revision); $(machine); load average before: $load_before."
    echo "$SOAK_CONNS connections, each waiting ${SOAK_DELAY_MS} ms between requests, non-streaming, through warden to nginx; $arrangement."
    echo
    echo "| measure | value |"
    echo "| --- | --- |"
    echo "| requests | $(field "$result" requests) ($(field "$result" rps) req/s; errors $(field "$result" errors), non-2xx $(field "$result" non2xx)) |"
    echo "| latency p50 / p99 | $(field "$result" p50_us) µs / $(field "$result" p99_us) µs |"
    echo "| RSS idle, before the soak | $(mib "$idle") |"
    echo "| RSS first sample (10 s) | $(mib "$first") |"
    echo "| RSS last sample | $(mib "$last") |"
    echo "| RSS max over ${#samples[@]} samples | $(mib "$max") |"
    echo "| RSS after the soak | $(mib "$after") |"
    echo
    echo "RSS samples (KiB, every 10 s): ${samples[*]}"
  } >"$OUT"
  cat "$OUT"
  exit 0
fi

# --- full run --------------------------------------------------------------------------
declare -A R
targets=(direct warden)

start_proxy json json
json_pid=$proxy_pid; json_url=$proxy_url
start_proxy sse sse
sse_pid=$proxy_pid; sse_url=$proxy_url
sleep 1
rss_idle=$(rss_kib "$json_pid")

litellm_pid=""
if [ "$WITH_LITELLM" = 1 ] && [ -x "$venv/bin/litellm" ]; then
  litellm_port=$(free_port)
  cat >"$work/litellm.yaml" <<EOF
model_list:
  - model_name: nginx-json
    litellm_params:
      model: openai/nginx-json
      api_base: http://127.0.0.1:$nginx_port/json/v1
      api_key: unused
  - model_name: nginx-sse
    litellm_params:
      model: openai/nginx-sse
      api_base: http://127.0.0.1:$nginx_port/sse/v1
      api_key: unused
general_settings:
  master_key: $TOKEN
EOF
  say "starting LiteLLM $("$venv/bin/pip" show litellm 2>/dev/null | sed -n 's/^Version: //p')"
  # Offline: use the model cost map that ships with the package.
  LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR \
    "${SERVE[@]}" "$venv/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 \
    --port "$litellm_port" --num_workers 1 >"$work/litellm.out" 2>&1 &
  litellm_pid=$!
  pids+=($litellm_pid)
  if wait_http "http://127.0.0.1:$litellm_port/health/liveliness" 1200; then
    targets+=(litellm)
    litellm_version=$("$venv/bin/pip" show litellm 2>/dev/null | sed -n 's/^Version: //p')
    sleep 2
    litellm_rss_idle=$(rss_tree_kib "$litellm_pid")
  else
    litellm_note="LiteLLM did not become ready within 120 s (last lines: $(tail -3 "$work/litellm.out" | tr '\n' ' ')); its columns are empty."
    say "$litellm_note"
    kill_tree "$litellm_pid"
  fi
elif [ "$WITH_LITELLM" != 1 ]; then
  litellm_note="LiteLLM skipped (BENCH_LITELLM=$WITH_LITELLM)."
fi

url_of() { # TARGET MODE
  case "$1/$2" in
    direct/json) echo "http://127.0.0.1:$nginx_port/json/v1/chat/completions" ;;
    direct/stream) echo "http://127.0.0.1:$nginx_port/sse/v1/chat/completions" ;;
    warden/json) echo "$json_url/v1/chat/completions" ;;
    warden/stream) echo "$sse_url/v1/chat/completions" ;;
    litellm/*) echo "http://127.0.0.1:$litellm_port/v1/chat/completions" ;;
  esac
}
pid_of() { # TARGET MODE -> the process whose CPU time is counted
  case "$1/$2" in
    direct/*) echo "$nginx_pid" ;;
    warden/json) echo "$json_pid" ;;
    warden/stream) echo "$sse_pid" ;;
    litellm/*) echo "$litellm_pid" ;;
  esac
}
model_of() { [ "$1" = stream ] && echo nginx-sse || echo nginx-json; }
# measure TARGET MODE CONNS -> the RESULT line plus cpu_us=<gateway CPU µs per request>
measure() {
  local gw before r ticks n
  gw=$(pid_of "$1" "$2")
  before=$(cpu_ticks "$gw")
  r=$(wrk_run "$(url_of "$1" "$2")" "$2" "$3" "$DURATION" "$(model_of "$2")")
  ticks=$(($(cpu_ticks "$gw") - before))
  n=$(field "$r" requests)
  echo "$r cpu_us=$(awk -v t="$ticks" -v hz="$clk_tck" -v n="$n" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print 0 }')"
}

for m in json stream; do
  for t in "${targets[@]}"; do
    wrk_run "$(url_of "$t" "$m")" "$m" 8 2 "$(model_of "$m")" >/dev/null # warm-up
  done
  for c in $CONNS; do
    for t in "${targets[@]}"; do
      say "$m, $c connections, $t (${DURATION}s)"
      R[$t/$m/$c]=$(measure "$t" "$m" "$c")
      say "  ${R[$t/$m/$c]}"
    done
  done
done
rss_after_json=$(rss_kib "$json_pid")
rss_after_sse=$(rss_kib "$sse_pid")
[ -n "$litellm_pid" ] && [[ " ${targets[*]} " == *" litellm "* ]] && litellm_rss_after=$(rss_tree_kib "$litellm_pid")

# Stop the gateways before the start-up measurements, so they have the CPU to themselves.
for p in $json_pid $sse_pid $litellm_pid; do kill_tree "$p"; done

# Split pinning gives warden one core, shared with nginx: also measure the top
# connection count unpinned, with fresh proxies (Tokio sizes its pool at start).
declare -A U
maxc=$(tr ' ' '\n' <<<"$CONNS" | sort -n | tail -1)
if [ ${#SERVE[@]} -gt 0 ]; then
  for p in $(ps -o pid= --ppid "$nginx_pid") "$nginx_pid"; do
    taskset -a -p -c "0-$((cpus - 1))" "$p" >/dev/null
  done
  LOAD=(); SERVE=(); wrk_threads=2
  start_proxy free-json json
  json_pid=$proxy_pid; json_url=$proxy_url
  start_proxy free-sse sse
  sse_pid=$proxy_pid; sse_url=$proxy_url
  for m in json stream; do
    for t in direct warden; do
      wrk_run "$(url_of "$t" "$m")" "$m" 8 2 "$(model_of "$m")" >/dev/null # warm-up
      say "unpinned: $m, $maxc connections, $t (${DURATION}s)"
      U[$t/$m]=$(measure "$t" "$m" "$maxc")
      say "  ${U[$t/$m]}"
    done
  done
  for p in $json_pid $sse_pid; do kill_tree "$p"; done
fi

say "cold start to ready ($STARTS runs)"
mkdir -p "$work/home-cold"
cold=$("${SERVE[@]}" python3 benches/startup.py proxy "$STARTS" "$bin/proxy" "$work/home-cold" "http://127.0.0.1:$nginx_port/json/v1")

extra_rows=()
have() { [ -x "$bin/$1" ]; }
prepare_home() { # DIR PORT
  mkdir -p "$1"
  printf '[server]\nport = %s\n[upstream]\nurl = "http://127.0.0.1:%s/json/v1"\n' "$2" "$nginx_port" >"$1/warden.toml"
}
if have daemon; then
  say "daemon start to ready"
  dport=$(free_port)
  prepare_home "$work/home-daemon" "$dport"
  if d=$(python3 benches/startup.py daemon "$((STARTS < 10 ? STARTS : 10))" "$bin/daemon" "$work/home-daemon" "$dport" 2>&1); then
    extra_rows+=("| \`daemon start\` to ready (median of $(jq_field "$d" runs) runs) | $(jq_field "$d" median_ms) ms (min $(jq_field "$d" min_ms), max $(jq_field "$d" max_ms)) |")
  else
    extra_rows+=("| \`daemon start\` to ready | failed: $(tail -1 <<<"$d") |")
  fi
else
  extra_rows+=("| \`daemon start\` to ready | not measured: no \`daemon\` binary in this build |")
fi
if have preflight; then
  say "preflight --json wall time"
  pport=$(free_port)
  prepare_home "$work/home-preflight" "$pport"
  hyperfine -N -i --warmup 2 --runs "$STARTS" --export-json "$work/preflight.json" \
    "$bin/preflight --home $work/home-preflight --json" >/dev/null 2>&1 || true
  if [ -s "$work/preflight.json" ]; then
    extra_rows+=("| \`preflight --json\` wall time (hyperfine, $STARTS runs) | $(python3 benches/startup.py hyperfine "$work/preflight.json") |")
  else
    extra_rows+=("| \`preflight --json\` wall time | failed to run |")
  fi
else
  extra_rows+=("| \`preflight --json\` wall time | not measured: no \`preflight\` binary in this build |")
fi
if have watchdog && have daemon; then
  say "watchdog RSS"
  wport=$(free_port)
  prepare_home "$work/home-watchdog" "$wport"
  if "$bin/daemon" --home "$work/home-watchdog" start --no-check >/dev/null 2>&1; then
    "$bin/watchdog" --home "$work/home-watchdog" --interval 1 >/dev/null 2>&1 &
    wd=$!
    pids+=($wd)
    sleep 5
    if kill -0 "$wd" 2>/dev/null; then
      extra_rows+=("| watchdog RSS (after 5 s of 1 s checks) | $(mib "$(rss_kib "$wd")") |")
    else
      extra_rows+=("| watchdog RSS | the watchdog exited early |")
    fi
    kill "$wd" 2>/dev/null || true
    "$bin/daemon" --home "$work/home-watchdog" stop >/dev/null 2>&1 || true
  else
    extra_rows+=("| watchdog RSS | not measured: \`daemon start\` failed |")
  fi
else
  extra_rows+=("| watchdog RSS | not measured: $(have watchdog && echo "no \`daemon\` binary (it starts the proxy the watchdog checks)" || echo "no \`watchdog\` binary") in this build |")
fi

# --- the report ------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "–" }'; }
k() { awk -v x="$1" 'BEGIN { if (x >= 10000) printf "%.1fk", x / 1000; else printf "%.0f", x }'; }
cell() { # TARGET MODE CONNS FIELD
  local r=${R[$1/$2/$3]:-}
  [ -z "$r" ] && { echo "–"; return; }
  field "$r" "$4"
}
flag() { # TARGET MODE CONNS -> " ⚠" when a run had errors or non-2xx answers
  local r=${R[$1/$2/$3]:-}
  [ -z "$r" ] && return
  [ "$(field "$r" errors)" != 0 ] || [ "$(field "$r" non2xx)" != 0 ] || [ "$(field "$r" requests)" = 0 ] && echo " ⚠"
  return 0
}
has_litellm() { [[ " ${targets[*]} " == *" litellm "* ]]; }

mkdir -p "$(dirname "$OUT")"
{
  echo "## warden performance: side by side"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), commit $(revision). Machine: $(machine)."
  echo "Load average before the run: $load_before. $arrangement. wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), ${DURATION} s per cell,"
  echo "upstream: nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') with fixed answers (benches/nginx/fixed-upstream.conf)${litellm_version:+; LiteLLM $litellm_version}."
  echo
  echo "### Requests per second"
  echo
  echo "| answer | conns | nginx direct | warden | warden / direct | LiteLLM | LiteLLM / direct | CPU µs per request: nginx / warden / LiteLLM |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for m in json stream; do
    label=$([ "$m" = json ] && echo "chat.completion" || echo "SSE stream")
    for c in $CONNS; do
      d=$(cell direct $m $c rps); w=$(cell warden $m $c rps); l=$(cell litellm $m $c rps)
      cpu="$(cell direct $m $c cpu_us) / $(cell warden $m $c cpu_us) / $(has_litellm && cell litellm $m $c cpu_us || echo –)"
      echo "| $label | $c | $(k "$d")$(flag direct $m $c) | $(k "$w")$(flag warden $m $c) | $(ratio "$w" "$d") | $(has_litellm && echo "$(k "$l")$(flag litellm $m $c)" || echo –) | $(has_litellm && ratio "$l" "$d" || echo –) | $cpu |"
    done
  done
  echo
  echo "### Latency, µs: p50 / p99 (and what the gateway adds over direct at p50)"
  echo
  echo "Each p50 and p99 is of that arrangement on its own. What a gateway adds is given at the"
  echo "median only: the difference of two p99s is not the p99 of the added time (it can even be"
  echo "below the p50 difference), so it is not shown."
  echo
  echo "| answer | conns | nginx direct | warden | warden adds at p50 | LiteLLM | LiteLLM adds at p50 |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  for m in json stream; do
    label=$([ "$m" = json ] && echo "chat.completion" || echo "SSE stream")
    for c in $CONNS; do
      d50=$(cell direct $m $c p50_us); d99=$(cell direct $m $c p99_us)
      w50=$(cell warden $m $c p50_us); w99=$(cell warden $m $c p99_us)
      l50=$(cell litellm $m $c p50_us); l99=$(cell litellm $m $c p99_us)
      lcol="– | –"
      has_litellm && lcol="$l50 / $l99 | $((l50 - d50))"
      echo "| $label | $c | $d50 / $d99 | $w50 / $w99 | $((w50 - d50)) | $lcol |"
    done
  done
  if [ ${#U[@]} -gt 0 ]; then
    echo
    echo "### Unpinned, $maxc connections: warden free to use both cores"
    echo
    echo "The same wrk runs with no \`taskset\` at all (wrk with 2 threads), fresh proxies."
    echo
    echo "| answer | nginx direct req/s | warden req/s | warden / direct | p50 / p99 µs: direct | warden | CPU µs per request: nginx / warden |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for m in json stream; do
      label=$([ "$m" = json ] && echo "chat.completion" || echo "SSE stream")
      d=${U[direct/$m]}; w=${U[warden/$m]}
      echo "| $label | $(k "$(field "$d" rps)") | $(k "$(field "$w" rps)") | $(ratio "$(field "$w" rps)" "$(field "$d" rps)") | $(field "$d" p50_us) / $(field "$d" p99_us) | $(field "$w" p50_us) / $(field "$w" p99_us) | $(field "$d" cpu_us) / $(field "$w" cpu_us) |"
    done
  fi
  echo
  echo "### Resources"
  echo
  echo "| measure | value |"
  echo "| --- | --- |"
  echo "| warden RSS idle | $(mib "$rss_idle") |"
  echo "| warden RSS after load (non-streaming proxy / streaming proxy) | $(mib "$rss_after_json") / $(mib "$rss_after_sse") |"
  echo "| warden cold start to ready (median of $(jq_field "$cold" runs) runs) | $(jq_field "$cold" median_ms) ms (min $(jq_field "$cold" min_ms), max $(jq_field "$cold" max_ms)) |"
  for row in "${extra_rows[@]}"; do echo "$row"; done
  if has_litellm; then
    echo "| LiteLLM RSS idle / after load (process tree) | $(mib "$litellm_rss_idle") / $(mib "$litellm_rss_after") |"
  fi
  echo
  echo "CPU µs per request: the process's user + system time over the run divided by the requests answered (nginx: master and worker; LiteLLM: its process tree)."
  echo "⚠ marks a cell whose run had socket errors, non-2xx answers or no answer at all (see the RESULT lines on stderr)."
  [ -n "$litellm_note" ] && echo "$litellm_note"
  echo "Reproduce: \`benches/run.sh\` (BENCH_DURATION=$DURATION BENCH_PIN=$PIN); soak: \`benches/run.sh --soak\`."
} >"$OUT"
cat "$OUT"
