import KopilotIO
import XCTest
@testable import KopilotHub

final class RBACTests: XCTestCase {
  /// The seed README's heredoc, pasted whole (ServiceAccount and Pod too).
  static let seedExample = """
    apiVersion: v1
    kind: ServiceAccount
    metadata:
      name: kubectl
      namespace: kopilot-system
    ---
    apiVersion: v1
    kind: Pod
    metadata:
      name: kubectl
      namespace: kopilot-system
    spec:
      serviceAccountName: kubectl
      containers:
        - name: kubectl
          image: bitnami/kubectl
          securityContext:
            runAsUser: 0
            runAsGroup: 0
          command:
            - sleep
            - infinity
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRole
    metadata:
      name: kubectl
    rules:
      - nonResourceURLs:
          - /proxy/*
        verbs:
          - get
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRoleBinding
    metadata:
      name: kubectl
    roleRef:
      apiGroup: rbac.authorization.k8s.io
      kind: ClusterRole
      name: kubectl
    subjects:
      - kind: ServiceAccount
        name: kubectl
        namespace: kopilot-system
    """

  let sa = UserInfo(name: "system:serviceaccount:kopilot-system:kubectl", groups: ["system:serviceaccounts", "system:authenticated"])

  func req(_ u: UserInfo, _ m: String, _ target: String) -> AuthorizationRequest {
    AuthorizationRequest(user: u, method: m, target: parseProxyTarget(target)!)
  }

  func testSeedReadmeExample() throws {
    let p = try RBACFile.parse(Self.seedExample)
    XCTAssertEqual(p.warnings.count, 2, "the ServiceAccount and the Pod are skipped with a note")
    let allow = p.decide(req(sa, "GET", "/proxy/default_sample/api/v1/pods?watch=true"))
    XCTAssertTrue(allow.allowed)
    XCTAssertEqual(allow.reason, "RBAC: allowed by ClusterRoleBinding \"kubectl\" of ClusterRole \"kubectl\" to ServiceAccount \"kubectl/kopilot-system\"")
    XCTAssertTrue(p.decide(req(sa, "HEAD", "/proxy/other_one/version")).allowed)

    let deny = p.decide(req(sa, "POST", "/proxy/default_sample/api/v1/namespaces/default/pods"))
    XCTAssertFalse(deny.allowed)
    XCTAssertEqual(deny.forbiddenMessage,
                   "User \"system:serviceaccount:kopilot-system:kubectl\" cannot create path \"/proxy/default_sample/api/v1/namespaces/default/pods\"")
    // Same name, other namespace: a different service account.
    let other = UserInfo(name: "system:serviceaccount:default:kubectl")
    XCTAssertFalse(p.decide(req(other, "GET", "/proxy/default_sample/api")).allowed)
  }

