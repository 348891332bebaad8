import KopilotBase

/// Replicas the EndpointSlices stopped listing, handed to `handler` once it
/// is set (the informer starts before the status writer exists).
final class GoneReplicas: Sendable {
  private struct State {
    var pending: Set<String> = []
    var handler: (@Sendable (Set<String>) -> Void)?
  }
  private let state = Mutex(State())

  /// Set once; names noted before it are handed to it at once. The handler
  /// is called outside the lock.
  var handler: (@Sendable (Set<String>) -> Void)? {
    get { state.withLock { $0.handler } }
    set {
      let early = state.withLock { s -> Set<String> in
        s.handler = newValue
        defer { s.pending = [] }
        return s.pending
      }
      if !early.isEmpty { newValue?(early) }
    }
  }

  func note(_ names: Set<String>) {
    guard !names.isEmpty else { return }
    let h = state.withLock { s -> (@Sendable (Set<String>) -> Void)? in
      if s.handler == nil { s.pending.formUnion(names) }
      return s.handler
    }
    h?(names)
  }
}
