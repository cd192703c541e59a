#!/usr/bin/env bash
# End-to-end checks "as a new user would", outside the Rust test harness:
#   1. the official openai Python SDK (v2) against the proxy on the built-in upstream;
#   2. the same against a real OpenAI-compatible HTTP server (nginx with fixed answers);
#   3. the same against a Responses-API server (api = "responses"), which must receive
#      the cached prompt as `instructions`;
#   4. `promtool check metrics` on /metrics;
#   5. the official anthropic Python SDK through POST /v1/messages, on the built-in
#      upstream and on nginx (a Chat Completions server), streaming included;
#   6. Claude Code (`claude -p "say hi"`, npm @anthropic-ai/claude-code) offline on the
#      built-in upstream.
# Installs what it needs (Debian's nginx-light and prometheus for promtool; openai and
# anthropic from PyPI; Claude Code from npm into ~/.cache/warden-e2e) when missing. Everything listens on 127.0.0.1 only and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v promtool >/dev/null || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "e2e: installing ${need_apt[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -c 'import openai, sys; sys.exit(0 if openai.__version__.startswith("2.") else 1)' 2>/dev/null \
  || python3 -m pip install -q 'openai>=2,<3'
python3 -c 'import anthropic' 2>/dev/null || python3 -m pip install -q anthropic
claude_dir=${XDG_CACHE_HOME:-$HOME/.cache}/warden-e2e/claude-code
claude_bin=$claude_dir/node_modules/.bin/claude
if [ ! -x "$claude_bin" ]; then
  command -v npm >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
  mkdir -p "$claude_dir"
  npm install --prefix "$claude_dir" --no-audit --no-fund --loglevel=error @anthropic-ai/claude-code >/dev/null
fi

cargo build --locked --bin proxy
PROXY=target/debug/proxy
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# Starts a proxy (own home, port 0) and sets $url; extra args are passed on.
start_proxy() {
  local home=$work/home-$1; shift
  mkdir -p "$home"; : > "$home.out"
  "$PROXY" --home "$home" --port 0 "$@" > "$home.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    url=$(sed -n 's/^listening on //p' "$home.out" | head -1)
    [ -n "$url" ] && return 0
    sleep 0.1
  done
  echo "e2e: proxy did not start:"; cat "$home.out"; exit 1
}

echo "== openai SDK through the built-in upstream"
start_proxy mock
mock_url=$url
mock_home=$work/home-mock
python3 tests/sdk/openai_sdk_check.py "$url" echo

echo "== openai SDK through nginx (a real OpenAI-compatible HTTP server with fixed answers)"
nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed "s/@PORT@/$nginx_port/g; s#@WORK@#$work#g" benches/nginx/fixed-upstream.conf > "$work/nginx.conf"
nginx -c "$work/nginx.conf" -p "$work" -e "$work/nginx-error.log" &
pids+=($!)
for _ in $(seq 50); do curl -s "http://127.0.0.1:$nginx_port/json/v1/models" >/dev/null && break; sleep 0.1; done
start_proxy nginx-json --upstream "http://127.0.0.1:$nginx_port/json/v1"
json_url=$url
start_proxy nginx-sse --upstream "http://127.0.0.1:$nginx_port/sse/v1"
sse_url=$url
python3 - "$json_url" "$sse_url" <<'PY'
import subprocess, sys
# Non-streaming calls go to the JSON location, streaming ones to the SSE one: run the
# check against each proxy and accept the half that location can answer.
import openai
for base, stream in ((sys.argv[1], False), (sys.argv[2], True)):
    c = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in c.models.list()] == ["nginx-model"]
    if not stream:
        r = c.chat.completions.create(model="nginx-model", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "from nginx" and r.usage.total_tokens == 7, r
    else:
        text, usage = "", None
        for ch in c.chat.completions.create(model="nginx-model", messages=[{"role": "user", "content": "hi"}],
                                            stream=True, stream_options={"include_usage": True}):
            usage = ch.usage or usage
            text += "".join(x.delta.content or "" for x in ch.choices)
        assert text == "from nginx" and usage.total_tokens == 7, (text, usage)
print(f"openai {openai.__version__}: chat and streaming with usage through nginx OK")
PY

echo "== openai SDK through the proxy against a Responses-API server (api = responses)"
record=$work/responses-record.jsonl
: > "$record"
python3 tests/sdk/responses_server.py "$record" > "$work/responses.port" 2> "$work/responses.log" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/responses.port" ] && break; sleep 0.1; done
rport=$(head -1 "$work/responses.port")
[ -n "$rport" ] || { echo "e2e: the Responses server did not start:"; cat "$work/responses.log"; exit 1; }
mkdir -p "$work/home-responses"
cat > "$work/home-responses/warden.toml" <<TOML
[[prompts.source]]
name = "base_instructions"
url = "http://127.0.0.1:$rport/prompts/base_instructions"
[[prompts.source]]
name = "gpt5_codex_instructions"
url = "http://127.0.0.1:$rport/prompts/gpt5_codex_instructions"
TOML
export WARDEN_UPSTREAM_API=responses
start_proxy responses --upstream "http://127.0.0.1:$rport/v1"
unset WARDEN_UPSTREAM_API
python3 tests/sdk/openai_sdk_check.py "$url" responses
python3 - "$record" "$url" <<'PY'
import json, sys, urllib.request
calls = [json.loads(line) for line in open(sys.argv[1])]
want = "E2E PROMPT base_instructions: answer the openai SDK check.\n"
assert {c["stream"] for c in calls} == {False, True}, calls
assert all(c["instructions"] == want for c in calls), calls
health = json.load(urllib.request.urlopen(f"{sys.argv[2]}/health"))
assert health["upstream"]["api"] == "responses", health
assert health["prompts"]["base_instructions"]["source"] == "cache", health
print(f"responses server: {len(calls)} requests, each with the cached prompt as instructions; /health {health['status']}")
PY
responses_url=$url

echo "== anthropic SDK through /v1/messages: built-in upstream, then nginx (a Chat Completions server)"
python3 tests/sdk/anthropic_sdk_check.py "$mock_url" echo
python3 tests/sdk/anthropic_sdk_check.py "$json_url" fixed plain
python3 tests/sdk/anthropic_sdk_check.py "$sse_url" fixed stream

echo "== Claude Code (claude -p) offline on the built-in upstream"
# A throwaway HOME so nothing of the developer's Claude Code configuration is read or
# written; the three switches keep it from reaching for the internet.
claude_home=$work/claude-home
mkdir -p "$claude_home"
answer=$(env -i PATH="$PATH" HOME="$claude_home" ANTHROPIC_BASE_URL="$mock_url" ANTHROPIC_API_KEY=anything \
  DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
  timeout 180 "$claude_bin" -p "say hi" < /dev/null) || { echo "e2e: claude -p failed: $answer"; exit 1; }
# The mock echoes the last user message, which ends with the prompt.
case $answer in *"say hi"*) ;; *) echo "e2e: unexpected claude answer: $answer"; exit 1 ;; esac
grep -q 'route="/v1/messages" status=200' "$mock_home/logs/proxy.log" \
  || { echo "e2e: no /v1/messages line in the access log"; tail "$mock_home/logs/proxy.log"; exit 1; }
echo "claude $("$claude_bin" --version 2>/dev/null | head -1): 'say hi' answered through /v1/messages on the mock"

echo "== promtool check metrics"
curl -sf "$json_url/metrics" | promtool check metrics
curl -sf "$responses_url/metrics" | promtool check metrics  # with the prompt gauges
echo "promtool: /metrics accepted"
echo "e2e: all passed"
