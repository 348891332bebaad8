import Foundation
import XCTest

#if canImport(Glibc)
  import Glibc
#endif

/// Agents that die or freeze: requests in flight end at once with an error
/// (never a hang), and the cluster is served again by what is left.
final class FaultTests: E2ETestCase {
  override func setUpWithError() throws {
    try super.setUpWithError()
    try startWorld { w in
      try w.startUpstream()
      // Pings every second: a frozen agent is noticed within two.
      try w.startHub(extraArgs: ["--keepalive", "1"])
    }
  }

  func startAgent(_ name: String, sessions: Int = 1) throws -> ManagedProcess {
    let agent = try world.start(name, try Paths.binary("kopilot-agent"), [
      "--connect", "wss://127.0.0.1:\(world.hubPort)/connect?token=\(Tokens.sample)",
      "--apiserver", world.upstreamURL, "--token-file", world.tokenFile.path, "--ca-file", world.certs.ca,
      "--hub-ca", world.certs.ca, "--sessions", "\(sessions)",
    ])
    try agent.waitFor("connected to the hub")
    return agent
  }

  func get(_ path: String) throws -> Int {
    let r = try world.curl(["-o", "/dev/null", "-w", "%{http_code}", world.proxy(path)], timeout: 15)
    return Int(r.text) ?? 0
  }

  /// The agent dies in the middle of a watch-like stream: the caller's
  /// response ends (curl reports a transfer cut short) instead of hanging,
  /// and once an agent is back, requests succeed again.
  func testAgentKilledDuringAWatch() throws {
    let agent = try startAgent("agent-1")
    try world.hub.waitFor("agent session up: cluster=default_sample")
    let reader = try LineReader(exe: world.curl, args: [
      "-sS", "-N", "--cacert", world.certs.ca, "-H", "Authorization: Bearer \(Tokens.caller)", "--max-time", "60",
      world.proxy("/stream?n=1000&delay_ms=50"),
    ])
    defer { reader.stop() }
    XCTAssertNotNil(try reader.nextLine(timeout: 10), "the stream started")
    kill(agent.process.processIdentifier, SIGKILL)
    // The stream ends soon: lines stop and EOF comes, well before --max-time.
    let deadline = Date().addingTimeInterval(10)
    while try reader.nextLine(timeout: 10) != nil {
      XCTAssertLessThan(Date(), deadline, "the watch kept going after its agent died")
    }
    try world.hub.waitFor("agent session down: cluster=default_sample")
    XCTAssertEqual(try get("/bytes/10"), 503, "no agent left: a clear 503")
    _ = try startAgent("agent-2")
    try waitUntil("a request through the new agent") { (try? self.get("/bytes/10")) == 200 }
  }

  /// Two agents serve one cluster; one is killed. At most the requests that
  /// were in flight on it fail; every later request succeeds.
  func testTwoAgentsOneKilled() throws {
    let a = try startAgent("agent-a")
    _ = try startAgent("agent-b")
    for _ in 0..<10 { XCTAssertEqual(try get("/bytes/100"), 200) }
    kill(a.process.processIdentifier, SIGKILL)
    // The first request may still meet the dead session (a 502 from the
    // broken tunnel, never a hang); from then on all go to the live one.
    let first = try get("/bytes/100")
    XCTAssertTrue([200, 502].contains(first), "first request after the kill: \(first)")
    try world.hub.waitFor("agent session down: cluster=default_sample")
    for i in 0..<20 { XCTAssertEqual(try get("/bytes/\(100 + i)"), 200, "request \(i) after the kill") }
  }

  /// An agent frozen with SIGSTOP (its TCP connection stays open, nothing
  /// answers): the hub's keepalive notices and drops its session, and the
  /// other agent serves every request.
  func testFrozenAgentIsDroppedByTheKeepalive() throws {
    let frozen = try startAgent("agent-frozen")
    try world.hub.waitFor("agent session up: cluster=default_sample")
    _ = try startAgent("agent-live")
    kill(frozen.process.processIdentifier, SIGSTOP)
    defer { kill(frozen.process.processIdentifier, SIGCONT) }
    try world.hub.waitFor("agent session down: cluster=default_sample", timeout: 10)
    XCTAssertTrue(world.hub.log.contains("KP_ETIMEDOUT"), "dropped by the keepalive: \(world.hub.log)")
    for i in 0..<20 { XCTAssertEqual(try get("/bytes/\(200 + i)"), 200, "request \(i) after the freeze") }
  }

