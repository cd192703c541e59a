#!/usr/bin/env bash
# End-to-end checks of the rest of the OpenAI API (embeddings, legacy completions,
# pass-through) with real clients; scripts/e2e.sh runs it, and it runs alone too:
#   1. the openai Python SDK: embeddings.create as floats and as base64 (the SDK's
#      default), completions.create whole and streamed, audio.transcriptions.create
#      through pass-through (tests/sdk/audio_server.py behind a passthrough = true
#      provider; the multipart upload, the alias, the provider's key);
#   2. LangChain's OpenAIEmbeddings (PyPI langchain-openai), sending strings (its default
#      first tokenizes with tiktoken, whose encoding files come from the internet);
#   3. the llm CLI (PyPI llm): `llm embed` with its OpenAI embedding model pointed at
#      warden (llm's embedding models take OPENAI_BASE_URL; its extra-openai-models.yaml
#      declares chat and completion models only), and a completion model declared in
#      extra-openai-models.yaml answering through POST /v1/completions.
# Installs what it lacks from PyPI (pinned ranges). Everything listens on 127.0.0.1 and is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -c 'import openai, sys; sys.exit(0 if openai.__version__.startswith("2.") else 1)' 2>/dev/null \
  || python3 -m pip install -q 'openai>=2,<3'
python3 -c 'import langchain_openai' 2>/dev/null || python3 -m pip install -q 'langchain-openai>=1,<2'
command -v llm >/dev/null || python3 -m pip install -q 'llm>=0.32,<1'

cargo build --locked --bin proxy
PROXY=target/debug/proxy
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# Starts a proxy with the warden.toml given on stdin (own home, port 0); sets $url.
start_proxy() {
  local home=$work/home-$1
  mkdir -p "$home"; cat > "$home/warden.toml"; : > "$home.out"
  env -u OPENAI_BASE_URL AUDIO_KEY=sk-e2e-provider "$PROXY" --home "$home" --port 0 > "$home.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    url=$(sed -n 's/^listening on //p' "$home.out" | head -1)
    [ -n "$url" ] && return 0
    sleep 0.1
  done
  echo "e2e: proxy did not start:"; cat "$home.out"; exit 1
}

start_proxy mock < /dev/null
mock_url=$url

record=$work/audio.jsonl
python3 tests/sdk/audio_server.py "$record" > "$work/audio.port" 2> "$work/audio.log" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/audio.port" ] && break; sleep 0.1; done
audio_port=$(head -1 "$work/audio.port")
[ -n "$audio_port" ] || { echo "e2e: audio_server.py did not start:"; cat "$work/audio.log"; exit 1; }
start_proxy passthrough <<TOML
[[providers]]
name = "chat"
url = "mock"

[[providers]]
name = "speech"
url = "http://127.0.0.1:$audio_port/v1"
api_key_env = "AUDIO_KEY"
models = ["whisper-*"]
priority = 1
passthrough = true

[aliases]
ears = "whisper-1"
TOML
passthrough_url=$url

echo "== openai SDK and LangChain: embeddings, completions, audio through pass-through"
python3 tests/sdk/openai_api_check.py "$mock_url" "$passthrough_url" "$record"

echo "== llm CLI: llm embed, and a completion model from extra-openai-models.yaml"
export LLM_USER_PATH=$work/llm
mkdir -p "$LLM_USER_PATH"
cat > "$LLM_USER_PATH/extra-openai-models.yaml" <<YAML
- model_id: warden-instruct
  model_name: gpt-3.5-turbo-instruct
  api_base: "$mock_url/v1"
  completion: true
YAML
vector=$(OPENAI_BASE_URL="$mock_url/v1" OPENAI_API_KEY=unused llm embed -m 3-small -c "hello from llm")
python3 - "$vector" <<'PY'
import json, math, sys
v = json.loads(sys.argv[1])
assert len(v) == 1536 and abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4, len(v)
PY
said=$(llm -m warden-instruct --no-log "say this through legacy completions")
[ "$said" = "say this through legacy completions" ] || { echo "e2e: llm said: $said"; exit 1; }
grep -q 'route="/v1/completions" status=200' "$work/home-mock/logs/proxy.log" \
  || { echo "e2e: no /v1/completions line in the access log"; tail "$work/home-mock/logs/proxy.log"; exit 1; }
echo "llm $(llm --version | awk '{print $NF}'): llm embed (1536 dimensions, unit length) and a completion model OK"
echo "e2e-openai-api: all passed"
