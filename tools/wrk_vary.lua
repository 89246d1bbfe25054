-- wrk script for tools/measure_cache.py: POST a binary-tensor body whose first 4 tensor bytes
-- count up, so no two requests of a run are alike (every one a response-cache miss), and
-- print one RESULT line. BODY: the body file; HDRLEN: its JSON header's length.
local f = assert(io.open(os.getenv("BODY"), "rb"))
local body = f:read("*a")
f:close()
local hdrlen = tonumber(os.getenv("HDRLEN"))
local head, tail = body:sub(1, hdrlen), body:sub(hdrlen + 5)
local headers = {
  ["Content-Type"] = "application/octet-stream",
  ["Inference-Header-Content-Length"] = tostring(hdrlen),
}
local n = 0
local thread_seed = math.random(0, 255)

request = function()
  n = n + 1
  local a, b, c = n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256
  -- The 4th byte stays 0x3f (the float's exponent): the values stay ordinary numbers.
  local varied = head .. string.char(a, b, (c + thread_seed) % 128, 0x3f) .. tail
  return wrk.format("POST", nil, headers, varied)
end

done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  local ok = summary.requests - summary.errors.status
  io.write(string.format("RESULT rps=%.0f p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
    ok / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    errors, summary.errors.status))
end
