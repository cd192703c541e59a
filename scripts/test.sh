#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run calls it): installs what the
# integration tests start as real processes when it is missing, then runs
# `cargo test --locked` with any arguments given (e.g. `scripts/test.sh --test it nats::`).
#   - nats-server (Debian): tests/it/nats.rs starts its own on a free port;
#   - chromium (Debian): tests/it/ui.rs renders the status page headless;
#   - python3: tests/it/concurrent_operators.rs measures a child's peak RSS with it, and a
#     process.rs unit test uses it for a process whose main thread exits first.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
command -v chromium >/dev/null || missing+=(chromium)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]} (Debian packages)"
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
fi
exec cargo test --locked "$@"
