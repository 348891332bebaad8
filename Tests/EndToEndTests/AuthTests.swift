import Foundation
import XCTest

/// Callers through the real hub: authentication against tokens.csv, RBAC from
/// rbac.yaml evaluated by the hub on the normalized path, and edits to those
/// files applied without a restart.
final class AuthTests: E2ETestCase {
  static let getOnly = "e2e-get-only-caller-0123456789"
  static let idleOnly = "e2e-idle-only-caller-0123456789"

  override func setUpWithError() throws {
    try super.setUpWithError()
    try startWorld { w in
      try w.startUpstream()
      try w.startHub()
      try w.startAgent(wire: "framed")
    }
  }

  func status(_ url: String, method: String = "GET", auth: String?) throws -> (Int, String) {
    var args = ["-X", method, "-w", "\n%{http_code}"]
    // An empty header value still counts as "the test set Authorization",
    // so the fixture adds no token of its own.
    args += ["-H", auth.map { "Authorization: \($0)" } ?? "Authorization:"]
    let r = try world.curl(args + [url], timeout: 15)
    let lines = r.text.split(separator: "\n", omittingEmptySubsequences: false)
    return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
  }

  /// Adds callers and rules, then waits until the hub has reloaded them.
  func addPolicy() throws {
    let tokens = world.stateDir.appendingPathComponent("tokens.csv")
    var csv = try String(contentsOf: tokens, encoding: .utf8)
    csv += "\(Self.getOnly),reader,reader-uid\n\(Self.idleOnly),idler,idler-uid,\"idlers\"\n"
    try csv.write(to: tokens, atomically: true, encoding: .utf8)
    let rbac = world.stateDir.appendingPathComponent("rbac.yaml")
    var yaml = try String(contentsOf: rbac, encoding: .utf8)
    // The seed README's rule, as written (verb get on /proxy/*), for a User;
    // and one cluster's path for a Group.
    yaml += """

      ---
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRole
      metadata: {name: kubectl}
      rules:
        - nonResourceURLs:
            - /proxy/*
          verbs:
            - get
      ---
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRoleBinding
      metadata: {name: reader}
      roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kubectl}
      subjects:
        - {kind: User, name: reader}
      ---
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRole
      metadata: {name: idle-only}
      rules:
        - nonResourceURLs: ["/proxy/default_idle/*"]
          verbs: ["*"]
      ---
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRoleBinding
      metadata: {name: idlers}
      roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: idle-only}
      subjects:
        - {kind: Group, name: idlers, apiGroup: rbac.authorization.k8s.io}

      """
    try yaml.write(to: rbac, atomically: true, encoding: .utf8)
    let deadline = Date().addingTimeInterval(15)
    while try status(world.proxy("/headers"), auth: "Bearer \(Self.getOnly)").0 != 200 {
      if Date() > deadline { throw E2EError("the hub did not pick up tokens.csv and rbac.yaml") }
      usleep(200_000)
    }
  }

  /// Probes need no credentials; anything unknown is a 404 Status.
  func testHealthEndpoints() throws {
    for path in ["/healthz", "/readyz"] {
      let (code, body) = try status(world.hubURL + path, auth: nil)
      XCTAssertEqual(code, 200, path)
      XCTAssertEqual(body, "ok", path)
    }
    let (code, body) = try status(world.hubURL + "/no/such/thing", auth: nil)
    XCTAssertEqual(code, 404)
    XCTAssertTrue(body.contains("\"kind\":\"Status\""), body)
  }

  func testMissingOrBadCredentialsGet401() throws {
    for auth in [nil, "Bearer", "Bearer  two-spaces", "Basic dXNlcjpwYXNz", "Bearer not-a-known-token-000000"] {
      let (code, body) = try status(world.proxy("/headers"), auth: auth)
      XCTAssertEqual(code, 401, "Authorization: \(auth ?? "<none>") -> \(body)")
      XCTAssertTrue(body.contains("\"kind\":\"Status\""), body)
    }
    XCTAssertEqual(try world.upstreamRequests().count, 0, "nothing unauthenticated reached the member")
  }

