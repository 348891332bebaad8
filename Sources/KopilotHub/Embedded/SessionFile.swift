import Foundation
import KopilotBase

/// Live sessions per cluster, written by the running hub for `clusters list`
/// (a separate process). Rewritten whole, atomically, on every change.
public final class SessionFile: Sendable {
  public let path: String
  private struct State {
    var counts: [String: Int] = [:]
    var writeQueued = false
    var stopped = false
  }
  private let state = Mutex(State())
  private let writer = DispatchQueue(label: "kopilot.sessions-file")

  public init(path: String) { self.path = path }

  /// Called on the loop thread for every session change: it only counts.
  /// The file is written on another queue, at most every 200 ms, so a storm
  /// of 10,000 agents reconnecting costs 50 writes rather than 10,000 on
  /// the loop.
  public func note(cluster: String, up: Bool) {
    let schedule = state.withLock { s in
      s.counts[cluster, default: 0] += up ? 1 : -1
      if s.counts[cluster] ?? 0 <= 0 { s.counts[cluster] = nil }
      defer { s.writeQueued = true }
      return !s.writeQueued
    }
    guard schedule else { return }
    writer.asyncAfter(deadline: .now() + 0.2) { [self] in
      let (snapshot, skip) = state.withLock { s in
        s.writeQueued = false
        return (s.counts, s.stopped)
      }
      if !skip, let data = try? JSONSerialization.data(withJSONObject: snapshot, options: [.sortedKeys]) {
        try? data.write(to: URL(fileURLWithPath: path), options: .atomic)
      }
    }
  }

  /// At shutdown: no session is live any more, and no late write may
  /// bring the file back.
  public func clear() {
    state.withLock { $0.stopped = true }
    writer.sync { try? FileManager.default.removeItem(atPath: path) }
  }

  public func read() -> [String: Int] {
    guard let d = FileManager.default.contents(atPath: path),
          let obj = try? JSONSerialization.jsonObject(with: d) as? [String: Int] else { return [:] }
    return obj
  }
}
