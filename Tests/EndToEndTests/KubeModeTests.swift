import Foundation
import XCTest

#if canImport(Glibc)
  import Glibc
#endif

/// Callers and service accounts the fake host cluster knows (its
/// --token-auth-file), and what RBAC grants them there.
enum HostTokens {
  /// kopilot-hub's service account: what the hubs' kubeconfig carries.
  static let hub = "host-token-of-the-kopilot-hub-service-account"
  /// A cluster admin who applies Clusters with kubectl.
  static let admin = "host-token-of-the-host-cluster-admin"
  /// A caller bound to a ClusterRole that allows every verb on /proxy/*.
  static let alice = "host-token-of-alice-who-may-use-proxy"
  /// A caller with no binding at all.
  static let bob = "host-token-of-bob-who-may-do-nothing"

  static let file = """
    \(hub),system:serviceaccount:kopilot-system:kopilot-hub,uid-hub,"system:serviceaccounts,system:serviceaccounts:kopilot-system"
    \(admin),host-admin,uid-admin,"system:masters"
    \(alice),alice,uid-alice,"team-a"
    \(bob),bob,uid-bob,

    """
}

/// A hub replica in the Kubernetes mode, with the ports it read back.
struct HubReplica {
  var name: String
  var process: ManagedProcess
  var port: Int
  var peerPort: Int
  var webhookPort: Int
  var url: String { "https://127.0.0.1:\(port)" }
}

/// The host cluster on loopback: the fake host API server (Tests/FakeHostAPI)
/// and hub replicas in `--mode kubernetes` that watch it, each with a peer
/// listener (mutual TLS) and an admission webhook listener.
final class HostCluster {
  let world: E2EWorld
  let peer: PeerCerts
  private(set) var port = 0
  private(set) var process: ManagedProcess!
  private(set) var replicas: [String: HubReplica] = [:]

  init(world: E2EWorld) throws {
    self.world = world
    peer = try PeerCerts.shared()
  }

  var url: String { "https://127.0.0.1:\(port)" }
  var hubKubeconfig: URL { world.dir.appendingPathComponent("host-hub.kubeconfig") }
  var adminKubeconfig: URL { world.dir.appendingPathComponent("host-admin.kubeconfig") }

