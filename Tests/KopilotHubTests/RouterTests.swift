import Foundation
import KopilotIO
import XCTest

@testable import KopilotHub

/// The router's asynchronous path: an authenticator and an authorizer that
/// cannot answer at once (the Kubernetes mode's TokenReview and
/// SubjectAccessReview on a cache miss), and control-plane failures.
final class RouterTests: XCTestCase {
  final class StaticRegistry: ClusterRegistry, @unchecked Sendable {
    let table: ClusterTable
    init(_ clusters: [Cluster]) { table = ClusterTable(clusters) }
    func cluster(forAgentToken token: String) -> Cluster? { table.cluster(forAgentToken: token) }
    func cluster(id: String) -> Cluster? { table.cluster(id: id) }
    func clusters() -> [Cluster] { table.clusters }
    func onChange(_ handler: @escaping @Sendable ([ClusterChange]) -> Void) {}
  }

  struct HostDown: ControlPlaneError {
    var httpStatus: Int
    var statusReason: String
    var statusMessage: String
  }

  /// Knows one token; answers only asynchronously.
  struct SlowAuthenticator: Authenticator {
    var failure: Error?
    func authenticate(bearerToken: String) async throws -> UserInfo {
      try await Task.sleep(nanoseconds: 20_000_000)
      if let failure { throw failure }
      guard bearerToken == "alice-token" else { throw AuthenticationError(.invalidToken, "Unauthorized") }
      return UserInfo(name: "alice", groups: ["system:authenticated"])
    }
  }

  /// Allows `get` under /proxy/default_sample/; answers only asynchronously.
  struct SlowAuthorizer: Authorizer {
    var failure: Error?
    let asked = Box<[String]>([])
    func authorize(_ r: AuthorizationRequest) async throws -> AuthorizationDecision {
      asked.value.append("\(r.verb ?? "-") \(r.path)")
      try await Task.sleep(nanoseconds: 20_000_000)
      if let failure { throw failure }
      if r.verb == "get" && r.path.hasPrefix("/proxy/default_sample/") {
        return AuthorizationDecision(allowed: true, reason: "test rule")
      }
      return AuthorizationDecision.deny(r, reason: "no rule")
    }
  }

  func router(authn: SlowAuthenticator = SlowAuthenticator(), authz: SlowAuthorizer = SlowAuthorizer()) -> HubRouter {
    HubRouter(registry: StaticRegistry([Cluster(namespace: "default", name: "sample", token: String(repeating: "t", count: 20))]),
              authenticator: authn, authorizer: authz, publicAddr: "hub:443", agentImage: "img", caPEM: "")
  }

  func request(_ method: String, _ target: String, token: String? = "alice-token",
               headers: [(name: String, value: String)] = []) -> HubRequest {
    HubRequest(method: method, target: target, headers: (token.map { [("Authorization", "Bearer \($0)")] } ?? []) + headers,
               peer: "127.0.0.1:1")
  }

  /// Routes `r` and returns the answer, whether it came at once or later.
  func answer(_ router: HubRouter, _ r: HubRequest, deferred: inout Bool) -> HubAnswer? {
    let done = expectation(description: "answer")
    let late = Box<HubAnswer?>(nil)
    let now = router.route(r) { a in
      late.value = a
      done.fulfill()
    }
    deferred = now == nil
    if now != nil { done.fulfill() }
    wait(for: [done], timeout: 10)
    return now ?? late.value
  }

  func status(_ a: HubAnswer?) -> (Int, String) {
    guard case .respond(let code, _, let body, _)? = a else { return (0, "") }
    let obj = (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any]
    return (code, obj?["reason"] as? String ?? "")
  }

  func testAllowedRequestIsAnsweredLaterWithTheProxy() {
    var deferred = false
    let a = answer(router(), request("GET", "/proxy/default_sample/api/v1/pods?watch=1"), deferred: &deferred)
    XCTAssertTrue(deferred, "a slow authenticator cannot answer on the loop thread")
    guard case .proxy(let cluster, let target, _)? = a else { return XCTFail("expected a proxy answer, got \(String(describing: a))") }
    XCTAssertEqual(cluster, "default_sample")
    XCTAssertEqual(target, "/api/v1/pods?watch=1")
  }

