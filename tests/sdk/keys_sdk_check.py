"""Client keys (docs/keys.md) with the official openai and anthropic Python SDKs, unchanged.

Usage: python3 keys_sdk_check.py BASE_URL RPM2_KEY ANTHROPIC_KEY
  BASE_URL       the proxy's URL, e.g. http://127.0.0.1:8000 (built-in mock upstream)
  RPM2_KEY       a key created with --rpm 2
  ANTHROPIC_KEY  another key, for the anthropic SDK
The openai SDK reads the x-ratelimit-* headers (with_raw_response); its third call in a
minute is refused 429 with Retry-After, and the SDK waits that long, retries and succeeds
(every response it got is recorded by an httpx hook, so the retry is seen, not assumed).
The anthropic SDK answers with its key as x-api-key, and a wrong key is its
AuthenticationError. Exits non-zero with a message on the first mismatch.
"""
import sys
import time

import anthropic
import httpx
import openai

base, rpm_key, anthropic_key = sys.argv[1], sys.argv[2], sys.argv[3]

seen = []  # (status, Retry-After, x-ratelimit-remaining-requests) of every response


def record(response):
    seen.append((
        response.status_code,
        response.headers.get("retry-after"),
        response.headers.get("x-ratelimit-remaining-requests"),
    ))


client = openai.OpenAI(
    base_url=base + "/v1",
    api_key=rpm_key,
    max_retries=2,
    timeout=120,
    http_client=httpx.Client(event_hooks={"response": [record]}),
)
messages = [{"role": "user", "content": "hello from a key"}]

for remaining in ["1", "0"]:
    raw = client.chat.completions.with_raw_response.create(model="gpt-5", messages=messages)
    h = raw.headers
    assert h["x-ratelimit-limit-requests"] == "2", dict(h)
    assert h["x-ratelimit-remaining-requests"] == remaining, dict(h)
    assert h["x-ratelimit-reset-requests"].endswith("s"), dict(h)
    completion = raw.parse()
    assert completion.choices[0].message.content == "hello from a key", completion
    assert raw.retries_taken == 0, raw.retries_taken
print("openai SDK: x-ratelimit-limit-requests 2, remaining 1 then 0, reset given")

started = time.monotonic()
raw = client.chat.completions.with_raw_response.create(model="gpt-5", messages=messages)
waited = time.monotonic() - started
completion = raw.parse()
assert completion.choices[0].message.content == "hello from a key", completion
assert raw.retries_taken == 1, f"the SDK retried {raw.retries_taken} times; responses: {seen}"
refused = [s for s in seen if s[0] == 429]
assert len(refused) == 1, seen
retry_after = int(refused[0][1])
assert 1 <= retry_after <= 60, refused
assert refused[0][2] == "0", f"the 429 carries x-ratelimit-remaining-requests: {refused}"
assert waited >= retry_after - 1, (waited, retry_after)
assert [s[0] for s in seen] == [200, 200, 429, 200], seen
print(f"openai SDK: the third call got 429 with Retry-After {retry_after}, "
      f"waited {waited:.1f} s, retried once and succeeded")

claude = anthropic.Anthropic(base_url=base, api_key=anthropic_key, max_retries=0)
prompt = "hello from the anthropic sdk with a key"
msg = claude.messages.create(
    model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": prompt}]
)
assert msg.content[0].text == prompt, msg
with claude.messages.stream(
    model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": prompt}]
) as stream:
    text = "".join(stream.text_stream)
assert text == prompt, text
wrong = anthropic.Anthropic(base_url=base, api_key="wk-not-a-key", max_retries=0)
try:
    wrong.messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    raise AssertionError("a wrong key was answered")
except anthropic.AuthenticationError as e:
    assert e.status_code == 401, e
    assert "wk-not-a-key" not in str(e), "the refusal repeats the key"
print("anthropic SDK: answered with a key as x-api-key (plain and streamed); a wrong key is 401")
