#!/usr/bin/env bash
# benches/instructions.sh PROXY [N] — user-space instructions per proxied request, counted by
# valgrind's callgrind: deterministic, so a loaded machine does not blur it (unlike req/s).
# Runs PROXY twice under callgrind in front of the nginx fixed-answer upstream: once with no
# request and once with N sequential keep-alive chat requests (default 2000); prints
# (total(N) - total(0)) / N, and the same for calls to the C allocator (malloc, calloc,
# realloc, ...: allocations per request, counted from callgrind's call counts by
# benches/callgrind_allocs.py). Compare two builds by running it on each.
#   benches/instructions.sh target/release/proxy
#   CALLGRIND_KEEP=DIR benches/instructions.sh ...   also keeps both callgrind files in DIR
#     (callgrind_annotate DIR/callgrind.N: where the instructions go, by function)
# Needs valgrind and nginx (Debian); loopback only; stops what it started.
set -euo pipefail
BIN=$(realpath "${1:?usage: benches/instructions.sh PROXY [N]}")
N=${2:-2000}
cd "$(dirname "$0")/.."
. benches/lib.sh
need_apt valgrind:valgrind nginx:nginx-light
start_nginx

read -r zero zero_allocs < <(callgrind_total "$BIN" "$work/home0" 0)
read -r many many_allocs < <(callgrind_total "$BIN" "$work/home$N" "$N")
echo "$BIN: $(((many - zero) / N)) instructions and $(((many_allocs - zero_allocs) / N)) allocations per request (callgrind, N=$N)"
