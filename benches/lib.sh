# benches/lib.sh — sourced (not run) by the bench scripts, from the repository root:
# a work directory and the PIDs to stop on exit, free loopback ports, waiting for an HTTP
# endpoint, the Debian packages a bench needs, the nginx fixed-answer upstream, and what
# several benches share: a wrk run of the chat request, client keys, a callgrind count.

work=$(mktemp -d)
pids=()
# Stops what the script started (each PID it recorded) and removes its files.
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http URL [TRIES]: until URL answers 2xx, every 50 ms (default 200 tries = 10 s).
wait_http() { for _ in $(seq 1 "${2:-200}"); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done; return 1; }

# need_apt CMD:PACKAGE ...: installs the Debian package of every command that is missing.
need_apt() {
  local missing=() pair
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# start_nginx: the fixed-answer upstream (benches/nginx/fixed-upstream.conf) on a free
# port; sets nginx_port (chat.completion and embeddings at /json/v1, SSE at /sse/v1).
start_nginx() {
  nginx_port=$(free_port)
  mkdir -p "$work/nginx"
  sed "s/@PORT@/$nginx_port/g; s#@WORK@#$work/nginx#g" benches/nginx/fixed-upstream.conf >"$work/nginx/nginx.conf"
  # The fixed embeddings answer: two unit vectors of 1536 dimensions.
  mkdir -p "$work/nginx/json/v1"
  python3 -c 'import json, math; v=[math.sin(i)/math.sqrt(768) for i in range(1536)]; print(json.dumps({"object":"list","data":[{"object":"embedding","index":i,"embedding":v} for i in range(2)],"model":"text-embedding-3-small","usage":{"prompt_tokens":9,"total_tokens":9}}))' >"$work/nginx/json/v1/embeddings"
  # nginx's worker (nobody, when started by root) reads it: the path must be traversable.
  chmod 711 "$work" "$work/nginx"
  chmod -R a+rX "$work/nginx/json"
  nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -e "$work/nginx/error.log" &
  pids+=($!)
  wait_http "http://127.0.0.1:$nginx_port/json/v1/models"
}

# wrk_chat URL CONNECTIONS SECS: wrk (one thread) POSTing benches/wrk/chat.lua's request to
# URL/v1/chat/completions for SECS s; prints "rps p50_us p99_us errors requests" (errors:
# socket errors and non-2xx answers). BENCH_BEARER (one key) or BENCH_KEYS (a file of keys,
# cycled) in the environment choose what each request sends as its bearer. The array
# wrk_pin (empty unless a script sets it, e.g. wrk_pin=(taskset -c 0)) prefixes the command.
wrk_pin=()
wrk_chat() {
  "${wrk_pin[@]}" wrk -t1 -c"$2" -d"$3"s --timeout 10s -s benches/wrk/chat.lua "$1/v1/chat/completions" -- json \
    | awk '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                       print v["rps"], v["p50_us"], v["p99_us"], v["errors"] + v["non2xx"], v["requests"] }'
}

# create_keys PROXY HOME COUNT PREFIX [ARGS...]: `proxy keys create PREFIX-1 ARGS` .. PREFIX-COUNT
# in HOME (the real command, so keys.toml is what a user's would be); prints the secrets, one a line.
create_keys() {
  local bin=$1 home=$2 count=$3 prefix=$4 i
  shift 4
  for i in $(seq 1 "$count"); do
    "$bin" --home "$home" keys create "$prefix-$i" "$@" 2>"$work/create_keys.err" \
      || { cat "$work/create_keys.err" >&2; return 1; }
  done
}

# callgrind_total PROXY HOME N [KEYS] [NAME]: callgrind's instruction total and allocator calls
# ("instructions allocations") for PROXY serving N sequential keep-alive chat requests
# from HOME, in front of the nginx upstream (start_nginx first); each request sends the next
# secret of the file KEYS as its bearer (cycling), else $BENCH_BEARER, else none. The file
# is $work/NAME.callgrind.N (NAME omitted: callgrind.N); CALLGRIND_KEEP=DIR copies it there.
callgrind_total() {
  local bin=$1 home=$2 n=$3 keys=${4:-} port out pid
  out=$work/${5:+$5.}callgrind.$n
  port=$(free_port)
  mkdir -p "$home"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --home "$home" \
    --port "$port" --upstream "http://127.0.0.1:$nginx_port/json/v1" >"$out.log" 2>&1 &
  pid=$!
  wait_http "http://127.0.0.1:$port/health/ready" 1200 || { cat "$out.log" >&2; exit 1; }
  python3 - "$port" "$n" "$keys" <<'PY'
import http.client, itertools, os, sys
port, n, keys = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
secrets = [l.strip() for l in open(keys) if l.strip()] if keys else [os.environ.get("BENCH_BEARER")]
c = http.client.HTTPConnection("127.0.0.1", port)
body = '{"model":"m","messages":[{"role":"user","content":"hi"}]}'
for _, secret in zip(range(n), itertools.cycle(secrets)):
    headers = {"content-type": "application/json"}
    if secret:
        headers["authorization"] = "Bearer " + secret
    c.request("POST", "/v1/chat/completions", body, headers)
    r = c.getresponse(); r.read(); assert r.status == 200, r.status
PY
  kill -TERM "$pid"
  wait "$pid" || true
  if [ -n "${CALLGRIND_KEEP:-}" ]; then mkdir -p "$CALLGRIND_KEEP" && cp "$out" "$CALLGRIND_KEEP/"; fi
  echo "$(awk '/^(summary|totals):/ {print $2; exit}' "$out") $(python3 benches/callgrind_allocs.py "$out")"
}

# cpu_ticks PID: the process's CPU time so far, user + system, in clock ticks (/proc).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
