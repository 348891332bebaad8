import Foundation
import KopilotBase
import KopilotIO
import Logging

/// What both modes set on the C core's hub: where it listens, its loops,
/// its stream windows, timeouts and memory budget.
public struct HubCoreSettings: Sendable, Equatable {
  public var bindHost = "0.0.0.0"
  public var port = 8443
  /// Event loops; default: the CPUs this process may use.
  public var loops = Loop.availableCPUs
  public var muxWindow: UInt32 = 4096 * 1024
  public var keepaliveMs: UInt64 = 30_000
  public var headTimeoutMs: UInt64 = 30_000
  /// Bytes all streams' receive windows may grow into; default: a quarter
  /// of the container's memory limit, or of the machine's memory.
  public var memoryBudget = memoryLimit() / 4
  /// One log line per proxied request.
  public var accessLog = false
  /// Seconds between checks of the certificate files.
  public var tlsReloadInterval: TimeInterval = 30
  /// How members see callers (the default mode, prefix and callers' group).
  public var identity = IdentityMapping()
  /// The audit log (`-`: standard output); nil: none.
  public var auditLogPath: String?
  public var auditRotation = AuditLog.Rotation()

  public init() {}

  func hubConfig(cert: String, key: String) -> Hub.Config {
    var c = Hub.Config(certFile: cert, keyFile: key)
    c.bindHost = bindHost
    c.port = port
    c.muxWindow = muxWindow
    c.keepaliveMs = keepaliveMs
    c.headTimeoutMs = headTimeoutMs
    c.memoryBudget = memoryBudget
    return c
  }

  func startLoops() throws -> [Loop] { try (0..<max(1, loops)).map { _ in try Loop() } }

  /// Opens the audit log when one is configured, as a part that closes
  /// after the hub (added before it: parts stop newest first), so the
  /// hub's last requests are written.
  func startAudit(_ parts: StartedParts, _ log: Logger) throws -> HubAudit? {
    guard let path = auditLogPath else { return nil }
    let audit = HubAudit(log: try AuditLog(path: path, rotation: auditRotation, logger: log))
    parts.add("audit log") { audit.log.close() }
    log.info("audit log: \(path == "-" ? "standard output" : path)")
    return audit
  }
}

extension Hub {
  /// Metrics, the access log and the session log, the same in both modes;
  /// `also` hears of every session change after them.
  func observe(_ metrics: HubMetrics, accessLog: Bool, audit: HubAudit?, _ log: Logger,
               also: @escaping (String, Bool) -> Void = { _, _ in }) {
    if let audit {
      metrics.auditDropped = { audit.log.droppedEvents }
      onResponse = { audit.started(request: $0, status: $1) }
    }
    onSession = { cluster, up, status in
      if up {
        log.info("agent session up: cluster=\(cluster)")
      } else {
        log.info("agent session down: cluster=\(cluster) status=\(CoreError(code: status, context: "session"))")
      }
      metrics.sessionChanged(cluster: cluster, up: up)
      also(cluster, up)
    }
    onProxied = { r in
      metrics.proxyEnded(r)
      audit?.ended(r)
      if accessLog {
        log.info("proxied cluster=\(r.cluster) session=\(r.session) status=\(r.status) up=\(r.bytesUp) down=\(r.bytesDown) ms=\(Double(r.durationMicros) / 1000)")
      }
    }
  }

  /// Loads renewed certificate files (cert-manager's, or a hand-made
  /// pair) for new connections; the previous ones stay when the new ones
  /// do not load.
  func reloadingCertificates(_ cfg: Hub.Config, every interval: TimeInterval, _ log: Logger) -> CertificateWatcher {
    let files = [cfg.certFile, cfg.keyFile] + [cfg.peerCertFile, cfg.peerKeyFile, cfg.peerCAFile].compactMap { $0 }
    return CertificateWatcher(files: files, interval: interval) { [self] in
      do {
        try reloadTLS(certFile: cfg.certFile, keyFile: cfg.keyFile, peerCertFile: cfg.peerCertFile,
                      peerKeyFile: cfg.peerKeyFile, peerCAFile: cfg.peerCAFile)
        log.notice("certificates reloaded from \(cfg.certFile)\(cfg.peerCertFile.map { " and \($0)" } ?? "")")
      } catch {
        log.error("certificates changed but were not loaded (the previous ones stay): \(error)")
      }
    }
  }

  /// A cluster removed or given a new token loses its sessions at once.
  func closeSessions(on registry: any ClusterRegistry, _ log: Logger) {
    registry.onChange { [self] changes in
      for c in changes where c.closesSessions {
        log.notice("closing the sessions of \(c.clusterID): \(c.kind)")
        dropCluster(c.clusterID)
      }
    }
  }
}

/// Holds the router for the core's callback: the core starts listening
/// before the router exists (the embedded mode's manifests name the port
/// it got), and answers 503 until it is set.
final class RouterBox: Sendable {
  private let slot = Mutex<HubRouter?>(nil)
  var router: HubRouter? {
    get { slot.withLock { $0 } }
    set { slot.withLock { $0 = newValue } }
  }
  func route(_ r: HubRequest, _ responder: HubResponder) -> HubAnswer? {
    guard let router else { return .status(503, "ServiceUnavailable", "the hub is starting") }
    return router.route(r, later: { responder.answer($0) })
  }
}
