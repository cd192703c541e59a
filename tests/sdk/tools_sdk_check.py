#!/usr/bin/env python3
"""Server tools (docs/tools.md) with the official openai Python SDK, as a new user tries
them offline: a proxy on the built-in mock upstream that declares get_weather (served by
examples/tool_service.py) and get_stock (served by nobody), and a client that brings no tool.

    python3 tests/sdk/tools_sdk_check.py http://127.0.0.1:PORT

The mock calls a tool when the last user message is `call NAME {json}` and NAME is offered,
and answers `NAME returned: RESULT` after the results (docs/gateway.md).
"""

import json
import sys

from openai import OpenAI

url = sys.argv[1]
client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
ask = 'call get_weather {"city": "Oslo"}'


def returned(text, tool):
    prefix = f"{tool} returned: "
    assert text.startswith(prefix), text
    return json.loads(text[len(prefix):])


# 1. Chat Completions: the server tool ran over NATS and the model was called again.
raw = client.chat.completions.with_raw_response.create(
    model="gpt-5", messages=[{"role": "user", "content": ask}]
)
completion = raw.parse()
assert raw.headers.get("x-warden-tool-rounds") == "2", dict(raw.headers)
message = completion.choices[0].message
assert not message.tool_calls, message
weather = returned(message.content, "get_weather")
assert weather == {"city": "Oslo", "temperature_c": 21, "conditions": "clear"}, weather
assert completion.usage.total_tokens > 0
print(f"chat: {message.content} (x-warden-tool-rounds: 2)")

# 2. Streamed: only the last round arrives, as chunks.
stream = client.chat.completions.create(
    model="gpt-5",
    messages=[{"role": "user", "content": ask}],
    stream=True,
    stream_options={"include_usage": True},
)
text, usage = "", None
for chunk in stream:
    if chunk.choices:
        assert not chunk.choices[0].delta.tool_calls, chunk
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage
assert returned(text, "get_weather") == weather, text
assert usage is not None and usage.total_tokens > 0
print("chat, streamed: the same answer")

# 3. The Responses API.
response = client.responses.create(model="gpt-5", input=ask)
assert returned(response.output_text, "get_weather") == weather, response
assert not [item for item in response.output if item.type == "function_call"], response
print("responses: the same answer")

# 4. A tool nobody serves: the model reads the error, the request succeeds.
completion = client.chat.completions.create(
    model="gpt-5", messages=[{"role": "user", "content": "call get_stock {}"}]
)
error = returned(completion.choices[0].message.content, "get_stock")
assert "no service answers" in error["error"], error
print(f"no responders: the model read {error}")

# 5. The client's own tool of the same name wins: the call comes back to the client.
own = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
raw = client.chat.completions.with_raw_response.create(
    model="gpt-5", messages=[{"role": "user", "content": ask}], tools=own
)
calls = raw.parse().choices[0].message.tool_calls
assert raw.headers.get("x-warden-tool-rounds") is None, dict(raw.headers)
assert [c.function.name for c in calls] == ["get_weather"], calls
print("a client tool of the same name: the client gets the call")

# 6. x-warden-tools: none: no server tool is offered, the mock echoes.
completion = client.chat.completions.create(
    model="gpt-5",
    messages=[{"role": "user", "content": ask}],
    extra_headers={"x-warden-tools": "none"},
)
assert completion.choices[0].message.content == ask, completion
print("x-warden-tools: none: no tool offered")