  /// The hub restarts: every agent comes back by itself, and their
  /// reconnections are spread out in time by the backoff's full jitter
  /// (printed; the test asserts only that all are back).
  func testHubRestartAgentsComeBack() throws {
    let agents = 4
    for i in 0..<agents { _ = try startAgent("agent-\(i)") }
    try waitUntil("\(agents) sessions up") {
      world.hub.log.components(separatedBy: "agent session up").count - 1 >= agents
    }
    let port = world.hubPort
    kill(world.hub.process.processIdentifier, SIGKILL)
    world.hub.process.waitUntilExit()
    let restarted = Date()
    try world.startHub(port: port, extraArgs: ["--keepalive", "1"], name: "hub-2")
    var times: [Double] = []
    try waitUntil("every agent back on the new hub", timeout: 45) {
      let ups = world.hub.log.components(separatedBy: "agent session up").count - 1
      while times.count < ups { times.append(Date().timeIntervalSince(restarted)) }
      return ups >= agents
    }
    print("hub restart: agents back after " + times.map { String(format: "%.2f s", $0) }.joined(separator: ", "))
    XCTAssertEqual(try get("/bytes/10"), 200)
  }

  /// Every live session of a cluster is used: overlapping requests go to
  /// the session with the fewest open streams, so two sessions share them.
  func testRequestsSpreadOverTheSessions() throws {
    _ = try startAgent("agent-lb", sessions: 2)
    try waitUntil("two sessions up") {
      world.hub.log.components(separatedBy: "agent session up").count - 1 >= 2
    }
    let urls = (0..<40).map { world.proxy("/stream?n=2&delay_ms=300&i=\($0)") }
    let r = try world.curl(["--parallel", "--parallel-immediate", "--parallel-max", "40", "-o", "/dev/null",
                            "-w", "%{http_code}\n"] + urls.flatMap { ["-o", "/dev/null", $0] }, timeout: 60)
    XCTAssertEqual(r.text.split(separator: "\n").filter { $0 == "200" }.count, 40, r.text)
    try waitUntil("40 access log lines") {
      world.hub.log.components(separatedBy: "proxied cluster=default_sample").count - 1 >= 40
    }
    var perSession: [String: Int] = [:]
    for line in world.hub.log.split(separator: "\n") where line.contains("proxied cluster=default_sample") {
      let id = line.components(separatedBy: "session=").last?.prefix { $0.isNumber } ?? ""
      perSession[String(id), default: 0] += 1
    }
    XCTAssertEqual(perSession.count, 2, "both sessions carried requests: \(perSession)")
    XCTAssertTrue(perSession.values.allSatisfy { $0 >= 10 }, "fewest-streams balancing: \(perSession)")
  }

  /// A Go agent in the original style and ours serve the same cluster side
  /// by side; requests spread over both succeed.
  func testOriginalGoAgentBesideOurs() throws {
    let go = try GoBuild.binary("perf/baseline/agent", name: "goagent")
    let p = try world.start("goagent", go, [
      "-connect", "wss://127.0.0.1:\(world.hubPort)/connect?token=\(Tokens.sample)",
      "-hub-ca", world.certs.ca, "-apiserver", world.upstreamURL, "-ca-file", world.certs.ca,
      "-token-file", world.tokenFile.path,
    ])
    try p.waitFor("connected to the hub")
    _ = try startAgent("agent-ours")
    try world.checkParallel(count: 60)
  }

  func waitUntil(_ what: String, timeout: TimeInterval = 20, _ ok: () -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while !ok() {
      if Date() > deadline { throw E2EError("timed out waiting for \(what)") }
      usleep(100_000)
    }
  }
}
