import Foundation
import XCTest

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// Our hub with an agent built the original design's way
/// (Tests/Interop/goagent: gorilla/websocket, then a yamux client session on
/// the raw connection, http.Serve on the session): existing agents must keep
/// working against the new hub.
final class GoAgentInteropTests: XCTestCase {
  private static var agentPath: String?
  private static var buildError: String?
  var world: E2EWorld!

  /// Builds the Go agent once per test process, offline, in GOPATH mode
  /// against the Debian packages of gorilla/websocket and hashicorp/yamux.
  private func goAgent() throws -> String {
    if let p = Self.agentPath { return p }
    if let e = Self.buildError { throw XCTSkip(e) }
    guard let go = Paths.tool("go") else {
      Self.buildError = "go is not installed: the Go agent interop test needs golang-go, "
        + "golang-github-hashicorp-yamux-dev and golang-github-gorilla-websocket-dev"
      throw XCTSkip(Self.buildError!)
    }
    let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("kp-e2e-goagent-\(getpid())")
    try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    let out = tmp.appendingPathComponent("goagent").path
    var env = ProcessInfo.processInfo.environment
    env["GO111MODULE"] = "off"
    env["GOPATH"] = tmp.path + ":/usr/share/gocode"
    env["GOFLAGS"] = ""
    env["GOPROXY"] = "off"
    env["GOCACHE"] = tmp.appendingPathComponent("cache").path
    let r = try runCommand(go, ["build", "-o", out, "./Tests/Interop/goagent"], timeout: 120, in: Paths.root,
                           environment: env)
    guard r.status == 0 else {
      // Go is here but the build failed: that is a failure, not a skip.
      XCTFail("building Tests/Interop/goagent failed: \(r.stderr)")
      Self.buildError = "the Go agent did not build"
      throw XCTSkip(Self.buildError!)
    }
    Self.agentPath = out
    return out
  }

  override func setUpWithError() throws {
    try super.setUpWithError()
    let agent = try goAgent()
    world = try E2EWorld()
    do {
      try world.startUpstream()
      try world.startHub()
      let p = try world.start("goagent", agent, [
        "-connect", "wss://127.0.0.1:\(world.hubPort)/connect?token=\(Tokens.sample)",
        "-hub-ca", world.certs.ca, "-apiserver", world.upstreamURL, "-ca-file", world.certs.ca,
        "-token-file", world.tokenFile.path,
      ])
      try p.waitFor("connected to the hub")
      try world.hub.waitFor("agent session up: cluster=default_sample")
    } catch {
      world.tearDown()
      throw error
    }
  }

  override func tearDown() {
    if let run = testRun, run.failureCount + run.unexpectedExceptionCount > 0 {
      print("logs of \(name):\n\(world?.logs ?? "")")
    }
    world?.tearDown()
    world = nil
    super.tearDown()
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
  }
}
