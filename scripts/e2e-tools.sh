#!/usr/bin/env bash
# End-to-end check of server tools (docs/tools.md) as a new user tries them offline;
# scripts/e2e.sh runs it, and it runs alone too. A real nats-server, the example tool
# service examples/tool_service.py (nats-py), a proxy on the built-in mock upstream that
# declares get_weather (served) and get_stock (served by nobody), and the openai Python SDK
# as the client (tests/sdk/tools_sdk_check.py): Chat Completions plain and streamed, the
# Responses API, no responders, a client tool of the same name, x-warden-tools: none; then
# Codex CLI (`codex exec`, its own tools next to the server's) when scripts/e2e.sh installed
# it. Then /metrics counts the calls by outcome and the log has the failure.
# Installs what it lacks (openai and nats-py from PyPI, nats-server from Debian).
# Everything listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -c 'import openai, sys; sys.exit(0 if openai.__version__.startswith("2.") else 1)' 2>/dev/null \
  || python3 -m pip install -q 'openai>=2,<3'
python3 -c 'import nats' 2>/dev/null || python3 -m pip install -q nats-py
command -v nats-server >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null; }

cargo build --locked --bin proxy
PROXY=target/debug/proxy
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nats_port=$(free_port)
nats_url="nats://127.0.0.1:$nats_port"
nats-server -a 127.0.0.1 -p "$nats_port" > "$work/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
  sleep 0.1
done

python3 examples/tool_service.py --url "$nats_url" > "$work/tools.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  grep -q '^serving' "$work/tools.out" && break
  sleep 0.1
done
grep -q '^serving' "$work/tools.out" || { echo "e2e-tools: the tool service did not start:"; cat "$work/tools.out"; exit 1; }

home=$work/home
mkdir -p "$home"
cat > "$home/warden.toml" <<TOML
[upstream]
url = "mock"

[nats]
url = "$nats_url"

[[tools.declare]]
name = "get_weather"
description = "Current weather for a city"
parameters = { type = "object", properties = { city = { type = "string" } }, required = ["city"] }

[[tools.declare]]
name = "get_stock"
description = "A share price (no service answers it here)"
TOML
env -u OPENAI_BASE_URL "$PROXY" --home "$home" --port 0 > "$work/proxy.out" 2>&1 &
pids+=($!)
url=
for _ in $(seq 100); do
  url=$(sed -n 's/^listening on //p' "$work/proxy.out" | head -1)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "e2e-tools: proxy did not start:"; cat "$work/proxy.out"; exit 1; }

echo "== server tools with the openai Python SDK"
python3 tests/sdk/tools_sdk_check.py "$url"

# Codex CLI, when scripts/e2e.sh installed it (pinned, into target/e2e/node): a client with
# tools of its own, through /v1/responses, is offered get_weather next to them.
CODEX=$PWD/target/e2e/node/node_modules/.bin/codex
weather_calls=3
if [ -x "$CODEX" ]; then
  echo "== Codex CLI"
  chome=$work/codex-home
  mkdir -p "$chome" "$work/codex-wd"
  cat > "$chome/config.toml" <<TOML
model = "gpt-5"
model_provider = "warden"

[model_providers.warden]
name = "warden"
base_url = "$url/v1"
env_key = "WARDEN_E2E_CODEX_KEY"
wire_api = "responses"
TOML
  if ! (cd "$work/codex-wd" && CODEX_HOME="$chome" WARDEN_E2E_CODEX_KEY=unused timeout 180 \
        "$CODEX" exec --skip-git-repo-check --ephemeral --color never \
        --dangerously-bypass-approvals-and-sandbox -o "$work/codex-last.txt" \
        'call get_weather {"city": "Oslo"}' < /dev/null > "$work/codex.out" 2>&1); then
    echo "e2e-tools: codex exec failed:"; cat "$work/codex.out"; exit 1
  fi
  grep -q '^get_weather returned: {"city": "Oslo", "temperature_c": 21' "$work/codex-last.txt" \
    || { echo "e2e-tools: codex said:"; cat "$work/codex-last.txt" "$work/codex.out"; exit 1; }
  echo "codex $("$CODEX" --version | awk '{print $2}'): $(cat "$work/codex-last.txt")"
  weather_calls=4
else
  echo "== Codex CLI: not installed here (scripts/e2e.sh installs it), skipped"
fi

metrics=$(curl -sf "$url/metrics")
for series in "warden_tool_calls_total{tool=\"get_weather\",outcome=\"ok\"} $weather_calls" \
              'warden_tool_calls_total{tool="get_stock",outcome="no_responders"} 1'; do
  grep -qF "$series" <<<"$metrics" || { echo "e2e-tools: /metrics lacks $series"; grep warden_tool <<<"$metrics"; exit 1; }
done
echo "/metrics: $weather_calls get_weather calls ok, 1 get_stock without responders"
for _ in $(seq 50); do
  grep -q 'server tool call failed.*tool="get_stock".*outcome="no_responders"' "$home/logs/proxy.log" 2>/dev/null && break
  sleep 0.1
done
grep -q 'server tool call failed.*tool="get_stock".*outcome="no_responders"' "$home/logs/proxy.log" \
  || { echo "e2e-tools: no log line for the failed call:"; cat "$home/logs/proxy.log"; exit 1; }
echo "proxy.log: the failed call is a warning"
echo "e2e-tools: all passed"
