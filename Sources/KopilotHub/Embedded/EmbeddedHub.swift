import Foundation
import KopilotBase
import KopilotIO
import Logging
import ServiceLifecycle

/// The hub on the embedded default: no Kubernetes around, everything it
/// needs (CA, serving certificate, clusters, callers, RBAC) in a state folder
/// made on first start. A `Service`: `run` starts it, serves until graceful
/// shutdown, then stops its parts in reverse order.
public struct EmbeddedHub: Service {
  public struct Configuration: Sendable {
    public var paths: StatePaths
    public var core = HubCoreSettings()
    /// host[:port] agent manifests point at; nil: the address the hub
    /// listens on (127.0.0.1 for a wildcard bind).
    public var publicAddr: String?
    public var agentImage = AgentManifest.defaultImage
    /// Why this mode (the first log line says it).
    public var reason = "the default outside a cluster"
    /// Called once the hub listens, with its port (port 0 picks a free one).
    public var onListening: (@Sendable (_ port: Int) -> Void)?

    public init(paths: StatePaths) { self.paths = paths }
  }

  public let configuration: Configuration
  let logger: Logger

  public init(configuration: Configuration, logger: Logger = Logger(label: "kopilot.hub")) {
    self.configuration = configuration
    self.logger = logger
  }

  public func run() async throws {
    try await runHub(logger: logger) { try start($0) }
  }

  /// Prepares the state folder, loads the policy and starts listening,
  /// adding each running part to `parts`.
  func start(_ parts: StartedParts) throws {
    let c = configuration, log = logger, paths = c.paths
    log.notice("mode: embedded (\(c.reason)); state folder \(paths.directory)")

    let report = try StateDirectory(paths: paths, hosts: c.publicAddr.map { [$0] } ?? []).prepare()
    for f in report.created { log.info("created \(f)") }
    for n in report.notices { log.warning("\(n)") }
    if let t = report.adminToken {
      // Printed once, on the start that made it, so a newcomer can use it.
      FileHandle.standardOutput.write(Data("admin caller token (user kopilot-admin, in \(paths.tokens)): \(t)\n".utf8))
    }

    let registry = try EmbeddedClusterRegistry(path: paths.clusters)
    let authenticator = try TokenFileAuthenticator(path: paths.tokens)
    let authorizer = try RBACAuthorizer(path: paths.rbac)
    let caPEM = try String(contentsOfFile: paths.caCert, encoding: .utf8)
    // The router is made once the port is known: without a public address,
    // manifests point at the address the hub really listens on.
    let box = RouterBox()
    let audit = try c.core.startAudit(parts, log)
    let cfg = c.core.hubConfig(cert: paths.hubCert, key: paths.hubKey)
    let hub = try Hub(loops: c.core.startLoops(), config: cfg, deferringRouter: { box.route($0, $1) })
    let sessions = SessionFile(path: paths.sessions)
    parts.add("hub") {
      log.notice("kopilot-hub stopping")
      hub.stop()
      sessions.clear()
    }
    let host = cfg.bindHost == "0.0.0.0" || cfg.bindHost == "::" ? "127.0.0.1" : cfg.bindHost
    let publicAddr = c.publicAddr ?? "\(host):\(hub.port)"
    let metrics = HubMetrics(isCluster: { registry.cluster(id: $0) != nil })
    box.router = HubRouter(registry: registry, authenticator: authenticator, authorizer: authorizer,
                           publicAddr: publicAddr, agentImage: c.agentImage, caPEM: caPEM,
                           logger: log, metrics: metrics)
    box.router?.identity = c.core.identity
    box.router?.audit = audit
    hub.observe(metrics, accessLog: c.core.accessLog, audit: audit, log) { sessions.note(cluster: $0, up: $1) }
    hub.closeSessions(on: registry, log)
    let certificates = hub.reloadingCertificates(cfg, every: c.core.tlsReloadInterval, log)
    parts.add("certificate reloader") { certificates.stop() }
    log.notice("kopilot-hub listening on \(cfg.bindHost):\(hub.port) loops=\(hub.loopCount) clusters=\(registry.clusters().count) public-addr=\(publicAddr)")
    c.onListening?(hub.port)
  }
}
