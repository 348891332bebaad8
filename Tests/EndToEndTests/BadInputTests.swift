import Foundation
import XCTest

/// Hostile or broken peers get a clear answer or a closed connection, and
/// nobody else notices: the hub keeps serving the good agent's cluster.
final class BadInputTests: E2ETestCase {
  override func setUpWithError() throws {
    try super.setUpWithError()
    try startWorld { w in
      try w.startUpstream()
      // One second for each request head, so the slowloris test is quick.
      try w.startHub(extraArgs: ["--header-timeout", "1"])
      try w.startAgent(wire: "framed")
    }
  }

  /// Runs Tests/EndToEndTests/badpeer.py in one of its modes; returns its
  /// lines (the status line it got, then "closed" or "open").
  func badPeer(_ mode: String, token: String = "") throws -> [String] {
    let script = Paths.root.appendingPathComponent("Tests/EndToEndTests/badpeer.py").path
    let r = try runCommand(world.python, [script, "\(world.hubPort)", world.certs.ca, mode, token], timeout: 30)
    XCTAssertEqual(r.status, 0, r.stderr)
    return r.text.split(separator: "\n").map(String.init)
  }

  func stillServing() throws {
    let r = try world.curl(["-o", "/dev/null", "-w", "%{http_code}", world.proxy("/bytes/100")], timeout: 15)
    XCTAssertEqual(r.text, "200", "the good agent's cluster is still served")
  }

  func testMalformedRequestHeadGets400AndClose() throws {
    XCTAssertEqual(try badPeer("http-garbage"), ["HTTP/1.1 400 Bad Request", "closed"])
    try stillServing()
  }

  func testOversizedRequestHeadGets431AndClose() throws {
    XCTAssertEqual(try badPeer("http-huge"), ["HTTP/1.1 431 Request Header Fields Too Large", "closed"])
    try stillServing()
  }

  func testAgentSendingAnUnmaskedFrameLosesOnlyItsSession() throws {
    XCTAssertEqual(try badPeer("ws-unmasked", token: Tokens.sample), ["HTTP/1.1 101 Switching Protocols", "closed"])
    try stillServing()
  }

  func testAgentSendingABadMuxFrameLosesOnlyItsSession() throws {
    XCTAssertEqual(try badPeer("mux-bad", token: Tokens.sample), ["HTTP/1.1 101 Switching Protocols", "closed"])
    try stillServing()
  }

  /// A caller that trickles its head never completes it: the hub closes the
  /// connection at the head deadline, however often bytes arrive.
  func testSlowlorisIsClosedAtTheHeadDeadline() throws {
    XCTAssertEqual(try badPeer("slowloris"), ["trickling", "closed"])
    try stillServing()
  }

  /// The hub runs at most 128 TLS handshakes at once; connections that
  /// never handshake hold a place only briefly, so a real request is served
  /// while 200 of them are still open (before their 10 s handshake deadline
  /// closes them).
  func testStalledHandshakesDoNotStopAccepting() throws {
    XCTAssertEqual(try badPeer("stalled-handshakes"), ["HTTP/1.1 200 OK", "still open: 200"])
    try stillServing()
  }

  /// An agent's upgrade is checked by ws.c's RFC 6455 rules: a version
  /// other than 13 gets 426 naming 13 (4.2.2), a key that is not base64 of
  /// 16 bytes or a missing Connection: Upgrade gets 400; no session comes.
  func testBadWebSocketUpgradesAreRefused() throws {
    let url = "https://127.0.0.1:\(world.hubPort)/connect"
    func upgrade(_ headers: [String: String]) throws -> String {
      var h = ["Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Authorization": "Bearer \(Tokens.sample)"]
      for (k, v) in headers { h[k] = v }
      let args = h.sorted { $0.key < $1.key }.flatMap { ["-H", $0.value.isEmpty ? "\($0.key);" : "\($0.key): \($0.value)"] }
      return try world.curl(["-i", "--http1.1"] + args + [url], timeout: 10).text
    }
    let v8 = try upgrade(["Sec-WebSocket-Version": "8"])
    XCTAssertTrue(v8.hasPrefix("HTTP/1.1 426 "), v8)
    XCTAssertTrue(v8.lowercased().contains("sec-websocket-version: 13\r\n"), v8)
    XCTAssertTrue(v8.contains("\"kind\":\"Status\""), v8)
    let shortKey = try upgrade(["Sec-WebSocket-Key": "c2hvcnQ="])
    XCTAssertTrue(shortKey.hasPrefix("HTTP/1.1 400 "), shortKey)
    let noConnection = try upgrade(["Connection": "keep-alive"])
    XCTAssertTrue(noConnection.hasPrefix("HTTP/1.1 400 "), noConnection)
    try stillServing()
  }

  func testWrongAgentTokenGets401BeforeAnyUpgrade() throws {
    XCTAssertEqual(try badPeer("mux-bad", token: "not-a-cluster-token-0000").first, "HTTP/1.1 401 Unauthorized")
  }
}
