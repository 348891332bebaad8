import Crypto
import Dispatch
import Foundation
import KopilotIO
import KopilotKube
import Logging

// The Kubernetes mode's callers: a TokenReview says who holds a bearer
// token, a SubjectAccessReview on the non-resource URL /proxy/... says what
// they may do, both asked of the host cluster's API server. In front of the
// reviews: caches (so the router answers most requests on the loop thread,
// synchronously), single-flight (a burst of identical misses costs one
// review), a bound on reviews in flight with a bounded wait queue (one for
// TokenReviews, one for SubjectAccessReviews, so a flood of made-up tokens
// cannot crowd out the authorizations of callers already known), and a
// deadline per review. Whatever goes wrong ends in a typed error the router
// turns into 503 or 504; never in an allow, never in a wait without end.

/// The knobs; the defaults follow kube-apiserver's webhook token and
/// authorization caches (2 min / 10 s, 5 min / 30 s).
public struct KubeAuthSettings: Sendable, Equatable {
  /// How long a TokenReview that authenticated is trusted.
  public var authenticatedTTL: TimeInterval = 120
  /// How long a TokenReview that did not is trusted.
  public var unauthenticatedTTL: TimeInterval = 10
  /// How long an allowed SubjectAccessReview is trusted.
  public var allowedTTL: TimeInterval = 300
  /// How long a denied one is trusted.
  public var deniedTTL: TimeInterval = 30
  /// Entries per cache; beyond it the oldest goes.
  public var maxCacheEntries = 10_000
  /// Bytes per cache, keys and values counted by what they hold (a path
  /// may be 64 KiB; a SubjectAccessReview's key and its denial message both
  /// hold it); beyond it the oldest goes. An answer bigger than this alone
  /// is not cached. 32 MiB holds the 10,000 entries of ordinary paths many
  /// times over, and at most 32 MiB of hostile ones.
  public var maxCacheBytes = 32 << 20
  /// Reviews of one kind sent to the host at once: TokenReviews and
  /// SubjectAccessReviews each have this many places (each kind its own
  /// `ReviewLimiter`, made by `KubeAuthenticator.pair`).
  public var maxInFlight = 32
  /// Reviews waiting for a place; beyond it a review fails at once.
  public var maxQueued = 1_000
  /// Bound on one review, its wait for a place included.
  public var reviewTimeout: TimeInterval = 5
  /// TokenReview `spec.audiences`; empty: the API server's own.
  public var audiences: [String] = []

  public init() {}
}

/// Monotonic seconds; tests pass a clock they move by hand.
public typealias ReviewClock = @Sendable () -> Double

public let monotonicSeconds: ReviewClock = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

/// Why a review gave no answer. Its `message` goes to the caller and never
/// holds a token; `detail` (the host's own words) is for the hub's log.
public struct KubeReviewError: Error, Hashable, Sendable, CustomStringConvertible {
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    private let name: String
    private init(_ name: String) { self.name = name }
    public var description: String { name }
    /// No answer within `reviewTimeout`: 504.
    public static let timeout = Code("timeout")
    /// The host could not be reached, answered 5xx or 429, or refused the
    /// review itself (the hub's own permissions): 503.
    public static let unavailable = Code("unavailable")
    /// Too many reviews in flight and waiting: 503 at once.
    public static let overloaded = Code("overloaded")
  }

  public var code: Code
  public var message: String
  public var detail: String

  public init(_ code: Code, _ message: String, detail: String = "") {
    self.code = code
    self.message = message
    self.detail = detail
  }

  /// The HTTP status of the `Status` the router sends.
  public var httpStatus: Int { code == .timeout ? 504 : 503 }
  /// The `Status.reason`.
  public var reason: String { code == .timeout ? "Timeout" : "ServiceUnavailable" }
  /// The answer to give the caller.
  public var answer: HubAnswer { .status(httpStatus, reason, message) }
  public var description: String { detail.isEmpty ? "\(code): \(message)" : "\(code): \(message) (\(detail))" }

  /// What an error from a `ReviewClient` means for the caller.
  static func from(_ error: Error, what: String) -> KubeReviewError {
    if let e = error as? KubeReviewError { return e }
    if let e = error as? KubeAPIError {
      if e.isTimeout { return KubeReviewError(.timeout, "the host cluster did not answer the \(what) in time", detail: e.description) }
      return KubeReviewError(.unavailable, "the host cluster could not answer the \(what)", detail: e.description)
    }
    if error is CancellationError {
      return KubeReviewError(.unavailable, "the \(what) was cancelled")
    }
    return KubeReviewError(.unavailable, "the host cluster could not answer the \(what)", detail: "\(error)")
  }
}

