import Foundation
import XCTest

/// The smuggling corpus through two hub replicas in the Kubernetes mode:
/// both agents (default/sample and default/b) hold their sessions on
/// replica hub-b; the caller talks to hub-a, which authorizes it on the
/// host (TokenReview + SubjectAccessReview) and forwards over hub-b's peer
/// listener. The oracle is the same as with one hub; what it guards most
/// here is that a request smuggled inside one forwarded to hub-b, say for
/// /proxy/default_b/..., never reaches cluster b, which the caller may not
/// use at all.
///
/// Callers on the fake host: bob (the smuggler) may only `get`
/// /proxy/default_sample/version; alice (the upgrader) may `get` and
/// `create` it. The host's admin (system:masters) only checks the setup.
final class SmugglingTestsAcrossReplicas: E2ETestCase {
  var host: HostCluster!
  var harness: SmugglingHarness!
  var callers: SmugglingCallers { SmugglingCallers(smuggler: HostTokens.bob, upgrader: HostTokens.alice) }

  override func setUpWithError() throws {
    try super.setUpWithError()
    try startWorld { w in
      let memberA = try RecordingUpstream.start(w, name: "member-a")
      let memberB = try RecordingUpstream.start(w, name: "member-b")
      host = try HostCluster(world: w)
      try host.start()
      try grantSmugglingRoles()
      let a = try host.startReplica("hub-a")
      let b = try host.startReplica("hub-b")
      try host.useWebhooks(of: a)
      try host.api("POST", "/api/v1/namespaces/kopilot-system/configmaps", [
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "kopilot-hub", "namespace": "kopilot-system"],
        "data": ["public_addr": "127.0.0.1:\(b.port)"],
      ])
      let applied = try host.kubectl(["apply", "--validate=false", "-f",
                                      Paths.root.appendingPathComponent("deploy/samples/cluster.yaml").path])
      guard applied.status == 0 else { throw E2EError("kubectl apply: \(applied.stderr)") }
      // The webhook fills b's token as it did sample's.
      try host.api("POST", "/apis/kopilot.smartx.com/v1alpha1/namespaces/default/clusters", [
        "apiVersion": "kopilot.smartx.com/v1alpha1", "kind": "Cluster",
        "metadata": ["name": "b", "namespace": "default"],
      ])
      for (name, cluster, member) in [("sample", "default_sample", memberA), ("b", "default_b", memberB)] {
        let token = try host.kubectl(["get", "cluster", name, "-o", "jsonpath={.token}"]).text
        guard token.count >= 16 else { throw E2EError("the webhook gave \(name) no token: \(token)") }
        try SmugglingTests.startAgent(w, name: "agent-\(name)", token: token, member: member, cluster: cluster,
                                      hub: b.process, port: b.port)
      }
      // hub-a learns from the Clusters' status that hub-b serves both.
      for (cluster, member) in [("default_sample", memberA), ("default_b", memberB)] {
        try host.eventually("hub-a forwards \(cluster) to hub-b", timeout: 30) {
          let r = try w.curl(["-H", "Authorization: Bearer \(HostTokens.admin)", "-o", "/dev/null", "-w", "%{http_code}",
                              "\(a.url)/proxy/\(cluster)/version?setup=1"], timeout: 20)
          return r.text == "200"
        }
        guard member.entries().contains(where: { $0["target"] as? String == "/version?setup=1" }) else {
          throw E2EError("\(cluster)'s member did not see the setup request")
        }
      }
      harness = SmugglingHarness(world: w, hubPort: a.port, memberA: memberA, memberB: memberB)
      // bob and alice of HostTokens, as the serving replica maps them
      // (alice's host group team-a goes on, prefixed).
      harness.identities = [
        ["impersonate-user: kopilot:bob", "impersonate-group: kopilot:callers", "impersonate-uid: uid-bob"],
        ["impersonate-user: kopilot:alice", "impersonate-group: kopilot:callers", "impersonate-group: kopilot:team-a",
         "impersonate-uid: uid-alice"],
      ]
    }
  }

  /// bob: get on /proxy/default_sample/version; alice: get and create
  /// there (her proxy-all binding from HostCluster.start is removed).
  func grantSmugglingRoles() throws {
    try host.api("DELETE", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/alice-proxy")
    for (role, verbs, user) in [("version-get", ["get"], "bob"), ("version-get-create", ["get", "create"], "alice")] {
      try host.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", [
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": ["name": role],
        "rules": [["nonResourceURLs": ["/proxy/default_sample/version"], "verbs": verbs]],
      ])
      try host.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", [
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": ["name": "\(user)-\(role)"],
        "roleRef": ["apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role],
        "subjects": [["kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"]],
      ])
    }
  }

  func testHeadersNamedInConnectionAreRefused() throws {
    try harness.run(SmugglingCorpus.connectionRows(callers), group: "two replicas: Connection names a header")
  }

  func testIdentityHeadersNeverReachTheMember() throws {
    try harness.run(SmugglingCorpus.identityRows(callers), group: "two replicas: identity headers")
  }

  func testContentLengthAndTransferEncoding() throws {
    try harness.run(SmugglingCorpus.framingRows(callers), group: "two replicas: Content-Length and Transfer-Encoding")
  }

  func testChunkedBodies() throws {
    try harness.run(SmugglingCorpus.chunkRows(callers), group: "two replicas: chunked bodies")
  }

  func testMalformedHeads() throws {
    try harness.run(SmugglingCorpus.headRows(callers), group: "two replicas: malformed heads")
  }

  func testTargets() throws {
    try harness.run(SmugglingCorpus.targetRows(callers), group: "two replicas: targets")
  }

  func testRequestsPipelinedAfterAnUpgrade() throws {
    try harness.run(SmugglingCorpus.upgradeRows(callers), group: "two replicas: upgrades")
  }

  func testPipelinedRequests() throws {
    try harness.run(SmugglingCorpus.pipelineRows(callers), group: "two replicas: pipelining")
  }

  func testBodilessResponsesDoNotDesynchronize() throws {
    try harness.run(SmugglingCorpus.responseRows(callers), group: "two replicas: 1xx, HEAD, 204 and 304 answers")
  }
}
