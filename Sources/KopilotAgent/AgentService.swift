import Foundation
import KopilotBase
import KopilotIO
import ServiceLifecycle

/// The agent: `sessions` sessions to the hub spread over `loops` event
/// loops, each kept up with backoff, each forwarding the hub's requests to
/// the member's API server. A `Service`: at graceful shutdown every session
/// sends GoAway, and requests in flight get `gracePeriod` to finish.
public struct AgentService: Service {
  /// Where the API server's bearer token comes from.
  public enum APIServerToken: Sendable, Equatable {
    /// None (a client certificate, or no credentials).
    case none
    /// A token fixed for the process's life (a kubeconfig's `token`).
    case fixed(String)
    /// A file read again every 10 s (a projected service-account token).
    case file(String)
  }

  public struct Configuration: Sendable {
    public var session: AgentSession.Config
    public var apiserverToken: APIServerToken = .none
    public var sessions = 2
    /// Event loops; at most one per session.
    public var loops = Loop.availableCPUs
    /// Seconds that requests in flight get after GoAway.
    public var gracePeriod: TimeInterval = 30

    public init(session: AgentSession.Config) { self.session = session }
  }

  public let configuration: Configuration

  public init(configuration: Configuration) { self.configuration = configuration }

  public func run() async throws {
    let c = configuration
    // Session i runs on loop i mod N: each loop owns its sessions and their
    // upstream connections, so one busy member cluster uses every loop.
    let loopCount = max(1, min(c.loops, c.sessions))
    let eventLoops = try (0..<loopCount).map { _ in try Loop() }
    let supervisors = try (1...c.sessions).map { i in
      try SessionSupervisor(index: i, of: c.sessions,
                            session: AgentSession(loop: eventLoops[(i - 1) % loopCount], config: c.session))
    }
    logLine("\(c.sessions) session(s) on \(loopCount) loop(s)")
    var tokens: RotatingTokenFile?
    switch c.apiserverToken {
    case .none: break
    case .fixed(let t): for s in supervisors { s.session.setToken(t) }
    case .file(let path):
      let file = RotatingTokenFile(path: path)
      if let t = file.readIfChanged() { for s in supervisors { s.session.setToken(t) } }
      tokens = file
    }
    for s in supervisors { s.start() }
    // Kubernetes rotates projected tokens: look for a new one now and then.
    let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "kopilot.agent.token"))
    timer.schedule(deadline: .now() + 10, repeating: 10)
    timer.setEventHandler {
      if let t = tokens?.readIfChanged() { for s in supervisors { s.session.setToken(t) } }
    }
    timer.resume()

    try? await gracefulShutdown()
    timer.cancel()
    logLine("stopping: GoAway sent; requests in flight get \(c.gracePeriod)s")
    _ = try? await onOwnThread("kopilot-agent stop") {
      for s in supervisors { s.stop(graceMs: UInt64(c.gracePeriod * 1000)) }
      for s in supervisors { s.waitStopped(timeout: c.gracePeriod + 1) }
      for s in supervisors { s.session.close() }
    }
    // The loops outlive every session on them (a loop's deinit joins its thread).
    withExtendedLifetime(eventLoops) { logLine("stopped") }
  }
}
