import Foundation
import XCTest

/// The whole tunnel as users run it: curl -> kopilot-hub -> (WebSocket, mux)
/// -> kopilot-agent -> upstream.py, every one a real process on 127.0.0.1.
/// Each scenario runs in both carriages (FramedCarriageTests, RawCarriageTests);
/// the scenarios live here and each subclass lists them, because XCTest on
/// Linux does not discover test methods a subclass inherits.
class CarriageTestCase: E2ETestCase {
  /// "framed" (kopilot.v2 WebSocket messages) or "raw" (mux bytes after the 101).
  var wire: String { fatalError("a subclass names its carriage") }

  override func setUpWithError() throws {
    try super.setUpWithError()
    try startWorld { w in
      try w.startUpstream()
      try w.startHub()
      try w.startAgent(wire: wire)
    }
  }

  // MARK: scenarios

  /// GET /bytes/N through the tunnel; the body's SHA-256 must equal the
  /// generator's.
  func checkBytes(_ n: Int, timeout: TimeInterval = 60) throws {
    let out = world.dir.appendingPathComponent("bytes-\(n)").path
    let r = try world.curl(["-o", out, "-w", "%{http_code}", world.proxy("/bytes/\(n)")], timeout: timeout)
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    XCTAssertEqual(r.text, "200")
    let size = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? Int) ?? -1
    XCTAssertEqual(size, n, "body length")
    XCTAssertEqual(try world.sha256(files: [out]), try world.expectedDigests([n]), "body SHA-256")
  }

  /// 200 concurrent requests of different sizes. This once caught the agent
  /// dropping a response head when its session was congested (a stream
  /// write that took 0 bytes), which the hub saw as a malformed response.
  /// The hub reports each proxied request (status, bytes, time) once it
  /// ends.
  func checkAccessLog() throws {
    let r = try world.curl(["-o", "/dev/null", "-w", "%{http_code}", world.proxy("/bytes/4096")])
    XCTAssertEqual(r.text, "200")
    let line = try world.hub.waitFor("proxied cluster=default_sample session=")
    XCTAssertTrue(line.contains(" status=200 "), line)
    let down = line.components(separatedBy: "down=").last.flatMap { Int($0.prefix { $0.isNumber }) } ?? 0
    XCTAssertGreaterThan(down, 4096, "the response body and its head: \(line)")
  }

  func checkParallel() throws {
    try world.checkParallel(count: 200)
  }

  /// 16 MiB, far over the mux stream window (256 KiB), so flow control
  /// must pause and resume the caller. Regression: before 05fcbbf/ee11179
  /// such an upload usually left the hub's loop thread spinning in relay.c
  /// pump() and the hub accepted no connections at all; 20 s is plenty.
  func checkUpload16MiB(chunked: Bool) throws {
    try checkUpload(chunked: chunked, size: 16 << 20, timeout: 20)
  }

  /// POST to /echo and compare what comes back by SHA-256, with a
  /// Content-Length body or a chunked one.
  func checkUpload(chunked: Bool, size: Int, timeout: TimeInterval = 60) throws {
    let input = world.dir.appendingPathComponent("upload-in").path
    let output = world.dir.appendingPathComponent("upload-out").path
    let w = try runCommand(world.python, [Paths.upstreamScript, "--write", "\(size)", input])
    XCTAssertEqual(w.status, 0, w.stderr)
    var args = ["-o", output, "-w", "%{http_code}", "-H", "Content-Type: application/octet-stream",
                "--data-binary", "@" + input]
    // curl sends a chunked body when told the request is chunked.
    if chunked { args += ["-H", "Transfer-Encoding: chunked"] }
    let r = try world.curl(args + [world.proxy("/echo")], timeout: timeout)
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    XCTAssertEqual(r.text, "200")
    let sums = try world.sha256(files: [input, output])
    XCTAssertEqual(sums.count, 2)
    XCTAssertEqual(sums.first, sums.last, "the echoed body differs from the uploaded one")
  }

  /// A watch: the upstream sends line i+1 only after the test has called
  /// /release (directly, not through the tunnel), which it does only after
  /// reading line i through the tunnel. A tunnel that buffers the response
  /// deadlocks here and the line deadline fails the test.
  func checkStreamingGated(lines: Int = 4) throws {
    let gate = UUID().uuidString
    let reader = try LineReader(exe: world.curl, args: [
      "-sS", "-N", "--cacert", world.certs.ca, "-H", "Authorization: Bearer \(Tokens.caller)", "--max-time", "60",
      world.proxy("/stream?n=\(lines)&gate=\(gate)"),
    ])
    defer { reader.stop() }
    for i in 0..<lines {
      if i > 0 {
        let rel = try world.curl(["\(world.upstreamURL)/release?gate=\(gate)"], timeout: 10)
        XCTAssertEqual(rel.status, 0, rel.stderr)
      }
      let line: String?
      do {
        line = try reader.nextLine(timeout: 10)
      } catch {
        XCTFail("line \(i) of the watch did not arrive through the tunnel before line \(i + 1) was released: \(error)")
        return
      }
      XCTAssertTrue(line?.contains("\"i\": \(i)") == true, "line \(i): \(line ?? "<end>")")
    }
    XCTAssertNil(try reader.nextLine(timeout: 10), "the response ends after the last line")
  }

  /// The same with the upstream's own pacing (n lines, delay apart): the
  /// first line must come out long before the response ends.
  func checkStreamingPaced() throws {
    let start = Date()
    let reader = try LineReader(exe: world.curl, args: [
      "-sS", "-N", "--cacert", world.certs.ca, "-H", "Authorization: Bearer \(Tokens.caller)", "--max-time", "30",
      world.proxy("/stream?n=5&delay_ms=400"),
    ])
    defer { reader.stop() }
    XCTAssertNotNil(try reader.nextLine(timeout: 10))
    let first = Date()
    var count = 1
    while try reader.nextLine(timeout: 10) != nil { count += 1 }
    let end = Date()
    XCTAssertEqual(count, 5)
    // The upstream spends 4 x 400 ms between the first and last line; a
    // buffering tunnel would hand both over together. 1 s leaves slack for
    // a loaded machine without letting buffering pass.
    XCTAssertGreaterThan(end.timeIntervalSince(first), 1.0,
                         "first line after \(first.timeIntervalSince(start)) s, end after \(end.timeIntervalSince(start)) s")
  }

  /// What the upstream sees: the agent's bearer token only (never the
  /// caller's), and X-Forwarded-For / -Proto set by the hub, not the caller.
  func checkHeaders() throws {
    let r = try world.curl(["-H", "Authorization: Bearer \(Tokens.caller)", "-H", "X-Forwarded-For: 6.6.6.6",
                            "-H", "X-Forwarded-Proto: http", world.proxy("/headers")], timeout: 20)
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    guard let pairs = try JSONSerialization.jsonObject(with: r.stdout) as? [[String]] else {
      return XCTFail("not a header list: \(r.text)")
    }
    func values(_ name: String) -> [String] {
      pairs.filter { $0.first?.lowercased() == name }.map { $0.count > 1 ? $0[1] : "" }
    }
    XCTAssertFalse(r.text.contains(Tokens.caller), "the caller's credential reached the upstream: \(r.text)")
    XCTAssertEqual(values("authorization"), ["Bearer \(Tokens.apiserver)"])
    XCTAssertEqual(values("x-forwarded-for"), ["127.0.0.1"], "one X-Forwarded-For, the hub's view of the caller")
    XCTAssertEqual(values("x-forwarded-proto"), ["https"])
  }

  /// A registered cluster without an agent: a prompt 503 Status naming it.
  func checkNoAgent503() throws {
    let start = Date()
    let r = try world.curl(["-w", "\n%{http_code}", world.proxy("/api/v1/namespaces", cluster: "default_idle")],
                           timeout: 15)
    let elapsed = Date().timeIntervalSince(start)
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    let parts = r.text.split(separator: "\n")
    XCTAssertEqual(parts.last, "503")
    XCTAssertLessThan(elapsed, 5, "a cluster without an agent must be answered at once, not after a hang")
    let obj = (try? JSONSerialization.jsonObject(with: Data(parts.dropLast().joined(separator: "\n").utf8))) as? [String: Any]
    XCTAssertEqual(obj?["kind"] as? String, "Status", r.text)
    XCTAssertEqual(obj?["code"] as? Int, 503)
    XCTAssertTrue((obj?["message"] as? String)?.contains("default_idle") == true, "message names the cluster: \(r.text)")
    XCTAssertTrue(try world.upstreamRequests().isEmpty)
  }

  /// An unknown cluster: 404 Status.
  func checkUnknown404() throws {
    let r = try world.curl(["-w", "\n%{http_code}", world.proxy("/api", cluster: "default_nosuch")], timeout: 15)
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    let parts = r.text.split(separator: "\n")
    XCTAssertEqual(parts.last, "404")
    let obj = (try? JSONSerialization.jsonObject(with: Data(parts.dropLast().joined(separator: "\n").utf8))) as? [String: Any]
    XCTAssertEqual(obj?["kind"] as? String, "Status", r.text)
    XCTAssertEqual(obj?["code"] as? Int, 404)
  }

  /// Dot segments cannot climb out of one cluster into another: each of
  /// these gets 400 or 404 and none reaches default_sample's upstream.
  func checkDotDot() throws {
    let attempts = [
      "/proxy/default_sample/../default_other/x",
      "/proxy/default_sample/%2e%2e/default_other/x",
      "/proxy/default_sample/%2E%2E%2Fdefault_other/x",
      "/proxy/default_sample/./../../x",
      "/proxy/default_sample/..",
    ]
    for a in attempts {
      let r = try world.curl(["-o", "/dev/null", "-w", "%{http_code}", world.hubURL + a], timeout: 15)
      XCTAssertEqual(r.status, 0, "\(a): curl: \(r.stderr)")
      XCTAssertTrue(["400", "404"].contains(r.text), "\(a) got \(r.text)")
    }
    // A control request shows the upstream's log works.
    let ok = try world.curl(["-o", "/dev/null", "-w", "%{http_code}", world.proxy("/bytes/1")], timeout: 15)
    XCTAssertEqual(ok.text, "200")
    XCTAssertEqual(try world.upstreamRequests(), ["/bytes/1"], "only the control request reached the upstream")
  }

  /// KNOWN BUG: with the API server unreachable (connection refused), 20
  /// parallel requests make kopilot-agent abort with "corrupted
  /// double-linked list" (heap corruption) after answering 502. Each request
  /// must get a 502 Status and the agent must stay up. The crash check runs
  /// only with KP_KNOWN_BUGS set; without it a single request is checked.
  func checkUpstreamDown() throws {
    // A port nobody listens on: bind, read it, close.
    let r0 = try runCommand(world.python, ["-c",
      "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"])
    let closedPort = Int(r0.text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    XCTAssertGreaterThan(closedPort, 0)
    let agent = try world.start("agent-down-\(wire)", try Paths.binary("kopilot-agent"), [
      "--connect", "wss://127.0.0.1:\(world.hubPort)/connect?token=\(Tokens.sample)",
      "--apiserver", "https://127.0.0.1:\(closedPort)", "--token-file", world.tokenFile.path,
      "--ca-file", world.certs.ca, "--hub-ca", world.certs.ca, "--wire", wire,
    ])
    try agent.waitFor("connected to the hub")
    // Stop the good agent so every request goes to this one.
    world.processes.first { $0.name == "agent-\(wire)" }?.stop()
    // 20 at once: this once corrupted the agent's heap (a failed upstream
    // dial freed a record the request still pointed at).
    let count = 20
    let urls = (0..<count).map { world.proxy("/api?i=\($0)") }
    let outs = urls.flatMap { _ in ["-o", "/dev/null"] }
    let r = try world.curl(["--parallel", "--parallel-immediate", "-w", "%{http_code}\n"] + outs + urls, timeout: 30)
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    XCTAssertEqual(r.text.split(separator: "\n").filter { $0 == "502" }.count, count, r.text)
    usleep(500_000)
    XCTAssertTrue(agent.process.isRunning, "kopilot-agent died:\n\(agent.log)")
  }

  /// Several requests in one curl run share one connection to the hub.
  func checkKeepAlive() throws {
    let urls = (1...4).map { world.proxy("/bytes/\(1000 * $0)") }
    let r = try world.curl(["-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                            "-w", "%{http_code} %{num_connects}\n"] + urls, timeout: 30)
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    let lines = r.text.split(separator: "\n").map(String.init)
    XCTAssertEqual(lines, ["200 1", "200 0", "200 0", "200 0"], "one new connection, then reuse")
  }
}

final class FramedCarriageTests: CarriageTestCase {
  override var wire: String { "framed" }
  func testBytes1KiB() throws { try checkBytes(1024) }
  func testBytes64MiB() throws { try checkBytes(64 << 20) }
  func testParallel() throws { try checkParallel() }
  func testUpload64KiB() throws { try checkUpload(chunked: false, size: 64 << 10) }
  func testUpload64KiBChunked() throws { try checkUpload(chunked: true, size: 64 << 10) }
  func testUpload16MiB() throws { try checkUpload16MiB(chunked: false) }
  func testUpload16MiBChunked() throws { try checkUpload16MiB(chunked: true) }
  func testUpstreamDown() throws { try checkUpstreamDown() }
  func testStreamingGated() throws { try checkStreamingGated() }
  func testStreamingPaced() throws { try checkStreamingPaced() }
  func testHeaders() throws { try checkHeaders() }
  func testNoAgent503() throws { try checkNoAgent503() }
  func testUnknown404() throws { try checkUnknown404() }
  func testDotDot() throws { try checkDotDot() }
  func testKeepAlive() throws { try checkKeepAlive() }
  func testAccessLog() throws { try checkAccessLog() }
}

final class RawCarriageTests: CarriageTestCase {
  override var wire: String { "raw" }
  func testBytes1KiB() throws { try checkBytes(1024) }
  func testBytes64MiB() throws { try checkBytes(64 << 20) }
  func testParallel() throws { try checkParallel() }
  func testUpload64KiB() throws { try checkUpload(chunked: false, size: 64 << 10) }
  func testUpload64KiBChunked() throws { try checkUpload(chunked: true, size: 64 << 10) }
  func testUpload16MiB() throws { try checkUpload16MiB(chunked: false) }
  func testUpload16MiBChunked() throws { try checkUpload16MiB(chunked: true) }
  func testUpstreamDown() throws { try checkUpstreamDown() }
  func testStreamingGated() throws { try checkStreamingGated() }
  func testStreamingPaced() throws { try checkStreamingPaced() }
  func testHeaders() throws { try checkHeaders() }
  func testNoAgent503() throws { try checkNoAgent503() }
  func testUnknown404() throws { try checkUnknown404() }
  func testDotDot() throws { try checkDotDot() }
  func testKeepAlive() throws { try checkKeepAlive() }
  func testAccessLog() throws { try checkAccessLog() }
}
