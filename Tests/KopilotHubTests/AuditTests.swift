import Foundation
import KopilotHub
import XCTest

#if canImport(Glibc)
  import Glibc
#endif

// The audit log's parts without a hub: request attributes as kube-apiserver
// derives them, the Event line, rotation, and a sink that never blocks.
final class AuditTests: XCTestCase {
  func testVerbsAndObjectRefsAsTheAPIServerDerivesThem() {
    typealias Ref = RequestAttributes.ObjectRef
    let rows: [(String, String, String?, String, Ref?)] = [
      ("GET", "/api/v1/namespaces/default/pods", nil, "list", Ref(resource: "pods", namespace: "default", apiGroup: "", apiVersion: "v1")),
      ("GET", "/api/v1/namespaces/default/pods", "watch=true&resourceVersion=5", "watch",
       Ref(resource: "pods", namespace: "default", apiGroup: "", apiVersion: "v1")),
      ("GET", "/api/v1/pods", "watch=1", "watch", Ref(resource: "pods", apiGroup: "", apiVersion: "v1")),
      ("HEAD", "/api/v1/namespaces/default/pods/web", nil, "get",
       Ref(resource: "pods", namespace: "default", name: "web", apiGroup: "", apiVersion: "v1")),
      ("POST", "/api/v1/namespaces/default/configmaps", nil, "create",
       Ref(resource: "configmaps", namespace: "default", apiGroup: "", apiVersion: "v1")),
      ("PUT", "/apis/apps/v1/namespaces/ci/deployments/api", nil, "update",
       Ref(resource: "deployments", namespace: "ci", name: "api", apiGroup: "apps", apiVersion: "v1")),
      ("PATCH", "/apis/apps/v1/namespaces/ci/deployments/api/scale", nil, "patch",
       Ref(resource: "deployments", namespace: "ci", name: "api", apiGroup: "apps", apiVersion: "v1", subresource: "scale")),
      ("DELETE", "/api/v1/namespaces/default/configmaps/x", nil, "delete",
       Ref(resource: "configmaps", namespace: "default", name: "x", apiGroup: "", apiVersion: "v1")),
      ("DELETE", "/api/v1/namespaces/default/configmaps", nil, "deletecollection",
       Ref(resource: "configmaps", namespace: "default", apiGroup: "", apiVersion: "v1")),
      ("GET", "/api/v1/namespaces/default/pods/web/exec", "command=ls", "get",
       Ref(resource: "pods", namespace: "default", name: "web", apiGroup: "", apiVersion: "v1", subresource: "exec")),
      ("POST", "/api/v1/namespaces/default/pods/web/portforward", nil, "create",
       Ref(resource: "pods", namespace: "default", name: "web", apiGroup: "", apiVersion: "v1", subresource: "portforward")),
      ("GET", "/api/v1/namespaces/default/pods/web/log", "follow=true", "get",
       Ref(resource: "pods", namespace: "default", name: "web", apiGroup: "", apiVersion: "v1", subresource: "log")),
      ("GET", "/api/v1/namespaces/kube-system", nil, "get",
       Ref(resource: "namespaces", namespace: "kube-system", name: "kube-system", apiGroup: "", apiVersion: "v1")),
      ("GET", "/api/v1/namespaces", nil, "list", Ref(resource: "namespaces", apiGroup: "", apiVersion: "v1")),
      ("GET", "/version", nil, "get", nil),
      ("GET", "/apis/apps", nil, "get", nil),
      ("HEAD", "/healthz", nil, "get", nil),
      ("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", nil, "create",
       Ref(resource: "selfsubjectreviews", apiGroup: "authentication.k8s.io", apiVersion: "v1")),
    ]
    for (method, path, query, verb, ref) in rows {
      let got = RequestAttributes.of(method: method, path: path, query: query)
      XCTAssertEqual(got.verb, verb, "\(method) \(path)?\(query ?? "")")
      XCTAssertEqual(got.objectRef, ref, "\(method) \(path)?\(query ?? "")")
    }
  }

