import XCTest
@testable import KopilotHub

final class ClusterFileTests: XCTestCase {
  func testMultiDocumentStream() throws {
    let yaml = """
      # header
      apiVersion: kopilot.smartx.com/v1alpha1
      kind: Cluster
      metadata:
        name: sample
        namespace: default
      token: aaaaaaaaaaaaaaaa1
      ---
      ---
      apiVersion: kopilot.smartx.com/v1alpha1
      kind: Cluster
      metadata:
        name: edge.eu-1
        namespace: fleet
      token: "0123456789012345678"
      """
    let cs = try ClusterFile.parse(yaml)
    XCTAssertEqual(cs, [
      Cluster(namespace: "default", name: "sample", token: "aaaaaaaaaaaaaaaa1"),
      Cluster(namespace: "fleet", name: "edge.eu-1", token: "0123456789012345678"),
    ])
    XCTAssertEqual(cs[1].id, "fleet_edge.eu-1")
    XCTAssertEqual("\(cs[0])", "default/sample", "a Cluster never prints its token")
  }

  func testListAndClusterListAndDefaultNamespace() throws {
    for kind in ["List", "ClusterList"] {
      let yaml = """
        apiVersion: v1
        kind: \(kind)
        items:
        - apiVersion: kopilot.smartx.com/v1alpha1
          kind: Cluster
          metadata: {name: a}
          token: aaaaaaaaaaaaaaaaaaaa
        - apiVersion: kopilot.smartx.com/v1alpha1
          kind: Cluster
          metadata: {name: b, namespace: ops}
          token: bbbbbbbbbbbbbbbbbbbb
        """
      let cs = try ClusterFile.parse(yaml)
      XCTAssertEqual(cs.map(\.id), ["default_a", "ops_b"], kind)
    }
    XCTAssertEqual(try ClusterFile.parse(""), [])
    XCTAssertEqual(try ClusterFile.parse("# only comments\n"), [])
  }

  /// One row per bad input: the note, the YAML, the code, and what the
  /// message must say (file, line, object, rule).
  func testIdentityField() throws {
    func one(_ identity: String) throws -> Cluster {
      let yaml = "apiVersion: kopilot.smartx.com/v1alpha1\nkind: Cluster\nmetadata: {name: a}\ntoken: 0123456789abcdef0123\n\(identity)\n"
      let clusters = try ClusterFile.parse(yaml)
      return try XCTUnwrap(clusters.first)
    }
    XCTAssertNil(try one("").identity, "absent: the hub's default")
    XCTAssertEqual(try one("identity: passthrough").identity, .passthrough)
    XCTAssertEqual(try one("identity: agent").identity, .agent)
    XCTAssertThrowsError(try one("identity: admin")) { e in
      XCTAssertTrue("\(e)".contains("identity must be one of impersonate, passthrough, agent"), "\(e)")
    }
  }

