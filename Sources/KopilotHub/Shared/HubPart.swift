import KopilotBase
import Logging
import ServiceLifecycle

/// One running part of a hub (the C core's loops, a watcher, an informer,
/// the webhook listener, the status writer) as a `Service`: it is started
/// by the wiring that made it and stopped here, at graceful shutdown or
/// cancellation. A hub hands its parts to a `ServiceGroup` in start order;
/// the group stops them in reverse, each after the one started after it.
struct HubPart: Service, CustomStringConvertible {
  let description: String
  let stop: @Sendable () -> Void

  init(_ name: String, stop: @escaping @Sendable () -> Void) {
    description = name
    self.stop = stop
  }

  func run() async throws {
    // Returns at graceful shutdown, throws at cancellation: stop either way.
    try? await gracefulShutdown()
    // Stopping may block (joining loop threads, a last status write).
    _ = try? await onOwnThread("stop \(description)", stop)
  }
}

/// The parts a hub's start-up has running so far, in start order. Used on
/// the one thread that starts the hub.
final class StartedParts {
  private(set) var parts: [HubPart] = []

  /// Records a part that is now running, with what stops it.
  func add(_ name: String, stop: @escaping @Sendable () -> Void) {
    parts.append(HubPart(name, stop: stop))
  }

  /// Stops every part, newest first (a start-up that failed half-way).
  func stopAll() {
    for part in parts.reversed() { part.stop() }
  }
}

/// The `run()` of both modes' hubs: `start` does the blocking start-up on a
/// thread of its own and records each part as it comes up; a `ServiceGroup`
/// then holds the parts until graceful shutdown and stops them in reverse
/// order. A start that throws stops what it had started, newest first, so
/// no loop thread, informer or listener outlives it.
func runHub(logger: Logger, start: @escaping @Sendable (StartedParts) throws -> Void) async throws {
  let parts = try await onOwnThread("kopilot-hub start") { () throws -> [HubPart] in
    let started = StartedParts()
    do {
      try start(started)
    } catch {
      started.stopAll()
      throw error
    }
    return started.parts
  }
  try await ServiceGroup(services: parts, logger: logger).run()
}
