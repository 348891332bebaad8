import Foundation
import KopilotIO
import Logging

/// The hub's policy for every caller request: which endpoint, who is asking,
/// whether RBAC allows it, which cluster it goes to and which replica serves
/// it. It reads the registry, the authenticator, the authorizer and the
/// placement; it answers on the loop thread when they can answer at once
/// (always in the embedded mode, on a cache hit in the Kubernetes mode) and
/// from a task otherwise. Tested without sockets.
public struct HubRouter: Sendable {
  public var registry: any ClusterRegistry
  public var authenticator: any Authenticator
  public var authorizer: any Authorizer
  /// What agent manifests point agents at: host or host:port.
  public var publicAddr: String
  public var agentImage: String
  /// The hub's CA, PEM, pinned in agent manifests.
  public var caPEM: String
  public var logger: Logger
  /// Counts answers and decisions, and renders /metrics; nil: no metrics.
  public var metrics: HubMetrics?
  /// Which replica serves a cluster; one hub alone serves everything.
  public var placement: any ClusterPlacement = LocalPlacement()
  /// This replica's name, sent as the hop marker when forwarding.
  public var replicaName = "kopilot-hub"
  /// The public address as it is now (Kubernetes: the `kopilot-hub`
  /// ConfigMap's `public_addr`, which may come after the hub); nil: use
  /// `publicAddr`. Answers nil or "" while there is none.
  public var publicAddrSource: (@Sendable () -> String?)?
  /// Whether /readyz says ready (Kubernetes: the Clusters are listed).
  public var ready: @Sendable () -> Bool = { true }
  /// How members see callers (per cluster, with this default).
  public var identity = IdentityMapping()
  /// A new audit ID per proxied request (a UUID, as kube-apiserver makes).
  public var newAuditID: @Sendable () -> String = { UUID().uuidString.lowercased() }
  /// The audit trail of /proxy/ requests; nil: no audit log.
  public var audit: HubAudit?

  public init(registry: any ClusterRegistry, authenticator: any Authenticator, authorizer: any Authorizer,
              publicAddr: String, agentImage: String, caPEM: String,
              logger: Logger = Logger(label: "kopilot.hub"), metrics: HubMetrics? = nil) {
    self.metrics = metrics
    self.registry = registry
    self.authenticator = authenticator
    self.authorizer = authorizer
    self.publicAddr = publicAddr
    self.agentImage = agentImage
    self.caPEM = caPEM
    self.logger = logger
  }

  /// The answer to one request head: returned at once when it is at hand,
  /// or nil and given to `later` (once, from another thread) when the host
  /// cluster has to be asked first.
  public func route(_ r: HubRequest, later: @escaping @Sendable (HubAnswer) -> Void) -> HubAnswer? {
    let metrics = self.metrics
    @Sendable func counted(_ answer: HubAnswer) -> HubAnswer {
      // A proxied request is counted when it ends (Hub.onProxied); the rest now.
      switch answer {
      case .respond(let status, _, _, _): metrics?.answered(status: status)
      // Both end in onProxied, under the cluster they carry: the one the
      // normalized path names, never what a caller wrote in the path
      // (`/proxy/<anything>/../default_a/` is default_a's).
      case .proxy(let cluster, _, _), .forward(let cluster, _, _, _, _): metrics?.proxyStarted(cluster: cluster)
      case .acceptAgent: break
      }
      return answer
    }
    return answer(r, later: { later(counted($0)) }).map(counted)
  }

  /// `route` for a router that never has to wait (the embedded mode); a
  /// late answer would be a bug, answered 500.
  public func route(_ r: HubRequest) -> HubAnswer {
    route(r, later: { _ in }) ?? .status(500, "InternalError", "the router could not answer at once")
  }

