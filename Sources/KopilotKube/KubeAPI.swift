import Foundation
import KopilotKubeConfig
import Logging

// The control plane's view of a host cluster's API server: the types and the
// client the Kubernetes mode uses. Everything here speaks JSON over HTTPS;
// nothing of it is on the tunnel's hot path.

/// An error from the API server (a `Status`) or from getting to it. Its
/// text never carries a credential.
public struct KubeAPIError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The HTTP status; 0 when no response came (refused, TLS, timeout).
  public var code: Int
  /// `Status.reason` ("NotFound", "Conflict", "Expired", ...), or for code 0
  /// "Timeout" or "Unavailable".
  public var reason: String
  public var message: String

  public init(code: Int, reason: String, message: String) {
    self.code = code
    self.reason = reason
    self.message = message
  }

  /// No answer in time.
  public var isTimeout: Bool { reason == "Timeout" }
  /// The watch or list asked for a resourceVersion the server has forgotten.
  public var isGone: Bool { code == 410 || reason == "Expired" || reason == "Gone" }
  public var description: String { code == 0 ? "\(reason): \(message)" : "\(code) \(reason): \(message)" }
}

/// The part of `metadata` the control plane reads.
public struct ObjectMeta: Codable, Sendable, Hashable {
  public var name: String
  public var namespace: String?
  public var uid: String?
  public var resourceVersion: String?
  public var generation: Int64?
  public var creationTimestamp: String?
  public var deletionTimestamp: String?
  public var labels: [String: String]?
  public var annotations: [String: String]?

  public init(name: String, namespace: String? = nil) {
    self.name = name
    self.namespace = namespace
  }
}

/// An object an informer can cache: anything with metadata.
public protocol KubeObject: Codable, Sendable {
  var metadata: ObjectMeta { get }
}

extension KubeObject {
  /// `namespace/name`, or `name` for cluster-scoped objects.
  public var key: String { metadata.namespace.map { "\($0)/\(metadata.name)" } ?? metadata.name }
}

/// One event of a watch stream, its object still raw JSON.
public struct WatchEvent: Sendable {
  /// ADDED, MODIFIED, DELETED, BOOKMARK or ERROR.
  public var type: String
  public var object: Data
  public init(type: String, object: Data) {
    self.type = type
    self.object = object
  }
}

/// Who a TokenReview says a token belongs to.
public struct ReviewedUser: Sendable, Hashable, Codable {
  public var username: String
  public var uid: String
  public var groups: [String]
  public var extra: [String: [String]]
  public init(username: String, uid: String = "", groups: [String] = [], extra: [String: [String]] = [:]) {
    self.username = username
    self.uid = uid
    self.groups = groups
    self.extra = extra
  }
}

/// `TokenReview.status`.
public struct TokenReviewResult: Sendable, Hashable {
  public var authenticated: Bool
  public var user: ReviewedUser?
  /// Why not, when not (the API server's words; carries no token).
  public var error: String?
  public init(authenticated: Bool, user: ReviewedUser?, error: String?) {
    self.authenticated = authenticated
    self.user = user
    self.error = error
  }
}

/// A SubjectAccessReview on a non-resource URL.
public struct AccessReviewRequest: Sendable, Hashable {
  public var user: ReviewedUser
  public var path: String
  public var verb: String
  public init(user: ReviewedUser, path: String, verb: String) {
    self.user = user
    self.path = path
    self.verb = verb
  }
}

/// `SubjectAccessReview.status`.
public struct AccessReviewResult: Sendable, Hashable {
  public var allowed: Bool
  public var denied: Bool
  public var reason: String
  public var evaluationError: String
  public init(allowed: Bool, denied: Bool = false, reason: String = "", evaluationError: String = "") {
    self.allowed = allowed
    self.denied = denied
    self.reason = reason
    self.evaluationError = evaluationError
  }
}

/// The reviews the hub asks the host cluster for; a protocol so caches and
/// bounds above it are tested without a server.
public protocol ReviewClient: Sendable {
  func tokenReview(token: String, audiences: [String]) async throws -> TokenReviewResult
  func subjectAccessReview(_ request: AccessReviewRequest) async throws -> AccessReviewResult
}
