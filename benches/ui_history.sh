#!/usr/bin/env bash
# benches/ui_history.sh — what the status page's history ring costs in memory (goal:
# "RSS after an hour of history within 1 MiB of RSS without it").
#
# Two release proxies on the built-in mock, identical but for `server.ui` (true: the
# 5-s sampler fills the 180-sample ring; false: no sampler, no ring), receive the same
# light traffic (UI_RPS requests/s each, a bad request now and then) for UI_SECS seconds.
# VmRSS of both is read every UI_EVERY seconds; the table and the final difference go to
# benches/results/ui-history.md. Loopback only; everything started is stopped on exit.
#
# Env: UI_SECS=3600, UI_EVERY=300, UI_RPS=10, UI_PROXY=path of a release proxy (skips the build).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${UI_SECS:-3600}
EVERY=${UI_EVERY:-300}
RPS=${UI_RPS:-10}
OUT=${UI_OUT:-benches/results/ui-history.md}
. benches/lib.sh

if [ -n "${UI_PROXY:-}" ]; then
  PROXY=$UI_PROXY # a release binary built already
else
  cargo build --release --locked --bin proxy
  PROXY=target/release/proxy
fi

# start NAME UI: a proxy with server.ui = UI; sets $url and $pid.
start() {
  mkdir -p "$work/$1"
  printf '[server]\nui = %s\n' "$2" >"$work/$1/warden.toml"
  local port
  port=$(free_port)
  "$PROXY" --home "$work/$1" --port "$port" >"$work/$1.out" 2>&1 &
  pid=$!
  pids+=("$pid")
  url="http://127.0.0.1:$port"
  wait_http "$url/health/ready" || { cat "$work/$1.out"; exit 1; }
}
start with true
with_pid=$pid with_url=$url
start without false
without_pid=$pid without_url=$url

python3 - "$SECS" "$EVERY" "$RPS" "$with_url" "$with_pid" "$without_url" "$without_pid" >"$work/table" <<'EOF'
import http.client, json, sys, time, urllib.parse
secs, every, rps = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
targets = [(sys.argv[4], int(sys.argv[5])), (sys.argv[6], int(sys.argv[7]))]

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")

conns = []
for url, _ in targets:
    u = urllib.parse.urlparse(url)
    conns.append(http.client.HTTPConnection(u.hostname, u.port, timeout=10))
good = json.dumps({"model": "gpt-5", "messages": [{"role": "user", "content": "hello"}]})
bad = json.dumps({"messages": "not a list"})

def send(conn, body):
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = conn.getresponse()
    r.read()
    return r.status

print("| elapsed s | RSS with history (KiB) | RSS without (KiB) | difference (KiB) |")
print("| --- | --- | --- | --- |")
start = time.monotonic()
next_report = 0.0
sent = 0
while True:
    elapsed = time.monotonic() - start
    if elapsed >= next_report:
        a, b = rss_kib(targets[0][1]), rss_kib(targets[1][1])
        print(f"| {int(elapsed)} | {a} | {b} | {a - b} |", flush=True)
        next_report += every
    if elapsed >= secs:
        break
    body = bad if sent % 20 == 19 else good
    for conn in conns:
        send(conn, body)
    sent += 1
    # Paced: the next request is due at sent / rps seconds after the start.
    delay = sent / rps - (time.monotonic() - start)
    if delay > 0:
        time.sleep(delay)
print(f"\nrequests sent to each: {sent}")
EOF
samples=$(curl -fs "$with_url/ui/history.json" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(len(d["samples"]) if isinstance(d, dict) else len(d))')
last=$(tail -n 3 "$work/table" | grep '^|' | tail -1 | awk -F'|' '{gsub(/ /,"",$5); print $5}')
{
  echo "# Status-page history: RSS with vs without"
  echo
  echo "benches/ui_history.sh, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, release build, built-in mock,"
  echo "${RPS} requests/s to each proxy for ${SECS} s (every 20th a 400), load average at the end:"
  echo "$(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  cat "$work/table"
  echo
  echo "- samples in the ring at the end: ${samples} (capacity 180)"
  echo "- RSS difference at the end: **${last} KiB** (goal: within 1 MiB = 1024 KiB)"
} >"$OUT"
cat "$OUT"
