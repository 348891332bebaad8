import ArgumentParser
import Foundation
import KopilotHub
import KopilotIO
import Logging

@main
struct HubCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "kopilot-hub",
    abstract: "The Kopilot hub: agents' tunnels in, callers' Kubernetes API requests out to member clusters.",
    discussion: """
      Agents dial wss://HUB/connect?token=T; callers send any Kubernetes API request to
      https://HUB/proxy/{namespace}_{name}/<path>. With no Kubernetes around (the embedded
      default) everything the hub needs lives in a state folder created on first start.
      """,
    subcommands: [Serve.self, Clusters.self],
    defaultSubcommand: Serve.self)
}

/// Flags shared by every subcommand that touches the state folder. Each one
/// can also come from the environment variable named in its help.
struct StateOptions: ParsableArguments {
  @Option(name: .customLong("state-dir"), help: "The state folder. Env: STATE_DIR.")
  var stateDirFlag: String?

  @Option(name: .customLong("clusters-file"), help: "Cluster objects (default: STATE/clusters.yaml). Env: CLUSTERS_FILE.")
  var clustersFile: String?

  @Option(name: .customLong("tokens-file"), help: "Callers, kube-apiserver --token-auth-file format (default: STATE/tokens.csv). Env: TOKENS_FILE.")
  var tokensFile: String?

  @Option(name: .customLong("rbac-file"), help: "ClusterRoles and ClusterRoleBindings (default: STATE/rbac.yaml). Env: RBAC_FILE.")
  var rbacFile: String?

  @Option(name: .customLong("tls-cert"), help: "PEM serving certificate (default: STATE/hub.crt, made on first start). Env: TLS_CERT.")
  var tlsCert: String?

  @Option(name: .customLong("tls-key"), help: "PEM private key (default: STATE/hub.key). Env: TLS_KEY.")
  var tlsKey: String?

  func env(_ name: String) -> String? {
    let v = ProcessInfo.processInfo.environment[name]
    return v?.isEmpty == false ? v : nil
  }

  var paths: StatePaths {
    var p = StatePaths(directory: stateDirFlag ?? env("STATE_DIR") ?? StatePaths.defaultDirectory)
    if let f = clustersFile ?? env("CLUSTERS_FILE") { p.clusters = f }
    if let f = tokensFile ?? env("TOKENS_FILE") { p.tokens = f }
    if let f = rbacFile ?? env("RBAC_FILE") { p.rbac = f }
    if let f = tlsCert ?? env("TLS_CERT") { p.hubCert = f }
    if let f = tlsKey ?? env("TLS_KEY") { p.hubKey = f }
    return p
  }
}

