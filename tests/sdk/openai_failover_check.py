"""The official `openai` Python SDK (v2) through two providers, the first one dead
(its port closed): every request must be answered, by the second (docs/contract.md §11).

Usage: python3 openai_failover_check.py BASE_URL SECOND N
  BASE_URL  the proxy's URL, e.g. http://127.0.0.1:8000
  SECOND    the name of the provider that must answer (x-warden-provider)
  N         how many requests of each kind (non-streaming, streaming)
The SDK's own retries are off (max_retries=0): any failure the proxy lets through
fails this check. Exits non-zero with a message on the first mismatch.
"""
import sys

import openai

base, second, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
assert openai.__version__.startswith("2."), f"expected openai v2, got {openai.__version__}"

answered = 0
for i in range(n):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-5", messages=[{"role": "user", "content": f"hello {i}"}]
    )
    provider = raw.headers.get("x-warden-provider")
    assert provider == second, f"request {i} answered by {provider!r}, want {second!r}"
    reply = raw.parse()
    assert reply.choices[0].message.content, reply
    answered += 1

for i in range(n):
    with client.chat.completions.with_streaming_response.create(
        model="gpt-5",
        messages=[{"role": "user", "content": f"stream {i}"}],
        stream=True,
    ) as response:
        provider = response.headers.get("x-warden-provider")
        assert provider == second, f"stream {i} answered by {provider!r}, want {second!r}"
        text = "".join(
            choice.delta.content or "" for chunk in response.parse() for choice in chunk.choices
        )
    assert text, f"stream {i} was empty"
    answered += 1

print(f"openai SDK {openai.__version__}: {answered}/{2 * n} answered by {second} with the first provider dead")
