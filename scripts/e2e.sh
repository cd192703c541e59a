#!/usr/bin/env bash
# End-to-end checks "as a new user would", outside the Rust test harness:
#   1. the official openai Python SDK (v2, responses.stream included), the official Node SDK
#      and Codex CLI (`codex exec`, a tool call included) against the proxy on the built-in
#      upstream; the openai SDK through two [[providers]], the first one dead (every
#      request answered, x-warden-provider names the second);
#   2. the same against a real OpenAI-compatible HTTP server (nginx with fixed answers);
#   3. the same against a Responses-API server (api = "responses"), which must receive
#      the cached prompt as `instructions`; then Codex CLI through that proxy with a tool-call
#      round trip (Codex's function_call_output must reach the server, with Codex's headers);
#   4. `promtool check metrics` on /metrics;
#   5. the official anthropic Python SDK through POST /v1/messages, on the built-in
#      upstream and on nginx (a Chat Completions server), streaming included;
#   6. Claude Code (`claude -p "say hi"`, npm @anthropic-ai/claude-code) offline on the
#      built-in upstream;
#   7. the openai SDK's Responses API and Codex CLI through an `api = "anthropic"` proxy
#      against a small Messages API server (tests/sdk/anthropic_server.py): Responses →
#      Messages and back, a tool round trip;
#   8. the nats-py example of docs/nats.md (tests/sdk/nats_example.py) against a real nats-server
#      and a proxy on the built-in upstream: request/reply and a stream;
#   9. agent CLIs as providers (docs/agent-clis.md): a proxy whose `claude-code` and `codex`
#      presets run the real Claude Code and Codex CLI, pointed offline at the first proxy's
#      mock, driven by the openai SDK with and without streaming; preflight finds both CLIs.
#  10. client keys with real clients (scripts/e2e-keys.sh, which runs alone too): the openai
#      SDK reads x-ratelimit-* and retries a 429 after Retry-After; the anthropic SDK and
#      Codex CLI with wk- keys; `proxy usage` counts each key.
#  11. server tools over NATS (scripts/e2e-tools.sh, which runs alone too): the example tool
#      service examples/tool_service.py on a real nats-server, a proxy on the built-in upstream
#      declaring its tool, the openai SDK as a client that brings no tool of its own, and
#      Codex CLI whose own tools the server's joins.
# Installs what it needs (Debian's nginx-light and prometheus for promtool; openai and
# anthropic from PyPI; Claude Code from npm into ~/.cache/warden-e2e; Codex CLI and the openai
# Node SDK, pinned, from npm into target/e2e/node) when missing. Everything listens on 127.0.0.1 only and is stopped on exit.
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
python3 -c 'import nats' 2>/dev/null || python3 -m pip install -q nats-py
command -v nats-server >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null; }
claude_dir=${XDG_CACHE_HOME:-$HOME/.cache}/warden-e2e/claude-code
claude_bin=$claude_dir/node_modules/.bin/claude
if [ ! -x "$claude_bin" ]; then
  command -v npm >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
  mkdir -p "$claude_dir"
  npm install --prefix "$claude_dir" --no-audit --no-fund --loglevel=error @anthropic-ai/claude-code >/dev/null
fi
# Codex CLI and the Node SDK, pinned, into a project-local directory (not global).
node_dir=target/e2e/node
CODEX=$PWD/$node_dir/node_modules/.bin/codex
if [ ! -x "$CODEX" ] || [ ! -f "$node_dir/node_modules/openai/package.json" ]; then
  echo "e2e: installing @openai/codex and openai (npm) into $node_dir"
  command -v npm >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
  mkdir -p "$node_dir"
  npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error \
    @openai/codex@0.171.0 openai@6.49.0 >/dev/null
fi
export NODE_PATH=$PWD/$node_dir/node_modules

