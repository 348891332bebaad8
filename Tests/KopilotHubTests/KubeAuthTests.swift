import Foundation
import KopilotIO
import KopilotKube
import XCTest
@testable import KopilotHub

/// An in-memory host cluster: answers reviews from tables, counts them, and
/// can hold them at a gate, fail them, or hang (cooperatively or not).
final class FakeReviewClient: ReviewClient, @unchecked Sendable {
  private let lock = NSLock()
  var users: [String: ReviewedUser] = [:]
  var decide: @Sendable (AccessReviewRequest) -> AccessReviewResult = { _ in AccessReviewResult(allowed: true) }
  /// Thrown by every review while set.
  var failure: Error?
  /// While closed, reviews wait (a cancelled one leaves with
  /// CancellationError, unless `ignoreCancellation`).
  private var gateClosed = false
  var ignoreCancellation = false
  /// SubjectAccessReviews pass a closed gate (only TokenReviews wait).
  var gateTokenReviewsOnly = false
  private var waiting: [(id: Int, c: CheckedContinuation<Void, Error>)] = []
  private var nextID = 0

  private(set) var tokenReviews: [String] = []
  private(set) var accessReviews: [AccessReviewRequest] = []
  private(set) var running = 0
  private(set) var mostRunning = 0

  func locked<T>(_ body: () -> T) -> T {
    lock.lock()
    defer { lock.unlock() }
    return body()
  }

  var tokenReviewCount: Int { locked { tokenReviews.count } }
  var accessReviewCount: Int { locked { accessReviews.count } }
  var runningNow: Int { locked { running } }
  var waitingAtGate: Int { locked { waiting.count } }
  var mostRunningSeen: Int { locked { mostRunning } }

  func closeGate() { locked { gateClosed = true } }

  func openGate() {
    let ws: [CheckedContinuation<Void, Error>] = locked {
      gateClosed = false
      defer { waiting = [] }
      return waiting.map(\.c)
    }
    for c in ws { c.resume() }
  }

  private func pass() async throws {
    let id: Int? = locked {
      running += 1
      mostRunning = max(mostRunning, running)
      guard gateClosed else { return nil }
      nextID += 1
      return nextID
    }
    guard let id else { return }
    let ignore = ignoreCancellation
    try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
        lock.lock()
        if !gateClosed || (!ignore && Task.isCancelled) {
          lock.unlock()
          if gateClosed { c.resume(throwing: CancellationError()) } else { c.resume() }
          return
        }
        waiting.append((id, c))
        lock.unlock()
      }
    } onCancel: {
      guard !ignore else { return }
      let c: CheckedContinuation<Void, Error>? = locked {
        guard let i = waiting.firstIndex(where: { $0.id == id }) else { return nil }
        return waiting.remove(at: i).c
      }
      c?.resume(throwing: CancellationError())
    }
  }

  private func done() { locked { running -= 1 } }

  func tokenReview(token: String, audiences: [String]) async throws -> TokenReviewResult {
    locked { tokenReviews.append(token) }
    defer { done() }
    try await pass()
    if let failure = locked({ failure }) { throw failure }
    guard let u = locked({ users[token] }) else {
      return TokenReviewResult(authenticated: false, user: nil, error: "invalid bearer token")
    }
    return TokenReviewResult(authenticated: true, user: u, error: nil)
  }

  func subjectAccessReview(_ request: AccessReviewRequest) async throws -> AccessReviewResult {
    locked { accessReviews.append(request) }
    defer { done() }
    if locked({ gateTokenReviewsOnly }) {
      locked { running += 1 }
    } else {
      try await pass()
    }
    if let failure = locked({ failure }) { throw failure }
    return decide(request)
  }
}

struct SomeTransportError: Error {}

/// Appends from many tasks.
final class Collector<T>: @unchecked Sendable {
  private let lock = NSLock()
  private var items: [T] = []
  func add(_ x: T) {
    lock.lock()
    items.append(x)
    lock.unlock()
  }
  var all: [T] {
    lock.lock()
    defer { lock.unlock() }
    return items
  }
}

