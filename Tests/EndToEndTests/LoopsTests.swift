import Foundation
import KopilotIO
import XCTest

/// The hub on two loops: an in-process Hub over the real C core, real agent
/// sessions and the real upstream, callers with curl (a new connection per
/// run). The kernel spreads connections over the loops' SO_REUSEPORT
/// listeners by their address hash; the hub spreads each cluster's agent
/// sessions over the loops and moves a caller whose cluster has no session
/// on its loop to one that has.
final class LoopsTests: E2ETestCase {
  final class Carried: @unchecked Sendable {
    private let lock = NSLock()
    private var sessions: [UInt64] = []
    private var statuses: [Int] = []
    private var requests: [UInt64] = []
    /// The IDs of the requests the router answered with a proxy.
    private var routedIDs: [UInt64] = []
    func add(_ p: Hub.ProxiedRequest) {
      lock.lock()
      sessions.append(p.session)
      statuses.append(p.status)
      requests.append(p.request)
      lock.unlock()
    }
    func routed(_ id: UInt64) { lock.lock(); routedIDs.append(id); lock.unlock() }
    var all: (sessions: [UInt64], statuses: [Int]) { lock.lock(); defer { lock.unlock() }; return (sessions, statuses) }
    var ids: (routed: [UInt64], ended: [UInt64]) { lock.lock(); defer { lock.unlock() }; return (routedIDs, requests) }
  }

  private var loops: [Loop] = []
  private var agentLoop: Loop!
  private var agents: [AgentSession] = []
  private var hub: Hub!
  private let carried = Carried()

  override func tearDown() {
    for a in agents { a.close() }
    agents = []
    hub?.stop()
    hub = nil
    super.tearDown()
  }

  private func startHub(loops n: Int) throws {
    try startWorld { w in try w.startUpstream() }
    loops = try (0..<n).map { _ in try Loop() }
    agentLoop = try Loop()
    var cfg = Hub.Config(certFile: world.certs.cert, keyFile: world.certs.key)
    cfg.bindHost = "127.0.0.1"
    cfg.port = 0
    let c = carried
    hub = try Hub(loops: loops, config: cfg) { r in
      if r.path == "/connect" { return .acceptAgent(cluster: "default_sample") }
      let prefix = "/proxy/default_sample"
      guard r.path.hasPrefix(prefix) else { return .status(404, "NotFound", "no such cluster") }
      c.routed(r.id)
      return .proxy(cluster: "default_sample", target: String(r.target.dropFirst(prefix.count)))
    }
    hub.onProxied = { c.add($0) }
    XCTAssertEqual(hub.loopCount, n)
  }

  private func startAgents(_ n: Int) throws {
    let ups = (0..<n).map { _ in DispatchSemaphore(value: 0) }
    for i in 0..<n {
      var ac = AgentSession.Config(hubURL: URL(string: "wss://127.0.0.1:\(hub.port)/connect")!,
                                   apiserver: URL(string: world.upstreamURL)!)
      ac.hubToken = Tokens.sample
      ac.hubCAFile = world.certs.ca
      ac.apiserverCAFile = world.certs.ca
      let a = try AgentSession(loop: agentLoop, config: ac)
      let up = ups[i]
      a.onState = { isUp, _ in if isUp { up.signal() } }
      a.connect()
      agents.append(a)
    }
    for up in ups { XCTAssertEqual(up.wait(timeout: .now() + 10), .success, "an agent session did not come up") }
    // The hub announces a session after its 101; wait until it lists them.
    let deadline = Date().addingTimeInterval(10)
    while hub.sessions().count < n, Date() < deadline { usleep(20_000) }
    XCTAssertEqual(hub.sessions().count, n)
  }

