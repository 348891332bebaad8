import Foundation
import XCTest
@testable import KopilotHub

final class ClusterAdminTests: XCTestCase {
  func testAddListRemoveKeepsTheRest() throws {
    let dir = try makeTempDir()
    let path = dir + "/clusters.yaml"
    let original = """
      # my fleet
      apiVersion: kopilot.smartx.com/v1alpha1
      kind: Cluster
      metadata:
        name: keep
        namespace: default
      token: keep-keep-keep-keep  # hand-made
      """
    try write(original, to: path)
    let admin = ClusterAdmin(path: path)
    let t1 = try admin.addCluster(namespace: "fleet", name: "edge-1")
    let t2 = try admin.addCluster(name: "edge-2")
    XCTAssertNotEqual(t1, t2)
    XCTAssertEqual(t1.count, 43)
    XCTAssertEqual(try admin.listClusters().map(\.id), ["default_edge-2", "default_keep", "fleet_edge-1"])
    XCTAssertEqual(try admin.listClusters().first { $0.name == "edge-1" }?.token, t1)
    var text = try String(contentsOfFile: path, encoding: .utf8)
    XCTAssertTrue(text.hasPrefix(original), "the existing text, comments included, is untouched:\n\(text)")

    XCTAssertThrowsError(try admin.addCluster(namespace: "fleet", name: "edge-1")) { e in
      XCTAssertEqual((e as? HubError)?.code, .duplicate)
    }
    XCTAssertThrowsError(try admin.addCluster(namespace: "Bad_NS", name: "x")) { e in
      XCTAssertEqual((e as? HubError)?.code, .invalid)
    }

    try admin.removeCluster(namespace: "fleet", name: "edge-1")
    XCTAssertEqual(try admin.listClusters().map(\.id), ["default_edge-2", "default_keep"])
    text = try String(contentsOfFile: path, encoding: .utf8)
    XCTAssertTrue(text.contains("token: keep-keep-keep-keep  # hand-made"), text)
    XCTAssertFalse(text.contains(t1))
    XCTAssertThrowsError(try admin.removeCluster(namespace: "fleet", name: "edge-1")) { e in
      XCTAssertEqual((e as? HubError)?.code, .notFound)
    }
    // Removing the first document keeps the file's header comment.
    try admin.removeCluster(name: "keep")
    text = try String(contentsOfFile: path, encoding: .utf8)
    XCTAssertTrue(text.hasPrefix("# my fleet"), text)
    XCTAssertEqual(try admin.listClusters().map(\.id), ["default_edge-2"])
    try admin.removeCluster(name: "edge-2")
    XCTAssertEqual(try admin.listClusters(), [])
  }

  /// clusters.yaml holds agent tokens: a new file is 0600 from the start,
  /// and an edit leaves one that others could read readable by its owner
  /// alone.
  func testTheFileIsPrivate() throws {
    let dir = try makeTempDir()
    let path = dir + "/clusters.yaml"
    func mode() -> Int {
      ((try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? NSNumber)?.intValue ?? -1
    }
    let admin = ClusterAdmin(path: path)
    try admin.addCluster(name: "first")
    XCTAssertEqual(mode(), 0o600)
    XCTAssertEqual(chmod(path, 0o644), 0)
    try admin.addCluster(name: "second")
    XCTAssertEqual(mode(), 0o600)
    XCTAssertEqual(chmod(path, 0o640), 0)
    try admin.removeCluster(name: "first")
    XCTAssertEqual(mode(), 0o600)
  }

  func testAbsentFileAndLists() throws {
    let dir = try makeTempDir()
    let path = dir + "/c.yaml"
    let admin = ClusterAdmin(path: path)
    XCTAssertEqual(try admin.listClusters(), [])
    let t = try admin.addCluster(name: "first")
    XCTAssertEqual(try ClusterFile.parse(String(contentsOfFile: path, encoding: .utf8)),
                   [Cluster(namespace: "default", name: "first", token: t)])

    try write("""
      apiVersion: v1
      kind: List
      items:
      - {apiVersion: kopilot.smartx.com/v1alpha1, kind: Cluster, metadata: {name: a}, token: aaaaaaaaaaaaaaaaaaaa}
      - {apiVersion: kopilot.smartx.com/v1alpha1, kind: Cluster, metadata: {name: b}, token: bbbbbbbbbbbbbbbbbbbb}
      ---
      apiVersion: kopilot.smartx.com/v1alpha1
      kind: Cluster
      metadata: {name: c}
      token: cccccccccccccccccccc # c's
      """, to: path)
    try admin.removeCluster(name: "a")
    XCTAssertEqual(try admin.listClusters().map(\.name), ["b", "c"])
    XCTAssertTrue(try String(contentsOfFile: path, encoding: .utf8).contains("# c's"))
  }

  func testRefusesToEditABrokenFile() throws {
    let dir = try makeTempDir()
    let path = dir + "/c.yaml"
    try write("kind: Cluster\n", to: path)
    XCTAssertThrowsError(try ClusterAdmin(path: path).addCluster(name: "x"))
    XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "kind: Cluster\n")
  }
}
