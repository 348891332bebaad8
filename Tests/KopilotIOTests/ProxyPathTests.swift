import KopilotIO
import XCTest

final class ProxyPathTests: XCTestCase {
  func testStripsThePrefixAndKeepsTheQuery() {
    XCTAssertEqual(parseProxyTarget("/proxy/default_sample/api/v1/pods?watch=1&limit=5"),
                   ProxyTarget(cluster: "default_sample", forwardTarget: "/api/v1/pods?watch=1&limit=5"))
    XCTAssertEqual(parseProxyTarget("/proxy/default_sample")?.forwardTarget, "/")
    XCTAssertEqual(parseProxyTarget("/proxy/default_sample/")?.forwardTarget, "/")
    XCTAssertEqual(parseProxyTarget("/proxy/kube-system_a.b/apis")?.cluster, "kube-system_a.b")
  }

  /// Dot segments are resolved before the cluster is read: a caller can never
  /// name one cluster in the prefix and reach another.
  func testTraversalNeverReachesTheNamedCluster() {
    XCTAssertEqual(parseProxyTarget("/proxy/a_b/../c_d/api")?.cluster, "c_d")
    XCTAssertEqual(parseProxyTarget("/proxy/a_b/api/../../c_d/x")?.cluster, "c_d")
    XCTAssertEqual(parseProxyTarget("/proxy/a_b/./api/./v1")?.forwardTarget, "/api/v1")
    XCTAssertEqual(parseProxyTarget("/proxy/a_b/api/..")?.forwardTarget, "/")
    XCTAssertNil(parseProxyTarget("/proxy/a_b/../../etc"), "climbing above the root")
    XCTAssertNil(parseProxyTarget("/proxy/a_b/%2e%2e/c_d/x"), "encoded dots are refused")
    XCTAssertNil(parseProxyTarget("/proxy/a_b/..%2fc_d/x"), "encoded slash is refused")
    XCTAssertNil(parseProxyTarget("/proxy/a_b\\..\\c_d/x"), "backslashes are refused")
  }

  func testRejectsWhatIsNotAClusterPath() {
    XCTAssertNil(parseProxyTarget("/api/v1/pods"))
    XCTAssertNil(parseProxyTarget("/proxy/"))
    XCTAssertNil(parseProxyTarget("/proxy/noseparator/api"))
    XCTAssertNil(parseProxyTarget("/proxy/a_b_c/api"), "two underscores")
    XCTAssertNil(parseProxyTarget("/proxy/A_b/api"), "upper case is not DNS-1123")
    XCTAssertNil(parseProxyTarget("/proxy/_b/api"))
    XCTAssertNil(parseProxyTarget("proxy/a_b/api"))
    XCTAssertNil(parseProxyTarget("http://x/proxy/a_b/api"))
  }

  func testQueryValue() {
    XCTAssertEqual(queryValue("/connect?token=abc", "token"), "abc")
    XCTAssertEqual(queryValue("/connect?x=1&token=a%2Bb", "token"), "a+b")
    XCTAssertEqual(queryValue("/connect?token=", "token"), "")
    XCTAssertNil(queryValue("/connect", "token"))
    XCTAssertNil(queryValue("/connect?tokens=x", "token"))
  }

  func testConstantTimeEquals() {
    XCTAssertTrue(constantTimeEquals("s3cret-token", "s3cret-token"))
    XCTAssertFalse(constantTimeEquals("s3cret-token", "s3cret-tokeN"))
    XCTAssertFalse(constantTimeEquals("s3cret", "s3cret-token"), "a prefix is not equal")
    XCTAssertFalse(constantTimeEquals("", "x"))
    XCTAssertTrue(constantTimeEquals("", ""))
  }

  func testBackoffIsExponentialWithFullJitterAndACap() {
    var b = Backoff(base: 1, cap: 30)
    // With the random draw pinned at 1 the ceilings show: 1, 2, 4, ... 30.
    let ceilings = (0..<8).map { _ in b.next(random: 1) }
    XCTAssertEqual(ceilings, [1, 2, 4, 8, 16, 30, 30, 30])
    b.reset()
    XCTAssertEqual(b.next(random: 0.5), 0.5)
    XCTAssertEqual(b.next(random: 0), 0, "full jitter reaches zero")
  }

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