cargo build --locked --bin proxy --bin preflight
PROXY=target/debug/proxy
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# Runs `codex exec PROMPT [MODEL]` against the proxy at URL (a private CODEX_HOME whose provider
# points at warden with wire_api = "responses" and a key from an environment variable, so
# Codex never signs in anywhere); its last message goes to $work/codex-last.txt.
codex_exec() {
  local chome=$work/codex-home
  mkdir -p "$chome" "$work/codex-wd"
  cat > "$chome/config.toml" <<TOML
model = "${3:-gpt-5}"
model_provider = "warden"

[model_providers.warden]
name = "warden"
base_url = "$1/v1"
env_key = "WARDEN_E2E_CODEX_KEY"
wire_api = "responses"
TOML
  rm -f "$work/codex-last.txt"
  if ! (cd "$work/codex-wd" && CODEX_HOME="$chome" WARDEN_E2E_CODEX_KEY=unused timeout 180 \
        "$CODEX" exec --skip-git-repo-check --ephemeral --color never \
        --dangerously-bypass-approvals-and-sandbox -o "$work/codex-last.txt" "$2" \
        < /dev/null > "$work/codex.out" 2>&1); then
    echo "e2e: codex exec failed:"; cat "$work/codex.out"; exit 1
  fi
}

# Starts tests/sdk/NAME_server.py RECORD (it prints its port) and sets $port.
start_server() {
  python3 "tests/sdk/$1_server.py" "$2" > "$work/$1.port" 2> "$work/$1.log" &
  pids+=($!)
  for _ in $(seq 50); do [ -s "$work/$1.port" ] && break; sleep 0.1; done
  port=$(head -1 "$work/$1.port")
  [ -n "$port" ] || { echo "e2e: $1_server.py did not start:"; cat "$work/$1.log"; exit 1; }
}

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

echo "== openai Node SDK through the built-in upstream"
node tests/sdk/node_sdk_check.cjs "$mock_url"

echo "== Codex CLI on the default setup (built-in upstream)"
codex_exec "$mock_url" "hello warden from codex"
grep -qx "hello warden from codex" "$work/codex-last.txt" \
  || { echo "e2e: codex said:"; cat "$work/codex-last.txt" "$work/codex.out"; exit 1; }
codex_exec "$mock_url" 'call exec_command {"cmd":"echo warden-mock-tool"}'
grep -q "^exec_command returned:" "$work/codex-last.txt" && grep -q "warden-mock-tool" "$work/codex-last.txt" \
  || { echo "e2e: codex tool call on the mock:"; cat "$work/codex-last.txt" "$work/codex.out"; exit 1; }
echo "codex $("$CODEX" --version | awk '{print $2}'): a reply and a tool round trip on the mock OK"

echo "== openai SDK through two providers, the first one dead (its port closed)"
dead_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/home-failover"
cat > "$work/home-failover/warden.toml" <<TOML
[[providers]]
name = "dead"
url = "http://127.0.0.1:$dead_port/v1"
models = ["*"]
[[providers]]
name = "second"
url = "mock"
models = ["*"]
priority = 1
TOML
start_proxy failover
python3 tests/sdk/openai_failover_check.py "$url" second 25

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
start_server responses "$record"
rport=$port
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

echo "== Codex CLI through the proxy against the Responses-API server (tool-call round trip)"
codex_exec "$responses_url" "run the e2e tool"
tr "\n" " " < "$work/codex-last.txt" | grep -q "tool said: .*warden-e2e-tool" \
  || { echo "e2e: codex said:"; cat "$work/codex-last.txt" "$work/codex.out"; exit 1; }
python3 - "$record" <<'PY'
import json, sys
calls = [json.loads(line) for line in open(sys.argv[1])]
codex = [c for c in calls if c["headers"].get("originator", "").startswith("codex")]
assert len(codex) >= 2, calls
outputs = [c["function_call_output"] for c in codex if c["function_call_output"]]
assert any("warden-e2e-tool" in o for o in outputs), outputs
for c in codex:
    h = c["headers"]
    assert h.get("x-request-id") and (h.get("session-id") or h.get("session_id")), h
    assert h.get("authorization") != "Bearer unused", "the client's key was forwarded"
