import Foundation
import KopilotIO
import XCTest

/// The overlay of the core's one Status builder (`kp_status_json`).
final class StatusTests: XCTestCase {
  func testStatusBodyIsAKubernetesStatus() throws {
    let body = kubernetesStatus(code: 503, reason: "ServiceUnavailable", message: "no agent")
    let obj = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
    XCTAssertEqual(obj?["kind"] as? String, "Status")
    XCTAssertEqual(obj?["apiVersion"] as? String, "v1")
    XCTAssertEqual(obj?["status"] as? String, "Failure")
    XCTAssertEqual(obj?["code"] as? Int, 503)
    XCTAssertEqual(obj?["reason"] as? String, "ServiceUnavailable")
    XCTAssertEqual(obj?["message"] as? String, "no agent")
    XCTAssertTrue(body.hasSuffix("}\n"))
  }

  /// Whatever a message holds (quotes, controls, any Unicode), the body
  /// is JSON and says it back exactly.
  func testStatusMessagesRoundTrip() throws {
    for m in ["say \"hi\" \\ there", "tab\tnl\ncr\r\u{1}\u{7f}", "caf\u{e9} \u{4e16}\u{754c} \u{1f600}", "</script>", ""] {
      let body = kubernetesStatus(code: 400, reason: "Bad\"Request", message: m)
      let obj = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
      XCTAssertEqual(obj?["message"] as? String, m, body)
      XCTAssertEqual(obj?["reason"] as? String, "Bad\"Request", body)
    }
  }
}
