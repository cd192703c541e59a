-- wrk script: POST a small chat completion. Counts non-2xx answers so a run can
-- prove "no request failed" (wrk itself reports only socket errors and non-2xx/3xx).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("WRK_BODY") or '{"model":"gpt-5","messages":[{"role":"user","content":"hello from wrk"}]}'
