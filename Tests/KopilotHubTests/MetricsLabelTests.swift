import Foundation
import KopilotIO
import XCTest

@testable import KopilotHub

/// The `cluster` label of /metrics takes a registered cluster's ID or
/// `unknown`, whatever a caller puts in the path, and a request counted in
/// flight is counted out on the same label.
final class MetricsLabelTests: XCTestCase {
  /// Lets everyone do everything, at once.
  struct Anyone: Authenticator, Authorizer {
    func authenticate(bearerToken: String) async throws -> UserInfo { UserInfo(name: "u") }
    func authenticateNow(bearerToken: String) -> Result<UserInfo, Error>? { .success(UserInfo(name: "u")) }
    func authorize(_ request: AuthorizationRequest) async throws -> AuthorizationDecision {
      AuthorizationDecision(allowed: true, reason: "test")
    }
    func authorizeNow(_ request: AuthorizationRequest) -> Result<AuthorizationDecision, Error>? {
      .success(AuthorizationDecision(allowed: true, reason: "test"))
    }
  }

  /// Every cluster lives on another replica: every allowed request is a
  /// forward, the answer whose label once came from the raw target.
  struct Elsewhere: ClusterPlacement {
    var port: Int
    func place(clusterID: String) -> Placement {
      .peer(PeerEndpoint(name: "hub-b", host: "127.0.0.1", port: port, ready: true))
    }
  }

  /// The longest ID there can be: a 63-byte namespace, a 253-byte name.
  static let longNamespace = String(repeating: "n", count: 63)
  static let longName = (0..<4).map { _ in String(repeating: "a", count: 62) }.joined(separator: ".") + ".x"
  static var longID: String { "\(longNamespace)_\(longName)" }

  func registry() -> RouterTests.StaticRegistry {
    RouterTests.StaticRegistry([
      Cluster(namespace: "default", name: "a", token: String(repeating: "a", count: 20)),
      Cluster(namespace: Self.longNamespace, name: Self.longName, token: String(repeating: "b", count: 20)),
    ])
  }

  func router(_ metrics: HubMetrics?, port: Int) -> HubRouter {
    var r = HubRouter(registry: registry(), authenticator: Anyone(), authorizer: Anyone(), publicAddr: "hub:443",
                      agentImage: "img", caPEM: "", metrics: metrics)
    r.placement = Elsewhere(port: port)
    return r
  }

  /// The caller-made paths: random unregistered clusters, and registered
  /// ones reached through a random first segment.
  static func hostileTargets(_ n: Int) -> [String] {
    var rng = SystemRandomNumberGenerator()
    func junk() -> String {
      let chars = Array("abcdefghijklmnopqrstuvwxyz0123456789-._")
      // A letter first: a segment of only dots ("." or "..") is a path
      // step, not a name, and would change which targets reach a cluster.
      let len = Int.random(in: 0...299, using: &rng)
      return String(chars[Int.random(in: 0..<26, using: &rng)])
        + String((0..<len).map { _ in chars.randomElement(using: &rng)! })
    }
    return (0..<n).map { i in
      switch i % 4 {
      case 0: return "/proxy/\(junk())_\(junk())/version"
      case 1: return "/proxy/\(junk())/../default_a/version"
      case 2: return "/proxy/\(junk())_x/../\(longID)/api?x=\(junk())"
      default: return "/proxy/" + String(repeating: "z", count: 5000) + "/../default_a/version"
      }
    }
  }

  /// The `cluster` label values in a /metrics page, and the in-flight
  /// gauge's total.
  func labels(_ page: String) -> (Set<String>, Double) {
    var values = Set<String>()
    var inFlight = 0.0
    for line in page.split(separator: "\n") where !line.hasPrefix("#") {
      guard let r = line.range(of: "cluster=\"") else { continue }
      values.insert(String(line[r.upperBound...].prefix { $0 != "\"" }))
      if line.hasPrefix("kopilot_hub_requests_in_flight") { inFlight += Double(line.split(separator: " ").last ?? "") ?? 0 }
    }
    return (values, inFlight)
  }