struct Serve: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Run the hub (the default).")

  @OptionGroup var state: StateOptions

  @Option(help: "Address to listen on, HOST:PORT (port 0 picks a free one). Env: BIND_ADDR.")
  var bind: String?

  @Option(name: .customLong("public-addr"), help: "host[:port] that agent manifests point agents at. Env: PUBLIC_ADDR.")
  var publicAddr: String?

  @Option(name: .customLong("agent-image"), help: "Container image in agent manifests. Env: AGENT_IMAGE.")
  var agentImage: String?

  @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical. Env: LOG_LEVEL.")
  var logLevel: String?

  @Flag(name: .customLong("access-log"), help: "Log one line per proxied request: cluster, status, bytes each way, duration.")
  var accessLog = false

  @Option(name: .customLong("mux-window"), help: "Receive window per tunnel stream, in KiB (256 to 65536; default 4096). Each stream may buffer up to this much; larger windows carry bulk transfers faster over long round trips. Env: MUX_WINDOW_KIB.")
  var muxWindowKiB: Int?

  @Option(help: "Seconds between keepalive pings to each agent; a ping unanswered that long drops the session. Env: KEEPALIVE_SECONDS.")
  var keepalive: Double?

  @Option(name: .customLong("header-timeout"), help: "Seconds a caller has to send each complete request head (bounds slowloris callers and idle keep-alive connections). Env: HEADER_TIMEOUT_SECONDS.")
  var headerTimeout: Double?

  func validate() throws {
    if let h = headerTimeout, !(0.1...3600).contains(h) { throw ValidationError("--header-timeout is 0.1 to 3600 seconds") }
    if let k = keepalive, !(0.1...3600).contains(k) { throw ValidationError("--keepalive is 0.1 to 3600 seconds") }
    if let w = muxWindowKiB, !(256...65536).contains(w) { throw ValidationError("--mux-window is 256 to 65536 KiB") }
    if let l = logLevel ?? state.env("LOG_LEVEL"), Logger.Level(rawValue: l) == nil {
      throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
    }
  }

  func run() throws {
    let level = Logger.Level(rawValue: logLevel ?? state.env("LOG_LEVEL") ?? "info") ?? .info
    LoggingSystem.bootstrap { label in
      var h = StreamLogHandler.standardError(label: label)
      h.logLevel = level
      return h
    }
    let log = Logger(label: "kopilot.hub")
    let (host, port) = try splitHostPort(bind ?? state.env("BIND_ADDR") ?? "0.0.0.0:8443")
    let given = publicAddr ?? state.env("PUBLIC_ADDR")
    let paths = state.paths
    log.notice("mode: embedded (no Kubernetes configuration given); state folder \(paths.directory)")

    let report = try StateDirectory(paths: paths, hosts: given.map { [$0] } ?? []).prepare()
    for f in report.created { log.info("created \(f)") }
    for n in report.notices { log.warning("\(n)") }
    if let t = report.adminToken {
      // Printed once, on the start that made it, so a newcomer can use it.
      FileHandle.standardOutput.write(Data("admin caller token (user kopilot-admin, in \(paths.tokens)): \(t)\n".utf8))
    }

    let registry = try EmbeddedClusterRegistry(path: paths.clusters)
    // The router is made once the port is known: without --public-addr,
    // manifests point at the address the hub really listens on.
    let box = RouterBox()
    let loop = try Loop()
    var cfg = Hub.Config(certFile: paths.hubCert, keyFile: paths.hubKey)
    cfg.bindHost = host
    cfg.port = port
    cfg.muxWindow = UInt32((muxWindowKiB ?? Int(state.env("MUX_WINDOW_KIB") ?? "") ?? 4096) * 1024)
    cfg.keepaliveMs = UInt64((keepalive ?? Double(state.env("KEEPALIVE_SECONDS") ?? "") ?? 30) * 1000)
    cfg.headTimeoutMs = UInt64((headerTimeout ?? Double(state.env("HEADER_TIMEOUT_SECONDS") ?? "") ?? 30) * 1000)
    let hub = try Hub(loop: loop, config: cfg, deferringRouter: { box.route($0, $1) })
    let pub = given ?? "\(host == "0.0.0.0" || host == "::" ? "127.0.0.1" : host):\(hub.port)"
    let metrics = HubMetrics()
    box.router = HubRouter(
      registry: registry,
      authenticator: try TokenFileAuthenticator(path: paths.tokens),
      authorizer: try RBACAuthorizer(path: paths.rbac),
      publicAddr: pub,
      agentImage: agentImage ?? state.env("AGENT_IMAGE") ?? "ghcr.io/kopilot/kopilot-agent:latest",
      caPEM: try String(contentsOfFile: paths.caCert, encoding: .utf8),
      logger: log,
      metrics: metrics)
    let sessions = SessionFile(path: (paths.directory as NSString).appendingPathComponent("sessions.json"))
    hub.onSession = { cluster, up, status in
      if up {
        log.info("agent session up: cluster=\(cluster)")
      } else {
        log.info("agent session down: cluster=\(cluster) status=\(CoreError(code: status, context: "session"))")
      }
      sessions.note(cluster: cluster, up: up)
      metrics.sessionChanged(cluster: cluster, up: up)
    }
    let access = accessLog
    hub.onProxied = { r in
      metrics.proxyEnded(r)
      if access {
        log.info("proxied cluster=\(r.cluster) session=\(r.session) status=\(r.status) up=\(r.bytesUp) down=\(r.bytesDown) ms=\(Double(r.durationMicros) / 1000)")
      }
    }
    // A cluster removed or given a new token loses its sessions at once.
    registry.onChange { changes in
      for c in changes where c.closesSessions {
        log.notice("closing the sessions of \(c.clusterID): \(c.kind)")
        hub.dropCluster(c.clusterID)
      }
    }
    log.notice("kopilot-hub listening on \(host):\(hub.port) clusters=\(registry.clusters().count) public-addr=\(pub)")
    waitForTermination()
    log.notice("kopilot-hub stopping")
    hub.stop()
    sessions.clear()
  }
}

