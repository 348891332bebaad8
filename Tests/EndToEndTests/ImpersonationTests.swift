import Foundation
import XCTest

/// The member sees the real caller: the real kubectl through hub -> agent ->
/// the fake member API server with a policy (Tests/FakeAPIServer/authz.go),
/// which lets the agent's ServiceAccount do nothing but impersonate (the
/// rules of the served manifest's kopilot-agent-impersonate role), and
/// grants the mapped caller `kopilot:e2e-caller` pods in `default` only.
/// The oracle is the member's own view: `kubectl auth whoami`, its 403s,
/// `kubectl auth can-i`, and its audit log (user, impersonatedUser,
/// auditID per request).
class ImpersonationTestCase: KubectlTestCase {
  var policy: URL { world.dir.appendingPathComponent("member-policy.json") }
  var memberAudit: URL { world.dir.appendingPathComponent("member-audit.jsonl") }
  static let agentUser = "system:serviceaccount:kopilot:kopilot-agent"

  override var fakeArgs: [String] {
    // Written here: the fake reads it when it starts, right after.
    try? Data("""
      {"rules": [
        {"users": ["\(Self.agentUser)"], "verbs": ["impersonate"], "apiGroups": [""], "resources": ["users", "groups"]},
        {"users": ["\(Self.agentUser)"], "verbs": ["impersonate"], "apiGroups": ["authentication.k8s.io"], "resources": ["*"]},
        {"groups": ["system:authenticated"], "verbs": ["get"],
         "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/version", "/openapi/*"]},
        {"users": ["kopilot:e2e-caller"], "verbs": ["get", "list", "watch"], "apiGroups": [""],
         "resources": ["pods"], "namespaces": ["default"]},
        {"groups": ["kopilot:callers"], "verbs": ["get", "list"], "apiGroups": [""], "resources": ["namespaces"]}
      ]}
      """.utf8).write(to: policy)
    return ["--policy", policy.path, "--audit-log", memberAudit.path]
  }
  override var memberAuditLog: URL { memberAudit }

  /// On the host the caller is also in system:masters, which must never
  /// reach a member.
  override var callerGroups: [String] { ["kopilot:admins", "system:masters"] }

  /// The member's audit events so far.
  func memberEvents() -> [[String: Any]] {
    let data = (try? Data(contentsOf: memberAudit)) ?? Data()
    return data.split(separator: UInt8(ascii: "\n")).compactMap {
      (try? JSONSerialization.jsonObject(with: Data($0))) as? [String: Any]
    }
  }

  /// `kubectl auth whoami -o json` (plus `extra` flags): the user the
  /// member saw.
  func whoami(_ extra: [String] = []) throws -> (user: String, groups: [String]) {
    let r = try run(["auth", "whoami", "-o", "json"] + extra)
    XCTAssertEqual(r.status, 0, "whoami: \(r.stderr)")
    let o = (try? JSONSerialization.jsonObject(with: r.stdout)) as? [String: Any]
    let info = (o?["status"] as? [String: Any])?["userInfo"] as? [String: Any]
    return (info?["username"] as? String ?? "", info?["groups"] as? [String] ?? [])
  }

  func checkWhoAmIShowsTheMappedCaller() throws {
    let (user, groups) = try whoami()
    XCTAssertEqual(user, "kopilot:e2e-caller")
    XCTAssertEqual(groups, ["kopilot:callers", "kopilot:kopilot:admins", "system:authenticated"])
    XCTAssertFalse(groups.contains("system:masters"), "a host system: group reached the member")
  }