  func testLongRunningRequests() {
    func long(_ m: String, _ p: String, _ q: String?, upgrade: Bool = false) -> Bool {
      let a = RequestAttributes.of(method: m, path: p, query: q)
      return RequestAttributes.isLongRunning(verb: a.verb, objectRef: a.objectRef, query: q, upgrade: upgrade)
    }
    XCTAssertTrue(long("GET", "/api/v1/pods", "watch=true"))
    XCTAssertTrue(long("GET", "/api/v1/namespaces/d/pods/p/log", "follow=true"))
    XCTAssertFalse(long("GET", "/api/v1/namespaces/d/pods/p/log", nil))
    XCTAssertTrue(long("GET", "/api/v1/namespaces/d/pods/p/exec", "command=sh", upgrade: true))
    XCTAssertFalse(long("GET", "/api/v1/namespaces/d/pods", nil))
  }

  /// The fields audit.k8s.io/v1 Event requires, with their JSON types, and
  /// the microsecond timestamps kube-apiserver writes.
  func testEventLineIsAnAuditV1Event() throws {
    let now = Date(timeIntervalSince1970: 1_796_000_000.123456)
    let e = AuditEvent(
      auditID: "0d9c4b1e-6f0a-4c8e-9a51-3b2f1e0d7c6a", stage: "ResponseComplete",
      requestURI: "/proxy/default_sample/api/v1/namespaces/default/pods?limit=500", verb: "list",
      user: .init(username: "alice", uid: "u-1", groups: ["dev", "system:authenticated"]),
      impersonatedUser: .init(username: "kopilot:alice", groups: ["kopilot:callers", "kopilot:dev"]),
      sourceIPs: ["10.0.0.7"], userAgent: "kubectl/v1.33.0",
      objectRef: RequestAttributes.of(method: "GET", path: "/api/v1/namespaces/default/pods", query: nil).objectRef,
      responseStatus: .init(code: 200), requestReceivedTimestamp: AuditEvent.timestamp(now),
      stageTimestamp: AuditEvent.timestamp(now.addingTimeInterval(0.002)),
      annotations: ["kopilot.smartx.com/cluster": "default/sample"])
    let line = e.line()
    XCTAssertEqual(line.last, 0x0a)
    XCTAssertEqual(line.filter { $0 == 0x0a }.count, 1, "one event, one line")
    let o = try XCTUnwrap(JSONSerialization.jsonObject(with: line) as? [String: Any])
    XCTAssertEqual(o["kind"] as? String, "Event")
    XCTAssertEqual(o["apiVersion"] as? String, "audit.k8s.io/v1")
    XCTAssertEqual(o["level"] as? String, "Metadata")
    for key in ["auditID", "stage", "requestURI", "verb", "requestReceivedTimestamp", "stageTimestamp"] {
      XCTAssertNotNil(o[key] as? String, key)
    }
    XCTAssertEqual((o["user"] as? [String: Any])?["username"] as? String, "alice")
    XCTAssertEqual((o["impersonatedUser"] as? [String: Any])?["username"] as? String, "kopilot:alice")
    XCTAssertEqual(o["sourceIPs"] as? [String], ["10.0.0.7"])
    XCTAssertEqual((o["responseStatus"] as? [String: Any])?["code"] as? Int, 200)
    XCTAssertEqual((o["objectRef"] as? [String: Any])?["resource"] as? String, "pods")
    XCTAssertEqual(o["requestReceivedTimestamp"] as? String, "2026-11-30T00:53:20.123456Z")
    XCTAssertNil(o["requestObject"], "Metadata level: no bodies")
  }

  static func event(_ n: Int, size: Int = 0) -> AuditEvent {
    AuditEvent(auditID: "id-\(n)", stage: "ResponseComplete", requestURI: "/proxy/a_b/x?" + String(repeating: "q", count: size),
               verb: "get", user: .init(username: "u"), sourceIPs: ["127.0.0.1"],
               requestReceivedTimestamp: "2026-12-06T00:00:00.000000Z", stageTimestamp: "2026-12-06T00:00:00.000001Z")
  }

