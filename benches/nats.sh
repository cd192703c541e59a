#!/usr/bin/env bash
# benches/nats.sh — the NATS ingress against the HTTP ingress, on one proxy with the
# built-in mock upstream (no upstream network, so the figures are the ingresses' own).
#
#   benches/nats.sh          writes benches/results/nats.md and prints it
#
# What it does, all on 127.0.0.1 and bounded in time:
#   1. installs nats-server (Debian) when missing; builds the release binaries and
#      benches/nats_bench.rs (`cargo build --release --locked --bins --bench nats_bench`);
#   2. starts nats-server (free port, temporary JetStream store) and one `proxy` (temporary
#      home, upstream = mock, nats.url = that server, nats.max_concurrent = 256);
#   3. runs nats_bench: a closed loop of N requests in flight for BENCH_DURATION seconds,
#      for each N in BENCH_INFLIGHT, against HTTP POST /v1/chat/completions, NATS request
#      warden.chat, and a trivial NATS responder (the NATS round trip alone);
#   4. stops what it started (only those PIDs).
#
# Environment: BENCH_DURATION=10, BENCH_INFLIGHT="1 64", BENCH_OUT=benches/results/nats.md
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${BENCH_DURATION:-10}
INFLIGHT=${BENCH_INFLIGHT:-"1 64"}
OUT=${BENCH_OUT:-benches/results/nats.md}

if ! command -v nats-server >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq nats-server
fi
echo "== cargo build --release --locked --bins --bench nats_bench" >&2
cargo build --release --locked --bins --bench nats_bench --quiet
bench=$(ls -t target/release/deps/nats_bench-* | grep -v '\.d$' | head -n 1)

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/js" >"$work/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$nats_port") 2>/dev/null && break; sleep 0.1; done

mkdir -p "$work/home"
cat >"$work/home/warden.toml" <<TOML
[server]
max_concurrent = 1024
[upstream]
url = "mock"
[nats]
url = "nats://127.0.0.1:$nats_port"
max_concurrent = 256
TOML
target/release/proxy --home "$work/home" --port 0 >"$work/proxy.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/proxy.out" && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/proxy.out" | head -n 1)
for _ in $(seq 100); do curl -sf "$url/health" | grep -q '"state":"connected"' && break; sleep 0.1; done

{
  echo "# NATS ingress vs HTTP ingress"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(nats-server --version), warden $(target/release/proxy --version | awk '{print $2}'),"
  echo "upstream = built-in mock (both ingresses, same proxy), ${DURATION} s per row, closed loop"
  echo "(each in-flight slot sends its next request when the last is answered), client and"
  echo "proxy and nats-server on one machine. Command: \`benches/nats.sh\`."
  echo
  "$bench" --http "$url" --nats "nats://127.0.0.1:$nats_port" --inflight "$INFLIGHT" --secs "$DURATION"
} | tee "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "wrote $OUT" >&2