  func testRBACByVerbAndByClusterAfterAReload() throws {
    try addPolicy()
    // reader: get anywhere under /proxy/, nothing else.
    XCTAssertEqual(try status(world.proxy("/headers"), auth: "Bearer \(Self.getOnly)").0, 200)
    let (code, body) = try status(world.proxy("/echo"), method: "POST", auth: "Bearer \(Self.getOnly)")
    XCTAssertEqual(code, 403)
    XCTAssertTrue(body.contains(#"User \"reader\" cannot create path \"/proxy/default_sample/echo\""#), body)
    XCTAssertEqual(try status(world.proxy("/x"), method: "DELETE", auth: "Bearer \(Self.getOnly)").0, 403)
    // idler: every verb, but only on default_idle (no agent there: 503).
    XCTAssertEqual(try status(world.proxy("/headers"), auth: "Bearer \(Self.idleOnly)").0, 403)
    XCTAssertEqual(try status(world.proxy("/x", cluster: "default_idle"), auth: "Bearer \(Self.idleOnly)").0, 503)
    // A path that climbs out of default_idle is authorized where it lands.
    XCTAssertEqual(try status(world.hubURL + "/proxy/default_idle/../default_sample/headers",
                              auth: "Bearer \(Self.idleOnly)").0, 403)
  }

  func testEveryRequestOnAKeepAliveConnectionIsAuthorizedOnItsOwnPath() throws {
    try addPolicy()
    // One connection, two requests: the first allowed, the second not.
    let r = try world.curl(["-H", "Authorization: Bearer \(Self.idleOnly)",
                            "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n",
                            world.proxy("/x", cluster: "default_idle"), world.proxy("/headers")], timeout: 20)
    let lines = r.text.split(separator: "\n").map(String.init)
    XCTAssertEqual(lines, ["503 1", "403 0"], "the second request reused the connection and was refused")
  }

  /// /metrics in the Prometheus text format, for callers RBAC lets get it
  /// (the first-start rbac.yaml lets the admins group).
  func testMetrics() throws {
    XCTAssertEqual(try status(world.proxy("/bytes/2048"), auth: "Bearer \(Tokens.caller)").0, 200)
    XCTAssertEqual(try status(world.proxy("/x", cluster: "default_idle"), auth: "Bearer \(Tokens.caller)").0, 503)
    XCTAssertEqual(try status(world.hubURL + "/metrics", auth: nil).0, 401)
    let (code, body) = try status(world.hubURL + "/metrics", auth: "Bearer \(Tokens.caller)")
    XCTAssertEqual(code, 200, body)
    for line in [
      #"kopilot_hub_agent_sessions{cluster="default_sample"} 2"#,
      #"kopilot_hub_requests_total{code="200"} 1"#,
      #"kopilot_hub_requests_total{code="503"} 1"#,
      #"kopilot_hub_requests_in_flight{cluster="default_sample"} 0"#,
      #"kopilot_hub_authorization_decisions_total{decision="unauthenticated"} 1"#,
      "kopilot_hub_request_duration_seconds_count 2",
    ] {
      XCTAssertTrue(body.contains(line), "\(line) missing from:\n\(body)")
    }
    let down = body.split(separator: "\n").first { $0.hasPrefix(#"kopilot_hub_bytes_total{cluster="default_sample",direction="down"}"#) }
    XCTAssertGreaterThan(Double(down?.split(separator: " ").last ?? "") ?? 0, 2048, String(down ?? "no bytes line"))
  }

  /// The manifest that installs an agent: only for a cluster's token, only
  /// for providers the hub knows, pointing at the hub, the token in the
  /// Secret beside the URL (not in it).
  func testAgentManifest() throws {
    let base = world.hubURL + "/kopilot-agent.yaml?token=\(Tokens.sample)"
    let (code, yaml) = try status(base + "&provider=kind", auth: nil)
    XCTAssertEqual(code, 200, yaml)
    for want in ["kind: Namespace", "kind: ServiceAccount", "kind: ClusterRoleBinding", "kind: DaemonSet",
                 "kopilot-system", "connect-url: wss://127.0.0.1:\(world.hubPort)/connect\n",
                 "token: \(Tokens.sample)\n", "name: HUB_TOKEN"] {
      XCTAssertTrue(yaml.contains(want), "\(want) missing from the manifest:\n\(yaml)")
    }
    // Valid Kubernetes objects, by the schemas kubernetes-validate carries.
    if let validate = Paths.tool("kubernetes-validate") {
      for provider in ["", "minikube", "kind"] {
        let (c, y) = try status(base + "&provider=\(provider)", auth: nil)
        XCTAssertEqual(c, 200)
        let file = world.dir.appendingPathComponent("agent-\(provider).yaml")
        try y.write(to: file, atomically: true, encoding: .utf8)
        let v = try runCommand(validate, ["--strict", file.path], timeout: 120)
        XCTAssertEqual(v.status, 0, "provider \"\(provider)\": \(v.text)\(v.stderr)")
      }
    } else if ProcessInfo.processInfo.environment["CI"] != nil {
      XCTFail("kubernetes-validate is missing: Tests/setup-debian.sh installs it")
    }
    let (bad, body) = try status(base + "&provider=no-such", auth: nil)
    XCTAssertEqual(bad, 400)
    XCTAssertTrue(body.contains("minikube") && body.contains("kind"), "the known providers are named: \(body)")
    XCTAssertEqual(try status(world.hubURL + "/kopilot-agent.yaml?token=wrong-token-0123456789", auth: nil).0, 401)
  }

  /// The admin CLI against the running hub's state folder: list shows live
  /// sessions; a cluster added is served at once with the token printed.
  func testClustersCommand() throws {
    let hubBin = try Paths.binary("kopilot-hub")
    // The hub writes its session counts at most every 200 ms: poll.
    var list = try runCommand(hubBin, ["clusters", "list", "--state-dir", world.stateDir.path])
    var sample = ""
    for _ in 0..<50 {
      XCTAssertEqual(list.status, 0, list.stderr)
      sample = list.text.split(separator: "\n").first { $0.contains("sample") }.map(String.init) ?? ""
      if sample.hasSuffix("2") { break }
      Thread.sleep(forTimeInterval: 0.1)
      list = try runCommand(hubBin, ["clusters", "list", "--state-dir", world.stateDir.path])
    }
    XCTAssertTrue(sample.hasSuffix("2"), "two live sessions of default/sample: \(list.text)")
    let add = try runCommand(hubBin, ["clusters", "add", "team-a/prod", "--state-dir", world.stateDir.path])
    XCTAssertEqual(add.status, 0, add.stderr)
    let token = add.text.trimmingCharacters(in: .whitespacesAndNewlines)
    XCTAssertGreaterThanOrEqual(token.count, 22, "at least 128 bits")
    XCTAssertTrue(token.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }, "URL-safe: \(token)")
    let agent = try world.start("agent-team-a", try Paths.binary("kopilot-agent"), [
      "--connect", "wss://127.0.0.1:\(world.hubPort)/connect?token=\(token)", "--hub-ca", world.certs.ca,
      "--apiserver", world.upstreamURL, "--token-file", world.tokenFile.path, "--ca-file", world.certs.ca,
      "--sessions", "1",
    ])
    try agent.waitFor("connected to the hub", timeout: 20)
    XCTAssertEqual(try status(world.proxy("/headers", cluster: "team-a_prod"), auth: "Bearer \(Tokens.caller)").0, 200)
  }

  /// A cluster removed from clusters.yaml loses its agent's sessions.
  func testRemovingAClusterClosesItsSessions() throws {
    let file = world.stateDir.appendingPathComponent("clusters.yaml")
    let text = try String(contentsOf: file, encoding: .utf8)
    let keep = text.components(separatedBy: "---\n").filter { !$0.contains("name: sample") }.joined(separator: "---\n")
    try keep.write(to: file, atomically: true, encoding: .utf8)
    try world.hub.waitFor("agent session down: cluster=default_sample", timeout: 15)
    XCTAssertEqual(try status(world.proxy("/headers"), auth: "Bearer \(Tokens.caller)").0, 404)
  }
}