  /// A forward carries the cluster its normalized path names, the key the
  /// core reports it under: never a segment the caller wrote.
  func testAForwardCarriesTheClusterOfItsNormalizedPath() {
    let router = router(nil, port: 1)
    for (t, cluster) in [("/proxy/default_a/api?x=1", "default_a"), ("/proxy/default_a?watch=1", "default_a"),
                         ("/proxy/zz_q/../default_a/version", "default_a"), ("/proxy/\(Self.longID)/x", Self.longID)] {
      let r = HubRequest(method: "GET", target: t, headers: [("Authorization", "Bearer x")], peer: "127.0.0.1:1")
      guard case .forward(let c, _, _, _, _) = router.route(r) else { return XCTFail("\(t): not a forward") }
      XCTAssertEqual(c, cluster, t)
    }
    XCTAssertEqual(Self.longID.utf8.count, HubMetrics.maxClusterIDBytes)
  }

  /// The router and the metrics alone, the core's reports simulated with
  /// the key the answer carries (the core reports that one).
  func testRandomClusterSegmentsMakeNoLabels() {
    let metrics = HubMetrics(isCluster: { [registry = registry()] in registry.cluster(id: $0) != nil })
    let router = router(metrics, port: 1)
    var forwards = 0
    for t in Self.hostileTargets(1_000) + ["/proxy/default_a/version"] {
      let r = HubRequest(method: "GET", target: t, headers: [("Authorization", "Bearer x")], peer: "127.0.0.1:1")
      switch router.route(r) {
      case .forward(let cluster, _, _, _, _):
        forwards += 1
        metrics.proxyEnded(cluster: cluster, status: 502, bytesUp: 0, bytesDown: 0, durationMicros: 1)
      // Not registered (404), or not a cluster path at all (400).
      case .respond(let status, _, _, _): XCTAssertTrue([400, 404].contains(status), "\(status) \(t)")
      default: XCTFail("\(t): unexpected answer")
      }
    }
    XCTAssertEqual(forwards, 751)
    // Only registered clusters label anything: what a caller wrote before
    // a dot segment never does.
    let (values, inFlight) = labels(metrics.render())
    XCTAssertEqual(values, ["default_a", Self.longID])
    XCTAssertEqual(inFlight, 0)
  }