/// A clock the test moves.
final class ManualClock: @unchecked Sendable {
  private let lock = NSLock()
  private var t = 1000.0
  var now: Double {
    lock.lock()
    defer { lock.unlock() }
    return t
  }
  func advance(_ s: Double) {
    lock.lock()
    t += s
    lock.unlock()
  }
  var clock: ReviewClock { { [self] in now } }
}

final class KubeAuthTests: XCTestCase {
  let alice = ReviewedUser(username: "alice", uid: "u-1", groups: ["devs", "system:authenticated"],
                           extra: ["scopes": ["a", "b"]])
  let aliceToken = "alice-token-0123456789"

  func makeAuthn(_ fake: FakeReviewClient, _ clock: ManualClock, _ tweak: (inout KubeAuthSettings) -> Void = { _ in })
    -> KubeAuthenticator
  {
    var s = KubeAuthSettings()
    // Far past any test: only the timeout tests set one that can fire.
    s.reviewTimeout = 600
    tweak(&s)
    return KubeAuthenticator(client: fake, settings: s, clock: clock.clock)
  }

  func testDefaults() {
    let s = KubeAuthSettings()
    XCTAssertEqual(s.authenticatedTTL, 120)
    XCTAssertEqual(s.unauthenticatedTTL, 10)
    XCTAssertEqual(s.allowedTTL, 300)
    XCTAssertEqual(s.deniedTTL, 30)
    XCTAssertEqual(s.maxCacheEntries, 10_000)
    XCTAssertEqual(s.maxCacheBytes, 32 << 20)
    XCTAssertEqual(s.maxInFlight, 32)
    XCTAssertEqual(s.maxQueued, 1_000)
    XCTAssertEqual(s.reviewTimeout, 5)
  }

  func testTokenReviewIsCachedUntilItsTTL() async throws {
    let fake = FakeReviewClient()
    fake.users[aliceToken] = alice
    let clock = ManualClock()
    let authn = makeAuthn(fake, clock)

    XCTAssertNil(authn.cachedUser(for: aliceToken), "nothing cached yet")
    let u = try await authn.authenticate(bearerToken: aliceToken)
    XCTAssertEqual(u, UserInfo(name: "alice", uid: "u-1", groups: ["devs", "system:authenticated"], extra: ["scopes": ["a", "b"]]))
    XCTAssertEqual(fake.tokenReviews, [aliceToken])

    XCTAssertEqual(try authn.cachedUser(for: aliceToken)?.get(), u)
    _ = try await authn.authenticate(bearerToken: aliceToken)
    XCTAssertEqual(fake.tokenReviewCount, 1, "answered from the cache")

    clock.advance(119)
    XCTAssertNotNil(authn.cachedUser(for: aliceToken))
    clock.advance(2)
    XCTAssertNil(authn.cachedUser(for: aliceToken), "2 minutes passed")
    _ = try await authn.authenticate(bearerToken: aliceToken)
    XCTAssertEqual(fake.tokenReviewCount, 2)

    let st = authn.stats
    XCTAssertEqual(st.reviews, 2)
    XCTAssertEqual(st.misses, 2)
    XCTAssertEqual(st.hits, 3)
    XCTAssertEqual(st.errors, 0)
    XCTAssertEqual(st.cacheEntries, 1)
  }

