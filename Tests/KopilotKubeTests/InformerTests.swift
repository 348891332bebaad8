import Foundation
import KopilotBase
import KopilotKubeConfig
import Logging
import XCTest

@testable import KopilotKube

/// What a handler saw, one line per event: "synced a/x,b/y", "added a/x", ...
final class Seen: @unchecked Sendable {
  private let lock = NSLock()
  private var lines: [String] = []
  var onEvent: (@Sendable (String) -> Void)?

  func add<T: KubeObject>(_ e: Informer<T>.Event) {
    let line: String
    switch e {
    case .synced(let all): line = "synced " + all.map(\.key).joined(separator: ",")
    case .added(let o): line = "added " + o.key
    case .modified(let o): line = "modified " + o.key
    case .deleted(let o): line = "deleted " + o.key
    }
    lock.lock()
    lines.append(line)
    let hook = onEvent
    lock.unlock()
    hook?(line)
  }

  var all: [String] {
    lock.lock()
    defer { lock.unlock() }
    return lines
  }
  var syncs: Int { all.filter { $0.hasPrefix("synced") }.count }
  func saw(_ line: String) -> Bool { all.contains(line) }
}

/// The informer against the fake host API server: paged lists, changes,
/// bookmarks, 410s by event and by status, closed watches, faults, stop.
final class InformerTests: XCTestCase {
  var host: FakeHost!
  var k: KubeClient!
  var informers: [Informer<TestCluster>] = []

  override func setUpWithError() throws {
    let certs = try KubeTestCerts.shared()
    host = try FakeHost(args: ["--bookmark-interval", "100ms"])
    var c = KubeClientConfig(server: host.url)
    c.caPEM = try certs.pem("ca.crt")
    c.bearerToken = FakeHost.adminToken
    k = try KubeClient(config: c, requestTimeout: 10, logger: Logger(label: "test"), tokenMaxAge: 60)
  }

  override func tearDown() {
    informers.forEach { $0.stop() }
    informers = []
    k?.shutdown()
    host?.stop()
  }

  func informer(_ seen: Seen, query: [(String, String)] = [], pageSize: Int = 500) -> Informer<TestCluster> {
    var logger = Logger(label: "informer-test")
    logger.logLevel = .debug
    let i = Informer<TestCluster>(client: k, path: clustersPath, query: query, what: "clusters", logger: logger,
                                  watchTimeouts: 240...480, pageSize: pageSize,
                                  backoff: Backoff(base: 0.05, cap: 0.4)) { seen.add($0) }
    informers.append(i)
    return i
  }

  @discardableResult
  func create(_ ns: String, _ name: String, labels: [String: String] = [:], token: String? = nil) async throws -> TestCluster {
    var o: [String: Any] = ["apiVersion": "kopilot.smartx.com/v1alpha1", "kind": "Cluster",
                            "metadata": ["name": name, "namespace": ns, "labels": labels] as [String: Any]]
    if let token { o["token"] = token }
    let data = try await k.send(method: "POST", path: clustersPath(ns), body: try JSONSerialization.data(withJSONObject: o))
    return try JSONDecoder().decode(TestCluster.self, from: data)
  }

  func fake(_ what: String, _ body: String? = nil) async throws {
    _ = try await k.send(method: "POST", path: "/_fake/" + what, body: body.map { Data($0.utf8) })
  }

  /// Waits until the informer's `n`-th watch has its answer (so that the
  /// server counts it among the open watches).
  func waitForWatch(_ n: Int = 1) {
    XCTAssertTrue(eventually { logLines("watch=1", " 200").count >= n }, host.logText)
  }

  /// Request lines of fakehost's -v log that contain every `needle`.
  func logLines(_ needles: String...) -> [String] {
    host.logText.split(separator: "\n").map(String.init).filter { l in needles.allSatisfy { l.contains($0) } }
  }

