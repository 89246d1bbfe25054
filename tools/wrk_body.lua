-- wrk script for tools/measure_images.py: POST one fixed body and print one RESULT line.
-- BODY: the body file; CTYPE: its Content-Type; HDRLEN: the JSON header's length for a
-- binary-tensor body (Inference-Header-Content-Length), empty otherwise.
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("CTYPE") or "application/octet-stream"
local hdrlen = os.getenv("HDRLEN")
if hdrlen and hdrlen ~= "" then wrk.headers["Inference-Header-Content-Length"] = hdrlen end

done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  local ok = summary.requests - summary.errors.status
  io.write(string.format("RESULT rps=%.0f p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
    ok / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    errors, summary.errors.status))
end
