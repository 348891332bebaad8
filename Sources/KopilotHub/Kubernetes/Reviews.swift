import Crypto
import Dispatch
import Foundation
import KopilotBase
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

private final class ResumeOnce<T: Sendable>: Sendable {
  private let continuation = Mutex<CheckedContinuation<T, Error>?>(nil)
  func set(_ c: CheckedContinuation<T, Error>) { continuation.withLock { $0 = c } }
  /// Whether this call resumed it (only the first does).
  func resume(_ r: Result<T, Error>) -> Bool {
    let c = continuation.withLock { c in
      defer { c = nil }
      return c
    }
    c?.resume(with: r)
    return c != nil
  }
}

private final class TaskBox: Sendable {
  private struct State {
    var task: Task<Void, Never>?
    var cancelled = false
  }
  private let state = Mutex(State())
  func set(_ t: Task<Void, Never>) {
    let cancelled = state.withLock { s in
      s.task = t
      return s.cancelled
    }
    if cancelled { t.cancel() }
  }
  func cancel() {
    let t = state.withLock { s in
      s.cancelled = true
      return s.task
    }
    t?.cancel()
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
