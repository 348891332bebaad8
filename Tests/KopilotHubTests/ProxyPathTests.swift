@testable import KopilotHub
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
}