  func testSyncPagesThenFollowsChanges() async throws {
    for n in ["e", "a", "d", "c", "b"] { try await create("default", n) }
    let seen = Seen()
    let inf = informer(seen, pageSize: 2)
    XCTAssertFalse(inf.hasSynced)
    inf.start()
    XCTAssertTrue(inf.waitForSync(timeout: 30))
    XCTAssertTrue(inf.hasSynced)
    XCTAssertEqual(seen.all.first, "synced default/a,default/b,default/c,default/d,default/e")
    XCTAssertEqual(inf.objects.map(\.metadata.name), ["a", "b", "c", "d", "e"])
    XCTAssertEqual(logLines("GET \(clustersPath)?", "limit=2").count, 3, host.logText)

    try await create("other", "f")
    let patch = Data(#"{"metadata":{"labels":{"x":"y"}}}"#.utf8)
    _ = try await k.send(method: "PATCH", path: clustersPath("default") + "/a", body: patch, contentType: "application/merge-patch+json")
    _ = try await k.send(method: "DELETE", path: clustersPath("default") + "/b")
    XCTAssertTrue(eventually { seen.saw("deleted default/b") }, "\(seen.all)")
    XCTAssertEqual(seen.all.dropFirst(), ["added other/f", "modified default/a", "deleted default/b"])
    XCTAssertEqual(inf.objects.map(\.key), ["default/a", "default/c", "default/d", "default/e", "other/f"])
    XCTAssertEqual(inf.objects.first?.metadata.labels, ["x": "y"])
    // Each watch asks for bookmarks and ends on its own in 240..480 s.
    let watch = try XCTUnwrap(logLines("GET \(clustersPath)?", "watch=1").first)
    XCTAssertTrue(watch.contains("allowWatchBookmarks=true"), watch)
    let secs = watch.split(separator: "&").first { $0.hasPrefix("timeoutSeconds=") }.flatMap { Int($0.split(separator: "=")[1].prefix { $0.isNumber }) }
    XCTAssertTrue((240...480).contains(secs ?? 0), watch)
  }

  func testBookmarksAdvanceTheResourceVersionOnly() async throws {
    let seen = Seen()
    let inf = informer(seen, query: [("labelSelector", "team=a")])
    inf.start()
    XCTAssertTrue(inf.waitForSync(timeout: 30))
    waitForWatch()
    // A change the selector hides: only a bookmark can tell the informer.
    let hidden = try await create("default", "hidden", labels: ["team": "b"])
    let rv = try XCTUnwrap(hidden.metadata.resourceVersion)
    XCTAssertTrue(eventually { inf.resourceVersion == rv }, "at \(inf.resourceVersion), want \(rv)")
    XCTAssertEqual(seen.all, ["synced "])
    // A watch resumed after a close starts from the bookmark's version.
    try await fake("close-watches")
    XCTAssertTrue(eventually { !logLines("watch=1", "resourceVersion=\(rv)&").isEmpty }, host.logText)
    try await create("default", "shown", labels: ["team": "a"])
    XCTAssertTrue(eventually { seen.saw("added default/shown") }, "\(seen.all)")
    XCTAssertEqual(seen.syncs, 1)
  }

  func testExpiredErrorEventRelists() async throws {
    try await create("default", "a")
    let seen = Seen()
    let inf = informer(seen)
    inf.start()
    XCTAssertTrue(inf.waitForSync(timeout: 30))
    waitForWatch()
    try await fake("compact")
    XCTAssertTrue(eventually { seen.syncs == 2 }, "\(seen.all)")
    try await create("default", "b")
    XCTAssertTrue(eventually { seen.saw("added default/b") }, "\(seen.all)")
    XCTAssertEqual(seen.all, ["synced default/a", "synced default/a", "added default/b"])
  }

  func testHTTP410Relists() async throws {
    try await create("default", "a")
    let seen = Seen()
    let inf = informer(seen)
    inf.start()
    XCTAssertTrue(inf.waitForSync(timeout: 30))
    waitForWatch()
    try await fake("faults", #"{"pathPrefix":"\#(clustersPath)","status":410,"count":1}"#)
    try await fake("close-watches")
    XCTAssertTrue(eventually { seen.syncs == 2 }, "\(seen.all)")
    XCTAssertEqual(logLines("GET \(clustersPath)?", " 410").count, 1, host.logText)
  }

  func testClosedWatchResumesWithoutRelisting() async throws {
    let seen = Seen()
    let inf = informer(seen)
    inf.start()
    XCTAssertTrue(inf.waitForSync(timeout: 30))
    waitForWatch()
    let before = logLines("watch=1").count
    try await fake("close-watches")
    XCTAssertTrue(eventually { logLines("watch=1").count > before })
    try await create("default", "after")
    XCTAssertTrue(eventually { seen.saw("added default/after") }, "\(seen.all)")
    XCTAssertEqual(seen.syncs, 1)
    XCTAssertEqual(logLines("GET \(clustersPath)?", "limit=").count, 1, "listed again:\n\(host.logText)")
  }

  func testFaultsBackOffAndRecoverWithoutRelisting() async throws {
    let seen = Seen()
    let inf = informer(seen)
    inf.start()
    XCTAssertTrue(inf.waitForSync(timeout: 30))
    waitForWatch()
    try await fake("faults", #"{"pathPrefix":"\#(clustersPath)","status":500,"count":3}"#)
    try await fake("close-watches")
    try await create("default", "later")
    XCTAssertTrue(eventually { seen.saw("added default/later") }, "\(seen.all)")
    XCTAssertEqual(logLines("GET \(clustersPath)?", " 500").count, 3, host.logText)
    XCTAssertEqual(seen.syncs, 1)

    // A failing first list is retried the same way.
    try await fake("faults", #"{"pathPrefix":"\#(clustersPath)","status":503,"count":2}"#)
    let seen2 = Seen()
    let second = informer(seen2)
    second.start()
    XCTAssertTrue(second.waitForSync(timeout: 30))
    XCTAssertEqual(seen2.all.first, "synced default/later")
  }

  /// A Cluster that must have a token, so that one without fails to decode.
  struct StrictCluster: KubeObject {
    var metadata: ObjectMeta
    var token: String
  }

  func testUndecodableObjectsAreSkipped() async throws {
    try await create("default", "with", token: "t1")
    try await create("default", "without")
    let seen = Seen()
    let inf = Informer<StrictCluster>(client: k, path: clustersPath, query: [], what: "strict", logger: Logger(label: "t"),
                                      watchTimeouts: 240...480, pageSize: 500,
                                      backoff: Backoff(base: 0.05, cap: 0.4)) { seen.add($0) }
    defer { inf.stop() }
    inf.start()
    XCTAssertTrue(inf.waitForSync(timeout: 30))
    XCTAssertEqual(seen.all, ["synced default/with"])
    let skipped = try await create("default", "skipped")
    XCTAssertTrue(eventually { inf.resourceVersion == skipped.metadata.resourceVersion })
    try await create("default", "kept", token: "t2")
    XCTAssertTrue(eventually { seen.saw("added default/kept") }, "\(seen.all)")
    XCTAssertEqual(seen.all, ["synced default/with", "added default/kept"])
    XCTAssertEqual(inf.objects.map(\.metadata.name), ["kept", "with"])
  }

  func testStopEndsTheWatchAndTheHandlerCalls() async throws {
    let seen = Seen()
    let inf = informer(seen)
    inf.start()
    XCTAssertTrue(inf.waitForSync(timeout: 30))
    // Changes come from a client of their own, closed after, so that the
    // only connection left to the server is the informer's watch.
    let maker = try KubeClient(config: k.config)
    let body = Data(#"{"apiVersion":"kopilot.smartx.com/v1alpha1","kind":"Cluster","metadata":{"name":"one"}}"#.utf8)
    _ = try await maker.send(method: "POST", path: clustersPath("default"), body: body)
    maker.shutdown()
    XCTAssertTrue(eventually { seen.saw("added default/one") })
    XCTAssertTrue(eventually { connectionsTo(port: host.port) == 1 }, "want the watch alone, have \(connectionsTo(port: host.port))")
    inf.stop()
    let count = seen.all.count
    XCTAssertTrue(eventually { connectionsTo(port: host.port) == 0 }, "the watch's connection is still open")
    inf.start()  // a stopped informer stays stopped
    try await create("default", "two")
    // Nothing may arrive now; give a late event the time to show.
    try await Task.sleep(nanoseconds: 300_000_000)
    XCTAssertEqual(seen.all.count, count)
  }

  func testStopFromTheHandlerDoesNotDeadlock() async throws {
    try await create("default", "a")
    let seen = Seen()
    let inf = informer(seen)
    let box = WeakBox(inf)
    seen.onEvent = { _ in box.value?.stop() }
    inf.start()
    XCTAssertTrue(eventually { seen.syncs == 1 })
    try await create("default", "b")
    try await Task.sleep(nanoseconds: 300_000_000)
    XCTAssertEqual(seen.all, ["synced default/a"])
  }

  func testWaitForSyncGivesUpWhenTheServerIsDown() throws {
    var c = k.config
    c.server = URL(string: "https://127.0.0.1:1")!
    let down = try KubeClient(config: c, requestTimeout: 1, logger: Logger(label: "t"), tokenMaxAge: 60)
    defer { down.shutdown() }
    let inf = Informer<TestCluster>(client: down, path: clustersPath, query: [], what: "down", logger: Logger(label: "t"),
                                    watchTimeouts: 240...480, pageSize: 500,
                                    backoff: Backoff(base: 0.05, cap: 0.4)) { _ in }
    inf.start()
    XCTAssertFalse(inf.waitForSync(timeout: 0.5))
    inf.stop()
    XCTAssertFalse(inf.hasSynced)
  }
}

final class WeakBox<T: AnyObject>: @unchecked Sendable {
  weak var value: T?
  init(_ v: T) { value = v }
}
