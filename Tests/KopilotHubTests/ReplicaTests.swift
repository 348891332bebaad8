import Foundation
import KopilotKube
import XCTest

@testable import KopilotHub

final class ReplicaTests: XCTestCase {
  func testModeChoice() throws {
    XCTAssertEqual(try HubMode.choose(flag: nil, kubeconfig: nil, environment: [:]).mode, .embedded)
    XCTAssertEqual(try HubMode.choose(flag: nil, kubeconfig: nil, environment: ["KUBECONFIG": "/x"]).mode, .embedded)
    let pod = try HubMode.choose(flag: nil, kubeconfig: nil, environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1"])
    XCTAssertEqual(pod.mode, .kubernetes)
    XCTAssertTrue(pod.reason.contains("KUBERNETES_SERVICE_HOST"))
    XCTAssertEqual(try HubMode.choose(flag: nil, kubeconfig: "/k", environment: [:]).mode, .kubernetes)
    XCTAssertEqual(try HubMode.choose(flag: "embedded", kubeconfig: nil, environment: ["KUBERNETES_SERVICE_HOST": "h"]).mode, .embedded)
    XCTAssertThrowsError(try HubMode.choose(flag: "embedded", kubeconfig: "/k", environment: [:]))
    XCTAssertThrowsError(try HubMode.choose(flag: "cloud", kubeconfig: nil, environment: [:]))
  }

  func slice(_ eps: [(String, String, Bool?)], port: Int = 8444) -> EndpointSliceObject {
    EndpointSliceObject(
      metadata: ObjectMeta(name: "kopilot-hub-abc", namespace: "kopilot-system"), addressType: "IPv4",
      endpoints: eps.map { name, ip, ready in
        .init(addresses: [ip], conditions: .init(ready: ready, serving: ready, terminating: nil),
              targetRef: .init(kind: "Pod", name: name, namespace: "kopilot-system"))
      },
      ports: [.init(name: "https", port: 8443), .init(name: "peer", port: port)])
  }

  func testPeerTableReadsThePeerPortAndReadiness() {
    let t = PeerTable()
    XCTAssertNil(t.knownNames(), "nothing is stale before the first list")
    t.apply(.synced([slice([("hub-a", "10.0.0.1", true), ("hub-b", "10.0.0.2", false), ("hub-c", "10.0.0.3", nil)])]))
    XCTAssertEqual(t.peer(named: "hub-a"), PeerEndpoint(name: "hub-a", host: "10.0.0.1", port: 8444, ready: true))
    XCTAssertEqual(t.peer(named: "hub-b")?.ready, false)
    XCTAssertEqual(t.peer(named: "hub-c")?.ready, true, "no condition means ready")
    XCTAssertEqual(t.knownNames(), ["hub-a", "hub-b", "hub-c"])
    t.apply(.deleted(slice([])))
    XCTAssertEqual(t.knownNames(), [])
  }

  func testPlacementPrefersLocalThenReadyHolders() {
    let local = LocalSessions()
    let peers = PeerTable()
    peers.apply(.synced([slice([("hub-a", "10.0.0.1", true), ("hub-b", "10.0.0.2", true), ("hub-c", "10.0.0.3", false)])]))
    let holders = Box<[String]>([])
    let p = ReplicaPlacement(selfName: "hub-a", local: local, peers: peers, holders: { _ in holders.value })
    guard case .nowhere(let msg) = p.place(clusterID: "default_sample") else { return XCTFail("expected nowhere") }
    XCTAssertTrue(msg.contains("default/sample"))
    holders.value = ["hub-c"]  // not ready
    XCTAssertEqual(p.place(clusterID: "default_sample"), .nowhere(msg))
    holders.value = ["hub-a", "hub-b", "hub-c"]  // hub-a is this replica, without a session
    XCTAssertEqual(p.place(clusterID: "default_sample"), .peer(PeerEndpoint(name: "hub-b", host: "10.0.0.2", port: 8444, ready: true)))
    local.changed(cluster: "default_sample", up: true)
    XCTAssertEqual(p.place(clusterID: "default_sample"), .local)
    local.changed(cluster: "default_sample", up: false)
    XCTAssertNotEqual(p.place(clusterID: "default_sample"), .local)
  }

  func testStatusEditKeepsOtherReplicasAndDropsStaleOnes() throws {
    let since = Date(timeIntervalSince1970: 1_800_000_000)
    let old: [String: Any] = ["hubs": [
      ["name": "hub-b", "address": "10.0.0.2", "sessions": 2, "since": "2027-01-15T08:00:00Z"],
      ["name": "hub-gone", "address": "10.0.0.9", "sessions": 1, "since": "2027-01-15T08:00:00Z"],
    ], "sessions": 3, "connected": true]
    let new = try XCTUnwrap(ClusterStatusEdit.apply(status: old, replica: "hub-a", address: "10.0.0.1",
                                                    entry: .init(count: 1, since: since), liveReplicas: ["hub-a", "hub-b"]))
    XCTAssertEqual((new["hubs"] as? [[String: Any]])?.compactMap { $0["name"] as? String }, ["hub-a", "hub-b"])
    XCTAssertEqual(new["sessions"] as? Int, 3)
    XCTAssertEqual(new["connected"] as? Bool, true)
    XCTAssertEqual(ClusterStatusEdit.holders(new).sorted(), ["hub-a", "hub-b"])
    XCTAssertEqual((new["hubs"] as? [[String: Any]])?.first?["since"] as? String, "2027-01-15T08:00:00Z")
    // Written again with the same entry: nothing to do.
    XCTAssertNil(ClusterStatusEdit.apply(status: new, replica: "hub-a", address: "10.0.0.1",
                                         entry: .init(count: 1, since: since), liveReplicas: ["hub-a", "hub-b"]))
    // The last session here goes: only hub-b's remain.
    let after = try XCTUnwrap(ClusterStatusEdit.apply(status: new, replica: "hub-a", address: "10.0.0.1", entry: nil, liveReplicas: nil))
    XCTAssertEqual(after["sessions"] as? Int, 2)
    let none = try XCTUnwrap(ClusterStatusEdit.apply(status: nil, replica: "hub-a", address: "10.0.0.1", entry: nil, liveReplicas: nil))
    XCTAssertEqual(none["connected"] as? Bool, false)
    XCTAssertEqual(ClusterStatusWriter.path("default_sample"), "/apis/kopilot.smartx.com/v1alpha1/namespaces/default/clusters/sample")
    XCTAssertNil(ClusterStatusWriter.path("nounderscore"))
  }
}