  func testUnauthenticatedIsCachedBriefly() async throws {
    let fake = FakeReviewClient()
    let clock = ManualClock()
    let authn = makeAuthn(fake, clock)
    let token = "nobody-holds-this-token"
    do {
      _ = try await authn.authenticate(bearerToken: token)
      XCTFail("authenticated a token no one holds")
    } catch let e as AuthenticationError {
      XCTAssertEqual(e.code, .invalidToken)
      XCTAssertFalse(e.message.contains(token))
    }
    guard case .failure(let e)? = authn.cachedUser(for: token) else { return XCTFail("refusal not cached") }
    XCTAssertEqual(e.code, .invalidToken)
    clock.advance(11)
    XCTAssertNil(authn.cachedUser(for: token), "10 s passed")
    fake.users[token] = alice
    let u = try await authn.authenticate(bearerToken: token)
    XCTAssertEqual(u.name, "alice")
    XCTAssertEqual(fake.tokenReviewCount, 2)
    // An empty token is refused without a review.
    guard case .failure? = authn.cachedUser(for: "") else { return XCTFail("empty token") }
    do {
      _ = try await authn.authenticate(bearerToken: "")
      XCTFail("empty token authenticated")
    } catch is AuthenticationError {}
    XCTAssertEqual(fake.tokenReviewCount, 2)
  }

  func testGroupsGainSystemAuthenticated() async throws {
    let fake = FakeReviewClient()
    fake.users["bob-token-0123456789"] = ReviewedUser(username: "bob", groups: ["ops"])
    let authn = makeAuthn(fake, ManualClock())
    let u = try await authn.authenticate(bearerToken: "bob-token-0123456789")
    XCTAssertEqual(u.groups, ["ops", "system:authenticated"])
  }

  func testIdenticalMissesShareOneReview() async throws {
    let fake = FakeReviewClient()
    fake.users[aliceToken] = alice
    fake.closeGate()
    let authn = makeAuthn(fake, ManualClock())
    let results = Collector<String>()
    var tasks: [Task<Void, Never>] = []
    let token = aliceToken
    for _ in 0..<20 {
      tasks.append(Task {
        let name = (try? await authn.authenticate(bearerToken: token).name) ?? "error"
        results.add(name)
      })
    }
    XCTAssertTrue(waitUntil(timeout: 30) { authn.stats.misses == 20 }, "all 20 lookups missed")
    XCTAssertTrue(waitUntil(timeout: 30) { fake.waitingAtGate == 1 })
    fake.openGate()
    for t in tasks { await t.value }
    XCTAssertEqual(results.all, Array(repeating: "alice", count: 20))
    XCTAssertEqual(fake.tokenReviewCount, 1, "one review for 20 identical misses")
    XCTAssertEqual(authn.stats.coalesced, 19)
    XCTAssertEqual(authn.stats.reviews, 1)
  }

  func testReviewsInFlightAreBoundedAndTheQueueToo() async throws {
    let fake = FakeReviewClient()
    let tokens = (0..<6).map { "caller-token-\($0)-0123456789" }
    for (i, t) in tokens.enumerated() { fake.users[t] = ReviewedUser(username: "user\(i)") }
    fake.closeGate()
    var settings = KubeAuthSettings()
    settings.reviewTimeout = 600
    let limiter = ReviewLimiter(maxInFlight: 2, maxQueued: 3)
    let authn = KubeAuthenticator(client: fake, settings: settings, limiter: limiter, clock: ManualClock().clock)
    let results = Collector<String>()
    var tasks: [Task<Void, Never>] = []
    for t in tokens.prefix(5) {
      tasks.append(Task {
        let name = (try? await authn.authenticate(bearerToken: t).name) ?? "error"
        results.add(name)
      })
    }
    // Two at the host, three waiting for a place.
    XCTAssertTrue(waitUntil(timeout: 30) { fake.waitingAtGate == 2 && limiter.load == (2, 3) })
    XCTAssertEqual(fake.tokenReviewCount, 2)
    // The sixth finds the queue full and fails at once, as 503.
    do {
      _ = try await authn.authenticate(bearerToken: tokens[5])
      XCTFail("a review past the queue was accepted")
    } catch let e as KubeReviewError {
      XCTAssertEqual(e.code, .overloaded)
      XCTAssertEqual(e.httpStatus, 503)
      XCTAssertEqual(e.reason, "ServiceUnavailable")
      XCTAssertTrue(e.message.contains("too many pending reviews"), e.message)
    }
    XCTAssertEqual(authn.stats.overloaded, 1)
    XCTAssertNil(authn.cachedUser(for: tokens[5]), "an overload is not cached")

    // Open the gate: every held review ends; never more than two at once.
    fake.openGate()
    XCTAssertTrue(waitUntil(timeout: 30) {
      if fake.waitingAtGate > 0 { fake.openGate() }
      return results.all.count == 5
    })
    for t in tasks { await t.value }
    XCTAssertEqual(Set(results.all), Set((0..<5).map { "user\($0)" }))
    XCTAssertEqual(fake.mostRunningSeen, 2)
    XCTAssertEqual(fake.tokenReviewCount, 5)
  }

