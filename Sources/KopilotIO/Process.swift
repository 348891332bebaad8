import Foundation

/// One log line on stderr, with a UTC timestamp (RFC 3339, seconds).
/// Cheap and thread-safe: an agent with thousands of sessions logs from
/// its event loop (an ISO8601DateFormatter per line cost 0.1 ms).
public func logLine(_ message: String) {
  var now = time(nil)
  var parts = tm()
  gmtime_r(&now, &parts)
  var buf = [CChar](repeating: 0, count: 32)
  let n = strftime(&buf, buf.count, "%Y-%m-%dT%H:%M:%SZ", &parts)
  let ts = String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
  FileHandle.standardError.write(Data("\(ts) \(message)\n".utf8))
}
