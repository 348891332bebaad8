import ArgumentParser
import Foundation
import KopilotIO

@main
struct AgentCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "kopilot-agent",
    abstract: "Dial out to a kopilot hub and serve its requests from this cluster's API server.")

  @Option(name: .customLong("connect"), help: "The hub's agent URL, wss://HUB/connect?token=T. Env: CONNECT_URL.")
  var connectFlag: String?
  var connect: String? { connectFlag ?? ProcessInfo.processInfo.environment["CONNECT_URL"] }

  @Option(help: "The member API server URL. Default: from KUBERNETES_SERVICE_HOST/PORT, else https://kubernetes.default.svc.")
  var apiserver: String?

  @Option(name: .customLong("token-file"), help: "Bearer token for the API server, re-read when it changes.")
  var tokenFile: String = "/var/run/secrets/kubernetes.io/serviceaccount/token"

  @Option(name: .customLong("ca-file"), help: "PEM CA bundle that signs the API server's certificate.")
  var caFile: String = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"

  @Option(name: .customLong("hub-ca"), help: "PEM CA bundle for the hub (default: the system's trust store).")
  var hubCA: String?

  @Flag(name: .customLong("insecure-skip-tls-verify"), help: "Do not verify the hub's certificate (unsafe; explicit opt-in).")
  var insecure = false

  @Option(name: .customLong("grace-period"), help: "Seconds that requests in flight get to finish after SIGTERM.")
  var gracePeriod: Double = 30

  @Option(help: "How mux frames travel after the WebSocket upgrade: framed (kopilot.v2) or raw (the original agent's way).")
  var wire: String = "framed"

  func validate() throws {
    guard let c = connect, let u = URL(string: c), u.scheme == "wss" || u.scheme == "https" else {
      throw ValidationError("--connect wss://HUB/connect?token=T is required")
    }
    guard wire == "framed" || wire == "raw" else { throw ValidationError("--wire is framed or raw") }
  }

  func run() throws {
    let env = ProcessInfo.processInfo.environment
    let upstream: String
    if let a = apiserver {
      upstream = a
    } else if let h = env["KUBERNETES_SERVICE_HOST"] {
      let host = h.contains(":") ? "[\(h)]" : h
      upstream = "https://\(host):\(env["KUBERNETES_SERVICE_PORT"] ?? "443")"
    } else {
      upstream = "https://kubernetes.default.svc"
    }
    guard let upURL = URL(string: upstream), upURL.scheme == "https" else {
      throw ValidationError("--apiserver must be an https:// URL")
    }
    var cfg = AgentSession.Config(hubURL: URL(string: connect!)!, apiserver: upURL)
    cfg.hubCAFile = hubCA
    cfg.hubInsecure = insecure
    cfg.framed = wire == "framed"
    cfg.apiserverCAFile = FileManager.default.fileExists(atPath: caFile) ? caFile : nil
    let loop = try Loop()
    let session = try AgentSession(loop: loop, config: cfg)
    let tokens = TokenFile(path: tokenFile)
    if let t = tokens.readIfChanged() { session.setToken(t) }

    let state = AgentState()
    let stopped = DispatchSemaphore(value: 0)
    session.onState = { up, status in
      if state.stopping {
        if !up { stopped.signal() }
        return
      }
      if up {
        state.backoff.reset()
        if !state.up { logLine("connected to the hub") }
        state.up = true
        return
      }
      if state.up { logLine("session to the hub ended: status \(status); reconnecting") }
      else if !state.reportedDown { logLine("cannot reach the hub (status \(status)); retrying with backoff") }
      state.up = false
      state.reportedDown = true
      let delay = state.backoff.next()
      DispatchQueue.global().asyncAfter(deadline: .now() + delay) { session.connect() }
    }
    session.connect()
    // Kubernetes rotates projected tokens: look for a new one now and then.
    let timer = DispatchSource.makeTimerSource(queue: .global())
    timer.schedule(deadline: .now() + 10, repeating: 10)
    timer.setEventHandler { if let t = tokens.readIfChanged() { session.setToken(t) } }
    timer.resume()
    waitForTermination()
    state.stopping = true
    logLine("stopping: GoAway sent; requests in flight get \(gracePeriod)s")
    session.shutdown(graceMs: UInt64(gracePeriod * 1000))
    _ = stopped.wait(timeout: .now() + gracePeriod + 1)
    session.close()
    logLine("stopped")
  }
}

final class AgentState: @unchecked Sendable {
  var backoff = Backoff()
  var up = false
  var reportedDown = false
  var stopping = false
}

/// A token file watched by modification time and content.
final class TokenFile: @unchecked Sendable {
  let path: String
  private var last: String?
  init(path: String) { self.path = path }
  func readIfChanged() -> String? {
    guard let s = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
    let t = s.trimmingCharacters(in: .whitespacesAndNewlines)
    if t == last { return nil }
    last = t
    return t
  }
}