  /// Anyone can send made-up tokens, and each costs a TokenReview: with
  /// TokenReviews held at the host and their limiter full, an authenticated
  /// caller's SubjectAccessReview still goes through (one shared limiter
  /// answered it 503).
  func testTokenFloodDoesNotStarveAuthorizations() async throws {
    let fake = FakeReviewClient()
    fake.users[aliceToken] = alice
    fake.gateTokenReviewsOnly = true
    fake.closeGate()
    var s = KubeAuthSettings()
    s.maxInFlight = 2
    s.maxQueued = 3
    s.reviewTimeout = 600
    let (authn, authz) = KubeAuthenticator.pair(client: fake, settings: s, clock: ManualClock().clock)
    // The flood: two at the host, three waiting, the rest refused.
    var flood: [Task<Void, Never>] = []
    for i in 0..<5 {
      flood.append(Task { _ = try? await authn.authenticate(bearerToken: "random-token-\(i)-0123456789") })
    }
    XCTAssertTrue(waitUntil(timeout: 30) { fake.waitingAtGate == 2 && authn.stats.misses == 5 })
    do {
      _ = try await authn.authenticate(bearerToken: "random-token-5-0123456789")
      XCTFail("a TokenReview past the full queue was accepted")
    } catch let e as KubeReviewError {
      XCTAssertEqual(e.code, .overloaded)
    }
    // Alice, already known (her token was reviewed before the flood in a
    // real hub; here the authorizer is asked straight away): not refused.
    for i in 0..<10 {
      let d = try await authz.authorize(AuthorizationRequest(user: UserInfo(name: "alice"), method: "GET", path: "/proxy/a_b/\(i)"))
      XCTAssertTrue(d.allowed, "\(i)")
    }
    XCTAssertEqual(authz.stats.overloaded, 0)
    XCTAssertEqual(fake.accessReviewCount, 10)
    fake.openGate()
    XCTAssertTrue(waitUntil(timeout: 30) {
      if fake.waitingAtGate > 0 { fake.openGate() }
      return fake.tokenReviewCount == 5 && fake.runningNow == 0
    })
    for t in flood { await t.value }
  }

  /// Each limiter is sized by the settings, and the two are not one.
  func testPairHasALimiterPerKind() async throws {
    let fake = FakeReviewClient()
    fake.closeGate()
    var s = KubeAuthSettings()
    s.maxInFlight = 1
    s.maxQueued = 0
    s.reviewTimeout = 600
    let (authn, authz) = KubeAuthenticator.pair(client: fake, settings: s, clock: ManualClock().clock)
    let token = aliceToken
    let t = Task { try? await authn.authenticate(bearerToken: token) }
    let a = Task { try? await authz.authorize(AuthorizationRequest(user: UserInfo(name: "alice"), method: "GET", path: "/proxy/a_b/")) }
    // One of each at the host at once: each kind has its own place.
    XCTAssertTrue(waitUntil(timeout: 30) { fake.waitingAtGate == 2 })
    do {
      _ = try await authn.authenticate(bearerToken: "second-token-0123456789")
      XCTFail("a second TokenReview got past a limiter of one")
    } catch let e as KubeReviewError {
      XCTAssertEqual(e.code, .overloaded)
    }
    fake.openGate()
    _ = await t.value
    _ = await a.value
  }

