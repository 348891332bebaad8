import Foundation

/// Runs `body`, which blocks (binding sockets, joining event-loop threads,
/// waiting for a first list or a grace period), on a thread of its own and
/// awaits its result, so that no thread of Swift's cooperative pool (one per
/// core) waits on it.
public func onOwnThread<T: Sendable>(_ name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
  try await withCheckedThrowingContinuation { (done: CheckedContinuation<T, Error>) in
    let thread = Thread { done.resume(with: Result { try body() }) }
    thread.name = name
    thread.start()
  }
}
