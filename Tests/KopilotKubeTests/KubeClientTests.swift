import Foundation
import KopilotKubeConfig
import Logging
import XCTest

@testable import KopilotKube

/// A Cluster as the tests read it.
struct TestCluster: KubeObject, Equatable {
  var metadata: ObjectMeta
  var token: String?
}

let clustersPath = "/apis/kopilot.smartx.com/v1alpha1/clusters"
func clustersPath(_ ns: String) -> String { "/apis/kopilot.smartx.com/v1alpha1/namespaces/\(ns)/clusters" }

/// The client against the real fake host API server: requests and Status
/// errors, watches, reviews, TLS and credentials.
final class KubeClientTests: XCTestCase {
  var host: FakeHost!
  var certs: KubeTestCerts!
  var clients: [KubeClient] = []

  override func setUpWithError() throws {
    certs = try KubeTestCerts.shared()
    host = try FakeHost(args: ["--bookmark-interval", "100ms"])
  }

  override func tearDown() {
    clients.forEach { $0.shutdown() }
    clients = []
    host?.stop()
  }

  func config(token: String? = FakeHost.adminToken) throws -> KubeClientConfig {
    var c = KubeClientConfig(server: host.url)
    c.caPEM = try certs.pem("ca.crt")
    c.bearerToken = token
    return c
  }

  func client(_ c: KubeClientConfig? = nil, timeout: TimeInterval = 10, tokenMaxAge: TimeInterval = 60) throws -> KubeClient {
    let k = try KubeClient(config: c ?? config(), requestTimeout: timeout, logger: Logger(label: "test"), tokenMaxAge: tokenMaxAge)
    clients.append(k)
    return k
  }

  @discardableResult
  func create(_ k: KubeClient, _ ns: String, _ name: String, labels: [String: String] = [:]) async throws -> TestCluster {
    let body = try JSONSerialization.data(withJSONObject: [
      "apiVersion": "kopilot.smartx.com/v1alpha1", "kind": "Cluster",
      "metadata": ["name": name, "namespace": ns, "labels": labels] as [String: Any],
    ])
    let data = try await k.send(method: "POST", path: clustersPath(ns), body: body)
    return try JSONDecoder().decode(TestCluster.self, from: data)
  }

  func expectError(_ code: Int, _ reason: String, file: StaticString = #filePath, line: UInt = #line,
                   _ op: () async throws -> Void) async -> KubeAPIError? {
    do {
      try await op()
      XCTFail("no error", file: file, line: line)
      return nil
    } catch let e as KubeAPIError {
      XCTAssertEqual(e.code, code, "\(e)", file: file, line: line)
      XCTAssertEqual(e.reason, reason, "\(e)", file: file, line: line)
      return e
    } catch {
      XCTFail("not a KubeAPIError: \(error)", file: file, line: line)
      return nil
    }
  }

  // MARK: send