  /// A path may be 64 KiB, and a SubjectAccessReview's key and its denial
  /// message both hold it: the cache is bounded by bytes as well as by
  /// entries, oldest out first, and an answer bigger than the whole bound
  /// is not cached (and pushes nothing out).
  func testCacheBytesAreBounded() async throws {
    let fake = FakeReviewClient()
    fake.decide = { _ in AccessReviewResult(allowed: false, reason: "no") }
    var s = KubeAuthSettings()
    s.maxCacheBytes = 64 << 10
    let authz = KubeAuthorizer(client: fake, settings: s, clock: ManualClock().clock)
    let user = UserInfo(name: "alice")
    func request(_ i: Int, length: Int = 4096) -> AuthorizationRequest {
      let tail = String(repeating: "x", count: length)
      return AuthorizationRequest(user: user, method: "GET", path: "/proxy/a_b/\(i)/\(tail)")
    }
    for i in 0..<100 { _ = try await authz.authorize(request(i)) }
    let st = authz.stats
    XCTAssertLessThanOrEqual(st.cacheBytes, 64 << 10)
    // Each entry holds its path twice (key and message): about 8 KiB.
    XCTAssertGreaterThanOrEqual(st.cacheEntries, 6)
    XCTAssertLessThanOrEqual(st.cacheEntries, 8)
    XCTAssertNotNil(authz.cachedDecision(for: request(99)), "the newest stays")
    XCTAssertNil(authz.cachedDecision(for: request(0)), "the oldest went")

    let kept = authz.stats.cacheEntries
    let huge = request(1000, length: 65_000)
    let d = try await authz.authorize(huge)
    XCTAssertFalse(d.allowed, "answered all the same")
    XCTAssertNil(authz.cachedDecision(for: huge), "bigger than the bound: not cached")
    XCTAssertEqual(authz.stats.cacheEntries, kept, "and nothing pushed out for it")
    XCTAssertNotNil(authz.cachedDecision(for: request(99)))

    // Entries are weighed by what they hold: a cache of tokens counts each.
    fake.users[aliceToken] = alice
    let authn = makeAuthn(fake, ManualClock())
    _ = try await authn.authenticate(bearerToken: aliceToken)
    XCTAssertGreaterThan(authn.stats.cacheBytes, 32 + "alice".utf8.count)
  }

  func testTTLCacheBytes() {
    var c = TTLCache<String, String>(capacity: 100, maxBytes: 1000, cost: { $0.utf8.count + $1.utf8.count })
    let o = TTLCache<String, String>.entryOverhead
    c.insert("a", String(repeating: "v", count: 100), expires: 10)
    XCTAssertEqual(c.bytes, 101 + o)
    // The same key again: replaced, counted once.
    c.insert("a", String(repeating: "v", count: 200), expires: 10)
    XCTAssertEqual(c.bytes, 201 + o)
    XCTAssertEqual(c.count, 1)
    // Expired and read: gone from the count too.
    XCTAssertNil(c.value("a", now: 11))
    XCTAssertEqual(c.bytes, 0)
    for i in 0..<50 { c.insert("k\(i)", "", expires: 10) }
    XCTAssertLessThanOrEqual(c.bytes, 1000)
    XCTAssertEqual(c.count, 1000 / (3 + o))
    XCTAssertNotNil(c.value("k49", now: 0))
  }

  func testTimeoutIs504AndNotCached() async throws {
    let fake = FakeReviewClient()
    fake.users[aliceToken] = alice
    fake.closeGate()
    let authn = makeAuthn(fake, ManualClock()) { $0.reviewTimeout = 0.05 }
    do {
      _ = try await authn.authenticate(bearerToken: aliceToken)
      XCTFail("a hung review answered")
    } catch let e as KubeReviewError {
      XCTAssertEqual(e.code, .timeout)
      XCTAssertEqual(e.httpStatus, 504)
      XCTAssertEqual(e.reason, "Timeout")
      guard case .respond(let status, _, let body, _) = e.answer else { return XCTFail("not a respond answer") }
      XCTAssertEqual(status, 504)
      XCTAssertTrue(body.contains("\"reason\":\"Timeout\""), body)
      XCTAssertFalse(body.contains(aliceToken))
    }
    XCTAssertNil(authn.cachedUser(for: aliceToken))
    XCTAssertEqual(authn.stats.timeouts, 1)
    // The timed-out review was cancelled and gave its place back.
    XCTAssertTrue(waitUntil(timeout: 30) { fake.runningNow == 0 })
    fake.openGate()
    let u = try await authn.authenticate(bearerToken: aliceToken)
    XCTAssertEqual(u.name, "alice")
    XCTAssertEqual(fake.tokenReviewCount, 2)
  }