  func testTheMemberGetsTheMappedIdentityAndTheAuditID() throws {
    var deferred = false
    var r = router()
    r.newAuditID = { "0d9c4b1e-6f0a-4c8e-9a51-3b2f1e0d7c6a" }
    let a = answer(r, request("GET", "/proxy/default_sample/api/v1/pods"), deferred: &deferred)
    guard case .proxy(_, _, let fields)? = a else { return XCTFail("expected a proxy answer, got \(String(describing: a))") }
    // alice is in system:authenticated only: that never passes on.
    XCTAssertEqual(fields, "Impersonate-User: kopilot:alice\r\nImpersonate-Group: kopilot:callers\r\n"
                     + "Audit-ID: 0d9c4b1e-6f0a-4c8e-9a51-3b2f1e0d7c6a\r\n")

    // A cluster in agent mode: the audit ID only.
    r.registry = StaticRegistry([Cluster(namespace: "default", name: "sample", token: String(repeating: "t", count: 20),
                                         identity: .agent)])
    guard case .proxy(_, _, let agentFields)? = answer(r, request("GET", "/proxy/default_sample/api"), deferred: &deferred) else {
      return XCTFail("expected a proxy answer")
    }
    XCTAssertEqual(agentFields, "Audit-ID: 0d9c4b1e-6f0a-4c8e-9a51-3b2f1e0d7c6a\r\n")
  }

  /// A request a replica forwarded keeps that replica's audit ID; a
  /// caller's own Audit-ID is never taken.
  func testOnlyAForwardedRequestsAuditIDIsAdopted() {
    var deferred = false
    let theirs = "5b2c7a1e-0d4f-4c1a-9a57-1f1e2d3c4b5a"
    var viaPeer = request("GET", "/proxy/default_sample/api", headers: [("Audit-ID", theirs)])
    viaPeer.viaPeer = true
    guard case .proxy(_, _, let adopted)? = answer(router(), viaPeer, deferred: &deferred),
          case .proxy(_, _, let own)? = answer(router(), request("GET", "/proxy/default_sample/api", headers: [("Audit-ID", theirs)]),
                                               deferred: &deferred)
    else { return XCTFail("expected proxy answers") }
    XCTAssertTrue(adopted.hasSuffix("Audit-ID: \(theirs)\r\n"), adopted)
    XCTAssertFalse(own.contains(theirs), own)
    var odd = viaPeer
    odd.headers = odd.headers.filter { $0.name != "Audit-ID" } + [("Audit-ID", "x y")]
    guard case .proxy(_, _, let fresh)? = answer(router(), odd, deferred: &deferred) else { return XCTFail("expected a proxy") }
    XCTAssertFalse(fresh.contains("x y"), fresh)
  }

  func testEachRequestGetsItsOwnAuditID() {
    var deferred = false
    var ids = Set<String>()
    for _ in 0..<3 {
      guard case .proxy(_, _, let fields)? = answer(router(), request("GET", "/proxy/default_sample/api"), deferred: &deferred),
            let line = fields.split(separator: "\r\n").first(where: { $0.hasPrefix("Audit-ID: ") })
      else { return XCTFail("no Audit-ID") }
      let id = String(line.dropFirst("Audit-ID: ".count))
      XCTAssertNotNil(UUID(uuidString: id), id)
      ids.insert(id)
    }
    XCTAssertEqual(ids.count, 3)
  }

  func testAPassthroughOfASystemUserIsForbidden() {
    var deferred = false
    var r = router()
    r.identity.defaultMode = .passthrough
    struct SystemUser: Authenticator {
      func authenticate(bearerToken: String) async throws -> UserInfo { UserInfo(name: "system:kube-controller-manager") }
    }
    r.authenticator = SystemUser()
    let (code, _) = status(answer(r, request("GET", "/proxy/default_sample/api"), deferred: &deferred))
    XCTAssertEqual(code, 403)
  }

