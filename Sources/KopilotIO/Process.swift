import Foundation

/// Blocks until SIGINT or SIGTERM arrives.
public func waitForTermination() {
  let sem = DispatchSemaphore(value: 0)
  var sources: [DispatchSourceSignal] = []
  for sig in [SIGINT, SIGTERM] {
    signal(sig, SIG_IGN)  // the dispatch source sees it instead
    let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
    src.setEventHandler { sem.signal() }
    src.resume()
    sources.append(src)
  }
  sem.wait()
  withExtendedLifetime(sources) {}
}

/// One log line on stderr, with a UTC timestamp.
public func logLine(_ message: String) {
  let ts = ISO8601DateFormatter().string(from: Date())
  FileHandle.standardError.write(Data("\(ts) \(message)\n".utf8))
}
