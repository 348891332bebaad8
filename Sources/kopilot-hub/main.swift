import ArgumentParser
import Foundation
import KopilotIO

@main
struct HubCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "kopilot-hub",
    abstract: "Serve agents' tunnels and proxy /proxy/{namespace}_{name}/... to member clusters.",
    discussion: """
      Agents dial wss://HUB/connect?token=T; the token names the cluster. Callers send any
      Kubernetes API request to https://HUB/proxy/{namespace}_{name}/<path>.
      Every flag can also come from the environment variable shown.
      """)

  @Option(help: "Address to listen on, HOST:PORT (port 0 picks a free one). Env: BIND_ADDR.")
  var bind: String = ProcessInfo.processInfo.environment["BIND_ADDR"] ?? "0.0.0.0:8443"

  @Option(name: .customLong("tls-cert"), help: "PEM serving certificate (chain). Env: TLS_CERT.")
  var tlsCertFlag: String?
  var tlsCert: String? { tlsCertFlag ?? ProcessInfo.processInfo.environment["TLS_CERT"] }

  @Option(name: .customLong("tls-key"), help: "PEM private key. Env: TLS_KEY.")
  var tlsKeyFlag: String?
  var tlsKey: String? { tlsKeyFlag ?? ProcessInfo.processInfo.environment["TLS_KEY"] }

  @Option(name: .customLong("agent-token"), help: "NAMESPACE/NAME=TOKEN: an agent token and its cluster (repeatable).")
  var agentTokens: [String] = []

  @Option(name: .customLong("agent-tokens-file"), help: "File of 'NAMESPACE/NAME TOKEN' lines (# comments). Env: AGENT_TOKENS_FILE.")
  var agentTokensFileFlag: String?
  var agentTokensFile: String? { agentTokensFileFlag ?? ProcessInfo.processInfo.environment["AGENT_TOKENS_FILE"] }

  @Option(name: .customLong("mux-window"), help: "Receive window per tunnel stream, in KiB (at least 256). Larger windows carry more per round trip; each stream may buffer up to this much. Env: MUX_WINDOW_KIB.")
  var muxWindowKiB: Int = Int(ProcessInfo.processInfo.environment["MUX_WINDOW_KIB"] ?? "") ?? 256

  @Flag(name: .customLong("access-log"), help: "Log one line per proxied request: cluster, status, bytes each way, duration.")
  var accessLog = false

  func validate() throws {
    guard (256...65536).contains(muxWindowKiB) else { throw ValidationError("--mux-window is 256 to 65536 KiB") }
    guard tlsCert != nil, tlsKey != nil else {
      throw ValidationError("--tls-cert and --tls-key are required")
    }
  }

  func run() throws {
    let (host, port) = try splitHostPort(bind)
    var tokens: [String: String] = [:]
    var entries = agentTokens
    if let f = agentTokensFile {
      let text = try String(contentsOfFile: f, encoding: .utf8)
      for line in text.split(separator: "\n") where !line.hasPrefix("#") && !line.trimmingCharacters(in: .whitespaces).isEmpty {
        let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard parts.count == 2 else { throw ValidationError("\(f): expected 'NAMESPACE/NAME TOKEN', got a line with \(parts.count) fields") }
        entries.append("\(parts[0])=\(parts[1])")
      }
    }
    for e in entries {
      let kv = e.split(separator: "=", maxSplits: 1)
      let nn = kv.first?.split(separator: "/") ?? []
      guard kv.count == 2, nn.count == 2, kv[1].utf8.count >= 16 else {
        throw ValidationError("agent token entries are NAMESPACE/NAME=TOKEN with a token of at least 16 characters")
      }
      let cluster = "\(nn[0])_\(nn[1])"
      guard isValidClusterID(cluster) else { throw ValidationError("\(nn[0])/\(nn[1]) is not a valid namespace/name") }
      tokens[String(kv[1])] = cluster
    }
    let loop = try Loop()
    var cfg = Hub.Config(certFile: tlsCert!, keyFile: tlsKey!, agentTokens: tokens)
    cfg.bindHost = host
    cfg.port = port
    cfg.muxWindow = UInt32(muxWindowKiB * 1024)
    let hub = try Hub(loop: loop, config: cfg)
    hub.onSession = { cluster, up, status in
      logLine(up ? "agent session up: cluster=\(cluster)" : "agent session down: cluster=\(cluster) status=\(status)")
    }
    if accessLog {
      hub.onProxied = { r in
        logLine("proxied cluster=\(r.cluster) status=\(r.status) up=\(r.bytesUp) down=\(r.bytesDown) ms=\(Double(r.durationMicros) / 1000)")
      }
    }
    logLine("kopilot-hub listening on \(host):\(hub.port) clusters=\(Set(tokens.values).count)")
    waitForTermination()
    logLine("kopilot-hub stopping")
    hub.stop()
  }
}

func splitHostPort(_ s: String) throws -> (String, Int) {
  guard let i = s.lastIndex(of: ":"), let port = Int(s[s.index(after: i)...]), (0...65535).contains(port) else {
    throw ValidationError("expected HOST:PORT, got \(s)")
  }
  var host = String(s[..<i])
  if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
  return (host.isEmpty ? "0.0.0.0" : host, port)
}