  func answer(_ r: HubRequest, later: @escaping @Sendable (HubAnswer) -> Void) -> HubAnswer? {
    let path = r.path
    if path.hasPrefix("/proxy/") || path == "/proxy" { return proxy(r, later: later) }
    switch path {
    case "/metrics":
      return metricsPage(r, later: later)
    case "/connect":
      return connect(r)
    case "/kopilot-agent.yaml":
      return manifest(r)
    case "/healthz", "/livez":
      guard r.method == "GET" || r.method == "HEAD" else { return methodNotAllowed(r) }
      return .respond(status: 200, contentType: "text/plain; charset=utf-8", body: "ok")
    case "/readyz":
      guard r.method == "GET" || r.method == "HEAD" else { return methodNotAllowed(r) }
      guard ready() else { return Self.notReady }
      return .respond(status: 200, contentType: "text/plain; charset=utf-8", body: "ok")
    default:
      return .status(404, "NotFound", "the server could not find the requested resource")
    }
  }

  /// `GET /connect` with `Authorization: Bearer T`: an agent. `?token=T`
  /// is still taken, for original Go agents; the header wins when both
  /// are given. A wrong token gets 401 before any upgrade happens.
  func connect(_ r: HubRequest) -> HubAnswer {
    guard r.method == "GET" else { return methodNotAllowed(r) }
    // Before the first list every token would look unknown: an agent is
    // told to come back rather than that its token is wrong.
    guard ready() else { return Self.notReady }
    let token: String?
    if let header = r.header("Authorization") {
      guard let t = Self.agentToken(authorization: header) else {
        logger.notice("agent refused: malformed Authorization", metadata: ["peer": "\(r.peer)"])
        return .status(401, "Unauthorized", "a valid agent token is required")
      }
      token = t
    } else {
      token = queryValue(r.target, "token")
    }
    guard let token, !token.isEmpty,
          let cluster = registry.cluster(forAgentToken: token)
    else {
      logger.notice("agent refused: unknown token", metadata: ["peer": "\(r.peer)"])
      return .status(401, "Unauthorized", "a valid agent token is required")
    }
    return .acceptAgent(cluster: cluster.id)
  }

  /// The token of `Bearer <token>` (scheme in any case, one space): any
  /// visible ASCII, since agent tokens may hold what a b64token may not
  /// (clusters.yaml takes printable ASCII without spaces). nil otherwise.
  static func agentToken(authorization value: String) -> String? {
    let u = Array(value.utf8)
    guard u.count > 7, String(decoding: u[..<6], as: UTF8.self).lowercased() == "bearer", u[6] == 0x20 else { return nil }
    let t = u[7...]
    guard t.allSatisfy({ $0 >= 0x21 && $0 <= 0x7e }) else { return nil }
    return String(decoding: t, as: UTF8.self)
  }

  /// `GET /kopilot-agent.yaml?token=T&provider=P`: the manifest that installs
  /// the agent of the cluster the token names.
  func manifest(_ r: HubRequest) -> HubAnswer {
    guard r.method == "GET" else { return methodNotAllowed(r) }
    guard let token = queryValue(r.target, "token"), !token.isEmpty,
          let cluster = registry.cluster(forAgentToken: token)
    else {
      return .status(401, "Unauthorized", "a valid agent token is required")
    }
    let addr = publicAddrSource.map { $0() ?? "" } ?? publicAddr
    guard !addr.isEmpty else {
      return .status(503, "ServiceUnavailable",
                     "the hub's public address is not set: create ConfigMap kopilot-hub in the hub's namespace with key public_addr (host:port agents dial)")
    }
    do {
      // The agent's rights follow how its member will see callers.
      let yaml = try AgentManifest.render(publicAddr: addr, token: token, caPEM: caPEM, image: agentImage,
                                          provider: queryValue(r.target, "provider") ?? "",
                                          identity: cluster.identity ?? identity.defaultMode)
      return .respond(status: 200, contentType: "application/yaml", body: yaml)
    } catch let e as HubError where e.code == .unknownProvider {
      return .status(400, "BadRequest", e.message)
    } catch {
      logger.error("agent manifest: \(error)")
      return .status(500, "InternalError", "the agent manifest could not be rendered")
    }
  }

