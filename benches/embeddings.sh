#!/usr/bin/env bash
# benches/embeddings.sh — POST /v1/embeddings through warden vs straight to the upstream,
# in one run, with wrk against the release build, all on 127.0.0.1:
#
#   the upstream is nginx answering a fixed embeddings list (two 1536-dimension vectors,
#   about 60 KB of JSON; benches/nginx/fixed-upstream.conf); warden has it as its one
#   provider (`[upstream]`); the request embeds two short texts. Direct and through warden
#   alternate, EMB_ROUNDS rounds of EMB_SECS seconds each, at EMB_CONNS connections; the
#   medians are reported.
#
# Writes benches/results/embeddings.md and prints it.
# Env: EMB_SECS=5, EMB_CONNS=64, EMB_ROUNDS=3.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${EMB_SECS:-5}
CONNS=${EMB_CONNS:-64}
ROUNDS=${EMB_ROUNDS:-3}
OUT=${EMB_OUT:-benches/results/embeddings.md}

. benches/lib.sh
need_apt nginx:nginx-light wrk:wrk
cargo build --release --locked --bin proxy
PROXY=target/release/proxy
start_nginx
direct="http://127.0.0.1:$nginx_port/json/v1/embeddings"
curl -fs -X POST -H 'content-type: application/json' -d '{}' "$direct" | python3 -c \
  'import json,sys; assert len(json.load(sys.stdin)["data"][0]["embedding"]) == 1536' \
  || { echo "embeddings.sh: nginx does not answer the fixed embeddings"; exit 1; }

mkdir -p "$work/home"
printf '[upstream]\nurl = "http://127.0.0.1:%s/json/v1"\n[server]\nmax_concurrent = 1024\n' "$nginx_port" >"$work/home/warden.toml"
port=$(free_port)
"$PROXY" --home "$work/home" --port "$port" >"$work/proxy.out" 2>&1 &
pids+=($!)
proxy_pid=$!
wait_http "http://127.0.0.1:$port/health/ready" || { cat "$work/proxy.out"; exit 1; }
through="http://127.0.0.1:$port/v1/embeddings"
curl -fs -X POST -H 'content-type: application/json' -d '{"model":"m","input":"x"}' "$through" >/dev/null

run() { wrk -t2 -c"$CONNS" -d"${SECS}"s --timeout 10s -s benches/wrk/embeddings.lua "$1" | grep '^RESULT'; }
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$2"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Warm both paths, then alternate.
wrk -t1 -c8 -d1s -s benches/wrk/embeddings.lua "$direct" >/dev/null
wrk -t1 -c8 -d1s -s benches/wrk/embeddings.lua "$through" >/dev/null
: >"$work/direct"; : >"$work/through"
for _ in $(seq "$ROUNDS"); do
  run "$direct" >>"$work/direct"
  run "$through" >>"$work/through"
done
col() { while read -r line; do field "$1" "$line"; done <"$work/$2" | median; }
lost() { while read -r line; do echo $(( $(field errors "$line") + $(field non2xx "$line") )); done <"$work/$1" | paste -sd+ | bc; }
rss_kib=$(sed -n 's/^VmRSS: *\([0-9]*\) kB/\1/p' "/proc/$proxy_pid/status")
d_rps=$(col rps direct); t_rps=$(col rps through)
d_p50=$(col p50_us direct); t_p50=$(col p50_us through)
d_p99=$(col p99_us direct); t_p99=$(col p99_us through)
ratio=$(python3 -c "print(f'{100*$t_rps/$d_rps:.1f}')")
added=$(python3 -c "print(f'{($t_p50-$d_p50)/1000:.3f}')")
{
  echo "# Embeddings through warden"
  echo
  echo "benches/embeddings.sh, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs (shared), release build,"
  echo "nginx fixed answer (two 1536-dimension vectors, $(wc -c <"$work/nginx/json/v1/embeddings") bytes),"
  echo "wrk 2 threads, $CONNS connections, $ROUNDS alternating rounds of $SECS s, medians."
  echo
  echo "| target | req/s | p50 µs | p99 µs | errors + non-2xx |"
  echo "| --- | --- | --- | --- | --- |"
  echo "| nginx directly | $d_rps | $d_p50 | $d_p99 | $(lost direct) |"
  echo "| through warden | $t_rps | $t_p50 | $t_p99 | $(lost through) |"
  echo
  echo "- Through warden: **${ratio}%** of the direct throughput; **${added} ms** added at p50."
  echo "- The proxy's RSS after the run: $((rss_kib / 1024)) MiB."
  echo "- Both wrk and the proxy share the machine's CPUs with nginx: the ratio, not the"
  echo "  absolute numbers, is what carries over to another machine."
} | tee "$OUT"