  func testMalformed() {
    let ok = "apiVersion: kopilot.smartx.com/v1alpha1\nkind: Cluster\n"
    let rows: [(note: String, yaml: String, code: HubError.Code, expect: [String])] = [
      ("not YAML", "a: [b\n", .syntax, ["c.yaml", "not valid YAML"]),
      ("a scalar document", "just text\n", .invalid, ["c.yaml:1", "expected a Kubernetes object"]),
      ("no kind", "apiVersion: v1\nmetadata: {name: x}\n", .invalid, ["kind is missing"]),
      ("other kind", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", .invalid, ["ConfigMap default/x", "only kind Cluster"]),
      ("old apiVersion", "apiVersion: kopilot.smartx.com/v1\nkind: Cluster\nmetadata: {name: x}\ntoken: aaaaaaaaaaaaaaaaaaaa\n",
       .invalid, ["apiVersion must be kopilot.smartx.com/v1alpha1"]),
      ("no name", ok + "metadata: {namespace: a}\ntoken: aaaaaaaaaaaaaaaaaaaa\n", .invalid, ["metadata.name is missing"]),
      ("upper-case name", ok + "metadata: {name: Sample}\ntoken: aaaaaaaaaaaaaaaaaaaa\n", .invalid, ["c.yaml:1: Cluster default/Sample", "DNS-1123 subdomain"]),
      ("underscore namespace", ok + "metadata: {name: a, namespace: my_ns}\ntoken: aaaaaaaaaaaaaaaaaaaa\n", .invalid, ["DNS-1123 label"]),
      ("dot in namespace", ok + "metadata: {name: a, namespace: a.b}\ntoken: aaaaaaaaaaaaaaaaaaaa\n", .invalid, ["DNS-1123 label"]),
      ("no token", ok + "metadata: {name: a}\n", .invalid, ["token is missing", "top-level"]),
      ("token under spec", ok + "metadata: {name: a}\nspec: {token: aaaaaaaaaaaaaaaaaaaa}\n", .invalid, ["token is missing"]),
      ("short token", ok + "metadata: {name: a}\ntoken: short\n", .invalid, ["at least 16 characters"]),
      ("token with a space", ok + "metadata: {name: a}\ntoken: \"aaaaaaaa aaaaaaaaaaa\"\n", .invalid, ["printable ASCII"]),
      ("metadata a list", ok + "metadata: [a]\ntoken: aaaaaaaaaaaaaaaaaaaa\n", .invalid, ["metadata"]),
      ("duplicate name", ok + "metadata: {name: a}\ntoken: aaaaaaaaaaaaaaaaaaaa\n---\n" + ok + "metadata: {name: a}\ntoken: bbbbbbbbbbbbbbbbbbbb\n",
       .duplicate, ["c.yaml:6: Cluster default/a", "defined twice (first at line 1)"]),
      ("duplicate token", ok + "metadata: {name: a}\ntoken: aaaaaaaaaaaaaaaaaaaa\n---\n" + ok + "metadata: {name: b}\ntoken: aaaaaaaaaaaaaaaaaaaa\n",
       .duplicate, ["c.yaml:6: Cluster default/b", "same token as Cluster default/a (line 1)"]),
      ("items not a list", "apiVersion: v1\nkind: List\nitems: {a: b}\n", .invalid, ["items must be a sequence"]),
    ]
    for r in rows {
      XCTAssertThrowsError(try ClusterFile.parse(r.yaml, file: "c.yaml"), r.note) { e in
        guard let e = e as? HubError else { return XCTFail("\(r.note): \(e)") }
        XCTAssertEqual(e.code, r.code, "\(r.note): \(e)")
        for s in r.expect { XCTAssertTrue(e.description.contains(s), "\(r.note): \"\(e)\" lacks \"\(s)\"") }
        XCTAssertFalse(e.description.contains("aaaaaaaaaaaaaaaaaaaa"), "\(r.note): an error must not print a token")
      }
    }
  }

  func testLookupByToken() {
    let t = ClusterTable([
      Cluster(namespace: "a", name: "x", token: "tokentokentoken-1"),
      Cluster(namespace: "b", name: "y", token: "tokentokentoken-2"),
    ])
    XCTAssertEqual(t.cluster(forAgentToken: "tokentokentoken-2")?.id, "b_y")
    XCTAssertNil(t.cluster(forAgentToken: "tokentokentoken-"))
    XCTAssertNil(t.cluster(forAgentToken: "tokentokentoken-22"))
    XCTAssertNil(t.cluster(forAgentToken: ""))
    XCTAssertEqual(t.cluster(id: "a_x")?.name, "x")
    XCTAssertNil(t.cluster(id: "a_y"))
  }

  func testDiff() {
    let old = [Cluster(namespace: "a", name: "x", token: "t1"), Cluster(namespace: "a", name: "y", token: "t2"),
               Cluster(namespace: "a", name: "z", token: "t3")]
    let new = [Cluster(namespace: "a", name: "x", token: "t1"), Cluster(namespace: "a", name: "y", token: "t9"),
               Cluster(namespace: "a", name: "w", token: "t4")]
    let d = ClusterChange.diff(old: old, new: new)
    XCTAssertEqual(d, [
      ClusterChange(kind: .added, clusterID: "a_w"),
      ClusterChange(kind: .tokenChanged, clusterID: "a_y"),
      ClusterChange(kind: .removed, clusterID: "a_z"),
    ])
    XCTAssertEqual(d.filter(\.closesSessions).map(\.clusterID), ["a_y", "a_z"])
    XCTAssertEqual(ClusterChange.diff(old: old, new: old), [])
  }
}
