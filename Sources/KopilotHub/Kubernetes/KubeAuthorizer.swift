import Crypto
import Dispatch
import Foundation
import KopilotIO
import KopilotKube
import Logging

/// Callers authorized by SubjectAccessReview on the host cluster, on the
/// non-resource URL the embedded RBAC checks (`AuthorizationRequest.path`,
/// `.verb`).
///
/// Router use: `cachedDecision(for:)` on the loop thread; nil means "not
/// cached", then `authorize(_:)` off it. A denial is a decision with
/// `allowed == false` and a `forbiddenMessage` carrying the host's reason
/// (403); a review that could not be made throws `KubeReviewError`
/// (`.answer`: 503 or 504).
public final class KubeAuthorizer: Authorizer, Sendable {
  public let settings: KubeAuthSettings
  private let client: any ReviewClient
  private let cache: ReviewCache<Key, AuthorizationDecision>
  private let logger: Logger

  struct Key: Hashable, Sendable {
    var user: UserInfo
    var path: String
    var verb: String
  }

  public init(client: any ReviewClient, settings: KubeAuthSettings = KubeAuthSettings(), limiter: ReviewLimiter? = nil,
              clock: @escaping ReviewClock = monotonicSeconds, logger: Logger = Logger(label: "kopilot.hub.authz")) {
    self.client = client
    self.settings = settings
    self.logger = logger
    let s = settings
    cache = ReviewCache(settings: settings, cost: { k, d in
                          ReviewCost.user(k.user) + k.path.utf8.count + k.verb.utf8.count
                            + d.reason.utf8.count + d.forbiddenMessage.utf8.count
                        }, clock: clock, limiter: limiter, what: "access review", logger: logger,
                        ttl: { $0.allowed ? s.allowedTTL : s.deniedTTL })
  }

  /// The cached decision, or nil when a review is needed. Never blocks.
  public func cachedDecision(for request: AuthorizationRequest) -> AuthorizationDecision? {
    guard let verb = request.verb else { return Self.noVerb(request) }
    return cache.cached(Key(user: request.user, path: request.path, verb: verb))
  }

  public func authorizeNow(_ request: AuthorizationRequest) -> Result<AuthorizationDecision, Error>? {
    cachedDecision(for: request).map { .success($0) }
  }

  public func authorize(_ request: AuthorizationRequest) async throws -> AuthorizationDecision {
    guard let verb = request.verb else { return Self.noVerb(request) }
    let client = self.client
    return try await cache.value(Key(user: request.user, path: request.path, verb: verb)) {
      let u = request.user
      let r = try await client.subjectAccessReview(AccessReviewRequest(
        user: ReviewedUser(username: u.name, uid: u.uid, groups: u.groups, extra: u.extra),
        path: request.path, verb: verb))
      return Self.decision(request, r)
    }
  }

  public var stats: ReviewStats { cache.stats }

  static func noVerb(_ r: AuthorizationRequest) -> AuthorizationDecision {
    .deny(r, reason: RBACVerb.noVerbReason(r))
  }

  /// A SubjectAccessReview's status as the hub's decision: anything but
  /// `allowed` (denied, no opinion, an evaluation error) is a denial.
  static func decision(_ r: AuthorizationRequest, _ s: AccessReviewResult) -> AuthorizationDecision {
    if s.allowed && !s.denied {
      return AuthorizationDecision(allowed: true, reason: "host cluster: allowed" + (s.reason.isEmpty ? "" : ": \(s.reason)"))
    }
    var why = s.reason.isEmpty ? "host cluster: denied" : "host cluster: \(s.reason)"
    if !s.evaluationError.isEmpty { why += " (evaluation error: \(s.evaluationError))" }
    var d = AuthorizationDecision.deny(r, reason: why)
    if !s.reason.isEmpty { d.forbiddenMessage += ": \(s.reason)" }
    return d
  }
}
