import Crypto
import Dispatch
import Foundation
import KopilotBase
import KopilotIO
import KopilotKube
import Logging

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
final class ReviewCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
  private struct State {
    var cache: TTLCache<Key, Value>
    var inFlight: [Key: Task<Result<Value, KubeReviewError>, Never>] = [:]
    var counters = ReviewStats()
  }
  private let state: Mutex<State>
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
    state = Mutex(State(cache: TTLCache(capacity: capacity, maxBytes: maxBytes, cost: cost)))
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
    state.withLock { st in
      var s = st.counters
      s.cacheEntries = st.cache.count
      s.cacheBytes = st.cache.bytes
      return s
    }
  }

  /// The cached value, counting a hit; nil (and nothing counted) when the
  /// cache cannot answer: the async path follows and counts the miss.
  func cached(_ key: Key) -> Value? {
    let now = clock()
    return state.withLock { s in
      guard let v = s.cache.value(key, now: now) else { return nil }
      s.counters.hits += 1
      return v
    }
  }

  /// The cached value, or the result of the review under way for `key`,
  /// or of a new one made with `review`.
  func value(_ key: Key, review: @escaping @Sendable () async throws -> Value) async throws -> Value {
    let now = clock()
    let found: Found = state.withLock { s in
      if let v = s.cache.value(key, now: now) {
        s.counters.hits += 1
        return .hit(v)
      }
      s.counters.misses += 1
      if let t = s.inFlight[key] {
        s.counters.coalesced += 1
        return .wait(t)
      }
      s.counters.reviews += 1
      // A task of its own, so a caller that goes away cancels the review
      // for nobody else. It touches no state: the caller that started it
      // records the outcome, so the review never waits on this lock.
      let t = Task { await self.review(review) }
      s.inFlight[key] = t
      return .lead(t)
    }
    switch found {
    case .hit(let v): return v
    case .wait(let task): return try await task.value.get()
    case .lead(let task):
      let result = await task.value
      record(key, result)
      return try result.get()
    }
  }

  private typealias Review = Task<Result<Value, KubeReviewError>, Never>

  private enum Found {
    case hit(Value)
    case wait(Review)
    case lead(Review)
  }

  private func review(_ review: @escaping @Sendable () async throws -> Value) async -> Result<Value, KubeReviewError> {
    let limiter = self.limiter
    do {
      return .success(try await withDeadline(seconds: timeout,
                                             onTimeout: KubeReviewError(.timeout, "the host cluster did not answer the \(what) in time")) {
        try await limiter.acquire()
        defer { limiter.release() }
        return try await review()
      })
    } catch {
      return .failure(KubeReviewError.from(error, what: what))
    }
  }

  /// A review ended: cache what it found, count what went wrong, and let
  /// the next miss start a new one.
  private func record(_ key: Key, _ result: Result<Value, KubeReviewError>) {
    let now = clock()
    state.withLock { s in
      s.inFlight[key] = nil
      switch result {
      case .success(let v):
        let t = ttl(v)
        if t > 0 { s.cache.insert(key, v, expires: now + t) }
      case .failure(let e):
        s.counters.errors += 1
        if e.code == .timeout { s.counters.timeouts += 1 }
        if e.code == .overloaded { s.counters.overloaded += 1 }
      }
    }
    // Once per review, not once per caller waiting on it.
    if case .failure(let e) = result { logger.warning("\(what) failed: \(e)") }
  }
}
