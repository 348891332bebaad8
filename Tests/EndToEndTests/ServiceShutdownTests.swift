import Foundation
import KopilotAgent
import KopilotHub
import KopilotIO
import Logging
import ServiceLifecycle
import Synchronization
import XCTest

/// The embedded hub and the agent as the executables run them, each a
/// `Service` in a `ServiceGroup`, in this process: an agent's session comes
/// up, and at graceful shutdown the agent ends its session at once (GoAway,
/// nothing in flight) and returns, and the hub then closes its port.
final class ServiceShutdownTests: XCTestCase {
  func testAgentAndHubShutDownGracefullyInProcess() async throws {
    let dir = NSTemporaryDirectory() + "kopilot-services-" + UUID().uuidString
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let paths = StatePaths(directory: dir)
    var hubConfig = EmbeddedHub.Configuration(paths: paths)
    hubConfig.core.bindHost = "127.0.0.1"
    hubConfig.core.port = 0
    hubConfig.core.loops = 1
    let port = Mutex<Int?>(nil)
    hubConfig.onListening = { p in port.withLock { $0 = p } }
    let hubGroup = ServiceGroup(services: [EmbeddedHub(configuration: hubConfig)], logger: Logger(label: "test.hub"))
    async let hubRunning: Void = hubGroup.run()
    let listening = await poll { port.withLock { $0 } != nil }
    XCTAssertTrue(listening, "the hub never said it listens")
    let hubPort = try XCTUnwrap(port.withLock { $0 })
    // The registry watches clusters.yaml: the agent's first tries may be
    // refused until it sees the new cluster, and it retries.
    let token = try ClusterAdmin(path: paths.clusters).addCluster(name: "c1")

    var session = AgentSession.Config(hubURL: URL(string: "wss://127.0.0.1:\(hubPort)/connect")!,
                                      apiserver: URL(string: "https://127.0.0.1:1")!)
    session.hubToken = token
    session.hubCAFile = paths.caCert
    var agentConfig = AgentService.Configuration(session: session)
    agentConfig.sessions = 1
    agentConfig.loops = 1
    agentConfig.gracePeriod = 20
    let agentGroup = ServiceGroup(services: [AgentService(configuration: agentConfig)], logger: Logger(label: "test.agent"))
    async let agentRunning: Void = agentGroup.run()
    let sessions = SessionFile(path: paths.sessions)
    let up = await poll(timeout: 30) { sessions.read().values.reduce(0, +) == 1 }
    XCTAssertTrue(up, "the agent's session never came up: \(sessions.read())")

    // Nothing is in flight: the agent does not wait out its grace period.
    let asked = Date()
    await agentGroup.triggerGracefulShutdown()
    try await agentRunning
    XCTAssertLessThan(Date().timeIntervalSince(asked), agentConfig.gracePeriod,
                      "the agent waited out its grace period with nothing in flight")
    let down = await poll { sessions.read().values.reduce(0, +) == 0 }
    XCTAssertTrue(down, "the hub still counts the agent's session: \(sessions.read())")

    await hubGroup.triggerGracefulShutdown()
    try await hubRunning
    XCTAssertFalse(FileManager.default.fileExists(atPath: paths.sessions), "the hub left its sessions file")
  }

  private func poll(timeout: TimeInterval = 10, _ condition: @Sendable () -> Bool) async -> Bool {
    let end = Date() + timeout
    while Date() < end {
      if condition() { return true }
      try? await Task.sleep(nanoseconds: 20_000_000)
    }
    return condition()
  }
}
