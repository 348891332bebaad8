import Foundation
import XCTest

#if canImport(Glibc)
  import Glibc
#endif

/// The agent's keep-alive pool of connections to the API server: requests
/// reuse idle connections instead of paying a TCP and TLS handshake each,
/// within a bound and an idle timeout, and a connection the server closed
/// never costs a caller its request. The agent runs one session, so every
/// request goes through one pool; upstream.py counts the connections it
/// accepted and can close its idle ones.
final class UpstreamPoolTests: E2ETestCase {
  override func setUpWithError() throws {
    try super.setUpWithError()
    try startWorld { w in
      try w.startUpstream()
      try w.startHub()
    }
  }

  func startAgent(_ extra: [String] = []) throws {
    let agent = try world.start("agent", try Paths.binary("kopilot-agent"), [
      "--connect", "wss://127.0.0.1:\(world.hubPort)/connect?token=\(Tokens.sample)",
      "--apiserver", world.upstreamURL, "--token-file", world.tokenFile.path, "--ca-file", world.certs.ca,
      "--hub-ca", world.certs.ca, "--sessions", "1",
    ] + extra)
    try agent.waitFor("connected to the hub")
    try world.hub.waitFor("agent session up: cluster=default_sample")
  }

  struct Connections: Decodable {
    var accepted: Int
    var open: Int
    var dropped: Int
  }

  /// The upstream's connection counters, asked of it directly (that
  /// connection is itself counted in `accepted`, not in `open`).
  func connections() throws -> Connections {
    let r = try world.curl(["\(world.upstreamURL)/_connections"], timeout: 10)
    guard r.status == 0 else { throw E2EError("upstream /_connections failed: \(r.stderr)") }
    return try JSONDecoder().decode(Connections.self, from: r.stdout)
  }

  /// Connections the agent opened while `body` ran: accepted ones, less
  /// the one that asked for the second count.
  func agentConnections(during body: () throws -> Void) throws -> Int {
    let before = try connections().accepted
    try body()
    return try connections().accepted - before - 1
  }

  func dropIdle(onNext: Bool = false) throws {
    let r = try world.curl(["\(world.upstreamURL)/_drop_idle" + (onNext ? "?on_next=1" : "")], timeout: 10)
    XCTAssertEqual(r.status, 0, "upstream /_drop_idle: \(r.stderr)")
  }

  /// GETs /bytes/N for each size, one curl (one caller connection) after
  /// another, and checks each status and body (SHA-256).
  func getBytes(_ sizes: [Int], query: String = "", file: StaticString = #filePath, line: UInt = #line) throws {
    let outDir = world.dir.appendingPathComponent("get-\(UUID().uuidString.prefix(8))")
    try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
    for n in sizes {
      let r = try world.curl(["-o", "\(outDir.path)/\(n)", "-w", "%{http_code}", world.proxy("/bytes/\(n)\(query)")],
                             timeout: 20)
      XCTAssertEqual(r.status, 0, "curl: \(r.stderr)", file: file, line: line)
      XCTAssertEqual(r.text, "200", "GET /bytes/\(n)\(query)", file: file, line: line)
    }
    let got = try world.sha256(files: sizes.map { "\(outDir.path)/\($0)" })
    XCTAssertEqual(got, try world.expectedDigests(sizes), "bodies byte for byte", file: file, line: line)
  }

  func waitUntil(_ what: String, timeout: TimeInterval = 10, _ ok: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while try !ok() {
      if Date() > deadline { throw E2EError("timed out waiting for \(what)") }
      usleep(100_000)
    }
  }

  /// 50 requests one after another: one warm upstream connection serves
  /// them all (at most 2 allows for nothing but slack), bodies intact.
  func testSequentialRequestsReuseOneConnection() throws {
    try startAgent()
    let n = try agentConnections {
      try getBytes((0..<50).map { 1000 + $0 * 37 })
    }
    XCTAssertGreaterThanOrEqual(n, 1)
    XCTAssertLessThanOrEqual(n, 2, "50 sequential requests opened \(n) upstream connections")
  }

