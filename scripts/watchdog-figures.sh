#!/usr/bin/env bash
# Measures the watchdog's figures on this machine, in a temporary home:
#   - kill -9 of the proxy under the default 30 s interval -> ready again (ms);
#   - the watchdog's memory (VmRSS, RssAnon) and CPU time (utime+stime) over an
#     idle period.
# Usage: scripts/watchdog-figures.sh [BIN_DIR] [IDLE_SECONDS]
#   BIN_DIR defaults to target/debug (build first: cargo build --locked).
# It signals only processes it started: the watchdog it spawned, and the proxy
# that its `daemon start` started, after checking that PID's executable and
# start time against run/proxy.pid.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/debug}")
IDLE=${2:-60}
HOME_DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf '[server]\nport = %s\n' "$PORT" >"$HOME_DIR/warden.toml"
WATCHDOG=""
cleanup() {
  [ -n "$WATCHDOG" ] && kill -TERM "$WATCHDOG" 2>/dev/null && wait "$WATCHDOG" 2>/dev/null || true
  "$BIN/daemon" --home "$HOME_DIR" stop --force >/dev/null 2>&1 || true
  rm -rf "$HOME_DIR"
}
trap cleanup EXIT

field() { sed -n "s/^$1=//p" "$HOME_DIR/run/proxy.pid"; }
ms() { echo $(( $(date +%s%N) / 1000000 )); }

"$BIN/daemon" --home "$HOME_DIR" start --no-check
"$BIN/watchdog" --home "$HOME_DIR" &
WATCHDOG=$!
OLD=$(head -1 "$HOME_DIR/run/proxy.pid")
until grep -q "watching PID $OLD" "$HOME_DIR/logs/watchdog.log" 2>/dev/null; do sleep 0.05; done

# Identity check before the signal: same executable and start time as recorded.
[ "$(readlink "/proc/$OLD/exe")" = "$(field exe)" ] || { echo "PID $OLD is not our proxy"; exit 1; }
[ "$(awk '{print $22}' "/proc/$OLD/stat")" = "$(field start_time)" ] || { echo "PID $OLD is not our proxy"; exit 1; }
T0=$(ms)
kill -9 "$OLD"
DEADLINE=$(( T0 + 30000 ))
while :; do
  NEW=$(head -1 "$HOME_DIR/run/proxy.pid" 2>/dev/null || true)
  if [ -n "$NEW" ] && [ "$NEW" != "$OLD" ] &&
     curl -sf -m 1 "http://127.0.0.1:$PORT/health/ready" >/dev/null; then break; fi
  [ "$(ms)" -lt "$DEADLINE" ] || { echo "not ready again within 30 s"; exit 1; }
  sleep 0.01
done
echo "kill -9 -> ready again: $(( $(ms) - T0 )) ms (interval 30 s; PID $OLD -> $NEW)"

until grep -q "watching PID $NEW" "$HOME_DIR/logs/watchdog.log"; do sleep 0.05; done
sleep 1
cpu() { awk '{print $14 + $15}' "/proc/$WATCHDOG/stat"; }
C0=$(cpu)
sleep "$IDLE"
C1=$(cpu)
HZ=$(getconf CLK_TCK)
echo "watchdog idle for ${IDLE} s: CPU $(( C1 - C0 )) ticks (1 tick = 1/$HZ s; utime+stime)"
grep -E '^(VmRSS|RssAnon|RssFile):' "/proc/$WATCHDOG/status" | tr -s ' \t' ' ' | sed 's/^/watchdog /'
echo "--- logs/watchdog.log"
cat "$HOME_DIR/logs/watchdog.log"
