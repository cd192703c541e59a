#!/usr/bin/env python3
"""Start-up timings for benches/run.sh (stdlib only; prints one line of JSON).

  startup.py proxy RUNS PROXY_BIN HOME UPSTREAM
      cold start to ready: spawn `proxy --port 0`, read the "listening on" line, poll
      GET /health/ready until 200, stop it with SIGTERM; RUNS times.
  startup.py daemon RUNS DAEMON_BIN HOME PORT
      `daemon start --no-check` until /health/ready answers 200, then `daemon stop`;
      RUNS times.
  startup.py hyperfine FILE
      "median (min, max)" in ms from a `hyperfine --export-json` file.

The clock runs from just before the spawn to the first 200 from /health/ready, inside
this process, so the interpreter's own start-up is not counted.
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time


def ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def wait_ready(port: int, deadline: float) -> None:
    while not ready(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"not ready on port {port} in time")
        time.sleep(0.0005)


def proxy_cold_start(runs: int, binary: str, home: str, upstream: str) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.Popen(
            [binary, "--home", home, "--port", "0", "--upstream", upstream],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = p.stdout.readline()
        if not line.startswith("listening on "):
            p.kill()
            raise SystemExit(f"proxy did not start: {line!r}")
        port = int(line.strip().rsplit(":", 1)[1])
        wait_ready(port, time.monotonic() + 10)
        times.append((time.perf_counter() - t0) * 1000)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
    return times


def daemon_start(runs: int, binary: str, home: str, port: int) -> list[float]:
    times = []
    env = dict(os.environ)
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            [binary, "--home", home, "start", "--no-check"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=60,
            env=env,
        )
        wait_ready(port, time.monotonic() + 30)
        times.append((time.perf_counter() - t0) * 1000)
        subprocess.run(
            [binary, "--home", home, "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
    return times


def hyperfine_summary(path: str) -> str:
    r = json.load(open(path))["results"][0]
    ms = lambda s: f"{s * 1000:.1f}"
    return f"{ms(r['median'])} ms median (min {ms(r['min'])}, max {ms(r['max'])})"


def main() -> None:
    if sys.argv[1] == "hyperfine":
        print(hyperfine_summary(sys.argv[2]))
        return
    kind, runs = sys.argv[1], int(sys.argv[2])
    if kind == "proxy":
        times = proxy_cold_start(runs, *sys.argv[3:6])
    elif kind == "daemon":
        times = daemon_start(runs, sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown kind {kind}")
    print(
        json.dumps(
            {
                "runs": len(times),
                "median_ms": round(statistics.median(times), 1),
                "min_ms": round(min(times), 1),
                "max_ms": round(max(times), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