  /// Every /proxy/ request leaves one ResponseComplete event: a refusal at
  /// once, with its Status; a proxied request when the core reports its
  /// end, with the member's status and bytes, under the audit ID the member
  /// was sent.
  func testEveryRequestIsAuditedOnce() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("router-audit-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let path = dir.appendingPathComponent("audit.log").path
    let audit = HubAudit(log: try AuditLog(path: path))
    var r = router()
    r.audit = audit
    var deferred = false
    func req(_ method: String, _ target: String, token: String? = "alice-token", id: UInt64) -> HubRequest {
      var q = request(method, target, token: token, headers: [("User-Agent", "kubectl/v1.33.0")])
      q.id = id
      return q
    }
    // Allowed: proxied, written when it ends.
    guard case .proxy(_, _, let fields)? = answer(r, req("GET", "/proxy/default_sample/api/v1/namespaces/default/pods?watch=1", id: 7),
                                                  deferred: &deferred) else { return XCTFail("expected a proxy answer") }
    XCTAssertEqual(audit.inFlight, 1)
    // Its response head: a watch is long-running, so ResponseStarted.
    audit.started(request: 7, status: 200)
    // A plain get is not: no ResponseStarted.
    guard case .proxy? = answer(r, req("GET", "/proxy/default_sample/api/v1/namespaces/default/pods/web", id: 10),
                                deferred: &deferred) else { return XCTFail("expected a proxy answer") }
    audit.started(request: 10, status: 200)
    audit.ended(Hub.ProxiedRequest(request: 10, cluster: "default_sample", session: 3, status: 404, bytesUp: 1,
                                   bytesDown: 1, durationMicros: 1))
    // Refused by the hub's RBAC, and unauthenticated: written at once.
    let refusal = answer(r, req("DELETE", "/proxy/default_sample/api/v1/namespaces/default/pods/x", id: 8), deferred: &deferred)
    XCTAssertEqual(status(refusal).0, 403)
    guard case .respond(_, _, _, let refusalFields)? = refusal else { return XCTFail("expected a refusal") }
    XCTAssertEqual(status(answer(r, req("GET", "/proxy/default_sample/version", token: nil, id: 9), deferred: &deferred)).0, 401)
    audit.ended(Hub.ProxiedRequest(request: 7, cluster: "default_sample", session: 3, status: 200, bytesUp: 310,
                                   bytesDown: 4096, durationMicros: 1500))
    audit.ended(Hub.ProxiedRequest(request: 7, cluster: "default_sample", session: 3, status: 200, bytesUp: 1,
                                   bytesDown: 1, durationMicros: 1))  // a second report of one request writes nothing
    XCTAssertEqual(audit.inFlight, 0)
    audit.log.close()

    let events = try Data(contentsOf: URL(fileURLWithPath: path)).split(separator: 0x0a).map {
      try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0)) as? [String: Any])
    }
    XCTAssertEqual(events.count, 5)
    XCTAssertEqual(events.filter { $0["stage"] as? String == "ResponseStarted" }.map { $0["verb"] as? String }, ["watch"])
    XCTAssertEqual(events.filter { $0["stage"] as? String == "ResponseComplete" }.count, 4)
    func code(_ e: [String: Any]) -> Int? {
      e["stage"] as? String == "ResponseComplete" ? (e["responseStatus"] as? [String: Any])?["code"] as? Int : nil
    }
    let denied = try XCTUnwrap(events.first { code($0) == 403 })
    XCTAssertEqual(denied["verb"] as? String, "delete")
    XCTAssertEqual((denied["user"] as? [String: Any])?["username"] as? String, "alice")
    XCTAssertEqual((denied["annotations"] as? [String: String])?["authorization.k8s.io/decision"], "forbid")
    XCTAssertNil(denied["impersonatedUser"])
    XCTAssertEqual(refusalFields, "Audit-Id: \(denied["auditID"] as? String ?? "-")\r\n", "the caller gets the refusal's audit ID")
    let anonymous = try XCTUnwrap(events.first { code($0) == 401 })
    XCTAssertEqual((anonymous["user"] as? [String: Any])?["username"] as? String, "")
    let watch = try XCTUnwrap(events.first { code($0) == 200 })
    XCTAssertEqual(watch["verb"] as? String, "watch")
    XCTAssertEqual(watch["stage"] as? String, "ResponseComplete")
    XCTAssertEqual(watch["requestURI"] as? String, "/proxy/default_sample/api/v1/namespaces/default/pods?watch=1")
    XCTAssertEqual((watch["objectRef"] as? [String: Any])?["resource"] as? String, "pods")
    XCTAssertEqual((watch["objectRef"] as? [String: Any])?["namespace"] as? String, "default")
    XCTAssertEqual((watch["impersonatedUser"] as? [String: Any])?["username"] as? String, "kopilot:alice")
    XCTAssertEqual(watch["userAgent"] as? String, "kubectl/v1.33.0")
    XCTAssertEqual(watch["sourceIPs"] as? [String], ["127.0.0.1"])
    let notes = try XCTUnwrap(watch["annotations"] as? [String: String])
    XCTAssertEqual(notes["kopilot.smartx.com/cluster"], "default/sample")
    XCTAssertEqual(notes["kopilot.smartx.com/bytes-down"], "4096")
    XCTAssertEqual(notes["kopilot.smartx.com/session"], "3")
    XCTAssertEqual(notes["authorization.k8s.io/decision"], "allow")
    // One ID: the one the member was sent.
    XCTAssertTrue(fields.contains("Audit-ID: \(watch["auditID"] as? String ?? "-")\r\n"), fields)
    XCTAssertEqual(Set(events.compactMap { $0["auditID"] as? String }).count, 4)
    let started = try XCTUnwrap(events.first { $0["stage"] as? String == "ResponseStarted" })
    XCTAssertEqual(started["auditID"] as? String, watch["auditID"] as? String, "one ID for both stages")
  }

  func testDeniedAndUnknownCallersAreRefused() {
    var deferred = false
    XCTAssertEqual(status(answer(router(), request("DELETE", "/proxy/default_sample/api/v1/pods/x"), deferred: &deferred)).0, 403)
    XCTAssertEqual(status(answer(router(), request("GET", "/proxy/default_sample/api", token: "nobody"), deferred: &deferred)).0, 401)
    // A missing header is refused at once, without asking anyone.
    XCTAssertEqual(status(answer(router(), request("GET", "/proxy/default_sample/api", token: nil), deferred: &deferred)).0, 401)
    XCTAssertFalse(deferred)
  }

  func testControlPlaneFailuresAreNeverAnAllow() {
    var deferred = false
    let timeout = HostDown(httpStatus: 504, statusReason: "Timeout", statusMessage: "the host cluster did not answer the review in 5s")
    let (code, reason) = status(answer(router(authz: SlowAuthorizer(failure: timeout)), request("GET", "/proxy/default_sample/api"), deferred: &deferred))
    XCTAssertEqual(code, 504)
    XCTAssertEqual(reason, "Timeout")
    // Any other error: 503, not a crash and not an allow.
    struct Odd: Error {}
    XCTAssertEqual(status(answer(router(authn: SlowAuthenticator(failure: Odd())), request("GET", "/proxy/default_sample/api"), deferred: &deferred)).0, 503)
  }

  func testBeforeTheClustersAreListedAgentsAndCallersAreToldToComeBack() {
    var r = router()
    r.ready = { false }
    var deferred = false
    let token = String(repeating: "t", count: 20)
    XCTAssertEqual(status(answer(r, request("GET", "/connect?token=\(token)", token: nil), deferred: &deferred)).0, 503,
                   "not 401: the token may well be good")
    XCTAssertEqual(status(answer(r, request("GET", "/proxy/default_sample/api"), deferred: &deferred)).0, 503)
    XCTAssertEqual(status(answer(r, request("GET", "/readyz", token: nil), deferred: &deferred)).0, 503)
    XCTAssertEqual(status(answer(r, request("GET", "/healthz", token: nil), deferred: &deferred)).0, 200, "alive, if not ready")
    r.ready = { true }
    guard case .acceptAgent? = answer(r, request("GET", "/connect?token=\(token)", token: nil), deferred: &deferred) else {
      return XCTFail("a ready hub accepts the agent")
    }
  }

  func testTheAuthorizedPathIsTheNormalizedOne() {
    let authz = SlowAuthorizer()
    var deferred = false
    let a = answer(router(authz: authz), request("GET", "/proxy/default_other/../default_sample/api?x=1"), deferred: &deferred)
    guard case .proxy(let cluster, _, _)? = a else { return XCTFail("expected a proxy answer") }
    XCTAssertEqual(cluster, "default_sample")
    XCTAssertEqual(authz.asked.value, ["get /proxy/default_sample/api"])
  }

  /// kubectl 1.30+ opens exec with a WebSocket upgrade on GET: the router
  /// asks for create, so a caller allowed only get is refused.
  func testAnUpgradeIsAuthorizedAsCreate() {
    let exec = "/proxy/default_sample/api/v1/namespaces/default/pods/web-0/exec?command=id"
    for headers in [[("Connection", "Upgrade"), ("Upgrade", "websocket")], [("Upgrade", "SPDY/3.1")], [("connection", "keep-alive, UPGRADE")]] {
      let authz = SlowAuthorizer()
      var deferred = false
      let a = answer(router(authz: authz), request("GET", exec, headers: headers), deferred: &deferred)
      XCTAssertEqual(status(a).0, 403, "\(headers)")
      XCTAssertEqual(authz.asked.value, ["create /proxy/default_sample/api/v1/namespaces/default/pods/web-0/exec"])
    }
    // The same GET without an upgrade is a get.
    let authz = SlowAuthorizer()
    var deferred = false
    guard case .proxy? = answer(router(authz: authz), request("GET", exec), deferred: &deferred) else {
      return XCTFail("a plain get was refused")
    }
    XCTAssertEqual(authz.asked.value, ["get /proxy/default_sample/api/v1/namespaces/default/pods/web-0/exec"])
  }

  /// Agents send their token as `Authorization: Bearer`; `?token=` still
  /// works for original Go agents; the header wins when both are given.
  func testConnectTakesTheTokenFromTheHeaderFirst() {
    let r = router()
    let good = String(repeating: "t", count: 20)
    var deferred = false
    func connect(_ target: String, _ auth: String?) -> HubAnswer? {
      answer(r, request("GET", target, token: nil, headers: auth.map { [("Authorization", $0)] } ?? []), deferred: &deferred)
    }
    guard case .acceptAgent(let c)? = connect("/connect", "Bearer \(good)") else { return XCTFail("header token refused") }
    XCTAssertEqual(c, "default_sample")
    guard case .acceptAgent? = connect("/connect", "bearer \(good)") else { return XCTFail("scheme case matters") }
    guard case .acceptAgent? = connect("/connect?token=\(good)", nil) else { return XCTFail("query token refused") }
    // The header wins: a good query does not rescue a wrong header...
    XCTAssertEqual(status(connect("/connect?token=\(good)", "Bearer wrong-token-0123456789")).0, 401)
    XCTAssertEqual(status(connect("/connect?token=\(good)", "Basic dXNlcjpwYXNz")).0, 401)
    // ...and a good header is not spoilt by a wrong query.
    guard case .acceptAgent? = connect("/connect?token=wrong", "Bearer \(good)") else { return XCTFail("header did not win") }
    for bad in ["Bearer", "Bearer ", "Bearer  \(good)", "Bearer \(good) x", "\(good)"] {
      XCTAssertEqual(status(connect("/connect", bad)).0, 401, bad)
    }
    XCTAssertEqual(status(connect("/connect", nil)).0, 401)
    // Agent tokens may hold what a b64token may not (clusters.yaml takes
    // printable ASCII): they still pass in the header.
    let odd = "odd!token#with%signs&more"
    let oddRouter = HubRouter(registry: StaticRegistry([Cluster(namespace: "default", name: "odd", token: odd)]),
                              authenticator: SlowAuthenticator(), authorizer: SlowAuthorizer(),
                              publicAddr: "hub:443", agentImage: "img", caPEM: "")
    guard case .acceptAgent? = answer(oddRouter, request("GET", "/connect", token: nil, headers: [("Authorization", "Bearer \(odd)")]),
                                      deferred: &deferred) else { return XCTFail("an agent token outside b64token refused") }
    XCTAssertFalse(deferred)
  }
}