  func start() throws {
    let tokens = world.dir.appendingPathComponent("host-tokens.csv")
    try HostTokens.file.write(to: tokens, atomically: true, encoding: .utf8)
    let bin = try GoBuild.binary("Tests/FakeHostAPI", name: "fakehost")
    process = try world.start("hostapi", bin, [
      "--cert", world.certs.cert, "--key", world.certs.key, "--tokens", tokens.path,
      "--webhook-ca", world.certs.ca, "--bookmark-interval", "1s", "-v",
    ])
    port = Int(try process.waitFor("PORT ").split(separator: " ").last ?? "") ?? 0
    XCTAssertGreaterThan(port, 0)
    for (file, token) in [(hubKubeconfig, HostTokens.hub), (adminKubeconfig, HostTokens.admin)] {
      try """
        apiVersion: v1
        kind: Config
        clusters: [{name: host, cluster: {server: "\(url)", certificate-authority: "\(world.certs.ca)"}}]
        users: [{name: u, user: {token: \(token)}}]
        contexts: [{name: host, context: {cluster: host, user: u, namespace: default}}]
        current-context: host
        """.write(to: file, atomically: true, encoding: .utf8)
    }
    // alice may use every verb on every cluster's /proxy/ path; bob nothing.
    try api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", [
      "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": ["name": "proxy-all"],
      "rules": [["nonResourceURLs": ["/proxy/*"], "verbs": ["*"]]],
    ])
    try api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", [
      "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": ["name": "alice-proxy"],
      "roleRef": ["apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "proxy-all"],
      "subjects": [["kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"]],
    ])
  }

  /// A request to the host API as its admin; returns the HTTP status and body.
  @discardableResult
  func api(_ method: String, _ path: String, _ body: [String: Any]? = nil, contentType: String = "application/json",
           expect: [Int] = [200, 201]) throws -> (Int, Data) {
    var args = ["-X", method, "-H", "Authorization: Bearer \(HostTokens.admin)", "-w", "\n%{http_code}"]
    if let body {
      args += ["-H", "Content-Type: \(contentType)", "--data-binary", String(decoding: try JSONSerialization.data(withJSONObject: body), as: UTF8.self)]
    }
    let r = try world.curl(args + [url + path])
    let text = r.text
    let code = Int(text.split(separator: "\n").last ?? "") ?? 0
    let payload = Data(text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().joined(separator: "\n").utf8)
    if !expect.isEmpty && !expect.contains(code) {
      throw E2EError("\(method) \(path): \(code) \(String(decoding: payload, as: UTF8.self)) \(r.stderr)")
    }
    return (code, payload)
  }

  /// Starts replica `name` (its peer certificate is PeerCerts' `name`.crt)
  /// and describes it in an EndpointSlice of the kopilot-hub Service, as the
  /// endpoints controller would once the pod is ready.
  @discardableResult
  func startReplica(_ name: String, extraArgs: [String] = []) throws -> HubReplica {
    let p = try world.start(name, try Paths.binary("kopilot-hub"), [
      "serve", "--kubeconfig", hubKubeconfig.path, "--namespace", "kopilot-system",
      "--pod-name", name, "--pod-ip", "127.0.0.1",
      "--bind", "127.0.0.1:0", "--tls-cert", world.certs.cert, "--tls-key", world.certs.key, "--ca-file", world.certs.ca,
      "--peer-bind", "127.0.0.1:0", "--peer-cert", peer.path("\(name).crt"), "--peer-key", peer.path("\(name).key"),
      "--peer-ca", peer.ca, "--webhook-bind", "127.0.0.1:0", "--access-log",
    ] + extraArgs)
    let line = try p.waitFor("kopilot-hub listening on 127.0.0.1:", timeout: 40)
    func number(after key: String) -> Int {
      Int(line.components(separatedBy: key).last?.prefix { $0.isNumber } ?? "") ?? 0
    }
    let r = HubReplica(name: name, process: p, port: number(after: "listening on 127.0.0.1:"),
                       peerPort: number(after: "peer-port="), webhookPort: number(after: "webhook-port="))
    XCTAssertGreaterThan(r.port, 0)
    XCTAssertGreaterThan(r.peerPort, 0)
    XCTAssertGreaterThan(r.webhookPort, 0)
    replicas[name] = r
    // One slice per replica: on loopback every replica has its own peer
    // port, and a slice carries one set of ports.
    try api("POST", "/apis/discovery.k8s.io/v1/namespaces/kopilot-system/endpointslices", [
      "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
      "metadata": ["name": "kopilot-hub-\(name)", "namespace": "kopilot-system",
                   "labels": ["kubernetes.io/service-name": "kopilot-hub"]],
      "addressType": "IPv4",
      "endpoints": [["addresses": ["127.0.0.1"], "conditions": ["ready": true, "serving": true, "terminating": false],
                     "targetRef": ["kind": "Pod", "name": name, "namespace": "kopilot-system"]]],
      "ports": [["name": "https", "port": r.port, "protocol": "TCP"], ["name": "peer", "port": r.peerPort, "protocol": "TCP"]],
    ])
    return r
  }

  /// Points the host's admission webhooks at a replica's webhook listener,
  /// as the Mutating/ValidatingWebhookConfiguration in deploy/ do.
  func useWebhooks(of r: HubReplica) throws {
    try api("POST", "/_fake/webhooks", [
      "mutating": "https://127.0.0.1:\(r.webhookPort)/webhooks/mutate-cluster",
      "validating": "https://127.0.0.1:\(r.webhookPort)/webhooks/validate-cluster",
    ])
  }

  /// kubectl against the host cluster, as its admin.
  func kubectl(_ args: [String]) throws -> CommandResult {
    let kubectl = Paths.tool("kubectl") ?? "\(KubectlTestCase.kubectlDir)/kubectl.1.33"
    let cache = world.dir.appendingPathComponent("cache-host").path
    return try runCommand(kubectl, ["--kubeconfig", adminKubeconfig.path, "--cache-dir", cache] + args, timeout: 60)
  }

  /// The Cluster object as the host has it.
  func cluster(_ ns: String, _ name: String) throws -> [String: Any]? {
    let (code, body) = try api("GET", "/apis/kopilot.smartx.com/v1alpha1/namespaces/\(ns)/clusters/\(name)", expect: [])
    guard code == 200 else { return nil }
    return try JSONSerialization.jsonObject(with: body) as? [String: Any]
  }

  /// Polls until `condition` holds (the hubs follow the host through
  /// watches, so every change takes a moment to arrive).
  func eventually(_ what: String, timeout: TimeInterval = 20, _ condition: () throws -> Bool) throws {
    let end = Date() + timeout
    while Date() < end {
      if try condition() { return }
      usleep(100_000)
    }
    guard try condition() else { throw E2EError("not within \(Int(timeout)) s: \(what)") }
  }
}