  func testTimeoutHoldsEvenWhenTheClientIgnoresCancellation() async throws {
    let fake = FakeReviewClient()
    fake.ignoreCancellation = true
    fake.closeGate()
    let authz = KubeAuthorizer(client: fake, settings: { var s = KubeAuthSettings(); s.reviewTimeout = 0.05; return s }(),
                               clock: ManualClock().clock)
    let r = AuthorizationRequest(user: UserInfo(name: "alice"), method: "GET", path: "/proxy/a_b/api")
    do {
      let d = try await authz.authorize(r)
      XCTFail("a hung review answered: \(d)")
    } catch let e as KubeReviewError {
      XCTAssertEqual(e.code, .timeout)
    }
    XCTAssertNil(authz.cachedDecision(for: r))
    fake.openGate()
    XCTAssertTrue(waitUntil(timeout: 30) { fake.runningNow == 0 })
  }

  func testHostErrorsMapToTypedErrorsNeverToAnAllow() async throws {
    let rows: [(note: String, error: Error, code: KubeReviewError.Code, status: Int)] = [
      ("refused", KubeAPIError(code: 0, reason: "Unavailable", message: "connection refused"), .unavailable, 503),
      ("client timeout", KubeAPIError(code: 0, reason: "Timeout", message: "no answer"), .timeout, 504),
      ("5xx", KubeAPIError(code: 500, reason: "InternalError", message: "etcd"), .unavailable, 503),
      ("429", KubeAPIError(code: 429, reason: "TooManyRequests", message: "slow down"), .unavailable, 503),
      ("hub not allowed to review", KubeAPIError(code: 403, reason: "Forbidden", message: "cannot create subjectaccessreviews"), .unavailable, 503),
      ("anything else", SomeTransportError(), .unavailable, 503),
    ]
    for row in rows {
      let fake = FakeReviewClient()
      fake.failure = row.error
      let (authn, authz) = KubeAuthenticator.pair(client: fake, clock: ManualClock().clock)
      do {
        _ = try await authn.authenticate(bearerToken: aliceToken)
        XCTFail("\(row.note): authenticated")
      } catch let e as KubeReviewError {
        XCTAssertEqual(e.code, row.code, row.note)
        XCTAssertEqual(e.httpStatus, row.status, row.note)
        XCTAssertFalse("\(e)".contains(aliceToken), row.note)
      } catch {
        XCTFail("\(row.note): untyped \(error)")
      }
      XCTAssertNil(authn.cachedUser(for: aliceToken), "\(row.note): error cached")
      let r = AuthorizationRequest(user: UserInfo(name: "alice"), method: "GET", path: "/proxy/a_b/api")
      do {
        let d = try await authz.authorize(r)
        XCTFail("\(row.note): a decision (\(d.allowed)) despite the error")
      } catch let e as KubeReviewError {
        XCTAssertEqual(e.code, row.code, row.note)
      } catch {
        XCTFail("\(row.note): untyped \(error)")
      }
      XCTAssertNil(authz.cachedDecision(for: r), "\(row.note): error cached")
      XCTAssertEqual(authz.stats.errors, 1, row.note)
      // The next try asks again.
      fake.failure = nil
      let d = try await authz.authorize(r)
      XCTAssertTrue(d.allowed, row.note)
      XCTAssertEqual(fake.accessReviewCount, 2, row.note)
    }
  }

