import KopilotBase
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
