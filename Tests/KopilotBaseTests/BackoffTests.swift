import KopilotBase
import XCTest

final class BackoffTests: XCTestCase {
  func testCeilingsDoubleToTheCap() {
    var b = Backoff(base: 0.5, cap: 30)
    var ceilings: [Double] = []
    for _ in 0..<10 {
      let c = b.ceiling
      ceilings.append(c)
      let d = b.next()
      XCTAssertGreaterThanOrEqual(d, 0)
      XCTAssertLessThanOrEqual(d, c)
    }
    XCTAssertEqual(ceilings, [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30])
    b.reset()
    XCTAssertEqual(b.ceiling, 0.5)
  }

  func testFullJitterSpansZeroToTheCeiling() {
    var b = Backoff(base: 1, cap: 30)
    // With the random draw pinned at 1 the ceilings show: 1, 2, 4, ... 30.
    let ceilings = (0..<8).map { _ in b.next(random: 1) }
    XCTAssertEqual(ceilings, [1, 2, 4, 8, 16, 30, 30, 30])
    b.reset()
    XCTAssertEqual(b.next(random: 0.5), 0.5)
    XCTAssertEqual(b.next(random: 0), 0, "full jitter reaches zero")
  }

  func testManyFailuresNeitherOverflowNorPassTheCap() {
    var b = Backoff(base: 1, cap: 30)
    for _ in 0..<10_000 { _ = b.next(random: 1) }
    XCTAssertEqual(b.next(random: 1), 30)
  }
}