/// A curl status line: "CODE" then the body's `reason` when it is a Status.
func statusOf(_ r: CommandResult) -> (Int, String, String) {
  let lines = r.text.split(separator: "\n", omittingEmptySubsequences: false)
  let code = Int(lines.last ?? "") ?? 0
  let body = lines.dropLast().joined(separator: "\n")
  let obj = (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any]
  return (code, obj?["reason"] as? String ?? "", obj?["message"] as? String ?? body)
}

/// The Kubernetes mode end to end: two hub replicas watching the fake host
/// API, the sample Cluster applied with kubectl (its token filled by the
/// hub's webhook), an agent on replica B, callers on replica A, authorized
/// by TokenReview + SubjectAccessReview on the host.
final class KubeModeTests: E2ETestCase {
  var host: HostCluster!
  var token = ""

  override func setUpWithError() throws {
    try super.setUpWithError()
    try startWorld { w in
      try w.startUpstream()
      host = try HostCluster(world: w)
      try host.start()
      let a = try host.startReplica("hub-a", extraArgs: ["--authz-denied-ttl", "0", "--review-timeout", "1"])
      let b = try host.startReplica("hub-b")
      try host.useWebhooks(of: a)
      // The seed's install flow: the user says where agents dial.
      try host.api("POST", "/api/v1/namespaces/kopilot-system/configmaps", [
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "kopilot-hub", "namespace": "kopilot-system"],
        "data": ["public_addr": "127.0.0.1:\(b.port)"],
      ])
      let applied = try host.kubectl(["apply", "--validate=false", "-f", Paths.root.appendingPathComponent("deploy/samples/cluster.yaml").path])
      guard applied.status == 0 else { throw E2EError("kubectl apply: \(applied.stderr)") }
      let got = try host.kubectl(["get", "cluster", "sample", "-o", "jsonpath={.token}"])
      token = got.text
      guard got.status == 0, token.count >= 43 else { throw E2EError("the webhook gave no token: \(got.text) \(got.stderr)") }
    }
  }

  func startAgent(on r: HubReplica, token: String? = nil) throws -> ManagedProcess {
    let agent = try world.start("agent-\(r.name)", try Paths.binary("kopilot-agent"), [
      "--connect", "wss://127.0.0.1:\(r.port)/connect?token=\(token ?? self.token)", "--hub-ca", world.certs.ca,
      "--apiserver", world.upstreamURL, "--token-file", world.tokenFile.path, "--ca-file", world.certs.ca,
    ])
    try agent.waitFor("connected to the hub", timeout: 30)
    try r.process.waitFor("agent session up: cluster=default_sample", timeout: 20)
    return agent
  }

  func get(_ r: HubReplica, _ path: String, token: String = HostTokens.alice, extra: [String] = []) throws -> (Int, String, String) {
    statusOf(try world.curl(extra + ["-H", "Authorization: Bearer \(token)", "-w", "\n%{http_code}", r.url + path]))
  }

  func testModeIsLoggedFirstWithItsReason() throws {
    let first = host.replicas["hub-a"]!.process.log.split(separator: "\n").first ?? ""
    XCTAssertTrue(first.contains("mode: kubernetes (--kubeconfig"), String(first))
  }

  func testWebhookFillsAndGuardsTokens() throws {
    XCTAssertTrue(token.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }, "URL-safe: \(token)")
    let short = try host.api("POST", "/apis/kopilot.smartx.com/v1alpha1/namespaces/default/clusters", [
      "apiVersion": "kopilot.smartx.com/v1alpha1", "kind": "Cluster", "metadata": ["name": "weak"], "token": "short",
    ], expect: [])
    XCTAssertEqual(short.0, 400, String(decoding: short.1, as: UTF8.self))
    XCTAssertTrue(String(decoding: short.1, as: UTF8.self).contains("16"), String(decoding: short.1, as: UTF8.self))
    XCTAssertNil(try host.cluster("default", "weak"), "a refused Cluster is not stored")
  }

  func testForwardedThroughThePeerAndStatusShowsTheSession() throws {
    let a = host.replicas["hub-a"]!, b = host.replicas["hub-b"]!
    // No agent yet: no replica can serve the cluster.
    let (code, _, message) = try get(a, "/proxy/default_sample/headers")
    XCTAssertEqual(code, 503, message)
    XCTAssertTrue(message.contains("no hub replica holds a session"), message)
    _ = try startAgent(on: b)
    try host.eventually("the Cluster's status names hub-b") {
      let s = try host.cluster("default", "sample")?["status"] as? [String: Any]
      return s?["connected"] as? Bool == true && (s?["hubs"] as? [[String: Any]])?.first?["name"] as? String == "hub-b"
    }
    let table = try host.kubectl(["get", "clusters"])
    XCTAssertTrue(table.text.contains("sample") && table.text.contains("true"), table.text)
    // A caller on A reaches the member through B; the member sees the
    // agent's credentials only.
    var last = (0, "", "")
    try host.eventually("hub-a forwards to hub-b") {
      last = try get(a, "/proxy/default_sample/headers")
      return last.0 == 200
    }
    XCTAssertFalse(last.2.contains(HostTokens.alice), "the caller's token reached the member")
    XCTAssertTrue(last.2.contains(Tokens.apiserver), last.2)
    XCTAssertTrue(last.2.lowercased().contains("x-forwarded-for"), last.2)
    try b.process.waitFor("proxied cluster=default_sample")
    // bob is nobody in the host's RBAC.
    XCTAssertEqual(try get(a, "/proxy/default_sample/headers", token: HostTokens.bob).0, 403)
    XCTAssertEqual(try get(a, "/proxy/default_sample/headers", token: "not-a-known-token").0, 401)
  }

  func testRBACChangesOnTheHostApply() throws {
    let b = host.replicas["hub-b"]!, a = host.replicas["hub-a"]!
    _ = try startAgent(on: b)
    // hub-a keeps denials for 0 s (--authz-denied-ttl 0): a new binding is
    // seen at the next request.
    XCTAssertEqual(try get(a, "/proxy/default_sample/headers", token: HostTokens.bob).0, 403)
    try host.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", [
      "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": ["name": "bob-proxy"],
      "roleRef": ["apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "proxy-all"],
      "subjects": [["kind": "User", "name": "bob", "apiGroup": "rbac.authorization.k8s.io"]],
    ])
    try host.eventually("bob is allowed once bound") { try get(a, "/proxy/default_sample/headers", token: HostTokens.bob).0 == 200 }
  }

  func testSlowOrFailingHostGivesStatusNotHang() throws {
    let a = host.replicas["hub-a"]!
    // A new caller identity for each case, so no cache answers.
    try host.api("POST", "/_fake/faults", ["pathPrefix": "/apis/authentication.k8s.io", "delayMs": 4000, "count": 0])
    // The host would answer after 4 s; the hub's review timeout (1 s) answers
    // first: a 504 Timeout, where the host's answer would have been a 403.
    let (code, reason, message) = try get(a, "/proxy/default_sample/headers", token: HostTokens.bob)
    XCTAssertEqual(code, 504, message)
    XCTAssertEqual(reason, "Timeout")
    // A caller that hangs up while its review waits costs nothing.
    _ = try? world.curl(["-H", "Authorization: Bearer hangs-up-before-the-answer", "--max-time", "1", a.url + "/proxy/default_sample/x"], timeout: 1)
    try host.api("DELETE", "/_fake/faults")
    try host.api("POST", "/_fake/faults", ["pathPrefix": "/apis/authentication.k8s.io", "status": 500, "count": 0])
    let failing = try get(a, "/proxy/default_sample/headers", token: "yet-another-caller-token")
    XCTAssertEqual(failing.0, 503, failing.2)
    try host.api("DELETE", "/_fake/faults")
    XCTAssertEqual(try get(a, "/healthz").0, 200, "the hub is still serving")
  }

  func testTokenChangeAndDeleteCloseSessions() throws {
    let b = host.replicas["hub-b"]!
    _ = try startAgent(on: b)
    let patched = try host.kubectl(["patch", "cluster", "sample", "--type=merge", "-p", "{\"token\":\"a-brand-new-token-0123456789abcdef\"}"])
    XCTAssertEqual(patched.status, 0, patched.stderr)
    try b.process.waitFor("closing the sessions of default_sample: tokenChanged", timeout: 20)
    // The old token no longer opens the cluster.
    let refused = statusOf(try world.curl(["-w", "\n%{http_code}", b.url + "/connect?token=\(token)"]))
    XCTAssertEqual(refused.0, 401)
    let deleted = try host.kubectl(["delete", "cluster", "sample"])
    XCTAssertEqual(deleted.status, 0, deleted.stderr)
    try host.eventually("callers get 404 for a deleted Cluster") {
      try get(host.replicas["hub-a"]!, "/proxy/default_sample/headers").0 == 404
    }
  }

  func testStatusForgetsAReplicaThatDiedWithoutWithdrawing() throws {
    let b = host.replicas["hub-b"]!
    _ = try startAgent(on: b)
    try host.eventually("the Cluster's status names hub-b") {
      (try host.cluster("default", "sample")?["status"] as? [String: Any])?["connected"] as? Bool == true
    }
    // hub-b is killed (no chance to withdraw its entry), and the endpoints
    // controller drops it from the Service.
    kill(b.process.process.processIdentifier, SIGKILL)
    b.process.process.waitUntilExit()
    try host.api("DELETE", "/apis/discovery.k8s.io/v1/namespaces/kopilot-system/endpointslices/kopilot-hub-hub-b")
    try host.eventually("hub-a drops hub-b's stale entry") {
      let s = try host.cluster("default", "sample")?["status"] as? [String: Any]
      return s?["connected"] as? Bool == false && (s?["hubs"] as? [Any])?.isEmpty == true
    }
    try host.replicas["hub-a"]!.process.waitFor("dropping status entries of replicas gone: [\"hub-b\"]")
  }

  func testAgentManifestUsesTheConfigMapAddress() throws {
    let b = host.replicas["hub-b"]!
    let r = try world.curl(["-w", "\n%{http_code}", b.url + "/kopilot-agent.yaml?token=\(token)"])
    let (code, _, body) = statusOf(r)
    XCTAssertEqual(code, 200, body)
    XCTAssertTrue(r.text.contains("connect-url: wss://127.0.0.1:\(b.port)/connect\n"), "the manifest points at public_addr")
  }
}

