-- wrk script for benches/run.sh: POSTs a small Chat Completions request.
--
--   wrk ... -s benches/wrk/chat.lua URL -- [json|stream] [MODEL] [DELAY_MS]
--
-- `stream` asks for an SSE answer (with stream_options.include_usage); MODEL is the
-- "model" field (the bench's LiteLLM routes by it; nginx and warden ignore it);
-- DELAY_MS > 0 makes each connection wait that long between requests (rate-limited
-- soak). BENCH_BEARER in the environment replaces the bearer token; BENCH_KEYS names a
-- file of client keys, one a line: then each request sends the next key in turn, cycling
-- (benches/keys.sh: one client per key). done() prints one machine-readable line, latencies in microseconds:
--   RESULT rps=<req/s> p50_us=<n> p99_us=<n> requests=<n> errors=<n> non2xx=<n>
local body, req
local reqs, next_req = nil, 0
local delay_ms = 0

function init(args)
  local stream = args[1] == "stream"
  local model = args[2] or (stream and "nginx-sse" or "nginx-json")
  delay_ms = tonumber(args[3] or "0") or 0
  if stream then
    body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"hi"}],'
      .. '"stream":true,"stream_options":{"include_usage":true}}'
  else
    body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"hi"}]}'
  end
  -- Every target gets the same bytes, bearer included: LiteLLM's proxy requires its
  -- master key and warden is started with the same token, so both authenticate.
  -- BENCH_BEARER replaces it (benches/keys-shared.sh sends a client key).
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. (os.getenv("BENCH_BEARER") or "sk-bench-0123456789"),
  }
  req = wrk.format("POST", nil, headers, body)
  local keys = os.getenv("BENCH_KEYS")
  if keys then
    -- Formatted once here, so cycling costs the load generator nothing per request.
    reqs = {}
    for key in io.lines(keys) do
      headers["Authorization"] = "Bearer " .. key
      reqs[#reqs + 1] = wrk.format("POST", nil, headers, body)
    end
    assert(#reqs > 0, "BENCH_KEYS names an empty file")
  end
end

function request()
  if reqs then
    next_req = next_req % #reqs + 1
    return reqs[next_req]
  end
  return req
end

function delay()
  return delay_ms
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT rps=%.1f p50_us=%d p99_us=%d requests=%d errors=%d non2xx=%d\n",
    summary.requests / secs,
    latency:percentile(50), latency:percentile(99),
    summary.requests,
    e.connect + e.read + e.write + e.timeout,
    e.status))
end
