import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import XCTest

@testable import KopilotHub

/// Start-up and shutdown of a hub's parts, in process: what stops, in which
/// order, and what a failed start leaves behind. No socket unless the test
/// is about one.
final class HubPartTests: XCTestCase {
  struct Injected: Error {}

  /// A service that runs a hub made of `names`, noting each stop; `fail`
  /// makes the start throw once every part is up.
  struct PartedHub: Service {
    let names: [String]
    let fail: Bool
    let stopped: Recorder
    let started: Recorder

    func run() async throws {
      try await runHub(logger: Logger(label: "test")) { parts in
        for n in names {
          parts.add(n) { stopped.append(n) }
          started.append(n)
        }
        if fail { throw Injected() }
      }
    }
  }

  final class Recorder: Sendable {
    private let items = Mutex<[String]>([])
    func append(_ s: String) { items.withLock { $0.append(s) } }
    var all: [String] { items.withLock { $0 } }
  }

  func testPartsStopInReverseStartOrderAtGracefulShutdown() async throws {
    let stopped = Recorder(), started = Recorder()
    let hub = PartedHub(names: ["client", "informer", "core", "reloader"], fail: false, stopped: stopped, started: started)
    let group = ServiceGroup(services: [hub], logger: Logger(label: "test"))
    async let running: Void = group.run()
    let up = await poll { started.all.count == 4 }
    XCTAssertTrue(up, "the start never finished")
    // Until shutdown nothing stops.
    XCTAssertEqual(stopped.all, [])
    await group.triggerGracefulShutdown()
    try await running
    XCTAssertEqual(stopped.all, ["reloader", "core", "informer", "client"])
  }

  func testAFailedStartStopsWhatItHadStartedNewestFirst() async throws {
    let stopped = Recorder(), started = Recorder()
    let hub = PartedHub(names: ["client", "core"], fail: true, stopped: stopped, started: started)
    do {
      try await hub.run()
      XCTFail("the start's error was swallowed")
    } catch is Injected {}
    XCTAssertEqual(stopped.all, ["core", "client"])
  }

  /// The embedded hub in a ServiceGroup, on a real port: it serves until
  /// graceful shutdown, then its port refuses and its sessions file is gone.
  func testEmbeddedHubListensUntilGracefulShutdown() async throws {
    let dir = try makeTempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    var c = EmbeddedHub.Configuration(paths: StatePaths(directory: dir))
    c.core.bindHost = "127.0.0.1"
    c.core.port = 0
    c.core.loops = 1
    let port = Mutex<Int?>(nil)
    c.onListening = { p in port.withLock { $0 = p } }
    let group = ServiceGroup(services: [EmbeddedHub(configuration: c)], logger: Logger(label: "test"))
    async let running: Void = group.run()
    let listening = await poll { port.withLock { $0 } != nil }
    XCTAssertTrue(listening, "the hub never said it listens")
    let p = try XCTUnwrap(port.withLock { $0 })
    XCTAssertTrue(canConnect(port: p), "nothing accepts on the port the hub named")
    await group.triggerGracefulShutdown()
    try await running
    XCTAssertFalse(canConnect(port: p), "the port still accepts after shutdown")
    XCTAssertFalse(FileManager.default.fileExists(atPath: StatePaths(directory: dir).sessions))
  }

  /// A failed start (the port is taken) throws out of `run` and leaves the
  /// loop threads it had started stopped: the test process would hang in
  /// their joins otherwise.
  func testEmbeddedHubOnATakenPortThrows() async throws {
    let dir = try makeTempDir()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let (fd, taken) = try listenOnFreePort()
    defer { close(fd) }
    var c = EmbeddedHub.Configuration(paths: StatePaths(directory: dir))
    c.core.bindHost = "127.0.0.1"
    c.core.port = taken
    c.core.loops = 1
    do {
      try await EmbeddedHub(configuration: c).run()
      XCTFail("the hub started on a port another socket holds")
    } catch {}
  }

  private func poll(timeout: TimeInterval = 10, _ condition: @Sendable () -> Bool) async -> Bool {
    let end = Date() + timeout
    while Date() < end {
      if condition() { return true }
      try? await Task.sleep(nanoseconds: 10_000_000)
    }
    return condition()
  }
}

/// Whether a TCP connection to 127.0.0.1:port is accepted.
func canConnect(port: Int) -> Bool {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  guard fd >= 0 else { return false }
  defer { close(fd) }
  var addr = loopback(port: port)
  return withUnsafePointer(to: &addr) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
      connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
    }
  }
}

/// A socket listening on a free loopback port (without SO_REUSEADDR), and
/// the port.
func listenOnFreePort() throws -> (Int32, Int) {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  var addr = loopback(port: 0)
  let bound = withUnsafePointer(to: &addr) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
  }
  guard fd >= 0, bound == 0, listen(fd, 8) == 0 else { throw POSIXError(.EADDRINUSE) }
  var len = socklen_t(MemoryLayout<sockaddr_in>.size)
  _ = withUnsafeMutablePointer(to: &addr) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
  }
  return (fd, Int(UInt16(bigEndian: addr.sin_port)))
}

private func loopback(port: Int) -> sockaddr_in {
  var addr = sockaddr_in()
  addr.sin_family = sa_family_t(AF_INET)
  addr.sin_port = UInt16(port).bigEndian
  addr.sin_addr.s_addr = inet_addr("127.0.0.1")
  return addr
}