  /// `ANY /proxy/{namespace}_{name}/...`: authenticate, authorize on the
  /// normalized path, then forward.
  func proxy(_ r: HubRequest, later: @escaping @Sendable (HubAnswer) -> Void) -> HubAnswer? {
    // Every request gets an audit ID, sent to the member (which adopts it)
    // and written with the request's event in the hub's audit log.
    // A request another replica forwarded keeps the ID that replica gave it
    // (its core dropped any the caller sent), so both replicas, and the
    // member, log one ID.
    let adopted = r.viaPeer ? r.header("Audit-ID").flatMap(Self.auditID(adopting:)) : nil
    // What the audit needs is gathered only when there is an audit log.
    let audit = self.audit, note = audit.map { _ in HubAudit.Note() }
    let (received, auditID) = (audit?.now() ?? Date(), adopted ?? newAuditID())
    @Sendable func audited(_ a: HubAnswer) -> HubAnswer {
      if let audit, let note { audit.answered(r, received: received, auditID: auditID, note: note, answer: a) }
      // The hub's own answer carries the ID too, as kube-apiserver's do.
      if case .respond(let status, let type, let body, let fields) = a {
        return .respond(status: status, contentType: type, body: body, fields: fields + "Audit-Id: \(auditID)\r\n")
      }
      return a
    }
    guard let target = parseProxyTarget(r.target) else {
      return audited(.status(400, "BadRequest", "the path must be /proxy/{namespace}_{name}/... without encoded dots or slashes"))
    }
    note?.set { $0.cluster = target.cluster }
    // A request from another replica (the peer listener, mutual TLS) is
    // authenticated and authorized here again, on its own merits, with the
    // caller's token that the forwarding replica passes on: a replica's
    // mTLS certificate vouches for the connection, never for what a caller
    // managed to put on it. It is never forwarded again: without a session
    // here the core answers 503.
    let (registry, logger, placement, hop) = (self.registry, self.logger, self.placement, self.replicaName)
    let identity = self.identity
    let now = authorized(r, later: { later(audited($0)) },
                         request: { AuthorizationRequest(user: $0, r, target: target) }) { user, decision in
      note?.set {
        $0.user = user
        $0.decision = decision.allowed ? "allow" : "forbid"
        $0.reason = decision.reason
      }
      guard decision.allowed else {
        logger.info("forbidden", metadata: ["user": "\(user.name)", "method": "\(r.method)",
                                            "cluster": "\(target.cluster)", "reason": "\(decision.reason)"])
        return .status(403, "Forbidden", decision.forbiddenMessage)
      }
      guard ready() else { return Self.notReady }
      guard let cluster = registry.cluster(id: target.cluster) else {
        return .status(404, "NotFound", "cluster \(target.cluster.replacingOccurrences(of: "_", with: "/")) is not registered")
      }
      // The member sees the caller as the cluster's identity mode maps it
      // (Impersonate-*), and the request under the hub's audit ID; the
      // core drops whatever the caller sent of either.
      let fields: String
      do throws(IdentityRefusal) {
        let member = try identity.member(for: user, mode: cluster.identity)
        note?.set { $0.member = member }
        fields = (member?.fields ?? "") + "Audit-ID: \(auditID)\r\n"
      } catch {
        logger.info("forbidden", metadata: ["user": "\(user.name)", "cluster": "\(target.cluster)", "reason": "\(error.message)"])
        return .status(403, "Forbidden", error.message)
      }
      if r.viaPeer { return .proxy(cluster: target.cluster, target: target.forwardTarget, fields: fields) }
      switch placement.place(clusterID: target.cluster) {
      case .local: return .proxy(cluster: target.cluster, target: target.forwardTarget, fields: fields)
      case .peer(let p):
        return .forward(cluster: target.cluster, host: p.host, port: p.port, hop: hop, fields: "Audit-ID: \(auditID)\r\n")
      case .nowhere(let why): return .status(503, "ServiceUnavailable", why)
      }
    }
    return now.map(audited)
  }