  /// Starts long responses (10 s) until each session carries one; the
  /// group ends when they do. Callers are served on the loop the kernel
  /// gave their connection (and by the session with the fewest streams
  /// there), so callers are added until every session has had one.
  private func holdAStreamOnEverySession() -> DispatchGroup {
    let url = "https://127.0.0.1:\(hub.port)/proxy/default_sample/stream?n=40&delay_ms=250"
    let done = DispatchGroup()
    func streams() -> UInt32 { hub.sessions().reduce(0) { $0 + $1.openStreams } }
    for _ in 0..<24 where hub.sessions().contains(where: { $0.openStreams == 0 }) {
      done.enter()
      // curl runs a process and only reads the world's settings.
      nonisolated(unsafe) let w = world!
      DispatchQueue.global().async {
        _ = try? w.curl(["-o", "/dev/null", url], timeout: 30)
        done.leave()
      }
      let before = streams(), deadline = Date().addingTimeInterval(2)
      while streams() == before, Date() < deadline { usleep(20_000) }
    }
    return done
  }

  private func get(_ path: String) throws -> CommandResult {
    try world.curl(["-o", "/dev/null", "-w", "%{http_code}", "https://127.0.0.1:\(hub.port)/proxy/default_sample\(path)"])
  }

  /// Four sessions of one cluster: two on each loop, whatever loop the
  /// kernel gave each connection. Callers land on both loops, each is
  /// served by a session of its own loop, so both loops' sessions carry
  /// the cluster's requests.
  func testSessionsAndCallersSpreadAndShareTheLoad() throws {
    try startHub(loops: 2)
    try startAgents(4)
    let byLoop = Dictionary(grouping: hub.sessions(), by: { $0.loop })
    XCTAssertEqual(byLoop[0]?.count, 2, "\(hub.sessions())")
    XCTAssertEqual(byLoop[1]?.count, 2, "\(hub.sessions())")
    for i in 0..<24 {
      let r = try get("/bytes/\(100 + i)")
      XCTAssertEqual(r.text, "200", r.stderr)
    }
    XCTAssertGreaterThan(hub.accepted(loop: 0), 0, "no connection reached loop 0")
    XCTAssertGreaterThan(hub.accepted(loop: 1), 0, "no connection reached loop 1")
    let loopOf = Dictionary(uniqueKeysWithValues: hub.sessions().map { ($0.id, $0.loop) })
    let used = Set(carried.all.sessions.compactMap { loopOf[$0] })
    XCTAssertEqual(used, [0, 1], "sessions on both loops carry requests: \(carried.all.sessions) over \(loopOf)")
    XCTAssertEqual(carried.all.statuses, Array(repeating: 200, count: 24))
  }

  /// One session, on one loop: callers the kernel gives the other loop are
  /// moved there with their request, a body and a keep-alive connection
  /// included, and served; nothing is answered 503.
  func testACallerWhoseSessionIsOnTheOtherLoopIsServed() throws {
    try startHub(loops: 2)
    try startAgents(1)
    let movedBefore = hub.moved
    for i in 0..<24 {
      let r = try get("/bytes/\(1000 + i)")
      XCTAssertEqual(r.text, "200", r.stderr)
    }
    XCTAssertGreaterThan(hub.accepted(loop: 0), 0)
    XCTAssertGreaterThan(hub.accepted(loop: 1), 0)
    XCTAssertGreaterThan(hub.moved, movedBefore, "no caller had to move: the test proved nothing")

    // A body larger than one read, sent with the head, moves with it; a
    // second request on the same connection is served too.
    let body = String(repeating: "0123456789abcdef", count: 8192) // 128 KiB
    let file = world.dir.appendingPathComponent("body")
    try body.write(to: file, atomically: true, encoding: .utf8)
    let url = "https://127.0.0.1:\(hub.port)/proxy/default_sample/echo"
    for _ in 0..<8 {
      let out = world.dir.appendingPathComponent("echoed")
      let r = try world.curl(["--data-binary", "@\(file.path)", "-o", out.path, "-w", "%{http_code}", url])
      XCTAssertEqual(r.text, "200", r.stderr)
      let echoed = try Data(contentsOf: out)
      XCTAssertTrue(echoed == Data(body.utf8), "echoed \(echoed.count) bytes of \(body.utf8.count)")
      let twice = try world.curl(["-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n",
                                  "\(url.dropLast(5))/bytes/7", "\(url.dropLast(5))/bytes/8"])
      XCTAssertEqual(twice.text, "200 1\n200 0\n", twice.stderr)
    }
    XCTAssertFalse(carried.all.statuses.contains(503), "\(carried.all.statuses)")
    XCTAssertFalse(carried.all.statuses.contains(0), "\(carried.all.statuses)")
    // Each request ends under the ID the router saw, moved or not: the
    // audit log's only link between a decision and how it ended.
    let deadline = Date().addingTimeInterval(10)
    while carried.ids.ended.count < carried.ids.routed.count, Date() < deadline { usleep(20_000) }
    let ids = carried.ids
    XCTAssertFalse(ids.routed.contains(0))
    XCTAssertEqual(Set(ids.routed).count, ids.routed.count, "request IDs repeat")
    XCTAssertEqual(ids.ended.sorted(), ids.routed.sorted())
  }