/// Counters for /metrics, a snapshot.
public struct ReviewStats: Sendable, Equatable {
  /// Answers from the cache.
  public var hits = 0
  /// Lookups the cache could not answer (each then waited for a review).
  public var misses = 0
  /// Of the misses, those that joined a review already under way.
  public var coalesced = 0
  /// Reviews started.
  public var reviews = 0
  /// Reviews that ended in an error (timeouts and overloads included).
  public var errors = 0
  public var timeouts = 0
  public var overloaded = 0
  public var cacheEntries = 0
  /// What the cache holds, as `TTLCache` counts it.
  public var cacheBytes = 0
  public init() {}
}

/// Bounds the reviews sent to the host at once: up to `maxInFlight` run,
/// up to `maxQueued` wait in order, any more fail at once with
/// `.overloaded`. A waiter whose task is cancelled leaves the queue.
public final class ReviewLimiter: @unchecked Sendable {
  public let maxInFlight: Int
  public let maxQueued: Int
  private let lock = NSLock()
  private var running = 0
  private var waiters: [(id: UInt64, continuation: CheckedContinuation<Void, Error>)] = []
  private var nextID: UInt64 = 0

  public init(maxInFlight: Int = 32, maxQueued: Int = 1_000) {
    self.maxInFlight = max(1, maxInFlight)
    self.maxQueued = max(0, maxQueued)
  }

  /// Reviews running and waiting now.
  public var load: (running: Int, waiting: Int) {
    lock.lock()
    defer { lock.unlock() }
    return (running, waiters.count)
  }

  /// Takes a place, waiting for one in order; every successful acquire
  /// needs one `release()`.
  public func acquire() async throws {
    // nil: a place was free and is taken; else the id to wait under.
    let id: UInt64? = try lock.withLock {
      if running < maxInFlight {
        running += 1
        return nil
      }
      guard waiters.count < maxQueued else { throw Self.overloaded }
      nextID += 1
      return nextID
    }
    guard let id else { return }
    try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
        lock.lock()
        // Cancelled before getting here: the handler below found nothing to
        // remove, so leave now.
        if Task.isCancelled {
          lock.unlock()
          c.resume(throwing: CancellationError())
          return
        }
        // The queue may have filled while the lock was let go.
        if running < maxInFlight {
          running += 1
          lock.unlock()
          c.resume()
          return
        }
        guard waiters.count < maxQueued else {
          lock.unlock()
          c.resume(throwing: Self.overloaded)
          return
        }
        waiters.append((id, c))
        lock.unlock()
      }
    } onCancel: {
      lock.lock()
      let i = waiters.firstIndex { $0.id == id }
      let c = i.map { waiters.remove(at: $0).continuation }
      lock.unlock()
      c?.resume(throwing: CancellationError())
    }
  }

  static let overloaded = KubeReviewError(
    .overloaded, "too many pending reviews: the hub is waiting on the host cluster; retry later")

  /// Gives a place back: to the first waiter, if any.
  public func release() {
    lock.lock()
    if waiters.isEmpty {
      running -= 1
      lock.unlock()
    } else {
      let w = waiters.removeFirst()
      lock.unlock()
      w.continuation.resume()
    }
  }
}

/// A map with a time to live per entry and two bounds, on entries and on
/// bytes (each entry's `cost`): past either the entry inserted longest ago
/// goes. Not thread-safe; its owner locks.
struct TTLCache<Key: Hashable, Value> {
  let capacity: Int
  let maxBytes: Int
  /// What an entry holds, in bytes; the cache adds `entryOverhead`.
  let cost: (Key, Value) -> Int
  /// Per entry besides its contents: the dictionary slot, the order row,
  /// the string headers. A rough figure; it keeps many tiny entries from
  /// counting as nothing.
  static var entryOverhead: Int { 128 }
  private var entries: [Key: (value: Value, expires: Double, seq: UInt64, bytes: Int)] = [:]
  /// Insertion order; stale rows (the key inserted again since, or gone)
  /// are skipped when met and swept when they outnumber the live ones.
  private var order: [(key: Key, seq: UInt64)] = []
  private var head = 0
  private var seq: UInt64 = 0

  /// Sum of the live entries' bytes.
  private(set) var bytes = 0

  init(capacity: Int, maxBytes: Int = .max, cost: @escaping (Key, Value) -> Int = { _, _ in 0 }) {
    self.capacity = max(1, capacity)
    self.maxBytes = max(0, maxBytes)
    self.cost = cost
  }

  var count: Int { entries.count }

  mutating func value(_ key: Key, now: Double) -> Value? {
    guard let e = entries[key] else { return nil }
    guard now < e.expires else {
      remove(key)
      return nil
    }
    return e.value
  }

