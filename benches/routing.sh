#!/usr/bin/env bash
# benches/routing.sh — what routing between providers costs (docs/contract.md §11), measured with
# wrk against the release build, all on 127.0.0.1, bounded in time (~1 min of load):
#
#   1. throughput, non-streaming, at ROUTING_CONNS connections: one provider
#      (`[upstream]` = nginx) vs three `[[providers]]` where the request's model matches
#      only the last one in priority order (every request walks the other two);
#   2. failover latency at 1 connection: the preferred provider's port is closed and it
#      never cools (`routing.failures` at its maximum), so every request first meets the
#      refused connection, then goes to nginx; vs the same with default health (the dead
#      provider cools after 3 failures and is skipped); errors and non-2xx are counted
#      (goal: none lost).
#
# Writes benches/results/routing.md and prints it.
# Env: ROUTING_SECS=5 (seconds per run), ROUTING_CONNS=16.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${ROUTING_SECS:-5}
CONNS=${ROUTING_CONNS:-16}
OUT=${ROUTING_OUT:-benches/results/routing.md}

. benches/lib.sh
need_apt nginx:nginx-light wrk:wrk
cargo build --release --locked --bin proxy
PROXY=target/release/proxy
start_nginx
nginx_url="http://127.0.0.1:$nginx_port/json/v1"
dead_url="http://127.0.0.1:$(free_port)/v1" # bound and closed again: refused

# start NAME TOML: a proxy with that warden.toml; sets $url.
start() {
  mkdir -p "$work/$1"
  printf '%s\n' "$2" >"$work/$1/warden.toml"
  local port
  port=$(free_port)
  "$PROXY" --home "$work/$1" --port "$port" >"$work/$1.out" 2>&1 &
  pids+=($!)
  url="http://127.0.0.1:$port"
  wait_http "$url/health/ready" || { cat "$work/$1.out"; exit 1; }
}

# run URL CONNS MODEL: one wrk run; prints the RESULT line.
run() {
  wrk -t1 -c"$2" -d"${SECS}"s --timeout 10s -s benches/wrk/chat.lua "$1/v1/chat/completions" -- json "$3" 0 \
    | grep '^RESULT'
}
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$2"; }

start one "[upstream]
url = \"$nginx_url\""
one_url=$url
start three "[[providers]]
name = \"first\"
url = \"$nginx_url\"
models = [\"gpt-4*\", \"o4-*\"]
[[providers]]
name = \"second\"
url = \"$nginx_url\"
models = [\"claude-*\"]
priority = 1
[[providers]]
name = \"third\"
url = \"$nginx_url\"
models = [\"nginx-json\"]
priority = 2"
three_url=$url
start failover "[[providers]]
name = \"dead\"
url = \"$dead_url\"
models = [\"*\"]
[[providers]]
name = \"nginx\"
url = \"$nginx_url\"
models = [\"*\"]
priority = 1
[routing]
failures = 1000000"
failover_url=$url
start cooling "[[providers]]
name = \"dead\"
url = \"$dead_url\"
models = [\"*\"]
[[providers]]
name = \"nginx\"
url = \"$nginx_url\"
models = [\"*\"]
priority = 1"
cooling_url=$url

# Warm every pool, then measure.
for u in "$one_url" "$three_url" "$failover_url" "$cooling_url"; do
  wrk -t1 -c4 -d1s -s benches/wrk/chat.lua "$u/v1/chat/completions" -- json nginx-json 0 >/dev/null
done
one=$(run "$one_url" "$CONNS" nginx-json)
three=$(run "$three_url" "$CONNS" nginx-json)
one_c1=$(run "$one_url" 1 nginx-json)
failover_c1=$(run "$failover_url" 1 nginx-json)
cooling_c1=$(run "$cooling_url" 1 nginx-json)
# The failover proxy really failed over every time: its dead provider's counter.
dead_errors=$(curl -fs "$failover_url/metrics" | sed -n 's/^warden_provider_errors_total{provider="dead"} \([0-9]*\).*/\1/p')

ratio=$(python3 -c "print(f'{100*$(field rps "$three")/$(field rps "$one"):.1f}')")
added=$(python3 -c "print(f'{($(field p50_us "$failover_c1")-$(field p50_us "$one_c1"))/1000:.3f}')")
lost=$(( $(field errors "$failover_c1") + $(field non2xx "$failover_c1") + $(field errors "$cooling_c1") + $(field non2xx "$cooling_c1") ))
{
  echo "# Routing between providers"
  echo
  echo "benches/routing.sh, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, release build, nginx fixed answer"
  echo "(benches/nginx/fixed-upstream.conf), wrk 1 thread, ${SECS} s per run, non-streaming, no pinning."
  echo
  echo "| run | connections | req/s | p50 µs | p99 µs | errors | non-2xx |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  row() { echo "| $1 | $2 | $(field rps "$3") | $(field p50_us "$3") | $(field p99_us "$3") | $(field errors "$3") | $(field non2xx "$3") |"; }
  row "one provider (\`[upstream]\`)" "$CONNS" "$one"
  row "three providers, the model matches the last" "$CONNS" "$three"
  row "one provider" 1 "$one_c1"
  row "preferred provider's port closed, never cooling (every request fails over)" 1 "$failover_c1"
  row "preferred provider's port closed, default health (cools after 3 failures)" 1 "$cooling_c1"
  echo
  echo "- Three providers vs one: **${ratio}%** of the throughput (goal: within 5%)."
  echo "- Failover to the next provider on a refused connection adds **${added} ms** at p50"
  echo "  (goal: ≤ 1 ms); the dead provider counted ${dead_errors:-?} failed attempts, and"
  echo "  **${lost}** requests were lost (errors + non-2xx) in the two failover runs."
} | tee "$OUT"
