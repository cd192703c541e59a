"""Drives the warden proxy with the official `openai` Python SDK (v2), unchanged.

Usage: python3 openai_sdk_check.py BASE_URL EXPECT
  BASE_URL  the proxy's URL, e.g. http://127.0.0.1:8000
  EXPECT    "echo"      (built-in mock upstream: replies echo the prompt)
            "fixed"     (nginx fixed-answer upstream: reply is "from nginx")
            "responses" (tests/sdk/responses_server.py behind api = "responses")
Exits non-zero with a message on the first mismatch.
"""
import sys

import openai

base, expect = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
assert openai.__version__.startswith("2."), f"expected openai v2, got {openai.__version__}"

models = [m.id for m in client.models.list()]
assert models, "no models listed"

prompt = "hello from the openai sdk"
want = {"echo": prompt, "fixed": "from nginx", "responses": "from the responses server"}[expect]

reply = client.chat.completions.create(model=models[0], messages=[{"role": "user", "content": prompt}])
assert reply.choices[0].message.content == want, reply
assert reply.usage and reply.usage.completion_tokens > 0, reply.usage

text, usage, finishes = "", None, 0
stream = client.chat.completions.create(
    model=models[0],
    messages=[{"role": "user", "content": prompt}],
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        text += choice.delta.content or ""
        finishes += choice.finish_reason is not None
assert text == want, repr(text)
assert finishes == 1, finishes
assert usage is not None and usage.total_tokens > 0, usage

try:
    client.chat.completions.create(model=models[0], messages="not a list")
    raise AssertionError("a bad request was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400

# The request id every answer carries (the SDK's `_request_id`).
assert reply._request_id, "no x-request-id on the answer"

# models.retrieve (GET /v1/models/{id}) and its 404.
assert client.models.retrieve(models[0]).id == models[0]
try:
    client.models.retrieve("no-such-model")
    raise AssertionError("an unknown model was found")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e

# The Responses API: create, and the `responses.stream` helper with its events.
response = client.responses.create(model=models[0], input=prompt)
assert response.output_text == want, response
assert response.usage and response.usage.output_tokens > 0, response.usage
deltas, kinds = "", []
with client.responses.stream(model=models[0], input=prompt) as stream:
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas += event.delta
    final = stream.get_final_response()
assert deltas == want, (deltas, kinds)
assert final.output_text == want, final
assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds

print(f"openai {openai.__version__}: models={models} chat, streaming with usage, errors, "
      f"models.retrieve and responses (create, stream) OK ({expect})")
