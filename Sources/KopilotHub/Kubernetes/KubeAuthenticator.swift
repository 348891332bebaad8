import Crypto
import Dispatch
import Foundation
import KopilotIO
import KopilotKube
import Logging

/// Callers authenticated by TokenReview on the host cluster.
///
/// Router use: `cachedUser(for:)` on the loop thread; nil means "not
/// cached", then `authenticate(bearerToken:)` off it. A token no one holds
/// is `AuthenticationError(.invalidToken)` (401); a review that could not be
/// made is `KubeReviewError` (`.answer`: 503 or 504).
public final class KubeAuthenticator: Authenticator, Sendable {
  public let settings: KubeAuthSettings
  private let client: any ReviewClient
  private let cache: ReviewCache<TokenKey, UserInfo?>
  private let logger: Logger

  /// - limiter: the bound on TokenReviews in flight; nil: one of its own,
  ///   from `settings`. Never share it with a `KubeAuthorizer`: anyone can
  ///   send made-up tokens, and each costs a TokenReview.
  public init(client: any ReviewClient, settings: KubeAuthSettings = KubeAuthSettings(), limiter: ReviewLimiter? = nil,
              clock: @escaping ReviewClock = monotonicSeconds, logger: Logger = Logger(label: "kopilot.hub.authn")) {
    self.client = client
    self.settings = settings
    self.logger = logger
    let s = settings
    cache = ReviewCache(settings: settings, cost: { _, user in 32 + (user.map(ReviewCost.user) ?? 0) }, clock: clock,
                        limiter: limiter, what: "token review", logger: logger,
                        ttl: { $0 == nil ? s.unauthenticatedTTL : s.authenticatedTTL })
  }

  static let refused = AuthenticationError(.invalidToken, "Unauthorized")

  /// The cached answer for `token`, or nil when a review is needed. Never
  /// blocks.
  public func cachedUser(for token: String) -> Result<UserInfo, AuthenticationError>? {
    guard !token.isEmpty else { return .failure(Self.refused) }
    guard let hit = cache.cached(Self.key(token)) else { return nil }
    return hit.map { .success($0) } ?? .failure(Self.refused)
  }

  public func authenticate(bearerToken token: String) async throws -> UserInfo {
    guard !token.isEmpty else { throw Self.refused }
    let client = self.client, audiences = settings.audiences, logger = self.logger
    let user = try await cache.value(Self.key(token)) {
      let r = try await client.tokenReview(token: token, audiences: audiences)
      guard r.authenticated, let u = r.user, !u.username.isEmpty else {
        if let why = r.error, !why.isEmpty { logger.debug("token review: not authenticated: \(why)") }
        return nil
      }
      var groups = u.groups
      if !groups.contains(UserInfo.authenticatedGroup) { groups.append(UserInfo.authenticatedGroup) }
      return UserInfo(name: u.username, uid: u.uid, groups: groups, extra: u.extra)
    }
    guard let user else { throw Self.refused }
    return user
  }

  public func authenticateNow(bearerToken: String) -> Result<UserInfo, Error>? {
    cachedUser(for: bearerToken)?.mapError { $0 }
  }

  public var stats: ReviewStats { cache.stats }

  /// The cache key: the token itself is kept nowhere.
  /// A token's SHA-256: the cache never holds a token itself.
  struct TokenKey: Hashable, Sendable {
    let digest: [UInt8]
  }

  static func key(_ token: String) -> TokenKey { TokenKey(digest: Array(SHA256.hash(data: Data(token.utf8)))) }
}

extension KubeAuthenticator {
  /// An authenticator and an authorizer, each with a `ReviewLimiter` of its
  /// own (`maxInFlight` and `maxQueued` each). A TokenReview can be asked
  /// for by anyone with a made-up token; a SubjectAccessReview only for a
  /// caller the host has authenticated. With one limiter, a flood of random
  /// tokens would fill it and every authenticated caller's cache miss would
  /// get 503; apart, the flood only delays other unknown tokens.
  public static func pair(client: any ReviewClient, settings: KubeAuthSettings = KubeAuthSettings(),
                          clock: @escaping ReviewClock = monotonicSeconds,
                          logger: Logger = Logger(label: "kopilot.hub.auth")) -> (KubeAuthenticator, KubeAuthorizer) {
    func limiter() -> ReviewLimiter { ReviewLimiter(maxInFlight: settings.maxInFlight, maxQueued: settings.maxQueued) }
    return (KubeAuthenticator(client: client, settings: settings, limiter: limiter(), clock: clock, logger: logger),
            KubeAuthorizer(client: client, settings: settings, limiter: limiter(), clock: clock, logger: logger))
  }
}
