# benches/lib.sh — sourced (not run) by the bench scripts, from the repository root:
# a work directory and the PIDs to stop on exit, free loopback ports, waiting for an HTTP
# endpoint, the Debian packages a bench needs, and the nginx fixed-answer upstream.

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
