#!/usr/bin/env bash
# Shows that `daemon restart` refuses no request: wrk drives steady load (8
# connections, loopback) at a daemon-started proxy, restarts happen mid-run, and
# the script fails unless wrk saw zero socket errors and zero non-2xx answers.
# Usage: scripts/restart-under-load.sh [seconds=12] [restarts=3]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-12}; restarts=${2:-3}
command -v wrk >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked --bin proxy --bin daemon --bin preflight
home=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf '[server]\nport = %s\n' "$port" > "$home/warden.toml"
trap 'target/release/daemon --home "$home" stop >/dev/null 2>&1 || true; rm -rf "$home"' EXIT
target/release/daemon --home "$home" start
wrk -t2 -c8 -d"${secs}s" -s benches/chat.lua "http://127.0.0.1:$port/v1/chat/completions" > "$home/wrk.out" &
wrk_pid=$!
for i in $(seq "$restarts"); do
  sleep "$(python3 -c "print($secs / ($restarts + 1))")"
  target/release/daemon --home "$home" restart --no-check
done
wait "$wrk_pid"
cat "$home/wrk.out"
if grep -qE "Socket errors|Non-2xx" "$home/wrk.out"; then
  echo "restart-under-load: FAILED: wrk saw errors"; exit 1
fi
echo "restart-under-load: $restarts restarts under load, 0 failed requests"
