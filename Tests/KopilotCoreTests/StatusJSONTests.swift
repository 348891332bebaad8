import Foundation
import KopilotCore
import XCTest

// kp_status_json, the one Status builder: whatever bytes a message holds
// (a header name a caller wrote, say), the body is JSON a client can parse,
// and valid text comes back as it went in.
final class StatusJSONTests: XCTestCase {
  private func status(_ message: [UInt8]) throws -> [String: Any] {
    var len = 0
    let p = (message + [0]).withUnsafeBufferPointer { m in
      m.withMemoryRebound(to: CChar.self) { kp_status_json(431, "RequestHeaderFieldsTooLarge", $0.baseAddress, &len) }
    }
    let body = try XCTUnwrap(p)
    defer { free(body) }
    XCTAssertEqual(strlen(body), len)
    let data = Data(bytes: body, count: len)
    return try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
  }

  func testTheFieldsOfAStatus() throws {
    let o = try status(Array("no agent".utf8))
    XCTAssertEqual(o["kind"] as? String, "Status")
    XCTAssertEqual(o["apiVersion"] as? String, "v1")
    XCTAssertEqual(o["status"] as? String, "Failure")
    XCTAssertEqual(o["reason"] as? String, "RequestHeaderFieldsTooLarge")
    XCTAssertEqual(o["code"] as? Int, 431)
    XCTAssertEqual(o["message"] as? String, "no agent")
  }

  func testValidTextComesBackAsItWentIn() throws {
    let m = "q\"b\\s\t\n\u{1}\u{7f} caf\u{e9} \u{4e16} \u{1f600} \u{10ffff}"
    XCTAssertEqual(try status(Array(m.utf8))["message"] as? String, m)
  }

  /// Bytes that are not UTF-8 (RFC 3629): each becomes U+FFFD.
  func testBytesThatAreNotUTF8BecomeReplacementCharacters() throws {
    let r = "\u{fffd}"
    let vectors: [([UInt8], String)] = [
      ([0xff], r),
      ([0xc0, 0x80], r + r),                         // overlong NUL
      ([0xe0, 0x80, 0xaf], r + r + r),               // overlong '/'
      ([0xed, 0xa0, 0x80], r + r + r),               // a surrogate
      ([0xf4, 0x90, 0x80, 0x80], r + r + r + r),     // past U+10FFFF
      (Array("ok".utf8) + [0xe2, 0x82], "ok" + r + r), // cut short
      ([0x80, 0x41], r + "A"),                       // a lone continuation
      ([0xc3, 0xa9], "\u{e9}"),                      // valid, kept
    ]
    for (bytes, want) in vectors {
      XCTAssertEqual(try status(bytes)["message"] as? String, want, "\(bytes)")
    }
  }
}
