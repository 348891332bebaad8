import Foundation
import KopilotBase

/// This replica's live agent sessions per cluster, kept from the hub's
/// session callbacks (loop thread) and read by routing and the status
/// writer (any thread).
public final class LocalSessions: Sendable {
  public struct Entry: Sendable, Equatable {
    public var count: Int
    /// When the oldest of the current run of sessions came up.
    public var since: Date
  }

  private let table = Mutex<[String: Entry]>([:])

  public init() {}

  /// Counts a session up or down; returns the cluster's entry after it (nil: none left).
  @discardableResult
  public func changed(cluster: String, up: Bool, now: Date = Date()) -> Entry? {
    table.withLock { table in
      var e = table[cluster] ?? Entry(count: 0, since: now)
      e.count += up ? 1 : -1
      table[cluster] = e.count > 0 ? e : nil
      return table[cluster]
    }
  }

  public func entry(_ cluster: String) -> Entry? { table.withLock { $0[cluster] } }

  public func count(_ cluster: String) -> Int { entry(cluster)?.count ?? 0 }

  public func snapshot() -> [String: Entry] { table.withLock { $0 } }
}