  func checkTheMembersRBACDecides() throws {
    let ok = try run(["get", "pods", "-n", "default"])
    XCTAssertEqual(ok.status, 0, "allowed by the member: \(ok.stderr)")
    XCTAssertTrue(ok.text.contains("Running"), ok.text)
    let denied = try run(["get", "pods", "-n", "kube-system"])
    XCTAssertNotEqual(denied.status, 0)
    XCTAssertTrue(denied.stderr.contains(
      #"pods is forbidden: User "kopilot:e2e-caller" cannot list resource "pods" in API group "" in the namespace "kube-system""#),
      "the member's 403 names the mapped user: \(denied.stderr)")
    let delete = try run(["delete", "pod", "-n", "default", "web-1", "--wait=false"])
    XCTAssertNotEqual(delete.status, 0)
    XCTAssertTrue(delete.stderr.contains("Forbidden") || delete.stderr.contains("forbidden"), delete.stderr)
  }

  func checkCanI() throws {
    let yes = try run(["auth", "can-i", "list", "pods", "-n", "default"])
    XCTAssertEqual(yes.text.trimmingCharacters(in: .whitespacesAndNewlines), "yes", yes.stderr)
    let no = try run(["auth", "can-i", "delete", "pods", "-n", "default"])
    XCTAssertEqual(no.text.trimmingCharacters(in: .whitespacesAndNewlines), "no", no.stderr)
    XCTAssertNotEqual(no.status, 0)
  }

  /// kubectl's --as/--as-group reach the hub as Impersonate-* fields; the
  /// hub drops them, so the member still sees only the authenticated
  /// caller, and its audit log names no one else.
  func checkTheCallersOwnImpersonationNeverArrives() throws {
    let (user, groups) = try whoami(["--as", "system:admin", "--as-group", "system:masters", "--as-uid", "0"])
    XCTAssertEqual(user, "kopilot:e2e-caller")
    XCTAssertFalse(groups.contains("system:masters"))
    let denied = try run(["--as", "system:admin", "get", "pods", "-n", "kube-system"])
    XCTAssertNotEqual(denied.status, 0, "an admin by --as: \(denied.text)")
    for e in memberEvents() {
      XCTAssertEqual((e["user"] as? [String: Any])?["username"] as? String, Self.agentUser, "\(e)")
      let imp = (e["impersonatedUser"] as? [String: Any])?["username"] as? String
      XCTAssertEqual(imp, "kopilot:e2e-caller", "every request ran as the mapped caller: \(e)")
    }
  }

  /// The hub's audit ID is the member's (kube-apiserver adopts Audit-ID)
  /// and comes back to the caller as Audit-Id.
  func checkOneAuditIDEndToEnd() throws {
    let r = try runCommand("/usr/bin/curl", [
      "-sS", "-D", "-", "-o", "/dev/null", "--cacert", world.certs.ca, "-H", "Authorization: Bearer \(Tokens.caller)",
      "-H", "Audit-ID: 00000000-0000-4000-8000-000000000001",
      "\(world.hubURL)/proxy/default_sample/api/v1/namespaces/default/pods",
    ], timeout: 20)
    let id = r.text.split(separator: "\r\n").first { $0.lowercased().hasPrefix("audit-id:") }
      .map { String($0.dropFirst("audit-id:".count)).trimmingCharacters(in: .whitespaces) } ?? ""
    XCTAssertNotNil(UUID(uuidString: id), "Audit-Id in: \(r.text)")
    XCTAssertNotEqual(id, "00000000-0000-4000-8000-000000000001", "the caller's own audit ID was taken")
    let event = memberEvents().first { $0["auditID"] as? String == id }
    XCTAssertNotNil(event, "the member logged no event under \(id)")
    XCTAssertEqual((event?["impersonatedUser"] as? [String: Any])?["username"] as? String, "kopilot:e2e-caller")
  }
}

final class Impersonation127Tests: ImpersonationTestCase {
  override var kubectlName: String { "kubectl.1.27" }
  func testWhoAmI() throws { try checkWhoAmIShowsTheMappedCaller() }
  func testMemberRBAC() throws { try checkTheMembersRBACDecides() }
  func testCanI() throws { try checkCanI() }
  func testCallersOwnImpersonation() throws { try checkTheCallersOwnImpersonationNeverArrives() }
}

final class Impersonation133Tests: ImpersonationTestCase {
  override var kubectlName: String { "kubectl.1.33" }
  func testWhoAmI() throws { try checkWhoAmIShowsTheMappedCaller() }
  func testMemberRBAC() throws { try checkTheMembersRBACDecides() }
  func testCanI() throws { try checkCanI() }
  func testCallersOwnImpersonation() throws { try checkTheCallersOwnImpersonationNeverArrives() }
  func testAuditID() throws { try checkOneAuditIDEndToEnd() }
}

/// The original Go agent's reverse proxy, with the member's impersonating
/// ServiceAccount: the same answers as ours.
final class ImpersonationGoAgentTests: ImpersonationTestCase {
  override var kubectlName: String { "kubectl.1.33" }
  override var useGoAgent: Bool { true }
  func testWhoAmI() throws { try checkWhoAmIShowsTheMappedCaller() }
  func testMemberRBAC() throws { try checkTheMembersRBACDecides() }
  func testCallersOwnImpersonation() throws { try checkTheCallersOwnImpersonationNeverArrives() }
  func testAuditID() throws { try checkOneAuditIDEndToEnd() }
}

/// `--identity passthrough`: the caller's own names; system: groups still
/// dropped.
final class PassthroughIdentityTests: ImpersonationTestCase {
  override var kubectlName: String { "kubectl.1.33" }
  override var hubArgs: [String] { super.hubArgs + ["--identity", "passthrough"] }
  func testWhoAmI() throws {
    let (user, groups) = try whoami()
    XCTAssertEqual(user, "e2e-caller")
    XCTAssertEqual(groups, ["kopilot:callers", "kopilot:admins", "system:authenticated"])
  }
}

/// `--identity agent`: the original's behaviour, every caller is the agent.
final class AgentIdentityTests: ImpersonationTestCase {
  override var kubectlName: String { "kubectl.1.33" }
  override var hubArgs: [String] { super.hubArgs + ["--identity", "agent"] }
  func testWhoAmI() throws {
    let (user, groups) = try whoami()
    XCTAssertEqual(user, Self.agentUser)
    XCTAssertTrue(groups.contains("system:serviceaccounts"), "\(groups)")
  }
}
