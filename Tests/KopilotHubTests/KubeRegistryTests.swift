import Foundation
import KopilotKube
import XCTest
@testable import KopilotHub

/// Stands in for the informer: the test pushes events through `send`.
final class FakeClusterSource: ClusterEventSource, @unchecked Sendable {
  let handler: KubeClusterRegistry.EventHandler
  private(set) var started = 0
  private(set) var stopped = 0
  init(_ handler: @escaping KubeClusterRegistry.EventHandler) { self.handler = handler }
  func start() { started += 1 }
  func stop() { stopped += 1 }
  func waitForSync(timeout: TimeInterval) -> Bool { true }
  func send(_ e: Informer<ClusterObject>.Event) { handler(e) }
}

final class KubeRegistryTests: XCTestCase {
  let tokA = "token-of-a-0123456789"
  let tokB = "token-of-b-0123456789"

  func obj(_ ns: String, _ name: String, _ token: String?, rv: String = "1", hubs: [HubSessions]? = nil) -> ClusterObject {
    ClusterObject(namespace: ns, name: name, token: token, resourceVersion: rv,
                  status: hubs.map { ClusterStatus(connected: true, sessions: $0.reduce(0) { $0 + $1.sessions }, hubs: $0) })
  }

  func testDecodesAClusterAsTheAPIServerSendsIt() throws {
    let json = """
      {"apiVersion":"kopilot.smartx.com/v1alpha1","kind":"Cluster",
       "metadata":{"name":"sample","namespace":"default","resourceVersion":"42","uid":"x"},
       "token":"abcdefghijklmnop0123",
       "status":{"connected":true,"sessions":3,"hubs":[
         {"name":"hub-0","address":"10.0.0.5:8443","sessions":2,"since":"2026-01-01T00:00:00Z"},
         {"name":"hub-1","address":"10.0.0.6:8443","sessions":1}]}}
      """
    let o = try JSONDecoder().decode(ClusterObject.self, from: Data(json.utf8))
    XCTAssertEqual(o.id, "default_sample")
    XCTAssertEqual(o.key, "default/sample")
    XCTAssertEqual(o.metadata.resourceVersion, "42")
    XCTAssertEqual(o.status?.sessions, 3)
    XCTAssertEqual(o.status?.hubs, [HubSessions(name: "hub-0", address: "10.0.0.5:8443", sessions: 2, since: "2026-01-01T00:00:00Z"),
                                    HubSessions(name: "hub-1", address: "10.0.0.6:8443", sessions: 1)])
    XCTAssertEqual(try o.served.get(), Cluster(namespace: "default", name: "sample", token: "abcdefghijklmnop0123"))
    XCTAssertFalse("\(o)".contains("abcdefghijklmnop0123"), "description shows the token")

    let bare = try JSONDecoder().decode(ClusterObject.self, from: Data(#"{"metadata":{"name":"x","namespace":"y"}}"#.utf8))
    XCTAssertNil(bare.token)
    XCTAssertNil(bare.status)
  }

  func testSyncAddsOnlyValidClusters() {
    var s = KubeClusterState()
    XCTAssertFalse(s.synced)
    let out = s.apply(.synced([
      obj("default", "a", tokA),
      obj("default", "b", tokB),
      obj("default", "short", "tooshort"),
      obj("default", "none", nil),
      obj("default", "empty", ""),
      obj("default", "spaced", "has a space in it 0123"),
      obj("default", "ctl", "control\u{7}char0123456789"),
      obj("other", "bad_name", "token-of-bad-0123456789"),
    ]))
    XCTAssertTrue(s.synced)
    XCTAssertEqual(out.changes, [ClusterChange(kind: .added, clusterID: "default_a"), ClusterChange(kind: .added, clusterID: "default_b")])
    XCTAssertEqual(s.table.clusters.map(\.id), ["default_a", "default_b"])
    XCTAssertEqual(s.table.cluster(forAgentToken: tokB)?.id, "default_b")
    XCTAssertNil(s.table.cluster(forAgentToken: "tooshort"))
    XCTAssertEqual(out.warnings.count, 6, "\(out.warnings)")
    XCTAssertTrue(out.warnings.contains { $0.contains("default/short") && $0.contains("at least 16") }, "\(out.warnings)")
    XCTAssertTrue(out.warnings.contains { $0.contains("default/none") && $0.contains("token is missing") })
    XCTAssertTrue(out.warnings.contains { $0.contains("default/ctl") && $0.contains("printable") })
    XCTAssertTrue(out.warnings.contains { $0.contains("other/bad_name") && $0.contains("'_'") })
    for w in out.warnings {
      for t in ["tooshort", "has a space", "token-of-bad"] { XCTAssertFalse(w.contains(t), "token in a warning: \(w)") }
    }
    // Every object is kept, served or not.
    XCTAssertEqual(s.objects.count, 8)
    XCTAssertEqual(s.object(id: "default_short")?.token, "tooshort")
  }

  func testWarnsOncePerResourceVersion() {
    var s = KubeClusterState()
    XCTAssertEqual(s.apply(.synced([obj("d", "short", "x", rv: "5")])).warnings.count, 1)
    // A relist of the same version: nothing new to say.
    XCTAssertEqual(s.apply(.synced([obj("d", "short", "x", rv: "5")])).warnings, [])
    XCTAssertEqual(s.apply(.added(obj("d", "other", tokA))).warnings, [])
    // A new version still wrong: said again.
    XCTAssertEqual(s.apply(.modified(obj("d", "short", "y", rv: "6"))).warnings.count, 1)
    // Fixed, then broken again at a version seen before it was fixed.
    XCTAssertEqual(s.apply(.modified(obj("d", "short", tokB, rv: "7"))).changes, [ClusterChange(kind: .added, clusterID: "d_short")])
    XCTAssertEqual(s.apply(.modified(obj("d", "short", "z", rv: "6"))).warnings.count, 1)
  }

  func testEventsGiveDiffs() {
    var s = KubeClusterState()
    _ = s.apply(.synced([obj("d", "a", tokA)]))
    XCTAssertEqual(s.apply(.added(obj("d", "b", tokB))).changes, [ClusterChange(kind: .added, clusterID: "d_b")])

    // A status update (new resourceVersion, same token): no change, but the
    // object by id is the new one.
    let hubs = [HubSessions(name: "hub-0", address: "10.1.1.1:8443", sessions: 2)]
    let st = s.apply(.modified(obj("d", "a", tokA, rv: "2", hubs: hubs)))
    XCTAssertEqual(st, KubeClusterState.Outcome())
    XCTAssertEqual(s.object(id: "d_a")?.status?.hubs, hubs)
    XCTAssertEqual(s.table.cluster(id: "d_a")?.token, tokA)

    let newTok = "rotated-token-0123456789"
    XCTAssertEqual(s.apply(.modified(obj("d", "a", newTok, rv: "3"))).changes, [ClusterChange(kind: .tokenChanged, clusterID: "d_a")])
    XCTAssertNil(s.table.cluster(forAgentToken: tokA))
    XCTAssertEqual(s.table.cluster(forAgentToken: newTok)?.id, "d_a")

    // Made invalid: removed from the served set.
    XCTAssertEqual(s.apply(.modified(obj("d", "a", "", rv: "4"))).changes, [ClusterChange(kind: .removed, clusterID: "d_a")])
    XCTAssertEqual(s.apply(.modified(obj("d", "a", newTok, rv: "5"))).changes, [ClusterChange(kind: .added, clusterID: "d_a")])

    XCTAssertEqual(s.apply(.deleted(obj("d", "b", tokB))).changes, [ClusterChange(kind: .removed, clusterID: "d_b")])
    XCTAssertEqual(s.apply(.deleted(obj("d", "b", tokB))).changes, [], "deleting twice")
    XCTAssertNil(s.object(id: "d_b"))

    // A relist that lacks a cluster removes it; one with a new token changes it.
    let out = s.apply(.synced([obj("d", "c", tokB)]))
    XCTAssertEqual(out.changes, [ClusterChange(kind: .removed, clusterID: "d_a"), ClusterChange(kind: .added, clusterID: "d_c")])
  }

  func testSharedTokenServesNeither() {
    var s = KubeClusterState()
    _ = s.apply(.synced([obj("d", "a", tokA)]))
    let out = s.apply(.added(obj("e", "copy", tokA)))
    XCTAssertEqual(out.changes, [ClusterChange(kind: .removed, clusterID: "d_a")])
    XCTAssertEqual(out.warnings.count, 2)
    XCTAssertTrue(out.warnings.allSatisfy { $0.contains("same token") && !$0.contains(tokA) }, "\(out.warnings)")
    XCTAssertNil(s.table.cluster(forAgentToken: tokA))
    XCTAssertEqual(s.apply(.deleted(obj("e", "copy", tokA))).changes, [ClusterChange(kind: .added, clusterID: "d_a")])
  }

  func testRegistryDrivenByAnEventSource() throws {
    let made = Box<FakeClusterSource?>(nil)
    let reg = KubeClusterRegistry { handler in
      let f = FakeClusterSource(handler)
      made.value = f
      return f
    }
    let src = try XCTUnwrap(made.value)
    let seen = Box<[[ClusterChange]]>([])
    reg.onChange { changes in
      // The new state is in force when the handler runs.
      XCTAssertEqual(reg.clusters().count, changes.contains { $0.kind == .removed } ? 0 : 1)
      seen.value.append(changes)
    }
    reg.start()
    XCTAssertEqual(src.started, 1)
    XCTAssertFalse(reg.hasSynced)
    XCTAssertNil(reg.cluster(forAgentToken: tokA))

    src.send(.synced([obj("d", "a", tokA)]))
    XCTAssertTrue(reg.hasSynced)
    XCTAssertTrue(reg.waitForSync(timeout: 0))
    XCTAssertEqual(reg.cluster(forAgentToken: tokA)?.id, "d_a")
    XCTAssertEqual(reg.cluster(id: "d_a")?.name, "a")
    XCTAssertEqual(reg.clusters().map(\.id), ["d_a"])

    src.send(.modified(obj("d", "a", tokA, rv: "2", hubs: [HubSessions(name: "h", address: "1.2.3.4:1", sessions: 1)])))
    XCTAssertEqual(reg.object(id: "d_a")?.status?.hubs?.first?.name, "h")
    XCTAssertEqual(reg.objects().map(\.id), ["d_a"])

    src.send(.deleted(obj("d", "a", tokA)))
    XCTAssertNil(reg.cluster(id: "d_a"))
    XCTAssertEqual(seen.value, [[ClusterChange(kind: .added, clusterID: "d_a")], [ClusterChange(kind: .removed, clusterID: "d_a")]])
    XCTAssertTrue(seen.value.allSatisfy { !$0.isEmpty })

    reg.stop()
    XCTAssertEqual(src.stopped, 1)
  }

  func testRegistryWithoutSourceTakesEventsDirectly() {
    let reg = KubeClusterRegistry()
    XCTAssertFalse(reg.waitForSync(timeout: 0))
    reg.apply(.synced([obj("d", "a", tokA)]))
    XCTAssertTrue(reg.waitForSync(timeout: 0))
    XCTAssertEqual(reg.cluster(forAgentToken: tokA)?.id, "d_a")
  }
}