  func testVerbsFromMethods() {
    XCTAssertEqual(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "get"].map { RBACVerb.forHTTPMethod($0) },
                   ["get", "get", "create", "update", "patch", "delete", "get"])
    for m in ["OPTIONS", "CONNECT", "TRACE", "PROPFIND", ""] { XCTAssertNil(RBACVerb.forHTTPMethod(m), m) }
  }

  /// kubectl exec, attach and port-forward: 1.27 upgrades to SPDY with
  /// POST, 1.30+ to WebSocket with GET. Both need `create`.
  func testUpgradesNeedCreate() {
    typealias H = [(name: String, value: String)]
    let upgrades: [(String, H)] = [
      ("kubectl 1.33 WebSocket", [("Connection", "Upgrade"), ("Upgrade", "websocket")]),
      ("kubectl 1.27 SPDY", [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]),
      ("Upgrade alone", [("Upgrade", "websocket")]),
      ("Upgrade empty", [("upgrade", "")]),
      ("Connection alone", [("Connection", "upgrade")]),
      ("lower case", [("connection", "upgrade"), ("upgrade", "websocket")]),
      ("upper case", [("CONNECTION", "UPGRADE")]),
      ("later in the list", [("Connection", "keep-alive, Upgrade")]),
      ("no spaces", [("Connection", "close,upgrade")]),
      ("second Connection line", [("Connection", "keep-alive"), ("Connection", "upgrade")]),
      ("inside a token, as kube-apiserver matches", [("Connection", "x-upgrade-y")]),
    ]
    for (note, h) in upgrades {
      XCTAssertTrue(RBACVerb.isUpgrade(h), note)
      XCTAssertEqual(RBACVerb.forRequest(method: "GET", upgrade: true), "create", note)
    }
    let plain: [(String, H)] = [
      ("none", []),
      ("keep-alive", [("Connection", "keep-alive")]),
      ("close", [("Connection", "close")]),
      ("a value naming upgrade elsewhere", [("Accept", "upgrade")]),
    ]
    for (note, h) in plain { XCTAssertFalse(RBACVerb.isUpgrade(h), note) }

    XCTAssertEqual(["GET", "HEAD", "POST"].map { RBACVerb.forRequest(method: $0, upgrade: true) }, ["create", "create", "create"])
    // create must never stand in for delete, update or patch.
    for m in ["PUT", "PATCH", "DELETE", "OPTIONS"] { XCTAssertNil(RBACVerb.forRequest(method: m, upgrade: true), m) }
    XCTAssertEqual(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].map { RBACVerb.forRequest(method: $0, upgrade: false) },
                   ["get", "get", "create", "update", "patch", "delete"])

    // The seed example grants get only: reading works, exec does not.
    let p = try! RBACFile.parse(Self.seedExample)
    let exec = "/proxy/default_sample/api/v1/namespaces/default/pods/web-0/exec?command=id&stdout=true"
    func head(_ m: String, _ h: H) -> HubRequest { HubRequest(method: m, target: exec, headers: h, peer: "127.0.0.1:1") }
    let target = parseProxyTarget(exec)!
    XCTAssertTrue(p.decide(AuthorizationRequest(user: sa, head("GET", []), target: target)).allowed)
    for (note, h) in upgrades {
      for m in ["GET", "POST"] {
        let d = p.decide(AuthorizationRequest(user: sa, head(m, h), target: target))
        XCTAssertFalse(d.allowed, "\(m) \(note)")
        XCTAssertEqual(d.forbiddenMessage,
                       "User \"system:serviceaccount:kopilot-system:kubectl\" cannot create path \"/proxy/default_sample/api/v1/namespaces/default/pods/web-0/exec\"")
      }
    }
    let del = p.decide(AuthorizationRequest(user: sa, head("DELETE", [("Upgrade", "websocket")]), target: target))
    XCTAssertFalse(del.allowed)
    XCTAssertTrue(del.reason.contains("only GET, HEAD and POST may upgrade"), del.reason)

    // get and create on the path: exec over either protocol is allowed.
    let both = try! RBACFile.parse(Self.seedExample.replacingOccurrences(of: "    verbs:\n      - get", with: "    verbs:\n      - get\n      - create"))
    for (note, h) in upgrades {
      XCTAssertTrue(both.decide(AuthorizationRequest(user: sa, head("GET", h), target: target)).allowed, note)
      XCTAssertTrue(both.decide(AuthorizationRequest(user: sa, head("POST", h), target: target)).allowed, note)
    }
  }

  static let policy = """
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRole
    metadata: {name: sample-reader}
    rules:
    - nonResourceURLs: ["/proxy/default_sample/*"]
      verbs: ["get"]
    - apiGroups: [""]
      resources: ["pods"]
      verbs: ["*"]
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRole
    metadata: {name: everything}
    rules:
    - nonResourceURLs: ["*"]
      verbs: ["*"]
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRole
    metadata: {name: version-only}
    rules:
    - nonResourceURLs: ["/proxy/default_sample/version"]
      verbs: ["get", "delete"]
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRoleBinding
    metadata: {name: alice-reads-sample}
    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: sample-reader}
    subjects:
    - {kind: User, apiGroup: rbac.authorization.k8s.io, name: alice}
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRoleBinding
    metadata: {name: ops-all}
    roleRef: {kind: ClusterRole, name: everything}
    subjects:
    - {kind: Group, name: ops}
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRoleBinding
    metadata: {name: bob-version}
    roleRef: {kind: ClusterRole, name: version-only}
    subjects:
    - {kind: User, name: bob}
    - {kind: ServiceAccount, name: probe, namespace: monitoring}
    """

  func testUsersGroupsWildcardsAndClusterPaths() throws {
    let p = try RBACFile.parse(Self.policy)
    let alice = UserInfo(name: "alice", groups: ["system:authenticated"])
    let bob = UserInfo(name: "bob")
    let carol = UserInfo(name: "carol", groups: ["ops"])
    let probe = UserInfo(name: "system:serviceaccount:monitoring:probe")
    let table: [(UserInfo, String, String, Bool)] = [
      // A rule on /proxy/default_sample/* limits alice to that cluster, and to get.
      (alice, "GET", "/proxy/default_sample/api/v1/pods", true),
      (alice, "GET", "/proxy/default_sample", true),  // normalized to /proxy/default_sample/
      (alice, "GET", "/proxy/default_other/api", false),
      (alice, "GET", "/proxy/default_sample2/api", false),
      (alice, "GET", "/proxy/default_sample/../default_other/api", false),
      (alice, "DELETE", "/proxy/default_sample/api/v1/pods/x", false),
      (alice, "PATCH", "/proxy/default_sample/api", false),
      // Group with `*` verbs and `*` URLs: everything, every method with a verb.
      (carol, "GET", "/proxy/a_b/x", true),
      (carol, "POST", "/proxy/a_b/x", true),
      (carol, "PUT", "/proxy/a_b/x", true),
      (carol, "PATCH", "/proxy/a_b/x", true),
      (carol, "DELETE", "/proxy/a_b/x", true),
      (carol, "OPTIONS", "/proxy/a_b/x", false),  // no verb, so even * does not grant it
      // Exact URL: only that path, only the verbs listed.
      (bob, "GET", "/proxy/default_sample/version", true),
      (bob, "DELETE", "/proxy/default_sample/version", true),
      (bob, "GET", "/proxy/default_sample/version/", false),
      (bob, "GET", "/proxy/default_sample/versions", false),
      (bob, "PUT", "/proxy/default_sample/version", false),
      (probe, "GET", "/proxy/default_sample/version?timeout=1s", true),
      (UserInfo(name: "system:serviceaccount:monitoring:other"), "GET", "/proxy/default_sample/version", false),
      (UserInfo(name: "nobody", groups: ["system:authenticated"]), "GET", "/proxy/default_sample/api", false),
    ]
    for (u, m, t, want) in table {
      let d = p.decide(req(u, m, t))
      XCTAssertEqual(d.allowed, want, "\(u.name) \(m) \(t): \(d.reason)")
      XCTAssertEqual(d.forbiddenMessage.isEmpty, want)
    }
    let d = p.decide(req(alice, "PUT", "/proxy/default_sample/api"))
    XCTAssertEqual(d.forbiddenMessage, "User \"alice\" cannot update path \"/proxy/default_sample/api\"")
    XCTAssertTrue(d.reason.contains("no ClusterRoleBinding grants update"), d.reason)
    let o = p.decide(req(carol, "OPTIONS", "/proxy/a_b/x"))
    XCTAssertEqual(o.forbiddenMessage, "User \"carol\" cannot options path \"/proxy/a_b/x\"")
    XCTAssertTrue(o.reason.contains("HTTP method OPTIONS has no RBAC verb"), o.reason)
  }

  func testAuthorizationPath() {
    XCTAssertEqual(RBACVerb.authorizationPath(for: parseProxyTarget("/proxy/a_b/api/v1?x=/y")!), "/proxy/a_b/api/v1")
    XCTAssertEqual(RBACVerb.authorizationPath(for: parseProxyTarget("/proxy/a_b")!), "/proxy/a_b/")
    XCTAssertEqual(RBACVerb.authorizationPath(for: parseProxyTarget("/proxy/x_y/../a_b/./c")!), "/proxy/a_b/c")
  }

  func testMalformed() {
    let role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: r}\n"
    let bind = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\n"
    let rows: [(note: String, yaml: String, expect: [String])] = [
      ("beta apiVersion", "apiVersion: rbac.authorization.k8s.io/v1beta1\nkind: ClusterRole\nmetadata: {name: r}\n",
       ["r.yaml:1: ClusterRole r", "apiVersion must be rbac.authorization.k8s.io/v1"]),
      ("no name", "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nrules: []\n", ["metadata.name is missing"]),
      ("verbs not a list", role + "rules:\n- nonResourceURLs: [/proxy/*]\n  verbs: get\n", ["rules[0].verbs", "expected a sequence"]),
      ("no verbs", role + "rules:\n- nonResourceURLs: [/proxy/*]\n", ["rules[0].verbs must list"]),
      ("star in the middle", role + "rules:\n- nonResourceURLs: [/proxy/*/api]\n  verbs: [get]\n", ["only at the end"]),
      ("relative URL", role + "rules:\n- nonResourceURLs: [proxy/*]\n  verbs: [get]\n", ["must start with /"]),
      ("empty rule", role + "rules:\n- verbs: [get]\n", ["neither nonResourceURLs nor resources"]),
      ("two roles", role + "---\n" + role, ["r.yaml:5: ClusterRole r", "defined twice (first at line 1)"]),
      ("roleRef Role", bind + "roleRef: {kind: Role, name: r}\n", ["ClusterRoleBinding b", "roleRef.kind must be ClusterRole"]),
      ("no roleRef", bind + "subjects: []\n", ["roleRef is missing"]),
      ("bad subject kind", bind + "roleRef: {kind: ClusterRole, name: r}\nsubjects:\n- {kind: Robot, name: x}\n",
       ["subjects[0].kind must be User, Group or ServiceAccount"]),
      ("SA without namespace", bind + "roleRef: {kind: ClusterRole, name: r}\nsubjects:\n- {kind: ServiceAccount, name: x}\n",
       ["needs a namespace"]),
      ("user with other group", bind + "roleRef: {kind: ClusterRole, name: r}\nsubjects:\n- {kind: User, apiGroup: x.io, name: x}\n",
       ["subjects[0].apiGroup"]),
      ("subject without name", bind + "roleRef: {kind: ClusterRole, name: r}\nsubjects:\n- {kind: User}\n", ["subjects[0].name is missing"]),
      ("bad YAML", "rules: [\n", ["r.yaml", "not valid YAML"]),
    ]
    for r in rows {
      XCTAssertThrowsError(try RBACFile.parse(r.yaml, file: "r.yaml"), r.note) { e in
        for s in r.expect { XCTAssertTrue("\(e)".contains(s), "\(r.note): \"\(e)\" lacks \"\(s)\"") }
      }
    }
  }

  func testWarningsAndLists() throws {
    let yaml = """
      apiVersion: v1
      kind: List
      items:
      - apiVersion: rbac.authorization.k8s.io/v1
        kind: ClusterRoleBinding
        metadata: {name: dangling}
        roleRef: {kind: ClusterRole, name: missing}
        subjects: [{kind: User, name: x}]
      - apiVersion: rbac.authorization.k8s.io/v1
        kind: RoleBinding
        metadata: {name: rb, namespace: n}
      """
    let p = try RBACFile.parse(yaml, file: "r.yaml")
    XCTAssertEqual(p.bindings.count, 1)
    XCTAssertTrue(p.warnings.contains { $0.contains("ClusterRole missing does not exist") }, "\(p.warnings)")
    XCTAssertTrue(p.warnings.contains { $0.contains("only ClusterRoles can grant") }, "\(p.warnings)")
    XCTAssertFalse(p.decide(AuthorizationRequest(user: UserInfo(name: "x"), method: "GET", path: "/proxy/a_b/")).allowed)
  }

  func testDefaultPolicyGrantsAdmins() async throws {
    let p = try RBACFile.parse(try StateDirectory.initialRBAC())
    let admin = UserInfo(name: "kopilot-admin", groups: ["kopilot:admins", "system:authenticated"])
    for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
      XCTAssertTrue(p.decide(req(admin, m, "/proxy/default_sample/api")).allowed, m)
    }
    XCTAssertFalse(p.decide(req(UserInfo(name: "x", groups: ["system:authenticated"]), "GET", "/proxy/a_b/")).allowed)
  }
}
