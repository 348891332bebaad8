import KopilotBase

/// Bounds the reviews sent to the host at once: up to `maxInFlight` run,
/// up to `maxQueued` wait in order, any more fail at once with
/// `.overloaded`. A waiter whose task is cancelled leaves the queue.
public final class ReviewLimiter: Sendable {
  public let maxInFlight: Int
  public let maxQueued: Int
  private struct State {
    var running = 0
    var waiters: [(id: UInt64, continuation: CheckedContinuation<Void, Error>)] = []
    var nextID: UInt64 = 0
  }
  private let state = Mutex(State())

  public init(maxInFlight: Int = 32, maxQueued: Int = 1_000) {
    self.maxInFlight = max(1, maxInFlight)
    self.maxQueued = max(0, maxQueued)
  }

  /// Reviews running and waiting now.
  public var load: (running: Int, waiting: Int) { state.withLock { ($0.running, $0.waiters.count) } }

  /// Takes a place, waiting for one in order; every successful acquire
  /// needs one `release()`.
  public func acquire() async throws {
    // nil: a place was free and is taken; else the id to wait under.
    let id: UInt64? = try state.withLock { s in
      if s.running < maxInFlight {
        s.running += 1
        return nil
      }
      guard s.waiters.count < maxQueued else { throw Self.overloaded }
      s.nextID += 1
      return s.nextID
    }
    guard let id else { return }
    try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
        enum Now { case wait, go, cancelled, overloaded }
        let now: Now = state.withLock { s in
          // Cancelled before getting here: the handler below found nothing
          // to remove, so leave now.
          if Task.isCancelled { return .cancelled }
          // A place may have come free while the lock was let go.
          if s.running < maxInFlight {
            s.running += 1
            return .go
          }
          guard s.waiters.count < maxQueued else { return .overloaded }
          s.waiters.append((id, c))
          return .wait
        }
        switch now {
        case .wait: break
        case .go: c.resume()
        case .cancelled: c.resume(throwing: CancellationError())
        case .overloaded: c.resume(throwing: Self.overloaded)
        }
      }
    } onCancel: {
      let c = state.withLock { s in
        s.waiters.firstIndex { $0.id == id }.map { s.waiters.remove(at: $0).continuation }
      }
      c?.resume(throwing: CancellationError())
    }
  }

  static let overloaded = KubeReviewError(
    .overloaded, "too many pending reviews: the hub is waiting on the host cluster; retry later")

  /// Gives a place back: to the first waiter, if any.
  public func release() {
    let next = state.withLock { s -> CheckedContinuation<Void, Error>? in
      if s.waiters.isEmpty {
        s.running -= 1
        return nil
      }
      return s.waiters.removeFirst().continuation
    }
    next?.resume()
  }
}