  func testEveryEventIsWrittenInOrder() throws {
    let dir = try tempDir()
    let path = dir.appendingPathComponent("audit.log").path
    let log = try AuditLog(path: path)
    for i in 0..<500 { log.record(Self.event(i)) }
    log.close()
    let ids = try Data(contentsOf: URL(fileURLWithPath: path)).split(separator: 0x0a).map {
      (try? JSONSerialization.jsonObject(with: Data($0)) as? [String: Any])?["auditID"] as? String ?? ""
    }
    XCTAssertEqual(ids, (0..<500).map { "id-\($0)" })
    XCTAssertEqual(log.droppedEvents, 0)
    let mode = (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue
    XCTAssertEqual(mode, 0o600)
  }

  /// --audit-log-maxsize 1 and --audit-log-maxbackup 2: about 5 MiB of
  /// events leave the file and two backups, none over 1 MiB, and no event
  /// is split across files.
  func testRotationKeepsAtMostTheBackups() throws {
    let dir = try tempDir()
    let path = dir.appendingPathComponent("audit.log").path
    var rotation = AuditLog.Rotation()
    rotation.maxSizeMB = 1
    rotation.maxBackups = 2
    let log = try AuditLog(path: path, rotation: rotation, queueLimit: 64 << 20)
    for i in 0..<5000 {
      log.record(Self.event(i, size: 1000))
      if i % 500 == 0 { usleep(20_000) }  // several rotations, each its own file name
    }
    log.close(timeout: 30)
    let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
    XCTAssertEqual(files.count, 3, "\(files)")
    XCTAssertTrue(files.contains("audit.log"))
    XCTAssertTrue(files.filter { $0 != "audit.log" }.allSatisfy { $0.hasPrefix("audit-") && $0.hasSuffix(".log") }, "\(files)")
    for f in files {
      let data = try Data(contentsOf: dir.appendingPathComponent(f))
      XCTAssertLessThanOrEqual(data.count, 1 << 20, f)
      XCTAssertEqual(data.last, 0x0a, "\(f) ends with a whole event")
    }
  }

  /// A sink nobody reads (a FIFO whose reader never reads): recording goes
  /// on and returns, the events that do not fit are dropped and counted.
  func testASinkThatBlocksNeverStallsRecording() throws {
    let dir = try tempDir()
    let fifo = dir.appendingPathComponent("audit.fifo").path
    XCTAssertEqual(mkfifo(fifo, 0o600), 0)
    let reader = open(fifo, O_RDONLY | O_NONBLOCK)
    XCTAssertGreaterThanOrEqual(reader, 0)
    defer { Glibc.close(reader) }
    let log = try AuditLog(path: fifo, queueLimit: 256 << 10)
    let done = expectation(description: "every record call returned")
    DispatchQueue.global().async {
      for i in 0..<5000 { log.record(Self.event(i, size: 500)) }
      done.fulfill()
    }
    // A guard against a hang, not a timing claim: 5000 calls that each
    // only append to a queue.
    wait(for: [done], timeout: 60)
    XCTAssertGreaterThan(log.droppedEvents, 0, "about 2.5 MiB cannot fit a 64 KiB pipe and a 256 KiB queue")
    // Now read the pipe, so the writer can finish and close its end (and
    // never meets a closed reader: SIGPIPE).
    _ = fcntl(reader, F_SETFL, 0)
    let drained = expectation(description: "the writer closed the pipe")
    DispatchQueue.global().async {
      var buf = [UInt8](repeating: 0, count: 65536)
      while read(reader, &buf, buf.count) > 0 {}
      drained.fulfill()
    }
    log.close(timeout: 30)
    wait(for: [drained], timeout: 60)
  }

  private func tempDir() throws -> URL {
    let d = FileManager.default.temporaryDirectory.appendingPathComponent("audit-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
    addTeardownBlock { try? FileManager.default.removeItem(at: d) }
    return d
  }
}