  func testAccessReviewAsksForTheNormalizedPathAndVerb() async throws {
    let fake = FakeReviewClient()
    let clock = ManualClock()
    let authz = KubeAuthorizer(client: fake, clock: clock.clock)
    let user = UserInfo(name: "alice", uid: "u-1", groups: ["devs"], extra: ["k": ["v"]])
    let target = try XCTUnwrap(parseProxyTarget("/proxy/a_b/../c_d/api/v1/pods/./x?watch=1"))
    let r = AuthorizationRequest(user: user, method: "POST", target: target)
    let d = try await authz.authorize(r)
    XCTAssertTrue(d.allowed)
    XCTAssertEqual(fake.accessReviews, [AccessReviewRequest(
      user: ReviewedUser(username: "alice", uid: "u-1", groups: ["devs"], extra: ["k": ["v"]]),
      path: "/proxy/c_d/api/v1/pods/x", verb: "create")])

    // The same user, path and verb: cached 5 minutes.
    XCTAssertEqual(authz.cachedDecision(for: r)?.allowed, true)
    clock.advance(299)
    XCTAssertEqual(authz.cachedDecision(for: r)?.allowed, true)
    clock.advance(2)
    XCTAssertNil(authz.cachedDecision(for: r))

    // Another verb, another group or another path is another question.
    var other = r
    other.verb = "get"
    XCTAssertNil(authz.cachedDecision(for: other))
    var otherUser = r
    otherUser.user.groups = ["devs", "admins"]
    XCTAssertNil(authz.cachedDecision(for: otherUser))

    // A method with no verb is refused here, without a review.
    let options = AuthorizationRequest(user: user, method: "OPTIONS", path: "/proxy/c_d/")
    XCTAssertEqual(authz.cachedDecision(for: options)?.allowed, false)
    let od = try await authz.authorize(options)
    XCTAssertFalse(od.allowed)
    XCTAssertEqual(fake.accessReviewCount, 1)
  }

  /// An upgrade (kubectl exec over WebSocket is a GET) is reviewed as
  /// create, and a cached get for the same path does not answer it.
  func testUpgradeIsReviewedAsCreate() async throws {
    let fake = FakeReviewClient()
    fake.decide = { r in AccessReviewResult(allowed: r.verb == "get", reason: r.verb == "get" ? "" : "get only") }
    let authz = KubeAuthorizer(client: fake, clock: ManualClock().clock)
    let user = UserInfo(name: "alice")
    let target = try XCTUnwrap(parseProxyTarget("/proxy/a_b/api/v1/namespaces/default/pods/web-0/exec?command=id"))
    let get = HubRequest(method: "GET", target: "/proxy/a_b/api/v1/namespaces/default/pods/web-0/exec", headers: [], peer: "p")
    var upgrade = get
    upgrade.headers = [("Connection", "Upgrade"), ("Upgrade", "websocket")]

    let plain = try await authz.authorize(AuthorizationRequest(user: user, get, target: target))
    XCTAssertTrue(plain.allowed)
    let up = AuthorizationRequest(user: user, upgrade, target: target)
    XCTAssertNil(authz.cachedDecision(for: up), "the cached get must not answer an upgrade")
    let d = try await authz.authorize(up)
    XCTAssertFalse(d.allowed)
    XCTAssertEqual(d.forbiddenMessage, "User \"alice\" cannot create path \"/proxy/a_b/api/v1/namespaces/default/pods/web-0/exec\": get only")
    XCTAssertEqual(fake.accessReviews.map(\.verb), ["get", "create"])
    XCTAssertEqual(authz.cachedDecision(for: up)?.allowed, false)
  }