  func testSendCreatesAndReadsAndNotFoundIsAStatus() async throws {
    let k = try client()
    let made = try await create(k, "default", "one")
    XCTAssertEqual(made.metadata.name, "one")
    XCTAssertNotNil(made.metadata.resourceVersion)
    let got = try JSONDecoder().decode(TestCluster.self, from: try await k.send(method: "GET", path: clustersPath("default") + "/one"))
    XCTAssertEqual(got.metadata.uid, made.metadata.uid)

    let e = await expectError(404, "NotFound") { _ = try await k.send(method: "GET", path: clustersPath("default") + "/nope") }
    XCTAssertEqual(e?.message, #"clusters.kopilot.smartx.com "nope" not found"#)
    let dup = await expectError(409, "AlreadyExists") { try await self.create(k, "default", "one") }
    XCTAssertTrue(dup?.message.contains("already exists") == true)
  }

  func testQueryIsEscapedAndSelectorsWork() async throws {
    let k = try client()
    try await create(k, "default", "a", labels: ["tier": "gold"])
    try await create(k, "default", "b", labels: ["tier": "iron"])
    let data = try await k.send(method: "GET", path: clustersPath, query: [("labelSelector", "tier!=iron,tier in (gold)")])
    struct L: Decodable { var items: [TestCluster] }
    XCTAssertEqual(try JSONDecoder().decode(L.self, from: data).items.map(\.metadata.name), ["a"])
  }

  func testUnauthorizedKeepsTheTokenOut() async throws {
    let secret = "a-wrong-token-that-must-not-show-up"
    let k = try client(try config(token: secret))
    let e = await expectError(401, "Unauthorized") { _ = try await k.send(method: "GET", path: clustersPath) }
    XCTAssertFalse("\(String(describing: e))".contains(secret))
  }

  func testTimeoutAndRefusedAreCodeZero() async throws {
    let k = try client(timeout: 0.3)
    _ = try await k.send(method: "POST", path: "/_fake/faults",
                         body: Data(#"{"pathPrefix":"/apis/kopilot.smartx.com/","delayMs":20000,"count":1}"#.utf8))
    let t = await expectError(0, "Timeout") { _ = try await k.send(method: "GET", path: clustersPath) }
    XCTAssertTrue(t?.isTimeout == true)
    // The per-request timeout overrides the client's.
    _ = try await k.send(method: "POST", path: "/_fake/faults",
                         body: Data(#"{"pathPrefix":"/apis/kopilot.smartx.com/","delayMs":500,"count":1}"#.utf8))
    _ = try await k.send(method: "GET", path: clustersPath, timeout: 30)

    // A port nothing listens on: bind one, read it, close it.
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    close(fd)
    var c = try config()
    c.server = URL(string: "https://127.0.0.1:\(UInt16(bigEndian: a.sin_port))")!
    let refused = try client(c, timeout: 2)
    let u = await expectError(0, "Unavailable") { _ = try await refused.send(method: "GET", path: clustersPath) }
    XCTAssertFalse(u?.message.contains(FakeHost.adminToken) ?? true)
  }

  func testErrorStatusFromAnInjectedFault() async throws {
    let k = try client()
    _ = try await k.send(method: "POST", path: "/_fake/faults",
                         body: Data(#"{"pathPrefix":"/apis/kopilot.smartx.com/","status":503,"count":1}"#.utf8))
    let e = await expectError(503, "ServiceUnavailable") { _ = try await k.send(method: "GET", path: clustersPath) }
    XCTAssertEqual(e?.message, "injected fault: 503")
  }

  // MARK: watch

  func testWatchDeliversEachEventAsItHappens() async throws {
    let k = try client()
    try await create(k, "default", "before")
    struct L: Decodable { struct M: Decodable { var resourceVersion: String }; var metadata: M }
    let rv = try JSONDecoder().decode(L.self, from: try await k.send(method: "GET", path: clustersPath)).metadata.resourceVersion

    let stream = k.watch(path: clustersPath, query: [("resourceVersion", rv), ("allowWatchBookmarks", "true"), ("timeoutSeconds", "60")])
    var it = stream.makeAsyncIterator()
    try await create(k, "ns1", "a")
    let a = try await nextChange(&it)
    XCTAssertEqual(a.type, "ADDED")
    XCTAssertEqual(try JSONDecoder().decode(TestCluster.self, from: a.object).metadata.name, "a")

    let patch = Data(#"{"metadata":{"labels":{"x":"y"}}}"#.utf8)
    _ = try await k.send(method: "PATCH", path: clustersPath("ns1") + "/a", body: patch, contentType: "application/merge-patch+json")
    let m = try await nextChange(&it)
    XCTAssertEqual(m.type, "MODIFIED")
    XCTAssertEqual(try JSONDecoder().decode(TestCluster.self, from: m.object).metadata.labels, ["x": "y"])

    _ = try await k.send(method: "DELETE", path: clustersPath("ns1") + "/a")
    let d = try await nextChange(&it)
    XCTAssertEqual(d.type, "DELETED")

    // Quiet now: the server's bookmarks (every 100 ms) come through.
    var sawBookmark = false
    while !sawBookmark, let e = try await it.next() { sawBookmark = e.type == "BOOKMARK" }
    XCTAssertTrue(sawBookmark)
  }

  func nextChange(_ it: inout AsyncThrowingStream<WatchEvent, Error>.AsyncIterator) async throws -> WatchEvent {
    while let e = try await it.next() {
      if e.type != "BOOKMARK" { return e }
    }
    throw FixtureError("the watch ended")
  }

  func testWatchEndsWhenTheServerEndsIt() async throws {
    let k = try client()
    let stream = k.watch(path: clustersPath, query: [("timeoutSeconds", "1")])
    var n = 0
    for try await _ in stream { n += 1 }
    XCTAssertEqual(n, 0)
  }

  func testWatchExpiredIsAnErrorEventAndNon2xxThrows() async throws {
    let k = try client()
    for i in 0..<3 { try await create(k, "default", "c\(i)") }
    _ = try await k.send(method: "POST", path: "/_fake/compact")
    var events: [WatchEvent] = []
    for try await e in k.watch(path: clustersPath, query: [("resourceVersion", "1")]) { events.append(e) }
    XCTAssertEqual(events.map(\.type), ["ERROR"])
    XCTAssertTrue(KubeAPIError.fromStatus(events[0].object)?.isGone == true)

    let e = await expectError(404, "NotFound") {
      for try await _ in k.watch(path: "/apis/kopilot.smartx.com/v1alpha1/nothings") {}
    }
    XCTAssertNotNil(e)
    _ = try await k.send(method: "POST", path: "/_fake/faults",
                         body: Data(#"{"pathPrefix":"/apis/kopilot.smartx.com/","status":410,"count":1}"#.utf8))
    let gone = await expectError(410, "Expired") { for try await _ in k.watch(path: clustersPath) {} }
    XCTAssertTrue(gone?.isGone == true)
  }

  func testCancellingTheConsumerClosesTheWatch() async throws {
    let k = try client()
    let opened = expectation(description: "the watch is open")
    let task = Task {
      var first = true
      for try await _ in k.watch(path: clustersPath, query: [("allowWatchBookmarks", "true"), ("timeoutSeconds", "300")]) {
        if first { opened.fulfill() }
        first = false
      }
    }
    await fulfillment(of: [opened], timeout: 30)
    XCTAssertEqual(connectionsTo(port: host.port), 1)
    task.cancel()
    _ = await task.result
    XCTAssertTrue(eventually { connectionsTo(port: host.port) == 0 }, "the watch's connection is still open")
  }

  // MARK: reviews

  func testTokenReview() async throws {
    let k = try client()
    let ok = try await k.tokenReview(token: FakeHost.aliceToken, audiences: ["https://kopilot"])
    XCTAssertTrue(ok.authenticated)
    XCTAssertEqual(ok.user, ReviewedUser(username: "alice", uid: "uid-alice", groups: ["devs", "readers", "system:authenticated"]))
    XCTAssertNil(ok.error)
    let bad = try await k.tokenReview(token: "not-a-known-token", audiences: [])
    XCTAssertFalse(bad.authenticated)
    XCTAssertNil(bad.user)
    XCTAssertEqual(bad.error, "invalid bearer token")
    // An empty token is refused by the server; its error names no token.
    _ = await expectError(400, "BadRequest") { _ = try await k.tokenReview(token: "", audiences: []) }
  }

  func testSubjectAccessReviewOnNonResourceURLs() async throws {
    let k = try client()
    let role = #"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"proxy-get"},"rules":[{"nonResourceURLs":["/proxy/default_a/*"],"verbs":["get","list"]}]}"#
    let binding = #"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"devs-proxy"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"proxy-get"},"subjects":[{"kind":"Group","name":"devs","apiGroup":"rbac.authorization.k8s.io"}]}"#
    _ = try await k.send(method: "POST", path: "/apis/rbac.authorization.k8s.io/v1/clusterroles", body: Data(role.utf8))
    _ = try await k.send(method: "POST", path: "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", body: Data(binding.utf8))

    let alice = ReviewedUser(username: "alice", uid: "uid-alice", groups: ["devs", "system:authenticated"], extra: ["scopes": ["a", "b"]])
    let yes = try await k.subjectAccessReview(AccessReviewRequest(user: alice, path: "/proxy/default_a/api/v1/pods", verb: "get"))
    XCTAssertTrue(yes.allowed)
    XCTAssertFalse(yes.denied)
    XCTAssertTrue(yes.reason.contains("proxy-get"), yes.reason)
    let post = try await k.subjectAccessReview(AccessReviewRequest(user: alice, path: "/proxy/default_a/api/v1/pods", verb: "create"))
    XCTAssertFalse(post.allowed)
    let other = try await k.subjectAccessReview(AccessReviewRequest(user: alice, path: "/proxy/default_b/api", verb: "get"))
    XCTAssertFalse(other.allowed)
    let bob = ReviewedUser(username: "bob", groups: ["system:authenticated"])
    let bobs = try await k.subjectAccessReview(AccessReviewRequest(user: bob, path: "/proxy/default_a/api", verb: "get"))
    XCTAssertFalse(bobs.allowed)
    let admin = ReviewedUser(username: "root", groups: ["system:masters"])
    let admins = try await k.subjectAccessReview(AccessReviewRequest(user: admin, path: "/anything", verb: "delete"))
    XCTAssertTrue(admins.allowed)
  }

  // MARK: TLS and credentials

  func testTLSTrustsOnlyTheGivenCA() async throws {
    _ = try await client().send(method: "GET", path: clustersPath)

    var wrong = try config()
    wrong.caPEM = try certs.pem("otherca.crt")
    let w = await expectError(0, "Unavailable") { _ = try await self.client(wrong, timeout: 2).send(method: "GET", path: clustersPath) }
    XCTAssertFalse(w?.message.contains(FakeHost.adminToken) ?? true)

    // No CA: the system's roots, which do not know this test CA.
    var system = try config()
    system.caPEM = nil
    _ = await expectError(0, "Unavailable") { _ = try await self.client(system, timeout: 2).send(method: "GET", path: clustersPath) }

    var insecure = wrong
    insecure.insecureSkipTLSVerify = true
    _ = try await client(insecure).send(method: "GET", path: clustersPath)
  }

  func testInClusterConfigAgainstTheServer() async throws {
    let sa = host.dir.appendingPathComponent("sa")
    try FileManager.default.createDirectory(at: sa, withIntermediateDirectories: true)
    try (FakeHost.adminToken + "\n").write(to: sa.appendingPathComponent("token"), atomically: true, encoding: .utf8)
    try certs.pem("ca.crt").write(to: sa.appendingPathComponent("ca.crt"), atomically: true, encoding: .utf8)
    try "kopilot-system".write(to: sa.appendingPathComponent("namespace"), atomically: true, encoding: .utf8)
    let c = try KubeClientConfig.inCluster(
      environment: ["KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": String(host.port)], directory: sa.path)
    XCTAssertEqual(c.namespace, "kopilot-system")
    let k = try client(c)
    try await create(k, c.namespace!, "from-a-pod")
    _ = try await k.send(method: "GET", path: clustersPath(c.namespace!) + "/from-a-pod")
  }

  func testTokenFileIsReadAgainAsItRotates() async throws {
    let file = host.dir.appendingPathComponent("token")
    try "expired-token".write(to: file, atomically: true, encoding: .utf8)
    var c = try config(token: nil)
    c.tokenFile = file.path
    let rotating = try client(c, tokenMaxAge: 0)
    let steady = try client(c, tokenMaxAge: 3600)
    _ = await expectError(401, "Unauthorized") { _ = try await rotating.send(method: "GET", path: clustersPath) }
    _ = await expectError(401, "Unauthorized") { _ = try await steady.send(method: "GET", path: clustersPath) }
    try FakeHost.adminToken.write(to: file, atomically: true, encoding: .utf8)
    _ = try await rotating.send(method: "GET", path: clustersPath)
    _ = await expectError(401, "Unauthorized") { _ = try await steady.send(method: "GET", path: clustersPath) }
  }

  /// A kubeconfig user with a client certificate (kind's and kubeadm's
  /// admin kubeconfigs are such): the fake, given a client CA as
  /// kube-apiserver's --client-ca-file, takes the certificate's CN as the
  /// user; without credentials the same server answers 401.
  func testKubeconfigWithClientCertificate() async throws {
    let certs = try KubeTestCerts.shared()
    let mtls = try FakeHost(args: ["--client-ca", certs.path("ca.crt")])
    defer { mtls.stop() }
    let kubeconfig = mtls.dir.appendingPathComponent("kubeconfig")
    try """
      apiVersion: v1
      kind: Config
      current-context: mtls
      clusters:
      - name: m
        cluster: {server: "https://127.0.0.1:\(mtls.port)", certificate-authority: \(certs.path("ca.crt"))}
      users:
      - name: cert
        user: {client-certificate: \(certs.path("client.crt")), client-key: \(certs.path("client.key"))}
      contexts:
      - name: mtls
        context: {cluster: m, user: cert, namespace: team}
      - name: anonymous
        context: {cluster: m}
      """.write(to: kubeconfig, atomically: true, encoding: .utf8)
    let c = try KubeClientConfig.kubeconfig(path: kubeconfig.path)
    XCTAssertEqual(c.namespace, "team")
    _ = try await client(c).send(method: "GET", path: clustersPath)
    let anonymous = try KubeClientConfig.kubeconfig(path: kubeconfig.path, context: "anonymous")
    _ = await expectError(401, "Unauthorized") { _ = try await self.client(anonymous).send(method: "GET", path: clustersPath) }
  }
}
