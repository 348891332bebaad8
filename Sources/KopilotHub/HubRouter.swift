import Foundation
import KopilotIO
import Logging

/// The hub's policy for every caller request: which endpoint, who is asking,
/// whether RBAC allows it, and which cluster it goes to. Pure: it reads the
/// registry, the authenticator and the authorizer and returns an answer, so
/// it runs on the loop thread and is tested without sockets.
public struct HubRouter: Sendable {
  public var registry: any ClusterRegistry
  public var authenticator: TokenFileAuthenticator
  public var authorizer: RBACAuthorizer
  /// What agent manifests point agents at: host or host:port.
  public var publicAddr: String
  public var agentImage: String
  /// The hub's CA, PEM, pinned in agent manifests.
  public var caPEM: String
  public var logger: Logger
  /// Counts answers and decisions, and renders /metrics; nil: no metrics.
  public var metrics: HubMetrics?

  public init(registry: any ClusterRegistry, authenticator: TokenFileAuthenticator, authorizer: RBACAuthorizer,
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

  public func route(_ r: HubRequest) -> HubAnswer {
    let answer = answer(r)
    // A proxied request is counted when it ends (Hub.onProxied); the rest now.
    switch answer {
    case .respond(let status, _, _): metrics?.answered(status: status)
    case .proxy(let cluster, _): metrics?.proxyStarted(cluster: cluster)
    case .acceptAgent: break
    // Not answered by this router yet; a forward also ends in onProxied (with
    // the cluster named by "/proxy/<cluster>/" in the target as sent).
    case .forward: break
    }
    return answer
  }

  func answer(_ r: HubRequest) -> HubAnswer {
    let path = r.path
    if path.hasPrefix("/proxy/") || path == "/proxy" { return proxy(r) }
    switch path {
    case "/metrics":
      return metricsPage(r)
    case "/connect":
      return connect(r)
    case "/kopilot-agent.yaml":
      return manifest(r)
    case "/healthz", "/livez", "/readyz":
      guard r.method == "GET" || r.method == "HEAD" else { return methodNotAllowed(r) }
      return .respond(status: 200, contentType: "text/plain; charset=utf-8", body: "ok")
    default:
      return .status(404, "NotFound", "the server could not find the requested resource")
    }
  }

  /// `GET /connect?token=T`: an agent. A wrong token gets 401 before any
  /// upgrade happens.
  func connect(_ r: HubRequest) -> HubAnswer {
    guard r.method == "GET" else { return methodNotAllowed(r) }
    guard let token = queryValue(r.target, "token"), !token.isEmpty,
          let cluster = registry.cluster(forAgentToken: token)
    else {
      logger.notice("agent refused: unknown token", metadata: ["peer": "\(r.peer)"])
      return .status(401, "Unauthorized", "a valid agent token is required")
    }
    return .acceptAgent(cluster: cluster.id)
  }

  /// `GET /kopilot-agent.yaml?token=T&provider=P`: the manifest that installs
  /// the agent of the cluster the token names.
  func manifest(_ r: HubRequest) -> HubAnswer {
    guard r.method == "GET" else { return methodNotAllowed(r) }
    guard let token = queryValue(r.target, "token"), !token.isEmpty,
          registry.cluster(forAgentToken: token) != nil
    else {
      return .status(401, "Unauthorized", "a valid agent token is required")
    }
    do {
      let yaml = try AgentManifest.render(publicAddr: publicAddr, token: token, caPEM: caPEM, image: agentImage,
                                          provider: queryValue(r.target, "provider") ?? "")
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
  func proxy(_ r: HubRequest) -> HubAnswer {
    guard let target = parseProxyTarget(r.target) else {
      return .status(400, "BadRequest", "the path must be /proxy/{namespace}_{name}/... without encoded dots or slashes")
    }
    let user: UserInfo
    switch authenticate(r) {
    case .success(let u): user = u
    case .failure(let answer): return answer.answer
    }
    let decision = authorizer.decide(AuthorizationRequest(user: user, method: r.method, target: target))
    metrics?.decided(allowed: decision.allowed)
    guard decision.allowed else {
      logger.info("forbidden", metadata: ["user": "\(user.name)", "method": "\(r.method)",
                                          "cluster": "\(target.cluster)", "reason": "\(decision.reason)"])
      return .status(403, "Forbidden", decision.forbiddenMessage)
    }
    guard registry.cluster(id: target.cluster) != nil else {
      return .status(404, "NotFound", "cluster \(target.cluster.replacingOccurrences(of: "_", with: "/")) is not registered")
    }
    return .proxy(cluster: target.cluster, target: target.forwardTarget)
  }

  struct Refusal: Error { var answer: HubAnswer }

  /// The caller behind the bearer token, or the 401 to send.
  func authenticate(_ r: HubRequest) -> Result<UserInfo, Refusal> {
    let token: String
    switch BearerToken.parse(authorization: r.header("Authorization")) {
    case .success(let t): token = t
    case .failure(let e):
      metrics?.unauthenticated()
      return .failure(Refusal(answer: .status(401, "Unauthorized", e.message)))
    }
    guard let user = authenticator.user(for: token) else {
      metrics?.unauthenticated()
      return .failure(Refusal(answer: .status(401, "Unauthorized", "Unauthorized")))
    }
    return .success(user)
  }

  /// `GET /metrics`: for callers RBAC lets `get` the non-resource URL
  /// /metrics, as kube-apiserver does.
  func metricsPage(_ r: HubRequest) -> HubAnswer {
    guard let metrics else { return .status(404, "NotFound", "metrics are off") }
    guard r.method == "GET" else { return methodNotAllowed(r) }
    let user: UserInfo
    switch authenticate(r) {
    case .success(let u): user = u
    case .failure(let refusal): return refusal.answer
    }
    let decision = authorizer.decide(AuthorizationRequest(user: user, method: r.method, path: "/metrics"))
    metrics.decided(allowed: decision.allowed)
    guard decision.allowed else { return .status(403, "Forbidden", decision.forbiddenMessage) }
    return .respond(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: metrics.render())
  }

  func methodNotAllowed(_ r: HubRequest) -> HubAnswer {
    .status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
  }
}