print(f"responses server: Codex's function_call_output arrived ({len(codex)} Codex requests, with its headers)")
PY

echo "== Codex CLI through the proxy against an Anthropic Messages server (api = anthropic)"
# Codex speaks the Responses API; warden translates it to the Messages API and back.
arecord=$work/anthropic-record.jsonl
: > "$arecord"
start_server anthropic "$arecord"
aport=$port
mkdir -p "$work/home-anthropic"
cat > "$work/home-anthropic/warden.toml" <<TOML
[upstream]
url = "http://127.0.0.1:$aport/v1"
api = "anthropic"
api_key_env = "WARDEN_E2E_ANTHROPIC_KEY"
TOML
WARDEN_E2E_ANTHROPIC_KEY=sk-ant-e2e start_proxy anthropic
anthropic_url=$url
python3 - "$anthropic_url" <<'PY'
import sys, openai
c = openai.OpenAI(base_url=f"{sys.argv[1]}/v1", api_key="unused", max_retries=0)
r = c.responses.create(model="claude-sonnet-4-5", instructions="be brief", input="hi")
assert r.output_text == "from the anthropic server" and r.usage.input_tokens == 11, r
with c.responses.stream(model="claude-sonnet-4-5", input="hi") as s:
    deltas = "".join(e.delta for e in s if e.type == "response.output_text.delta")
    final = s.get_final_response()
assert deltas == final.output_text == "from the anthropic server", (deltas, final)
assert final.status == "completed" and final.usage.output_tokens == 5, final
print(f"openai {openai.__version__}: responses (create, stream) through an api = anthropic proxy OK")
PY
codex_exec "$anthropic_url" "run the e2e tool" claude-sonnet-4-5
tr "\n" " " < "$work/codex-last.txt" | grep -q "tool said: .*warden-e2e-tool" \
  || { echo "e2e: codex said:"; cat "$work/codex-last.txt" "$work/codex.out" "$work/anthropic.log"; exit 1; }
python3 - "$arecord" <<'PY'
import json, sys
every = [json.loads(line) for line in open(sys.argv[1])]
assert all(c["headers"].get("x-api-key") == "sk-ant-e2e" for c in every), "the provider key is sent as x-api-key"
assert all(c["headers"].get("anthropic-version") for c in every), every
calls = [c for c in every if c["headers"].get("originator", "").startswith("codex")]
assert len(calls) >= 2, every
assert all(c["model"] == "claude-sonnet-4-5" and c["stream"] for c in calls), calls
assert all(c["system"] for c in calls), "Codex's instructions arrive as the system prompt"
results = [c["tool_result"] for c in calls if c["tool_result"]]
assert any("warden-e2e-tool" in r for r in results), results
print(f"anthropic server: {len(calls)} Messages requests from Codex, the tool_result among them")
PY

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

echo "== agent CLIs as providers: Claude Code and Codex CLI run by a second proxy (api = \"command\")"
# The second proxy runs the real CLIs once per request; they answer offline through the
# first proxy's mock: Claude Code through /v1/messages (ANTHROPIC_BASE_URL), Codex through
# /v1/responses (its private CODEX_HOME, as for codex_exec above). The openai SDK drives it.
cli_home=$work/home-clis
mkdir -p "$cli_home" "$work/codex-home"
cat > "$work/codex-home/config.toml" <<TOML
model = "gpt-5"
model_provider = "warden"

[model_providers.warden]
name = "warden"
base_url = "$mock_url/v1"
env_key = "WARDEN_E2E_CODEX_KEY"
wire_api = "responses"
TOML
cat > "$cli_home/warden.toml" <<TOML
[[providers]]
name = "claude"
api = "command"
preset = "claude-code"
models = ["claude-code", "claude-code/*"]
env = ["ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "DISABLE_TELEMETRY", "DISABLE_ERROR_REPORTING", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"]
max_concurrent = 2
timeout = 180

