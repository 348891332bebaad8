import KopilotIO
import XCTest
@testable import KopilotHub

final class ReloadTests: XCTestCase {
  let poll: TimeInterval = 0.02

  func cluster(_ name: String, _ token: String, ns: String = "default") -> String {
    "apiVersion: kopilot.smartx.com/v1alpha1\nkind: Cluster\nmetadata: {name: \(name), namespace: \(ns)}\ntoken: \(token)\n"
  }

  func testFileWatcherSeesSameSizeRewrite() throws {
    let dir = try makeTempDir()
    let path = dir + "/f"
    try write("aaaa", to: path)
    let seen = Box<[String?]>([])
    let (fp, _) = FileWatcher.read(path)
    let w = FileWatcher(path: path, interval: 60, initial: fp) { d in
      seen.value.append(d.map { String(decoding: $0, as: UTF8.self) })
    }
    XCTAssertFalse(w.poll(), "the content it started with is no change")
    // Same size, and quite possibly the same mtime second: only the hash differs.
    let h = FileHandle(forWritingAtPath: path)!
    h.write(Data("bbbb".utf8))
    try h.close()
    XCTAssertTrue(w.poll())
    XCTAssertFalse(w.poll())
    try FileManager.default.removeItem(atPath: path)
    XCTAssertTrue(w.poll())
    XCTAssertEqual(seen.value, ["bbbb", nil])
  }

  func testRegistryReloadsAndReportsChanges() throws {
    let dir = try makeTempDir()
    let path = dir + "/clusters.yaml"
    try write(cluster("a", "token-a-0123456789") + "---\n" + cluster("b", "token-b-0123456789"), to: path)
    let reg = try EmbeddedClusterRegistry(path: path, pollInterval: poll)
    defer { reg.stop() }
    let changes = Box<[ClusterChange]>([])
    reg.onChange { changes.value += $0 }
    XCTAssertEqual(reg.cluster(forAgentToken: "token-a-0123456789")?.id, "default_a")

    // b gets a new token, a goes, c arrives.
    try write(cluster("b", "token-b-new-0123456") + "---\n" + cluster("c", "token-c-0123456789"), to: path)
    XCTAssertTrue(waitUntil { reg.clusters().map(\.id) == ["default_b", "default_c"] })
    XCTAssertTrue(waitUntil { changes.value.count == 3 })
    XCTAssertEqual(changes.value, [
      ClusterChange(kind: .removed, clusterID: "default_a"),
      ClusterChange(kind: .tokenChanged, clusterID: "default_b"),
      ClusterChange(kind: .added, clusterID: "default_c"),
    ])
    XCTAssertNil(reg.cluster(forAgentToken: "token-a-0123456789"))
    XCTAssertNil(reg.cluster(forAgentToken: "token-b-0123456789"))
    XCTAssertEqual(reg.cluster(forAgentToken: "token-b-new-0123456")?.id, "default_b")

    // A broken edit: the last good state stays, the error is kept.
    try write(cluster("d", "short"), to: path)
    XCTAssertTrue(waitUntil { reg.lastReloadError != nil })
    XCTAssertTrue("\(reg.lastReloadError!)".contains("at least 16"))
    XCTAssertEqual(reg.clusters().map(\.id), ["default_b", "default_c"])
    // A deleted file too.
    try FileManager.default.removeItem(atPath: path)
    usleep(100_000)
    XCTAssertEqual(reg.clusters().map(\.id), ["default_b", "default_c"])
    // The next good edit applies and clears the error.
    try write(cluster("d", "token-d-0123456789"), to: path)
    XCTAssertTrue(waitUntil { reg.clusters().map(\.id) == ["default_d"] })
    XCTAssertNil(reg.lastReloadError)
  }

  func testRegistryRefusesBrokenFileAtStart() throws {
    let dir = try makeTempDir()
    XCTAssertThrowsError(try EmbeddedClusterRegistry(path: dir + "/absent.yaml", pollInterval: nil))
    try write("kind: Cluster\n", to: dir + "/c.yaml")
    XCTAssertThrowsError(try EmbeddedClusterRegistry(path: dir + "/c.yaml", pollInterval: nil)) { e in
      XCTAssertTrue("\(e)".contains("c.yaml:1"), "\(e)")
    }
  }

  func testAuthenticatorAndAuthorizerReload() throws {
    let dir = try makeTempDir()
    let tokens = dir + "/tokens.csv", rbac = dir + "/rbac.yaml"
    try write("alice-token-0001,alice,1\n", to: tokens)
    try write("", to: rbac)
    let authn = try TokenFileAuthenticator(path: tokens, pollInterval: poll)
    let authz = try RBACAuthorizer(path: rbac, pollInterval: poll)
    defer { authn.stop(); authz.stop() }
    XCTAssertEqual(authn.user(for: "alice-token-0001")?.name, "alice")
    XCTAssertNil(authn.user(for: "bob-token-0002"))

    try write("bob-token-0002,bob,2,\"ops\"\n", to: tokens)
    XCTAssertTrue(waitUntil { authn.user(for: "bob-token-0002") != nil })
    XCTAssertNil(authn.user(for: "alice-token-0001"), "a removed caller is out at once")
    try write("bob-token-0002,bob\n", to: tokens)
    XCTAssertTrue(waitUntil { authn.lastReloadError != nil })
    XCTAssertEqual(authn.lastReloadError?.line, 1)
    XCTAssertNotNil(authn.user(for: "bob-token-0002"), "a broken edit keeps the last good table")

    let bob = authn.user(for: "bob-token-0002")!
    let r = AuthorizationRequest(user: bob, method: "GET", target: parseProxyTarget("/proxy/default_sample/api")!)
    XCTAssertFalse(authz.decide(r).allowed)
    try write("""
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRole
      metadata: {name: r}
      rules: [{nonResourceURLs: ["/proxy/default_sample/*"], verbs: [get]}]
      ---
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRoleBinding
      metadata: {name: b}
      roleRef: {kind: ClusterRole, name: r}
      subjects: [{kind: Group, name: ops}]
      """, to: rbac)
    XCTAssertTrue(waitUntil { authz.decide(r).allowed })
    try write("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\nroleRef: {kind: Role, name: r}\n", to: rbac)
    XCTAssertTrue(waitUntil { authz.lastReloadError != nil })
    XCTAssertTrue(authz.decide(r).allowed, "a broken edit keeps the last good policy")
  }
}
