"""Drives warden's `POST /v1/messages` with the official `anthropic` Python SDK, unchanged.

Usage: python3 anthropic_sdk_check.py BASE_URL EXPECT [MODE]
  BASE_URL  the proxy's URL, e.g. http://127.0.0.1:8000
  EXPECT    "echo"  (built-in mock: replies echo the prompt)
            "fixed" (nginx fixed-answer Chat Completions upstream: "from nginx")
  MODE      "both" (default), "plain" or "stream": which calls to make
Exits non-zero with a message on the first mismatch.
"""
import sys

import anthropic

base, expect = sys.argv[1], sys.argv[2]
mode = sys.argv[3] if len(sys.argv) > 3 else "both"
# The key is what Anthropic clients send as x-api-key; the proxy checks it only when
# it has a token configured.
client = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0)

prompt = "hello from the anthropic sdk"
want = {"echo": prompt, "fixed": "from nginx"}[expect]
model = "claude-sonnet-4-5"

if mode in ("both", "plain"):
    msg = client.messages.create(
        model=model,
        max_tokens=64,
        system="be brief",
        messages=[{"role": "user", "content": prompt}],
    )
    assert msg.type == "message" and msg.role == "assistant", msg
    assert msg.content[0].type == "text" and msg.content[0].text == want, msg
    assert msg.stop_reason == "end_turn", msg
    assert msg.usage.output_tokens > 0 and msg.usage.input_tokens > 0, msg.usage

if mode in ("both", "stream"):
    deltas = 0
    with client.messages.stream(
        model=model, max_tokens=64, messages=[{"role": "user", "content": prompt}]
    ) as stream:
        for text in stream.text_stream:
            deltas += 1
        final = stream.get_final_message()
    assert deltas >= 1, deltas
    assert final.content[0].text == want, final
    assert final.stop_reason == "end_turn", final
    assert final.usage.output_tokens > 0, final.usage

# A bad request comes back as the SDK's typed error (answered by the proxy itself).
try:
    client.messages.create(model=model, max_tokens=8, messages=[{"role": "tool", "content": "x"}])
    raise SystemExit("a bad role was accepted")
except anthropic.BadRequestError as e:
    assert e.body["type"] == "error" and e.body["error"]["type"] == "invalid_request_error", e.body

print(f"anthropic {anthropic.__version__}: messages ({mode}) through {base} OK")