[[providers]]
name = "codex"
api = "command"
preset = "codex"
models = ["codex", "codex/*"]
env = ["CODEX_HOME", "WARDEN_E2E_CODEX_KEY"]
max_concurrent = 2
timeout = 180
TOML
: > "$cli_home.out"
env -i PATH="$(dirname "$claude_bin"):$(dirname "$CODEX"):$PATH" HOME="$claude_home" LANG=C.UTF-8 \
  ANTHROPIC_BASE_URL="$mock_url" ANTHROPIC_API_KEY=anything DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1 \
  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 CODEX_HOME="$work/codex-home" WARDEN_E2E_CODEX_KEY=unused \
  "$PROXY" --home "$cli_home" --port 0 > "$cli_home.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  clis_url=$(sed -n 's/^listening on //p' "$cli_home.out" | head -1)
  [ -n "$clis_url" ] && break
  sleep 0.1
done
[ -n "$clis_url" ] || { echo "e2e: the agent-CLI proxy did not start:"; cat "$cli_home.out"; exit 1; }
env -i PATH="$(dirname "$claude_bin"):$(dirname "$CODEX"):$PATH" HOME="$claude_home" \
  target/debug/preflight --home "$cli_home" --only upstream > "$work/clis-preflight.txt" 2>&1 \
  || { echo "e2e: preflight upstream on the agent CLIs:"; cat "$work/clis-preflight.txt"; exit 1; }
python3 - "$clis_url" <<'PY' || { echo "e2e: the agent CLIs through warden:"; tail -20 "$cli_home/logs/proxy.log"; exit 1; }
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", timeout=180)
for model in ["claude-code", "claude-code/sonnet", "codex", "codex/gpt-5"]:
    prompt = f"hello warden from {model}"
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
    # The mock echoes the last user message, which ends with the prompt.
    assert r.choices[0].message.content.rstrip().endswith(prompt), (model, r)
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, (model, r.usage)
    chunks = list(client.chat.completions.create(
        model=model, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.rstrip().endswith(prompt), (model, text)
    assert chunks[-1].usage and chunks[-1].usage.prompt_tokens > 0, (model, chunks[-1])
    print(f"{model}: answered, streamed in {len(chunks)} chunks, usage reported")
PY
grep -q '"claude":{[^}]*"in_flight":0' <(curl -sf "$clis_url/health") \
  || { echo "e2e: a CLI is still counted in flight:"; curl -sf "$clis_url/health"; exit 1; }
grep -q "answers --version" "$work/clis-preflight.txt"
echo "claude-code and codex presets: the openai SDK answered by the real CLIs, with and without streaming"

echo "== nats-py (the example of docs/nats.md) through a proxy on the built-in upstream"
nats_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
nats-server -a 127.0.0.1 -p "$nats_port" > "$work/nats.log" 2>&1 &
pids+=($!)
WARDEN_NATS_URL="nats://127.0.0.1:$nats_port" start_proxy nats
nats_url=$url
for _ in $(seq 100); do
  curl -sf "$nats_url/health" | grep -q '"state":"connected"' && break
  sleep 0.1
done
curl -sf "$nats_url/health" | grep -q '"state":"connected"' \
  || { echo "e2e: the proxy did not connect to nats-server"; cat "$work/nats.log"; exit 1; }
said=$(python3 tests/sdk/nats_example.py "nats://127.0.0.1:$nats_port")
# The mock echoes the last user message, once answered and once streamed.
[ "$said" = "$(printf 'hi\nhi')" ] || { echo "e2e: unexpected nats-py output: $said"; exit 1; }
echo "nats-py: request/reply and a stream answered over NATS"

echo "== promtool check metrics"
curl -sf "$json_url/metrics" | promtool check metrics
curl -sf "$responses_url/metrics" | promtool check metrics  # with the prompt gauges
echo "promtool: /metrics accepted"

# Embeddings, legacy completions and pass-through with real clients (its own script).
bash scripts/e2e-openai-api.sh
# Client keys with real clients (its own script).
bash scripts/e2e-keys.sh
# Server tools over NATS with the example tool service (its own script).
bash scripts/e2e-tools.sh
echo "e2e: all passed"