  /// A response with Connection: close ends its connection; the next
  /// request takes a new one. The server lingers 1.5 s before it closes,
  /// so an agent that wrongly kept the connection would send the POST on
  /// it, get no answer and (a POST is never sent twice) answer 502.
  func testConnectionCloseIsNotReused() throws {
    try startAgent()
    let n = try agentConnections {
      try getBytes([100])
      try getBytes([200], query: "?close=1&linger_ms=1500")
      let input = world.dir.appendingPathComponent("post-body")
      try Data("not reused".utf8).write(to: input)
      let r = try world.curl(["-w", "\n%{http_code}", "--data-binary", "@" + input.path, world.proxy("/echo")],
                             timeout: 20)
      XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
      XCTAssertEqual(r.text, "not reused\n200")
      try getBytes([300, 400])
    }
    XCTAssertEqual(n, 2, "one connection until the close, one after")
  }

  /// The server closes its idle connections (its idle timeout): the
  /// agent sees each close and drops the connection; later requests all
  /// succeed.
  func testServerClosesIdleConnections() throws {
    try startAgent()
    try world.checkParallel(count: 5) // several connections in the pool
    try dropIdle()
    try getBytes((0..<10).map { 5000 + $0 })
    try dropIdle()
    try world.checkParallel(count: 5)
  }

  /// The close crosses the request: the server closes each idle
  /// connection when the next request arrives on it, unanswered. A GET is
  /// sent again once on a new connection and succeeds; a POST (which must
  /// not be sent twice) gets the 502 Status, and the next request works.
  func testClosedAsTheRequestArrivesIsRetried() throws {
    try startAgent()
    try getBytes([10])
    try dropIdle(onNext: true)
    try getBytes([11, 12, 13])
    XCTAssertEqual(try connections().dropped, 1, "the first GET met the closing connection")

    try dropIdle(onNext: true)
    let r = try world.curl(["-w", "\n%{http_code}", "--data-binary", "x=1", world.proxy("/echo")], timeout: 20)
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    let parts = r.text.split(separator: "\n")
    XCTAssertEqual(parts.last, "502", r.text)
    let obj = (try? JSONSerialization.jsonObject(with: Data(parts.dropLast().joined(separator: "\n").utf8))) as? [String: Any]
    XCTAssertEqual(obj?["kind"] as? String, "Status", r.text)
    XCTAssertEqual(try connections().dropped, 2)
    try getBytes([14, 15])
  }

  /// 40 requests at once open 40 connections; at most --upstream-idle-conns
  /// stay open afterwards, and the next burst reuses them.
  func testParallelRequestsWithinTheIdleBound() throws {
    try startAgent(["--upstream-idle-conns", "4"])
    for round in 0..<2 {
      try world.checkParallel(count: 40)
      try waitUntil("at most 4 idle upstream connections after round \(round)") {
        try connections().open <= 4
      }
      usleep(300_000)
      XCTAssertLessThanOrEqual(try connections().open, 4, "the pool stays within its bound")
    }
    let n = try agentConnections { try getBytes([777, 778]) }
    XCTAssertEqual(n, 0, "served by a pooled connection")
  }

  /// A server that sends bytes on an idle connection (no request asked for
  /// them) loses the connection; the next request takes a new one.
  func testDataOnAnIdleConnectionClosesIt() throws {
    try startAgent()
    try getBytes([50], query: "?junk_after_ms=300")
    try waitUntil("the agent to close the connection that sent junk") { try connections().open == 0 }
    let n = try agentConnections { try getBytes([51, 52]) }
    XCTAssertEqual(n, 1, "one new connection for both")
  }

  /// An idle connection closes after --upstream-idle-timeout.
  func testIdleConnectionsTimeOut() throws {
    try startAgent(["--upstream-idle-timeout", "1"])
    try getBytes([64])
    XCTAssertEqual(try connections().open, 1, "the used connection is kept")
    try waitUntil("the idle connection to close") { try connections().open == 0 }
    try getBytes([65])
  }

  /// A watch (a chunked response that streams for a while) and requests
  /// around it: the streaming response is delimited, so its connection
  /// goes back to the pool when it ends.
  func testWatchesBetweenPooledRequests() throws {
    try startAgent()
    let n = try agentConnections {
      try getBytes([1, 2])
      let r = try world.curl([world.proxy("/stream?n=5&delay_ms=50")], timeout: 20)
      XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
      XCTAssertEqual(r.text.split(separator: "\n").count, 5, r.text)
      try getBytes([3, 4])
    }
    XCTAssertEqual(n, 1, "one connection for all of them")
  }
}
