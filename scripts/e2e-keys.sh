#!/usr/bin/env bash
# End-to-end checks of client keys (docs/keys.md) with real clients; scripts/e2e.sh runs
# it, and it runs alone too. One proxy on the built-in upstream with three keys:
#   1. the openai Python SDK with a key of rpm = 2 reads the x-ratelimit-* headers
#      (with_raw_response); its third call is refused 429 with Retry-After, and the SDK
#      waits that long, retries once and succeeds (tests/sdk/keys_sdk_check.py; about a
#      minute, the rpm window);
#   2. the anthropic Python SDK with a key as x-api-key, plain and streamed; a wrong key
#      is its AuthenticationError (401);
#   3. Codex CLI (`codex exec`) with a key, through /v1/responses;
#   then `proxy usage --json` has each key's requests (and the one refusal), and the
#   proxy's log holds none of the secrets.
# Installs what it lacks (openai and anthropic from PyPI; Codex CLI, pinned, from npm into
# target/e2e/node, as scripts/e2e.sh does). Everything listens on 127.0.0.1 and is stopped
# on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -c 'import openai, sys; sys.exit(0 if openai.__version__.startswith("2.") else 1)' 2>/dev/null \
  || python3 -m pip install -q 'openai>=2,<3'
python3 -c 'import anthropic' 2>/dev/null || python3 -m pip install -q anthropic
node_dir=target/e2e/node
CODEX=$PWD/$node_dir/node_modules/.bin/codex
if [ ! -x "$CODEX" ]; then
  echo "e2e-keys: installing @openai/codex (npm) into $node_dir"
  command -v npm >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
  mkdir -p "$node_dir"
  npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error \
    @openai/codex@0.171.0 openai@6.49.0 >/dev/null
fi

cargo build --locked --bin proxy
PROXY=target/debug/proxy
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

home=$work/home
mkdir -p "$home"
# Keys first: with one in keys.toml the proxy requires a key from its start.
key() { "$PROXY" --home "$home" keys create "$@" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'; }
sdk_key=$(key sdk --rpm 2)
claude_key=$(key claude)
codex_key=$(key codex --models 'gpt-5,gpt-5-*')
: > "$home.out"
env -u OPENAI_BASE_URL "$PROXY" --home "$home" --port 0 > "$home.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  url=$(sed -n 's/^listening on //p' "$home.out" | head -1)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "e2e-keys: proxy did not start:"; cat "$home.out"; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/v1/chat/completions" \
  -H 'content-type: application/json' -d '{"model":"gpt-5","messages":[{"role":"user","content":"hi"}]}')
[ "$code" = 401 ] || { echo "e2e-keys: a request without a key got $code, not 401"; exit 1; }

echo "== openai and anthropic Python SDKs with keys"
python3 tests/sdk/keys_sdk_check.py "$url" "$sdk_key" "$claude_key"

echo "== Codex CLI with a key"
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
if ! (cd "$work/codex-wd" && CODEX_HOME="$chome" WARDEN_E2E_CODEX_KEY="$codex_key" timeout 180 \
      "$CODEX" exec --skip-git-repo-check --ephemeral --color never \
      --dangerously-bypass-approvals-and-sandbox -o "$work/codex-last.txt" "hello warden from codex with a key" \
      < /dev/null > "$work/codex.out" 2>&1); then
  echo "e2e-keys: codex exec failed:"; cat "$work/codex.out"; exit 1
fi
grep -qx "hello warden from codex with a key" "$work/codex-last.txt" \
  || { echo "e2e-keys: codex said:"; cat "$work/codex-last.txt" "$work/codex.out"; exit 1; }
echo "codex $("$CODEX" --version | awk '{print $2}'): answered with its wk- key"

echo "== proxy usage"
# The rows are written every 200 ms: wait (bounded) until the three keys have theirs.
for _ in $(seq 50); do
  "$PROXY" --home "$home" usage --json > "$work/usage.json"
  python3 - "$work/usage.json" <<'PY' && break
import json, sys
rows = {r["key"]: r for r in json.load(open(sys.argv[1]))}
sys.exit(0 if {"sdk", "claude", "codex"} <= rows.keys() and rows["sdk"]["requests"] >= 3 else 1)
PY
  sleep 0.2
done
python3 - "$work/usage.json" <<'PY'
import json, sys
rows = {r["key"]: r for r in json.load(open(sys.argv[1]))}
sdk, claude, codex = rows["sdk"], rows["claude"], rows["codex"]
assert (sdk["requests"], sdk["refused"]) == (3, 1), sdk
assert (claude["requests"], claude["refused"]) == (2, 0), claude
assert codex["requests"] >= 1 and codex["refused"] == 0, codex
for r in (sdk, claude, codex):
    assert r["input_tokens"] > 0 and r["output_tokens"] > 0, r
print("proxy usage:", ", ".join(f'{k} {r["requests"]} answered/{r["refused"]} refused' for k, r in sorted(rows.items())))
PY
for secret in "$sdk_key" "$claude_key" "$codex_key"; do
  if grep -rqF -- "$secret" "$home.out" "$home/logs" 2>/dev/null; then
    echo "e2e-keys: a secret is in the proxy's output or logs"; exit 1
  fi
done
echo "e2e-keys: all passed"