  /// Authenticates the caller's bearer token and authorizes the request
  /// `request(user)` makes, then answers with `then`. Synchronous when both
  /// answers are at hand; otherwise the rest runs in a task and its answer
  /// goes to `later`. A control-plane failure answers 503/504, never allows.
  func authorized(_ r: HubRequest, later: @escaping @Sendable (HubAnswer) -> Void,
                  request: @escaping @Sendable (UserInfo) -> AuthorizationRequest,
                  then: @escaping @Sendable (UserInfo, AuthorizationDecision) -> HubAnswer) -> HubAnswer? {
    let token: String
    switch BearerToken.parse(authorization: r.header("Authorization")) {
    case .success(let t): token = t
    case .failure(let e):
      metrics?.unauthenticated()
      return .status(401, "Unauthorized", e.message)
    }
    let (authenticator, authorizer, metrics, logger) = (self.authenticator, self.authorizer, self.metrics, self.logger)
    @Sendable func decided(_ user: UserInfo, _ d: AuthorizationDecision) -> HubAnswer {
      metrics?.decided(allowed: d.allowed)
      return then(user, d)
    }
    @Sendable func failed(_ error: Error) -> HubAnswer {
      if let e = error as? AuthenticationError {
        metrics?.unauthenticated()
        return .status(401, "Unauthorized", e.message)
      }
      if let e = error as? ControlPlaneError {
        logger.warning("control plane: \(e)")
        return .status(e.httpStatus, e.statusReason, e.statusMessage)
      }
      logger.error("control plane: \(error)")
      return .status(503, "ServiceUnavailable", "the hub could not check this request; try again")
    }
    var known: UserInfo?
    if let now = authenticator.authenticateNow(bearerToken: token) {
      switch now {
      case .failure(let e): return failed(e)
      case .success(let user):
        known = user
        if let d = authorizer.authorizeNow(request(user)) {
          switch d {
          case .success(let d): return decided(user, d)
          case .failure(let e): return failed(e)
          }
        }
      }
    }
    Task {
      do {
        let user: UserInfo
        if let known { user = known } else { user = try await authenticator.authenticate(bearerToken: token) }
        later(decided(user, try await authorizer.authorize(request(user))))
      } catch {
        later(failed(error))
      }
    }
    return nil
  }

  /// `GET /metrics`: for callers RBAC lets `get` the non-resource URL
  /// /metrics, as kube-apiserver does.
  func metricsPage(_ r: HubRequest, later: @escaping @Sendable (HubAnswer) -> Void) -> HubAnswer? {
    guard let metrics else { return .status(404, "NotFound", "metrics are off") }
    guard r.method == "GET" else { return methodNotAllowed(r) }
    return authorized(r, later: later, request: { AuthorizationRequest(user: $0, method: r.method, path: "/metrics") }) { _, d in
      guard d.allowed else { return .status(403, "Forbidden", d.forbiddenMessage) }
      return .respond(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: metrics.render())
    }
  }

  /// An audit ID a forwarding replica sent: 1 to 64 characters of
  /// [A-Za-z0-9-] (a UUID is); anything else is not taken.
  static func auditID(adopting s: String) -> String? {
    let u = s.utf8
    guard (1...64).contains(u.count), u.allSatisfy({ b in
      (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b == 0x2d
    }) else { return nil }
    return s
  }

  static let notReady = HubAnswer.status(503, "ServiceUnavailable", "the hub is starting: it has not listed the Clusters yet")

  func methodNotAllowed(_ r: HubRequest) -> HubAnswer {
    .status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
  }
}
