#!/usr/bin/env python3
"""A server tool for warden (docs/tools.md): answers NATS requests on
tools.execute.get_weather and tools.execute.get_time.

    pip install nats-py
    python3 examples/tool_service.py --url nats://127.0.0.1:4222

with, in warden.toml:

    [nats]
    url = "nats://127.0.0.1:4222"

    [[tools.declare]]
    name = "get_weather"
    description = "Current weather for a city"
    parameters = { type = "object", properties = { city = { type = "string" } }, required = ["city"] }

    [[tools.declare]]
    name = "get_time"
    description = "The current UTC time"

The request's payload is the arguments the model wrote (a JSON object); the
reply must be JSON. Start several copies: they share the calls (queue group).
"""

import argparse
import asyncio
import datetime
import json
import signal

import nats


def get_weather(args):
    city = args.get("city")
    if not isinstance(city, str) or not city:
        return {"error": "city is required"}
    # A real service would ask a weather API here.
    return {"city": city, "temperature_c": 21, "conditions": "clear"}


def get_time(_args):
    return {"utc": datetime.datetime.now(datetime.timezone.utc).isoformat()}


TOOLS = {"get_weather": get_weather, "get_time": get_time}


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--subject", default="tools.execute", help="tools.subject of warden.toml")
    options = parser.parse_args()

    nc = await nats.connect(options.url, name="example tool service")

    async def handle(msg):
        name = msg.subject.rsplit(".", 1)[-1]
        try:
            args = json.loads(msg.data or b"{}")
            if not isinstance(args, dict):
                raise ValueError("the arguments must be a JSON object")
            result = TOOLS[name](args)
        except Exception as e:  # the model reads the error and can try again
            result = {"error": f"{type(e).__name__}: {e}"}
        await msg.respond(json.dumps(result).encode())

    for name in TOOLS:
        await nc.subscribe(f"{options.subject}.{name}", queue="tools", cb=handle)
    print(f"serving {', '.join(TOOLS)} on {options.subject}.* at {options.url}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