  /// With one loop nothing moves and the counters say so.
  func testOneLoopMovesNothing() throws {
    try startHub(loops: 1)
    try startAgents(2)
    XCTAssertEqual(Set(hub.sessions().map(\.loop)), [0])
    for _ in 0..<4 { XCTAssertEqual(try get("/bytes/10").text, "200") }
    XCTAssertEqual(hub.moved, 0)
  }

  /// Two loops, a session on each; one session's agent sends GoAway and
  /// drains a long response. Callers on either loop are served by the
  /// other session, before any byte went to the draining one: those on
  /// its loop move. Then that agent is gone for good, and the same holds.
  func testASessionLostOnOneLoopFailsOverToTheOther() throws {
    try startHub(loops: 2)
    try startAgents(2)
    XCTAssertEqual(Set(hub.sessions().map(\.loop)), [0, 1], "\(hub.sessions())")
    let done = holdAStreamOnEverySession()
    XCTAssertTrue(hub.sessions().allSatisfy { $0.openStreams > 0 }, "a stream on each session: \(hub.sessions())")
    agents[0].shutdown(graceMs: 20_000)
    usleep(300_000)
    let movedBefore = hub.moved
    for i in 0..<24 { XCTAssertEqual(try get("/bytes/\(300 + i)").text, "200", "request \(i), one session draining") }
    XCTAssertGreaterThan(hub.moved, movedBefore, "no caller met the draining loop: the test proved nothing")
    agents[0].close()
    for i in 0..<24 { XCTAssertEqual(try get("/bytes/\(400 + i)").text, "200", "request \(i), one agent gone") }
    XCTAssertFalse(carried.all.statuses.contains(503), "\(carried.all.statuses)")
    _ = done.wait(timeout: .now() + 30)
  }

  /// Sessions that take no new stream (their agent sent GoAway and drains
  /// a watch) are passed over, each once: a request meets them all, and
  /// is answered 503 at once, never tried round them for ever (the loop
  /// would hang for every cluster). One loop, two sessions, both draining.
  func testSessionsThatTakeNoStreamArePassedOver() throws {
    try startHub(loops: 1)
    try startAgents(2)
    // A long response on each session keeps it open after its GoAway.
    let done = holdAStreamOnEverySession()
    XCTAssertTrue(hub.sessions().allSatisfy { $0.openStreams > 0 }, "a stream on each session: \(hub.sessions())")
    for a in agents { a.shutdown(graceMs: 20_000) }
    usleep(300_000) // the GoAways reach the hub
    XCTAssertEqual(hub.sessions().count, 2, "both sessions still drain")
    let r = try world.curl(["-o", "/dev/null", "-w", "%{http_code}", "-m", "10",
                            "https://127.0.0.1:\(hub.port)/proxy/default_sample/bytes/10"], timeout: 20)
    XCTAssertEqual(r.text, "503", r.stderr)
    for a in agents { a.close() }
    _ = done.wait(timeout: .now() + 30)
  }
}
