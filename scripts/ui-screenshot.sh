#!/usr/bin/env bash
# Takes docs/ui.png (and docs/ui-dark.png): screenshots of the status page GET /ui of a
# real proxy (two providers: one refused and cooling, then the built-in mock) after some
# traffic, in headless Chromium.
#   scripts/ui-screenshot.sh [SECONDS_OF_TRAFFIC]   (default 40: a few 5-s history samples)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-40}
command -v chromium >/dev/null || { echo "chromium is needed (apt-get install chromium)" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 1; }
cargo build --quiet --bin proxy
home=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$home"
}
trap cleanup EXIT
# Two providers: `primary` on a closed port (refused: every request fails over, and it
# cools after 3 failures), then the built-in mock, which answers.
closed=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$home/warden.toml" <<TOML
[[providers]]
name = "primary"
url = "http://127.0.0.1:$closed/v1"
models = ["*"]
priority = 0

[[providers]]
name = "mock"
url = "mock"
models = ["*"]
priority = 1
TOML
target/debug/proxy --home "$home" --port 0 >"$home/stdout" 2>"$home/stderr" &
pid=$!
url=
for _ in $(seq 300); do
  url=$(sed -n 's/^listening on //p' "$home/stdout" | head -1)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "the proxy did not start:" >&2; cat "$home/stderr" >&2; exit 1; }
echo "proxy $pid at $url; $secs s of traffic"
chat() {
  curl -s -o /dev/null "$url/v1/chat/completions" -H 'content-type: application/json' -d "$1"
}
end=$((SECONDS + secs))
i=0
while [ "$SECONDS" -lt "$end" ]; do
  # A varying rate, and now and then a bad request (400) for the error table.
  for _ in $(seq $(((i % 7) * 3 + 1))); do
    chat '{"model":"gpt-5","messages":[{"role":"user","content":"hello"}]}'
  done
  [ $((i % 5)) -eq 0 ] && chat '{"messages":"not a list"}'
  sleep 0.5
  i=$((i + 1))
done
shot() {
  local out=$1
  shift
  local profile
  profile=$(mktemp -d)
  timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size=1200,900 \
    --virtual-time-budget=5000 "$@" --screenshot="$PWD/$out" "$url/ui" 2>/dev/null
  rm -rf "$profile"
  echo "wrote $out"
}
mkdir -p docs
shot docs/ui.png
shot docs/ui-dark.png --force-dark-mode --blink-settings=preferredColorScheme=0
