-- wrk script for benches/embeddings.sh: POSTs a small embeddings request.
--
--   wrk ... -s benches/wrk/embeddings.lua URL -- [MODEL]
--
-- done() prints one machine-readable line, latencies in microseconds:
--   RESULT rps=<req/s> p50_us=<n> p99_us=<n> requests=<n> errors=<n> non2xx=<n>
local req

function init(args)
  local model = args[1] or "text-embedding-3-small"
  local body = '{"model":"' .. model .. '","input":["the quick brown fox","jumps over the lazy dog"]}'
  req = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end

function request()
  return req
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
