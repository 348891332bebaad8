import Foundation
import KopilotIO
import XCTest

/// The agent's token travels as `Authorization: Bearer` on the /connect
/// upgrade, never in the URL (L7 proxies and access logs keep URLs), and
/// nothing logs it.
final class AgentTokenTests: E2ETestCase {
  final class Seen: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [HubRequest] = []
    func add(_ r: HubRequest) { lock.lock(); list.append(r); lock.unlock() }
    var all: [HubRequest] { lock.lock(); defer { lock.unlock() }; return list }
  }

  /// An in-process hub records each /connect head; agents dial it with the
  /// token in the old URL form, as `hubToken`, and as both.
  func testTheAgentSendsItsTokenInAHeader() throws {
    try startWorld { w in try w.startUpstream() }
    let certs = world.certs
    let loop = try Loop()
    let seen = Seen()
    let token = Tokens.sample
    var cfg = Hub.Config(certFile: certs.cert, keyFile: certs.key)
    cfg.bindHost = "127.0.0.1"
    cfg.port = 0
    let hub = try Hub(loop: loop, config: cfg) { r in
      guard r.path == "/connect" else { return .status(404, "NotFound", "") }
      seen.add(r)
      return r.header("Authorization") == "Bearer \(token)"
        ? .acceptAgent(cluster: "default_sample") : .status(401, "Unauthorized", "no")
    }
    defer { hub.stop() }
    let base = "wss://127.0.0.1:\(hub.port)/connect"
    let rows: [(url: String, hubToken: String?, target: String)] = [
      ("\(base)?token=\(token)", nil, "/connect"),        // the old form: moved to the header
      (base, token, "/connect"),                          // --hub-token-file / HUB_TOKEN
      ("\(base)?x=1&token=\(token)&y=2", nil, "/connect?x=1&y=2"),
      ("\(base)?token=\(token)", token, "/connect"),
    ]
    for row in rows {
      var ac = AgentSession.Config(hubURL: URL(string: row.url)!, apiserver: URL(string: world.upstreamURL)!)
      ac.hubToken = row.hubToken
      ac.hubCAFile = certs.ca
      ac.apiserverCAFile = certs.ca
      let agent = try AgentSession(loop: loop, config: ac)
      let up = DispatchSemaphore(value: 0)
      agent.onState = { isUp, _ in if isUp { up.signal() } }
      agent.connect()
      XCTAssertEqual(up.wait(timeout: .now() + 10), .success, "\(row.url): the session did not come up")
      agent.close()
      let r = try XCTUnwrap(seen.all.last)
      XCTAssertEqual(r.target, row.target, row.url)
      XCTAssertFalse(r.target.contains(token), "the token is in the URL: \(r.target)")
      XCTAssertEqual(r.header("Authorization"), "Bearer \(token)", row.url)
    }
    XCTAssertEqual(seen.all.count, rows.count)

    // A token that could end the header line is refused before dialing.
    var bad = AgentSession.Config(hubURL: URL(string: base)!, apiserver: URL(string: world.upstreamURL)!)
    bad.hubToken = "tok\r\nX-Evil: 1"
    XCTAssertThrowsError(try AgentSession(loop: loop, config: bad))
  }

  /// The real binaries: the agent reads its token from --hub-token-file and
  /// dials a URL without one; neither the hub's log (access log on) nor the
  /// agent's holds the token, even after a refused try.
  func testRealAgentWithATokenFileLogsNoToken() throws {
    try startWorld { w in
      try w.startUpstream()
      try w.startHub()
    }
    let file = world.dir.appendingPathComponent("hub-token")
    try (Tokens.sample + "\n").write(to: file, atomically: true, encoding: .utf8)
    let wrongFile = world.dir.appendingPathComponent("wrong-token")
    let wrong = "wrong-agent-token-0123456789abcdef"
    try wrong.write(to: wrongFile, atomically: true, encoding: .utf8)
    let common = ["--hub-ca", world.certs.ca, "--apiserver", world.upstreamURL, "--token-file", world.tokenFile.path,
                  "--ca-file", world.certs.ca, "--sessions", "1"]
    let refused = try world.start("agent-wrong", try Paths.binary("kopilot-agent"), [
      "--connect", "wss://127.0.0.1:\(world.hubPort)/connect", "--hub-token-file", wrongFile.path,
    ] + common)
    try refused.waitFor("cannot reach the hub")
    try world.hub.waitFor("agent refused: unknown token")
    let agent = try world.start("agent", try Paths.binary("kopilot-agent"), [
      "--connect", "wss://127.0.0.1:\(world.hubPort)/connect", "--hub-token-file", file.path,
    ] + common)
    try agent.waitFor("connected to the hub")
    try world.hub.waitFor("agent session up: cluster=default_sample")
    let r = try world.curl(["-o", "/dev/null", "-w", "%{http_code}", world.proxy("/headers")])
    XCTAssertEqual(r.text, "200", r.stderr)
    for p in world.processes {
      XCTAssertFalse(p.log.contains(Tokens.sample), "\(p.name)'s log holds the agent token:\n\(p.log)")
      XCTAssertFalse(p.log.contains(wrong), "\(p.name)'s log holds the refused token:\n\(p.log)")
    }

    // Two different tokens, or none at all: refused at start, with a reason.
    let agentBin = try Paths.binary("kopilot-agent")
    var env = ProcessInfo.processInfo.environment
    env["HUB_TOKEN"] = nil
    env["HUB_TOKEN_FILE"] = nil
    env["CONNECT_URL"] = nil
    let none = try runCommand(agentBin, ["--connect", "wss://127.0.0.1:1/connect"] + common, timeout: 20, environment: env)
    XCTAssertNotEqual(none.status, 0)
    XCTAssertTrue(none.stderr.contains("--hub-token-file"), none.stderr)
    let both = try runCommand(agentBin, ["--connect", "wss://127.0.0.1:1/connect?token=\(Tokens.idle)",
                                         "--hub-token-file", file.path] + common, timeout: 20, environment: env)
    XCTAssertNotEqual(both.status, 0)
    XCTAssertTrue(both.stderr.contains("two different agent tokens"), both.stderr)
    XCTAssertFalse(both.stderr.contains(Tokens.idle) || both.stderr.contains(Tokens.sample), both.stderr)
    let help = try runCommand(agentBin, ["--help"], timeout: 20, environment: env)
    XCTAssertTrue(help.text.contains("--hub-token-file"), help.text)
  }
}