  func testDenialCarriesTheHostsReasonAndIsCached30s() async throws {
    let fake = FakeReviewClient()
    fake.decide = { r in
      r.path.hasPrefix("/proxy/ok_")
        ? AccessReviewResult(allowed: true, reason: "RBAC: allowed by ClusterRoleBinding \"x\"")
        : r.path.hasPrefix("/proxy/err_")
          ? AccessReviewResult(allowed: false, evaluationError: "webhook down")
          : AccessReviewResult(allowed: false, reason: "no RBAC policy matched")
    }
    let clock = ManualClock()
    let authz = KubeAuthorizer(client: fake, clock: clock.clock)
    let r = AuthorizationRequest(user: UserInfo(name: "alice"), method: "DELETE", path: "/proxy/no_pe/api")
    let d = try await authz.authorize(r)
    XCTAssertFalse(d.allowed)
    XCTAssertEqual(d.forbiddenMessage, "User \"alice\" cannot delete path \"/proxy/no_pe/api\": no RBAC policy matched")
    XCTAssertEqual(authz.cachedDecision(for: r)?.allowed, false)
    clock.advance(29)
    XCTAssertNotNil(authz.cachedDecision(for: r))
    clock.advance(2)
    XCTAssertNil(authz.cachedDecision(for: r))

    // No opinion with an evaluation error is a denial, too.
    let e = try await authz.authorize(AuthorizationRequest(user: UserInfo(name: "alice"), method: "GET", path: "/proxy/err_x/"))
    XCTAssertFalse(e.allowed)
    XCTAssertTrue(e.reason.contains("webhook down"), e.reason)

    let ok = try await authz.authorize(AuthorizationRequest(user: UserInfo(name: "alice"), method: "GET", path: "/proxy/ok_x/"))
    XCTAssertTrue(ok.allowed)
    XCTAssertTrue(ok.reason.contains("ClusterRoleBinding"), ok.reason)
  }

  func testCacheSizeIsBoundedOldestFirst() async throws {
    let fake = FakeReviewClient()
    let tokens = (0..<5).map { "bounded-token-\($0)-0123456789" }
    for (i, t) in tokens.enumerated() { fake.users[t] = ReviewedUser(username: "u\(i)") }
    let authn = makeAuthn(fake, ManualClock()) { $0.maxCacheEntries = 3 }
    for t in tokens { _ = try await authn.authenticate(bearerToken: t) }
    XCTAssertEqual(authn.stats.cacheEntries, 3)
    XCTAssertNil(authn.cachedUser(for: tokens[0]))
    XCTAssertNil(authn.cachedUser(for: tokens[1]))
    for t in tokens[2...] { XCTAssertNotNil(authn.cachedUser(for: t)) }
  }

  func testTTLCacheKeepsItsOrderBookBounded() {
    var c = TTLCache<Int, Int>(capacity: 4)
    // The same few keys again and again: the cache stays at 4 entries and
    // every read finds the latest value.
    for i in 0..<10_000 { c.insert(i % 4, i, expires: 100) }
    XCTAssertEqual(c.count, 4)
    XCTAssertEqual(c.value(3, now: 0), 9_999)
    XCTAssertNil(c.value(3, now: 100), "expired at its time")
    XCTAssertEqual(c.count, 3)
    // Reinserting a key makes it the newest: key 0 survives, 1 goes.
    c.insert(0, -1, expires: 100)
    c.insert(7, 7, expires: 100)
    c.insert(8, 8, expires: 100)
    XCTAssertEqual(c.count, 4)
    XCTAssertEqual(c.value(0, now: 0), -1)
    XCTAssertNil(c.value(1, now: 0))
  }

  func testLimiterWaiterCancelledLeavesTheQueue() async throws {
    let limiter = ReviewLimiter(maxInFlight: 1, maxQueued: 1)
    try await limiter.acquire()
    let waiter = Task { try await limiter.acquire() }
    XCTAssertTrue(waitUntil(timeout: 30) { limiter.load.waiting == 1 })
    waiter.cancel()
    do {
      try await waiter.value
      XCTFail("a cancelled waiter got a place")
    } catch is CancellationError {}
    XCTAssertEqual(limiter.load.waiting, 0)
    XCTAssertEqual(limiter.load.running, 1)
    limiter.release()
    XCTAssertEqual(limiter.load.running, 0)
  }
}