  private mutating func remove(_ key: Key) {
    if let e = entries.removeValue(forKey: key) { bytes -= e.bytes }
  }

  mutating func insert(_ key: Key, _ value: Value, expires: Double) {
    let size = cost(key, value) + Self.entryOverhead
    remove(key)
    // Bigger than the whole bound: it would only push everything else out.
    guard size <= maxBytes else { return }
    seq += 1
    entries[key] = (value, expires, seq, size)
    bytes += size
    order.append((key, seq))
    while (entries.count > capacity || bytes > maxBytes) && head < order.count {
      let o = order[head]
      head += 1
      if entries[o.key]?.seq == o.seq { remove(o.key) }
    }
    if order.count - head > 2 * entries.count + 64 {
      order = entries.map { ($0.key, $0.value.seq) }.sorted { $0.seq < $1.seq }
      head = 0
    } else if head > 1024 && head * 2 > order.count {
      order.removeFirst(head)
      head = 0
    }
  }
}

/// A cache in front of a review, with single-flight and the deadline. The
/// engine shared by the authenticator and the authorizer.
final class ReviewCache<Key: Hashable & Sendable, Value: Sendable>: @unchecked Sendable {
  private let lock = NSLock()
  private var cache: TTLCache<Key, Value>
  private var inFlight: [Key: Task<Value, Error>] = [:]
  private var counters = ReviewStats()
  private let clock: ReviewClock
  private let limiter: ReviewLimiter
  private let timeout: TimeInterval
  private let ttl: @Sendable (Value) -> TimeInterval
  /// "token review", "access review": for error messages.
  private let what: String
  private let logger: Logger

  init(capacity: Int, maxBytes: Int = .max, cost: @escaping @Sendable (Key, Value) -> Int = { _, _ in 0 },
       clock: @escaping ReviewClock, limiter: ReviewLimiter, timeout: TimeInterval, what: String,
       logger: Logger, ttl: @escaping @Sendable (Value) -> TimeInterval) {
    self.logger = logger
    cache = TTLCache(capacity: capacity, maxBytes: maxBytes, cost: cost)
    self.clock = clock
    self.limiter = limiter
    self.timeout = timeout
    self.what = what
    self.ttl = ttl
  }

  /// A cache sized and timed by `settings`, entries weighed by `cost`;
  /// without a limiter given, one of its own.
  convenience init(settings: KubeAuthSettings, cost: @escaping @Sendable (Key, Value) -> Int, clock: @escaping ReviewClock,
                   limiter: ReviewLimiter?, what: String, logger: Logger, ttl: @escaping @Sendable (Value) -> TimeInterval) {
    self.init(capacity: settings.maxCacheEntries, maxBytes: settings.maxCacheBytes, cost: cost, clock: clock,
              limiter: limiter ?? ReviewLimiter(maxInFlight: settings.maxInFlight, maxQueued: settings.maxQueued),
              timeout: settings.reviewTimeout, what: what, logger: logger, ttl: ttl)
  }

  var stats: ReviewStats {
    lock.lock()
    defer { lock.unlock() }
    var s = counters
    s.cacheEntries = cache.count
    s.cacheBytes = cache.bytes
    return s
  }

  /// The cached value, counting a hit; nil (and nothing counted) when the
  /// cache cannot answer: the async path follows and counts the miss.
  func cached(_ key: Key) -> Value? {
    lock.lock()
    defer { lock.unlock() }
    guard let v = cache.value(key, now: clock()) else { return nil }
    counters.hits += 1
    return v
  }

  /// The cached value, or the result of the review under way for `key`,
  /// or of a new one made with `review`.
  func value(_ key: Key, review: @escaping @Sendable () async throws -> Value) async throws -> Value {
    let found: Found = lock.withLock {
      if let v = cache.value(key, now: clock()) {
        counters.hits += 1
        return .hit(v)
      }
      counters.misses += 1
      if let t = inFlight[key] {
        counters.coalesced += 1
        return .wait(t)
      }
      counters.reviews += 1
      // Made under the lock, so the task's own removal (which takes the
      // lock) always comes after this insertion.
      let t = Task { try await self.run(key, review) }
      inFlight[key] = t
      return .wait(t)
    }
    switch found {
    case .hit(let v): return v
    case .wait(let task): return try await task.value
    }
  }

  private enum Found {
    case hit(Value)
    case wait(Task<Value, Error>)
  }

