import Crypto
import Dispatch
import Foundation
import KopilotIO
import KopilotKube
import Logging

/// Bounds the reviews sent to the host at once: up to `maxInFlight` run,
/// up to `maxQueued` wait in order, any more fail at once with
/// `.overloaded`. A waiter whose task is cancelled leaves the queue.
public final class ReviewLimiter: @unchecked Sendable {
  public let maxInFlight: Int
  public let maxQueued: Int
  private let lock = NSLock()
  private var running = 0
  private var waiters: [(id: UInt64, continuation: CheckedContinuation<Void, Error>)] = []
  private var nextID: UInt64 = 0

  public init(maxInFlight: Int = 32, maxQueued: Int = 1_000) {
    self.maxInFlight = max(1, maxInFlight)
    self.maxQueued = max(0, maxQueued)
  }

  /// Reviews running and waiting now.
  public var load: (running: Int, waiting: Int) {
    lock.lock()
    defer { lock.unlock() }
    return (running, waiters.count)
  }

  /// Takes a place, waiting for one in order; every successful acquire
  /// needs one `release()`.
  public func acquire() async throws {
    // nil: a place was free and is taken; else the id to wait under.
    let id: UInt64? = try lock.withLock {
      if running < maxInFlight {
        running += 1
        return nil
      }
      guard waiters.count < maxQueued else { throw Self.overloaded }
      nextID += 1
      return nextID
    }
    guard let id else { return }
    try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
        lock.lock()
        // Cancelled before getting here: the handler below found nothing to
        // remove, so leave now.
        if Task.isCancelled {
          lock.unlock()
          c.resume(throwing: CancellationError())
          return
        }
        // The queue may have filled while the lock was let go.
        if running < maxInFlight {
          running += 1
          lock.unlock()
          c.resume()
          return
        }
        guard waiters.count < maxQueued else {
          lock.unlock()
          c.resume(throwing: Self.overloaded)
          return
        }
        waiters.append((id, c))
        lock.unlock()
      }
    } onCancel: {
      lock.lock()
      let i = waiters.firstIndex { $0.id == id }
      let c = i.map { waiters.remove(at: $0).continuation }
      lock.unlock()
      c?.resume(throwing: CancellationError())
    }
  }

  static let overloaded = KubeReviewError(
    .overloaded, "too many pending reviews: the hub is waiting on the host cluster; retry later")

  /// Gives a place back: to the first waiter, if any.
  public func release() {
    lock.lock()
    if waiters.isEmpty {
      running -= 1
      lock.unlock()
    } else {
      let w = waiters.removeFirst()
      lock.unlock()
      w.continuation.resume()
    }
  }
}