struct Clusters: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Manage the embedded registry's clusters (clusters.yaml); a running hub picks changes up by itself.",
    subcommands: [Add.self, List.self, Remove.self])

  struct Add: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Register NAMESPACE/NAME and print its new agent token.")
    @OptionGroup var state: StateOptions
    @Argument(help: "NAMESPACE/NAME (NAME alone means default/NAME).") var cluster: String

    func run() throws {
      let (ns, name) = try splitCluster(cluster)
      let report = try StateDirectory(paths: state.paths).prepare()
      if let t = report.adminToken {
        FileHandle.standardError.write(Data("created \(state.paths.directory); admin caller token (user kopilot-admin, in \(state.paths.tokens)): \(t)\n".utf8))
      }
      print(try ClusterAdmin(path: state.paths.clusters).addCluster(namespace: ns, name: name))
    }
  }

  struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show every cluster and its live agent sessions.")
    @OptionGroup var state: StateOptions

    func run() throws {
      let clusters = try ClusterAdmin(path: state.paths.clusters).listClusters()
      let live = SessionFile(path: (state.paths.directory as NSString).appendingPathComponent("sessions.json")).read()
      print("NAMESPACE".padding(toLength: 24, withPad: " ", startingAt: 0) + "NAME".padding(toLength: 32, withPad: " ", startingAt: 0) + "SESSIONS")
      for c in clusters {
        print(c.namespace.padding(toLength: 24, withPad: " ", startingAt: 0) + c.name.padding(toLength: 32, withPad: " ", startingAt: 0) + "\(live[c.id] ?? 0)")
      }
    }
  }

  struct Remove: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Unregister NAMESPACE/NAME; its agents are disconnected.")
    @OptionGroup var state: StateOptions
    @Argument(help: "NAMESPACE/NAME (NAME alone means default/NAME).") var cluster: String

    func run() throws {
      let (ns, name) = try splitCluster(cluster)
      try ClusterAdmin(path: state.paths.clusters).removeCluster(namespace: ns, name: name)
    }
  }
}

/// Holds the router for the hub's callback: set once, before any request
/// can arrive that needs more than a 503.
final class RouterBox: @unchecked Sendable {
  private let lock = NSLock()
  private var value: HubRouter?
  var router: HubRouter? {
    get { lock.lock(); defer { lock.unlock() }; return value }
    set { lock.lock(); value = newValue; lock.unlock() }
  }
  func route(_ r: HubRequest, _ responder: HubResponder) -> HubAnswer? {
    guard let router else { return .status(503, "ServiceUnavailable", "the hub is starting") }
    return router.route(r, later: { responder.answer($0) })
  }
}

func splitCluster(_ s: String) throws -> (String, String) {
  let parts = s.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
  switch parts.count {
  case 1: return ("default", parts[0])
  case 2: return (parts[0], parts[1])
  default: throw ValidationError("expected NAMESPACE/NAME, got \(s)")
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

/// Live sessions per cluster, written by the running hub for `clusters list`
/// (a separate process). Rewritten whole, atomically, on every change.
final class SessionFile: @unchecked Sendable {
  let path: String
  private let lock = NSLock()
  private var counts: [String: Int] = [:]
  private var writeQueued = false
  private var stopped = false
  private let writer = DispatchQueue(label: "kopilot.sessions-file")

  init(path: String) { self.path = path }

  /// Called on the loop thread for every session change: it only counts.
  /// The file is written on another queue, at most every 200 ms, so a storm
  /// of 10,000 agents reconnecting costs 50 writes rather than 10,000 on
  /// the loop.
  func note(cluster: String, up: Bool) {
    lock.lock()
    defer { lock.unlock() }
    counts[cluster, default: 0] += up ? 1 : -1
    if counts[cluster] ?? 0 <= 0 { counts[cluster] = nil }
    if writeQueued { return }
    writeQueued = true
    writer.asyncAfter(deadline: .now() + 0.2) { [self] in
      lock.lock()
      let snapshot = counts
      writeQueued = false
      let skip = stopped
      lock.unlock()
      if !skip, let data = try? JSONSerialization.data(withJSONObject: snapshot, options: [.sortedKeys]) {
        try? data.write(to: URL(fileURLWithPath: path), options: .atomic)
      }
    }
  }

  /// At shutdown: no session is live any more, and no late write may
  /// bring the file back.
  func clear() {
    lock.lock()
    stopped = true
    lock.unlock()
    writer.sync { try? FileManager.default.removeItem(atPath: path) }
  }

  func read() -> [String: Int] {
    guard let d = FileManager.default.contents(atPath: path),
          let obj = try? JSONSerialization.jsonObject(with: d) as? [String: Int] else { return [:] }
    return obj
  }
}
