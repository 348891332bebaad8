import Foundation
import XCTest

/// exec, attach and port-forward are upgrades, authorized as `create` (as
/// kube-apiserver authorizes pods/exec, pods/attach and pods/portforward):
/// a caller whose ClusterRole grants only `get` on /proxy/* reads but cannot
/// open any of them, neither with kubectl 1.27 (SPDY, POST) nor with 1.33
/// (WebSocket, GET, falling back to SPDY), and the member never sees the
/// attempt; a caller with get and create can.
class UpgradeRBACTestCase: KubectlTestCase {
  static let readerToken = "e2e-upgrade-reader-0123456789abcdef"
  static let operatorToken = "e2e-upgrade-operator-0123456789abcdef"

  /// Adds the two callers and their roles, waits for the hub to load them,
  /// and writes a kubeconfig for each.
  func addCallers() throws {
    let tokens = world.stateDir.appendingPathComponent("tokens.csv")
    var csv = try String(contentsOf: tokens, encoding: .utf8)
    csv += "\(Self.readerToken),reader,reader-uid\n\(Self.operatorToken),operator,operator-uid\n"
    try csv.write(to: tokens, atomically: true, encoding: .utf8)
    let rbac = world.stateDir.appendingPathComponent("rbac.yaml")
    var yaml = try String(contentsOf: rbac, encoding: .utf8)
    yaml += """

      ---
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRole
      metadata: {name: proxy-read}
      rules:
        - nonResourceURLs: ["/proxy/*"]
          verbs: ["get"]
      ---
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRoleBinding
      metadata: {name: reader}
      roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: proxy-read}
      subjects:
        - {kind: User, name: reader}
      ---
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRole
      metadata: {name: proxy-exec}
      rules:
        - nonResourceURLs: ["/proxy/*"]
          verbs: ["get", "create"]
      ---
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRoleBinding
      metadata: {name: operator}
      roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: proxy-exec}
      subjects:
        - {kind: User, name: operator}

      """
    try yaml.write(to: rbac, atomically: true, encoding: .utf8)
    for (name, token) in [("reader", Self.readerToken), ("operator", Self.operatorToken)] {
      try """
        apiVersion: v1
        kind: Config
        clusters: [{name: member, cluster: {server: "\(world.hubURL)/proxy/default_sample", certificate-authority: "\(world.certs.ca)"}}]
        users: [{name: \(name), user: {token: \(token)}}]
        contexts: [{name: member, context: {cluster: member, user: \(name)}}]
        current-context: member
        """.write(to: config(name), atomically: true, encoding: .utf8)
    }
    // Both files are reloaded within a second: wait until the operator can
    // create (the last thing the edit grants).
    let deadline = Date().addingTimeInterval(15)
    while true {
      let r = try world.curl(["-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                              "-H", "Authorization: Bearer \(Self.operatorToken)", world.proxy("/api/v1/namespaces/default/configmaps")],
                             timeout: 10)
      if r.text != "401" && r.text != "403" { break }
      if Date() > deadline { throw E2EError("the hub did not pick up tokens.csv and rbac.yaml") }
      usleep(200_000)
    }
  }

  func config(_ user: String) -> URL { world.dir.appendingPathComponent("\(user).kubeconfig") }

  func run(as user: String, _ args: [String], timeout: TimeInterval = 30) throws -> CommandResult {
    let cache = world.dir.appendingPathComponent("cache-\(user)").path
    return try runCommand(kubectl, ["--kubeconfig", config(user).path, "--cache-dir", cache] + args, timeout: timeout)
  }

  /// What the fake member logged of connect subresources (its -v log has a
  /// line per request: "METHOD /path?query ...").
  var memberUpgrades: [String] {
    let log = world.processes.first { $0.name == "fakeapi" }?.log ?? ""
    return log.split(separator: "\n").map(String.init).filter { l in
      ["/exec", "/attach", "/portforward"].contains { l.contains("/pods/web-0\($0)") }
    }
  }

  func checkGetOnlyCannotUpgrade() throws {
    try addCallers()
    // Reading works: the role is not simply broken.
    let get = try run(as: "reader", ["get", "pod", "web-0", "-o", "name"])
    XCTAssertEqual(get.status, 0, get.stderr)
    XCTAssertEqual(get.text, "pod/web-0\n")

    let exec = try run(as: "reader", ["exec", "web-0", "--", "echo", "pwned"])
    XCTAssertNotEqual(exec.status, 0, "exec ran for a get-only caller: \(exec.text)")
    XCTAssertFalse(exec.text.contains("pwned"), exec.text)
    XCTAssertTrue(exec.stderr.lowercased().contains("forbidden"), exec.stderr)

    let attach = try run(as: "reader", ["attach", "web-0"])
    XCTAssertNotEqual(attach.status, 0, "attach worked for a get-only caller: \(attach.text)")
    XCTAssertFalse(attach.text.contains("attached to"), attach.text)

    // port-forward dials the member before it listens: refused, it exits.
    let forward = try run(as: "reader", ["port-forward", "pod/web-0", "0:80"])
    XCTAssertNotEqual(forward.status, 0, "port-forward worked for a get-only caller: \(forward.text)")

    XCTAssertEqual(memberUpgrades, [], "the member saw an upgrade the hub should have refused")
    let refusals = world.hub.log.split(separator: "\n").filter { $0.contains("forbidden") && $0.contains("user=reader") }
    XCTAssertFalse(refusals.isEmpty, "the hub logged no refusal")

    // get and create: all three work.
    let ok = try run(as: "operator", ["exec", "web-0", "--", "echo", "hello"])
    XCTAssertEqual(ok.status, 0, ok.stderr)
    XCTAssertEqual(ok.text, "hello\n")
    let attached = try run(as: "operator", ["attach", "web-0"])
    XCTAssertEqual(attached.status, 0, attached.stderr)
    XCTAssertTrue(attached.text.contains("attached to default/web-0"), attached.text)
    let saved = kubeconfig
    try FileManager.default.removeItem(at: saved)
    try FileManager.default.copyItem(at: config("operator"), to: saved)
    try checkPortForward()
    let seen = memberUpgrades
    for sub in ["/exec", "/attach", "/portforward"] {
      XCTAssertTrue(seen.contains { $0.contains(sub) }, "the member saw no \(sub) from the operator: \(seen)")
    }
  }
}

final class UpgradeRBAC127Tests: UpgradeRBACTestCase {
  override var kubectlName: String { "kubectl.1.27" }
  func testGetOnlyCannotExecAttachOrPortForward() throws { try checkGetOnlyCannotUpgrade() }
}

final class UpgradeRBAC133Tests: UpgradeRBACTestCase {
  override var kubectlName: String { "kubectl.1.33" }
  func testGetOnlyCannotExecAttachOrPortForward() throws { try checkGetOnlyCannotUpgrade() }
}