/// The kubectl suite across two replicas in the Kubernetes mode: the agent
/// holds its session on hub-b, kubectl talks to hub-a, which authorizes on
/// the host (TokenReview + SubjectAccessReview) and forwards over the peer
/// listener. Upgrades (exec, port-forward), watches, logs -f and a 16 MiB
/// object all cross both hubs.
class KubeModeKubectlTestCase: KubectlTestCase {
  /// hub-b's audit log (hub-a's is `hubAuditLog`).
  var replicaBAuditLog: URL { world.dir.appendingPathComponent("hub-b-audit.jsonl") }

  /// The member's RBAC: the agent may only impersonate (and use the fake's
  /// test hooks); the caller, kopilot:alice, may do what the kubectl suite
  /// does (pods and their subresources, configmaps, reading namespaces) and
  /// nothing else, so deleting a namespace is the member's 403.
  override var fakeArgs: [String] {
    let policy = world.dir.appendingPathComponent("member-policy.json")
    try? Data("""
      {"rules": [
        {"users": ["system:serviceaccount:kopilot:kopilot-agent"], "verbs": ["impersonate"], "apiGroups": [""], "resources": ["users", "groups"]},
        {"users": ["system:serviceaccount:kopilot:kopilot-agent"], "verbs": ["impersonate"], "apiGroups": ["authentication.k8s.io"], "resources": ["*"]},
        {"users": ["system:serviceaccount:kopilot:kopilot-agent"], "verbs": ["*"], "nonResourceURLs": ["/_fake/*"]},
        {"groups": ["system:authenticated"], "verbs": ["get"],
         "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/version", "/openapi/*"]},
        {"users": ["kopilot:alice"], "verbs": ["*"], "apiGroups": [""],
         "resources": ["pods", "pods/exec", "pods/attach", "pods/portforward", "pods/log", "configmaps"]},
        {"users": ["kopilot:alice"], "verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["namespaces"]}
      ]}
      """.utf8).write(to: policy)
    return super.fakeArgs + ["--policy", policy.path]
  }

