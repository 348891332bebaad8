import KopilotHub
import XCTest

final class ConstantTimeTests: XCTestCase {
  func testEqualAndUnequal() {
    XCTAssertTrue(constantTimeEquals("", ""))
    XCTAssertTrue(constantTimeEquals("s3cret-token-0123456789", "s3cret-token-0123456789"))
    XCTAssertFalse(constantTimeEquals("s3cret-token-0123456789", "s3cret-token-0123456788"))
    XCTAssertFalse(constantTimeEquals("s3cret", "s3cre"))
    XCTAssertFalse(constantTimeEquals("", "x"))
  }

  /// The attack: the shorter input reads as NUL-padded, so only the length
  /// tells a token from the token plus NULs. Folded into 8 bits, a length
  /// difference of 256 (or 512, ...) vanished and the padded token matched.
  func testTrailingNULsNeverMatch() {
    let token = "agent-token-0123456789abcdef"
    for pad in [1, 255, 256, 512, 65_536] {
      let forged = token + String(repeating: "\u{0}", count: pad)
      XCTAssertFalse(constantTimeEquals(forged, token), "\(pad) NULs appended")
      XCTAssertFalse(constantTimeEquals(token, forged), "\(pad) NULs appended, other order")
    }
    XCTAssertFalse(constantTimeEquals(String(repeating: "\u{0}", count: 256), ""))
  }

  func testConstantTimeEquals() {
    XCTAssertTrue(constantTimeEquals("s3cret-token", "s3cret-token"))
    XCTAssertFalse(constantTimeEquals("s3cret-token", "s3cret-tokeN"))
    XCTAssertFalse(constantTimeEquals("s3cret", "s3cret-token"), "a prefix is not equal")
    XCTAssertFalse(constantTimeEquals("", "x"))
    XCTAssertTrue(constantTimeEquals("", ""))
  }
}
