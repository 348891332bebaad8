import Foundation

/// Exponential backoff with full jitter: the n-th retry waits a random time
/// in [0, min(cap, base * 2^n)], so a fleet that lost its server at the same
/// moment (agents their hub, informers their API server) does not come back
/// at the same moment. The one backoff of every target.
public struct Backoff: Sendable, Equatable {
  public let base: Double
  public let cap: Double
  public private(set) var attempt = 0

  public init(base: Double = 1, cap: Double = 30) {
    self.base = base
    self.cap = cap
  }

  /// The ceiling of the next delay.
  public var ceiling: Double { min(cap, base * pow(2, Double(min(attempt, 62)))) }

  /// The next delay in seconds; `random` in [0, 1] picks it under the ceiling.
  public mutating func next(random: Double = Double.random(in: 0...1)) -> Double {
    let c = ceiling
    attempt += 1
    return c * random
  }

  public mutating func reset() { attempt = 0 }
}
