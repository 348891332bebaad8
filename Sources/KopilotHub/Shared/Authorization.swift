import Foundation
import KopilotIO
import Logging
import Yams

/// What the hub asks the authorizer: may this user do this verb on this
/// non-resource path? The shape of a SubjectAccessReview's
/// `nonResourceAttributes`, so the Kubernetes mode can send it as is.
public struct AuthorizationRequest: Hashable, Sendable {
  public var user: UserInfo
  /// The HTTP method the caller used.
  public var method: String
  /// The request asks to switch protocols (`RBACVerb.isUpgrade`): exec,
  /// attach, port-forward, a WebSocket watch.
  public var upgrade: Bool
  /// The RBAC verb (`RBACVerb.forRequest`), nil when the request has none
  /// and is refused.
  public var verb: String?
  /// The normalized path, `/proxy/{cluster}/...` without the query.
  public var path: String

  public init(user: UserInfo, method: String, upgrade: Bool = false, path: String) {
    self.user = user
    self.method = method
    self.upgrade = upgrade
    self.verb = RBACVerb.forRequest(method: method, upgrade: upgrade)
    self.path = path
  }

  /// The request for a parsed `/proxy/` target: `parseProxyTarget` has
  /// resolved dot segments, so `/proxy/a_b/../c_d/x` is authorized as
  /// `/proxy/c_d/x`, the path the caller will really reach.
  public init(user: UserInfo, method: String, upgrade: Bool = false, target: ProxyTarget) {
    self.init(user: user, method: method, upgrade: upgrade, path: RBACVerb.authorizationPath(for: target))
  }

  /// The request a caller's head makes on `target`: method and upgrade both
  /// read from the head, so no caller of this can forget the upgrade.
  public init(user: UserInfo, _ head: HubRequest, target: ProxyTarget) {
    self.init(user: user, method: head.method, upgrade: RBACVerb.isUpgrade(head.headers), target: target)
  }
}

public enum RBACVerb {
  /// The verb for an HTTP method on a non-resource URL, as kube-rbac-proxy
  /// maps it. nil for every other method (OPTIONS, CONNECT, TRACE, ...):
  /// those are denied rather than guessed at.
  public static func forHTTPMethod(_ method: String) -> String? {
    switch method.uppercased() {
    case "GET", "HEAD": return "get"
    case "POST": return "create"
    case "PUT": return "update"
    case "PATCH": return "patch"
    case "DELETE": return "delete"
    default: return nil
    }
  }

  /// The verb for a request: `forHTTPMethod`, except that an upgrade needs
  /// `create`. kube-apiserver authorizes pods/exec, pods/attach and
  /// pods/portforward as `create`: kubectl up to 1.29 opens them with an
  /// SPDY upgrade on POST, which is `create` anyway, but kubectl 1.30+ opens
  /// them with a WebSocket upgrade on GET, and by the method alone a role
  /// meant to read could run commands in pods. The hub cannot tell an exec
  /// from any other upgrade by its path without parsing every API group's
  /// connect subresources, so every upgrade needs `create` (a WebSocket
  /// watch too). Only GET, HEAD and POST may ask for one (kube clients use
  /// GET and POST): PUT, PATCH and DELETE with an upgrade are refused, since
  /// `create` alone must never allow what `delete` would be asked for.
  public static func forRequest(method: String, upgrade: Bool) -> String? {
    guard let verb = forHTTPMethod(method) else { return nil }
    guard upgrade else { return verb }
    return verb == "get" || verb == "create" ? "create" : nil
  }

  /// Whether a head asks to switch protocols: any `Upgrade` field, or a
  /// `Connection` field whose value holds "upgrade" in any case and place.
  /// Broader than RFC 9110 7.8 on purpose: kube-apiserver's
  /// `httpstream.IsUpgradeRequest` takes "upgrade" anywhere in a Connection
  /// value, and a head the member treats as an upgrade must never have
  /// been authorized as a plain `get`.
  public static func isUpgrade(_ headers: [(name: String, value: String)]) -> Bool {
    headers.contains { h in
      let name = h.name.lowercased()
      return name == "upgrade" || (name == "connection" && h.value.lowercased().contains("upgrade"))
    }
  }

  /// `/proxy/<cluster><path>`, the query dropped: RBAC non-resource URLs
  /// match paths only, as kube-apiserver matches `req.URL.Path`.
  public static func authorizationPath(for target: ProxyTarget) -> String {
    let path = target.forwardTarget.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
    return "/proxy/\(target.cluster)\(path.isEmpty ? "/" : path)"
  }

  /// Why a request has no verb, for the log.
  static func noVerbReason(_ r: AuthorizationRequest) -> String {
    if r.upgrade && forHTTPMethod(r.method) != nil {
      return "an upgrade with HTTP method \(r.method) has no RBAC verb (only GET, HEAD and POST may upgrade, as create)"
    }
    return "HTTP method \(r.method) has no RBAC verb (GET/HEAD, POST, PUT, PATCH and DELETE do)"
  }
}

/// The answer, with why. `reason` is for the hub's log; `forbiddenMessage`
/// is the text of the 403 `Status`, worded as kube-apiserver words it.
public struct AuthorizationDecision: Hashable, Sendable {
  public var allowed: Bool
  public var reason: String
  /// `User "alice" cannot get path "/proxy/default_sample/api"`; empty when allowed.
  public var forbiddenMessage: String

  public init(allowed: Bool, reason: String, forbiddenMessage: String = "") {
    self.allowed = allowed
    self.reason = reason
    self.forbiddenMessage = forbiddenMessage
  }

  static func deny(_ r: AuthorizationRequest, reason: String) -> AuthorizationDecision {
    // kube-apiserver lower-cases the method for a verb it has no name for.
    let verb = r.verb ?? r.method.lowercased()
    return AuthorizationDecision(
      allowed: false, reason: reason,
      forbiddenMessage: "User \"\(r.user.name)\" cannot \(verb) path \"\(r.path)\"")
  }
}

/// Decides whether an authenticated caller may make a request. Embedded mode
/// evaluates rbac.yaml itself (`RBACAuthorizer`); the Kubernetes mode will ask
/// the host cluster with a SubjectAccessReview behind the same protocol.
public protocol Authorizer: Sendable {
  /// Throws a `ControlPlaneError` when no decision could be had.
  func authorize(_ request: AuthorizationRequest) async throws -> AuthorizationDecision
  /// The decision synchronously when it is at hand (rbac.yaml, a cache
  /// hit), nil when only `authorize` can tell. Cheap: the hub calls it on
  /// its loop thread.
  func authorizeNow(_ request: AuthorizationRequest) -> Result<AuthorizationDecision, Error>?
}

extension Authorizer {
  public func authorizeNow(_ request: AuthorizationRequest) -> Result<AuthorizationDecision, Error>? { nil }
}
