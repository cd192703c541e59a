#!/usr/bin/env bash
# Shows that `daemon restart` refuses no request, on either ingress: wrk drives
# steady HTTP load (8 connections, loopback) and tests/sdk/nats_load.py steady NATS
# load (8 requests in flight, through a nats-server this script starts) at one
# daemon-started proxy; restarts happen mid-run. The script fails unless wrk saw
# zero socket errors and zero non-2xx answers, and every NATS request found a
# responder and got an answer, but for at most one lost per restart: the drain's
# residual window (docs/nats.md).
# Usage: scripts/restart-under-load.sh [seconds=12] [restarts=3]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-12}; restarts=${2:-3}
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nats-server >/dev/null || missing+=(nats-server)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -c 'import nats' 2>/dev/null || python3 -m pip install -q nats-py
cargo build --release --locked --bin proxy --bin daemon --bin preflight
home=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" > "$home/nats.log" 2>&1 &
nats_pid=$!
trap 'target/release/daemon --home "$home" stop >/dev/null 2>&1 || true; kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; rm -rf "$home"' EXIT
printf '[server]\nport = %s\n[nats]\nurl = "nats://127.0.0.1:%s"\n' "$port" "$nats_port" > "$home/warden.toml"
target/release/daemon --home "$home" start
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/health" | grep -q '"subscribed":true' && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/health" | grep -q '"subscribed":true' \
  || { echo "restart-under-load: the proxy's NATS endpoints never came up"; exit 1; }
wrk -t2 -c8 -d"${secs}s" -s benches/chat.lua "http://127.0.0.1:$port/v1/chat/completions" > "$home/wrk.out" &
wrk_pid=$!
python3 tests/sdk/nats_load.py "nats://127.0.0.1:$nats_port" "$secs" 8 5 "$restarts" > "$home/nats-load.out" &
nats_load_pid=$!
for i in $(seq "$restarts"); do
  sleep "$(python3 -c "print($secs / ($restarts + 1))")"
  target/release/daemon --home "$home" restart --no-check
done
wait "$wrk_pid"
nats_ok=0; wait "$nats_load_pid" || nats_ok=$?
cat "$home/wrk.out" "$home/nats-load.out"
if grep -qE "Socket errors|Non-2xx" "$home/wrk.out"; then
  echo "restart-under-load: FAILED: wrk saw errors"; exit 1
fi
if [ "$nats_ok" != 0 ]; then
  echo "restart-under-load: FAILED: NATS requests unanswered (see the counts above)"; exit 1
fi
echo "restart-under-load: $restarts restarts under HTTP and NATS load: 0 failed HTTP requests; $(cat "$home/nats-load.out")"
