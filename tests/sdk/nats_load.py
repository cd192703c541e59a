"""A closed loop of NATS requests to `warden.chat` for a fixed time, counting what
became of each: answered, "no responders" (no proxy subscribed at that moment), or
lost (taken by a proxy and never answered: the client's timeout ran out).
scripts/restart-under-load.sh runs it while it restarts the proxy.

    python3 tests/sdk/nats_load.py NATS_URL SECONDS [CONCURRENCY=8] [TIMEOUT=5] [MAX_LOST=0]

Prints one line of counts; exits 1 on any request without a responder or with an
error reply, or when more were lost than MAX_LOST (default 0).
"""
import asyncio, json, sys, time

import nats
from nats.errors import NoRespondersError, TimeoutError

URL, SECS = sys.argv[1], float(sys.argv[2])
CONCURRENCY = int(sys.argv[3]) if len(sys.argv) > 3 else 8
TIMEOUT = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
MAX_LOST = int(sys.argv[5]) if len(sys.argv) > 5 else 0
BODY = json.dumps({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}).encode()


async def main():
    nc = await nats.connect(URL)
    counts = {"answered": 0, "no_responders": 0, "lost": 0, "errors": 0}
    end = time.monotonic() + SECS

    async def loop():
        while time.monotonic() < end:
            try:
                msg = await nc.request("warden.chat", BODY, timeout=TIMEOUT)
            except NoRespondersError:
                counts["no_responders"] += 1
                continue
            except TimeoutError:
                counts["lost"] += 1
                continue
            if msg.headers and "Nats-Service-Error-Code" in msg.headers:
                counts["errors"] += 1
            else:
                counts["answered"] += 1

    await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))
    await nc.close()
    print("nats-load: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    bad = counts["no_responders"] + counts["errors"]
    return counts["answered"] > 0 and bad == 0 and counts["lost"] <= MAX_LOST


sys.exit(0 if asyncio.run(main()) else 1)
