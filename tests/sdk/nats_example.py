"""The nats-py example of docs/nats.md, run by scripts/e2e.sh against a
real nats-server and a proxy on the built-in mock: one request/reply, then a stream.

    python3 tests/sdk/nats_example.py [NATS_URL]      (default nats://127.0.0.1:4222)
"""
import asyncio, json, sys

import nats

URL = sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4222"


async def main():
    nc = await nats.connect(URL)
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
    msg = await nc.request("warden.chat", json.dumps(body).encode(), timeout=600)
    if msg.headers and "Nats-Service-Error-Code" in msg.headers:
        raise RuntimeError(msg.headers["Nats-Service-Error-Code"] + " " + msg.data.decode())
    print(json.loads(msg.data)["choices"][0]["message"]["content"])

    # Streaming: subscribe to an inbox, publish with it as the reply subject.
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("warden.chat", json.dumps({**body, "stream": True}).encode(), reply=inbox)
    async for m in sub.messages:
        h = m.headers or {}
        if h.get("Warden-Status") == "done":
            break
        if "Nats-Service-Error" in h:
            raise RuntimeError(m.data.decode())
        delta = json.loads(m.data)["choices"]
        print(delta[0]["delta"].get("content", "") if delta else "", end="", flush=True)
    print()
    await nc.close()


asyncio.run(asyncio.wait_for(main(), 60))