  private func run(_ key: Key, _ review: @escaping @Sendable () async throws -> Value) async throws -> Value {
    let limiter = self.limiter
    let result: Result<Value, KubeReviewError>
    do {
      let v = try await withDeadline(seconds: timeout,
                                     onTimeout: KubeReviewError(.timeout, "the host cluster did not answer the \(what) in time")) {
        try await limiter.acquire()
        defer { limiter.release() }
        return try await review()
      }
      result = .success(v)
    } catch {
      result = .failure(KubeReviewError.from(error, what: what))
    }
    lock.withLock {
      inFlight[key] = nil
      switch result {
      case .success(let v):
        let t = ttl(v)
        if t > 0 { cache.insert(key, v, expires: clock() + t) }
      case .failure(let e):
        counters.errors += 1
        if e.code == .timeout { counters.timeouts += 1 }
        if e.code == .overloaded { counters.overloaded += 1 }
      }
    }
    // Once per review, not once per caller waiting on it.
    if case .failure(let e) = result { logger.warning("\(what) failed: \(e)") }
    return try result.get()
  }
}

/// Runs `body` and returns its result, or throws `onTimeout` after
/// `seconds` even if `body` never returns (it is cancelled then; a body that
/// ignores cancellation runs on, unobserved). A task group would wait for
/// such a body; this does not.
func withDeadline<T: Sendable>(seconds: TimeInterval, onTimeout: Error,
                               _ body: @escaping @Sendable () async throws -> T) async throws -> T {
  let gate = ResumeOnce<T>()
  return try await withCheckedThrowingContinuation { c in
    gate.set(c)
    let work = TaskBox()
    let timer = DispatchWorkItem {
      if gate.resume(.failure(onTimeout)) { work.cancel() }
    }
    DispatchQueue.global().asyncAfter(deadline: .now() + max(0, seconds), execute: timer)
    work.set(Task {
      let r: Result<T, Error>
      do { r = .success(try await body()) } catch { r = .failure(error) }
      if gate.resume(r) { timer.cancel() }
    })
  }
}

private final class ResumeOnce<T>: @unchecked Sendable {
  private let lock = NSLock()
  private var continuation: CheckedContinuation<T, Error>?
  func set(_ c: CheckedContinuation<T, Error>) {
    lock.lock()
    continuation = c
    lock.unlock()
  }
  /// Whether this call resumed it (only the first does).
  func resume(_ r: Result<T, Error>) -> Bool {
    lock.lock()
    let c = continuation
    continuation = nil
    lock.unlock()
    c?.resume(with: r)
    return c != nil
  }
}

private final class TaskBox: @unchecked Sendable {
  private let lock = NSLock()
  private var task: Task<Void, Never>?
  private var cancelled = false
  func set(_ t: Task<Void, Never>) {
    lock.lock()
    task = t
    let c = cancelled
    lock.unlock()
    if c { t.cancel() }
  }
  func cancel() {
    lock.lock()
    cancelled = true
    let t = task
    lock.unlock()
    t?.cancel()
  }
}

/// Callers authenticated by TokenReview on the host cluster.
///
/// Router use: `cachedUser(for:)` on the loop thread; nil means "not
/// cached", then `authenticate(bearerToken:)` off it. A token no one holds
/// is `AuthenticationError(.invalidToken)` (401); a review that could not be
/// made is `KubeReviewError` (`.answer`: 503 or 504).
public final class KubeAuthenticator: Authenticator, @unchecked Sendable {
  public let settings: KubeAuthSettings
  private let client: any ReviewClient
  private let cache: ReviewCache<SHA256Digest, UserInfo?>
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
  static func key(_ token: String) -> SHA256Digest { SHA256.hash(data: Data(token.utf8)) }
}

/// Callers authorized by SubjectAccessReview on the host cluster, on the
/// non-resource URL the embedded RBAC checks (`AuthorizationRequest.path`,
/// `.verb`).
///
/// Router use: `cachedDecision(for:)` on the loop thread; nil means "not
/// cached", then `authorize(_:)` off it. A denial is a decision with
/// `allowed == false` and a `forbiddenMessage` carrying the host's reason
/// (403); a review that could not be made throws `KubeReviewError`
/// (`.answer`: 503 or 504).
public final class KubeAuthorizer: Authorizer, @unchecked Sendable {
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

/// What cached answers weigh: the bytes of the strings they hold.
enum ReviewCost {
  static func user(_ u: UserInfo) -> Int {
    u.name.utf8.count + u.uid.utf8.count + u.groups.reduce(0) { $0 + $1.utf8.count + 16 }
      + u.extra.reduce(0) { $0 + $1.key.utf8.count + $1.value.reduce(0) { $0 + $1.utf8.count + 16 } + 16 }
  }
}

extension KubeReviewError: ControlPlaneError {
  public var statusReason: String { reason }
  public var statusMessage: String { message }
}