  /// A cluster registered (or removed) while a request is in flight moves
  /// nothing between labels: it is counted out where it was counted in.
  func testInFlightIsCountedOutOnItsOwnLabel() {
    let registered = Box<Set<String>>([])
    let metrics = HubMetrics(isCluster: { registered.value.contains($0) })
    metrics.proxyStarted(cluster: "default_late")
    registered.value = ["default_late"]
    metrics.proxyStarted(cluster: "default_late")
    metrics.proxyStarted(cluster: "default_b")
    func end(_ key: String) {
      metrics.proxyEnded(cluster: key, status: 200, bytesUp: 1, bytesDown: 1, durationMicros: 1)
    }
    end("default_late")
    registered.value = []
    end("default_late")
    end("default_b")
    let page = metrics.render()
    XCTAssertTrue(page.contains(#"kopilot_hub_requests_in_flight{cluster="unknown"} 0"#), page)
    XCTAssertFalse(page.contains(#"requests_in_flight{cluster="default_late"}"#), page)
    XCTAssertEqual(labels(page).1, 0)
    // The core reporting an end it never started: no gauge goes negative.
    end("default_x")
    XCTAssertFalse(metrics.render().contains("-1"), metrics.render())
  }

  /// Through the real core: the hub forwards (to a replica it cannot reach,
  /// since it has no peer certificate: 502 at once), and the key hub.c
  /// reports at the end must be the one the router counted in, long IDs
  /// (over 255 bytes) included.
  func testThroughTheCore() throws {
    guard let curl = ["/usr/bin/curl", "/usr/local/bin/curl"].first(where: FileManager.default.isExecutableFile) else {
      throw XCTSkip("curl is not installed")
    }
    let rig = try coreRig { router, r, responder in router.route(r) { responder.answer($0) } }
    let (hub, metrics, state, ended) = (rig.hub, rig.metrics, rig.state, rig.ended)
    defer { hub.stop() }
    let targets = Self.hostileTargets(1_000) + ["/proxy/default_a/version", "/proxy/\(Self.longID)/version"]
    // A router without metrics says which of them the hub forwards.
    let plain = self.router(nil, port: 1)
    let forwarded = targets.filter {
      plain.route(HubRequest(method: "GET", target: $0, headers: [("Authorization", "Bearer x")], peer: "p")).isForward
    }.count
    XCTAssertEqual(forwarded, 752)

    // One curl, every target on one keep-alive connection, in a config
    // file (the URLs are long).
    let config = try makeTempDir() + "/curl.cfg"
    var lines = ["silent", "path-as-is", "cacert = \"\(state.paths.caCert)\"", "header = \"Authorization: Bearer x\"",
                 "write-out = \"%{http_code}\\n\"", "max-time = 120"]
    for t in targets {
      lines.append("url = \"https://127.0.0.1:\(hub.port)\(t)\"")
      lines.append("output = \"/dev/null\"")
    }
    try lines.joined(separator: "\n").write(toFile: config, atomically: true, encoding: .utf8)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: curl)
    p.arguments = ["-K", config]
    let out = Pipe()
    p.standardOutput = out
    try p.run()
    let codes = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    let counted = codes.split(separator: "\n").reduce(into: [String: Int]()) { $0[String($1), default: 0] += 1 }
    XCTAssertEqual(counted["502"], forwarded, codes)
    XCTAssertEqual((counted["400"] ?? 0) + (counted["404"] ?? 0), targets.count - forwarded, codes)
    XCTAssertTrue(waitUntil(timeout: 10) { ended.value == forwarded })

    let (values, inFlight) = labels(metrics.render())
    XCTAssertEqual(values, ["default_a", Self.longID])
    XCTAssertEqual(inFlight, 0, metrics.render())
  }
}

extension MetricsLabelTests {
  struct CoreRig {
    var hub: Hub
    var metrics: HubMetrics
    var state: StateDirectory
    /// Requests the core reported ended (each also counted out of metrics).
    var ended: Box<Int>
  }

  /// A real hub on 127.0.0.1 whose requests go to `route` with a router
  /// that counts into fresh metrics, as kopilot-hub wires them.
  func coreRig(_ route: @escaping (HubRouter, HubRequest, HubResponder) -> HubAnswer?) throws -> CoreRig {
    let state = StateDirectory(paths: StatePaths(directory: try makeTempDir()))
    try state.prepare()
    let metrics = HubMetrics(isCluster: { [registry = registry()] in registry.cluster(id: $0) != nil })
    let router = router(metrics, port: 1)
    var cfg = Hub.Config(certFile: state.paths.hubCert, keyFile: state.paths.hubKey)
    cfg.bindHost = "127.0.0.1"
    cfg.port = 0
    let hub = try Hub(loop: try Loop(), config: cfg, deferringRouter: { r, responder in route(router, r, responder) })
    let ended = Box(0)
    hub.onProxied = { r in
      metrics.proxyEnded(r)
      ended.value += 1
    }
    return CoreRig(hub: hub, metrics: metrics, state: state, ended: ended)
  }

  /// The router's answer comes after the caller hung up (a review that took
  /// its time): the request was counted in flight when it was decided, so
  /// the core must still report it ended, or the gauge grows for ever.
  func testAnAnswerAfterTheCallerLeftIsCountedOut() throws {
    let decided = Box(0)
    let rig = try coreRig { router, r, responder in
      guard let answer = router.route(r, later: { responder.answer($0) }) else { return nil }
      decided.value += 1
      // Answer once the caller is surely gone.
      DispatchQueue.global().asyncAfter(deadline: .now() + 2.5) { responder.answer(answer) }
      return nil
    }
    let (hub, metrics, state, ended) = (rig.hub, rig.metrics, rig.state, rig.ended)
    defer { hub.stop() }
    let targets = ["/proxy/default_a/version", "/proxy/\(Self.longID)/version"]
    // Each caller sends its request and resets the connection (SO_LINGER
    // 0), so the hub's conn is closed, not just half-closed, before the
    // answer comes.
    let script = """
      import socket, ssl, struct, sys, time
      ctx = ssl.create_default_context(cafile=sys.argv[1])
      ctx.check_hostname = False
      raw = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
      s = ctx.wrap_socket(raw)
      s.sendall(("GET %s HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer x\\r\\n\\r\\n" % sys.argv[3]).encode())
      time.sleep(0.5)  # the hub reads the head before the reset
      s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
      s.close()
      """
    for t in targets {
      let p = Process()
      p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
      p.arguments = ["python3", "-c", script, state.paths.caCert, "\(hub.port)", t]
      try p.run()
      p.waitUntilExit()
      XCTAssertEqual(p.terminationStatus, 0)
    }
    XCTAssertTrue(waitUntil(timeout: 5) { decided.value == 2 })
    XCTAssertTrue(waitUntil(timeout: 10) { ended.value == 2 }, "ended: \(ended.value)")
    let (_, inFlight) = labels(metrics.render())
    XCTAssertEqual(inFlight, 0, metrics.render())
  }
}

extension HubAnswer {
  var isForward: Bool { if case .forward = self { return true } else { return false } }
}
