import Foundation
import XCTest

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// Our hub with an agent built the original design's way
/// (perf/baseline/agent: gorilla/websocket, then a yamux client session on
/// the raw connection, http.Serve on the session): existing agents must keep
/// working against the new hub.
final class GoAgentInteropTests: E2ETestCase {

  override func setUpWithError() throws {
    try super.setUpWithError()
    let agent = try GoBuild.binary("perf/baseline/agent", name: "goagent")
    try startWorld { w in
      try w.startUpstream()
      try w.startHub()
      let p = try w.start("goagent", agent, [
        "-connect", "wss://127.0.0.1:\(w.hubPort)/connect?token=\(Tokens.sample)",
        "-hub-ca", w.certs.ca, "-apiserver", w.upstreamURL, "-ca-file", w.certs.ca,
        "-token-file", w.tokenFile.path,
      ])
      try p.waitFor("connected to the hub")
      try w.hub.waitFor("agent session up: cluster=default_sample")
    }
  }

  /// Debian's yamux is a 2019 snapshot whose Stream.Read returns EOF early
  /// after a local FIN; a truncated body here (length short of n) points
  /// there rather than at the hub.
  private func checkBytes(_ n: Int) throws {
    let out = world.dir.appendingPathComponent("bytes-\(n)").path
    let r = try world.curl(["-o", out, "-w", "%{http_code}", world.proxy("/bytes/\(n)")], timeout: 60)
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    XCTAssertEqual(r.text, "200")
    let size = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? Int) ?? -1
    XCTAssertEqual(size, n, "body length (short: see the yamux snapshot note)")
    XCTAssertEqual(try world.sha256(files: [out]), try world.expectedDigests([n]), "body SHA-256")
  }

  func testBytes1KiB() throws { try checkBytes(1024) }
  func testBytes64MiB() throws { try checkBytes(64 << 20) }

  /// 200 at once through the original design's agent: the same hub that
  /// gives some 502s with kopilot-agent at this load (see
  /// CarriageTestCase.checkParallel) must pass here.
  func testParallel200() throws { try world.checkParallel(count: 200) }

  /// The Go agent's reverse proxy sets the token; the hub must still have
  /// dropped the caller's.
  func testHeaders() throws {
    let r = try world.curl(["-H", "Authorization: Bearer \(Tokens.caller)", world.proxy("/headers")], timeout: 20)
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    XCTAssertFalse(r.text.contains(Tokens.caller), r.text)
    XCTAssertTrue(r.text.contains("Bearer \(Tokens.apiserver)"), r.text)
    // The original agent's reverse proxy passes the hub's identity and
    // audit fields through with its own token, as ours does: both kinds of
    // agent impersonate the caller.
    let pairs = ((try? JSONSerialization.jsonObject(with: Data(r.text.utf8))) as? [[String]] ?? []).map { ($0[0].lowercased(), $0[1]) }
    // (Go writes header fields sorted by name, so compare them sorted.)
    XCTAssertEqual(pairs.filter { $0.0.hasPrefix("impersonate-") }.map { "\($0.0): \($0.1)" }.sorted(),
                   ["impersonate-group: kopilot:callers", "impersonate-group: kopilot:kopilot:admins",
                    "impersonate-uid: e2e-caller-uid", "impersonate-user: kopilot:e2e-caller"], r.text)
    XCTAssertEqual(pairs.filter { $0.0 == "audit-id" }.count, 1, r.text)
  }
}