  /// The member's RBAC decides for the mapped caller of the Kubernetes mode
  /// too: kopilot:alice may read namespaces, not delete them.
  func checkTheMembersRBACDecides() throws {
    XCTAssertEqual(try run(["get", "namespace", "kube-system"]).status, 0)
    let r = try run(["delete", "namespace", "kube-system", "--wait=false"])
    XCTAssertNotEqual(r.status, 0)
    XCTAssertTrue(r.stderr.contains(
      #"namespaces "kube-system" is forbidden: User "kopilot:alice" cannot delete resource "namespaces" in API group "" in the namespace "kube-system""#),
      r.stderr)
  }

  /// The identity a TokenReview gave reaches the member: alice of the host
  /// (group team-a) is kopilot:alice in kopilot:callers and kopilot:team-a.
  /// And one audit ID per request across both replicas: hub-a, which
  /// forwards, hub-b, which proxies, and the member log the same one.
  func checkIdentityAndAuditAcrossReplicas() throws {
    let r = try run(["auth", "whoami", "-o", "json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let info = ((try? JSONSerialization.jsonObject(with: r.stdout)) as? [String: Any]).flatMap {
      ($0["status"] as? [String: Any])?["userInfo"] as? [String: Any]
    }
    XCTAssertEqual(info?["username"] as? String, "kopilot:alice")
    let groups = info?["groups"] as? [String] ?? []
    XCTAssertEqual(groups.filter { !$0.hasPrefix("system:") }, ["kopilot:callers", "kopilot:team-a"])
    XCTAssertEqual(groups.filter { $0.hasPrefix("system:") }, ["system:authenticated"], "host system: groups passed")
    XCTAssertEqual(try run(["get", "pods"]).status, 0)

    func ids(_ url: URL) -> Set<String> {
      Set(((try? Data(contentsOf: url)) ?? Data()).split(separator: 0x0a).compactMap {
        let e = (try? JSONSerialization.jsonObject(with: Data($0))) as? [String: Any]
        return e?["stage"] as? String == "ResponseComplete" ? e?["auditID"] as? String : nil
      })
    }
    try waitUntil("every member request in both replicas' audit logs") {
      let member = ids(memberAuditLog)
      return !member.isEmpty && member.isSubset(of: ids(hubAuditLog)) && member.isSubset(of: ids(replicaBAuditLog))
    }
  }

  override func startTunnel(_ w: E2EWorld) throws {
    let host = try HostCluster(world: w)
    try host.start()
    let a = try host.startReplica("hub-a", extraArgs: ["--audit-log-path", hubAuditLog.path])
    let b = try host.startReplica("hub-b", extraArgs: ["--audit-log-path", replicaBAuditLog.path])
    try host.useWebhooks(of: b)
    let applied = try host.kubectl(["apply", "--validate=false", "-f", Paths.root.appendingPathComponent("deploy/samples/cluster.yaml").path])
    guard applied.status == 0 else { throw E2EError("kubectl apply: \(applied.stderr)") }
    let token = try host.kubectl(["get", "cluster", "sample", "-o", "jsonpath={.token}"]).text
    let agent = try w.start("agent", try Paths.binary("kopilot-agent"), [
      "--connect", "wss://127.0.0.1:\(b.port)/connect?token=\(token)", "--hub-ca", w.certs.ca,
      "--apiserver", "https://127.0.0.1:\(fakePort)", "--token-file", w.tokenFile.path, "--ca-file", w.certs.ca,
    ])
    try agent.waitFor("connected to the hub", timeout: 30)
    try b.process.waitFor("agent session up: cluster=default_sample", timeout: 20)
    try host.eventually("hub-a forwards to hub-b") {
      statusOf(try w.curl(["-H", "Authorization: Bearer \(HostTokens.alice)", "-w", "\n%{http_code}",
                           a.url + "/proxy/default_sample/version"])).0 == 200
    }
    try """
      apiVersion: v1
      kind: Config
      clusters: [{name: member, cluster: {server: "\(a.url)/proxy/default_sample", certificate-authority: "\(w.certs.ca)"}}]
      users: [{name: alice, user: {token: \(HostTokens.alice)}}]
      contexts: [{name: member, context: {cluster: member, user: alice}}]
      current-context: member
      """.write(to: kubeconfig, atomically: true, encoding: .utf8)
  }
}

/// kubectl 1.27 (SPDY upgrades) through two replicas.
final class KubeModeKubectl127Tests: KubeModeKubectlTestCase {
  override var kubectlName: String { "kubectl.1.27" }
  func testIdentityAndAuditAcrossReplicas() throws { try checkIdentityAndAuditAcrossReplicas() }
  func testMemberRBAC() throws { try checkTheMembersRBACDecides() }
  func testGetAllNamespaces() throws { try checkGetAllNamespaces() }
  func testGetJSON() throws { try checkGetJSON() }
  func testWatch() throws { try checkWatch() }
  func testLogsFollow() throws { try checkLogsFollow() }
  func testExec() throws { try checkExec() }
  func testExecStdin() throws { try checkExecStdin() }
  func testPortForward() throws { try checkPortForward() }
  func testCreateDelete() throws { try checkCreateDelete() }
  func testBigObject() throws { try checkBigObject() }
}

/// kubectl 1.33 (WebSocket upgrades, protobuf create) through two replicas.
final class KubeModeKubectl133Tests: KubeModeKubectlTestCase {
  override var kubectlName: String { "kubectl.1.33" }
  func testIdentityAndAuditAcrossReplicas() throws { try checkIdentityAndAuditAcrossReplicas() }
  func testMemberRBAC() throws { try checkTheMembersRBACDecides() }
  func testGetAllNamespaces() throws { try checkGetAllNamespaces() }
  func testGetJSON() throws { try checkGetJSON() }
  func testWatch() throws { try checkWatch() }
  func testLogsFollow() throws { try checkLogsFollow() }
  func testExec() throws { try checkExec() }
  func testExecStdin() throws { try checkExecStdin() }
  func testPortForward() throws { try checkPortForward() }
  func testCreateDelete() throws { try checkCreateDelete() }
  func testBigObject() throws { try checkBigObject() }
}
