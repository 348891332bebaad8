-- wrk script for kopilot-perf's requests scenario: after the run, one line
-- of JSON with the counts and latency percentiles (microseconds), which
-- wrk's own summary rounds or leaves out (p99.9).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read,
    e.write, e.status, e.timeout, latency:percentile(50),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
