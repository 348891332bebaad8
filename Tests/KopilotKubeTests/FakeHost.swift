import Foundation
import XCTest

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// The fake host API server (Tests/FakeHostAPI, Go, standard library only)
/// for the client's tests: built once per test process in GOPATH mode, run
/// on 127.0.0.1 port 0 with a CA and certificates made by the openssl CLI.
/// CI has Go and openssl: a missing one fails the test, it does not skip.
enum KubeTestPaths {
  static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()

  static func tool(_ name: String) throws -> String {
    var dirs = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
    dirs += ["/usr/bin", "/usr/local/bin", "/usr/lib/go/bin", "/usr/local/go/bin"]
    guard let p = dirs.map({ $0 + "/" + name }).first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
      XCTFail("\(name) is not installed; the KopilotKube tests need it (Tests/setup-debian.sh installs it)")
      throw FixtureError("\(name) not found")
    }
    return p
  }
}

struct FixtureError: Error, CustomStringConvertible {
  var description: String
  init(_ d: String) { description = d }
}

/// Runs a command to completion, output in files (never a pipe that could
/// fill); killed at `timeout` so a hang fails the test, not the suite.
@discardableResult
func run(_ exe: String, _ args: [String], in dir: URL? = nil, environment: [String: String]? = nil,
         timeout: TimeInterval = 240) throws -> (status: Int32, output: String) {
  let log = FileManager.default.temporaryDirectory.appendingPathComponent("kp-kube-cmd-\(UUID().uuidString)")
  _ = FileManager.default.createFile(atPath: log.path, contents: nil)
  defer { try? FileManager.default.removeItem(at: log) }
  let p = Process()
  p.executableURL = URL(fileURLWithPath: exe)
  p.arguments = args
  if let dir { p.currentDirectoryURL = dir }
  if let environment { p.environment = environment }
  let h = try FileHandle(forWritingTo: log)
  p.standardInput = FileHandle.nullDevice
  p.standardOutput = h
  p.standardError = h
  try p.run()
  let deadline = Date().addingTimeInterval(timeout)
  while p.isRunning && Date() < deadline { usleep(10_000) }
  if p.isRunning { kill(p.processIdentifier, SIGKILL) }
  p.waitUntilExit()
  try? h.close()
  return (p.terminationStatus, String(decoding: (try? Data(contentsOf: log)) ?? Data(), as: UTF8.self))
}

/// One scratch folder per test process for the Go build and the certificates.
private let scratch: URL = {
  let d = FileManager.default.temporaryDirectory.appendingPathComponent("kp-kube-tests-\(getpid())")
  try? FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
  return d
}()

private let onceLock = NSLock()
// Both are read and written only while onceLock is held.
nonisolated(unsafe) private var builtFakeHost: String?
nonisolated(unsafe) private var madeCerts: KubeTestCerts?

func fakeHostBinary() throws -> String {
  onceLock.lock()
  defer { onceLock.unlock() }
  if let b = builtFakeHost { return b }
  let go = try KubeTestPaths.tool("go")
  let out = scratch.appendingPathComponent("fakehost").path
  var env = ProcessInfo.processInfo.environment
  env["GO111MODULE"] = "off"
  env["GOPATH"] = scratch.appendingPathComponent("gopath").path
  env["GOFLAGS"] = ""
  env["GOPROXY"] = "off"
  env["GOCACHE"] = scratch.appendingPathComponent("gocache").path
  let r = try run(go, ["build", "-o", out, "./Tests/FakeHostAPI"], in: KubeTestPaths.root, environment: env)
  guard r.status == 0 else {
    XCTFail("building Tests/FakeHostAPI failed:\n\(r.output)")
    throw FixtureError("fakehost did not build")
  }
  builtFakeHost = out
  return out
}

/// Two unrelated CAs: `ca` signs the server's certificate (localhost,
/// 127.0.0.1) and a client certificate; `otherCA` signs nothing we serve.
final class KubeTestCerts {
  let dir: URL
  func path(_ name: String) -> String { dir.appendingPathComponent(name).path }
  func pem(_ name: String) throws -> String { try String(contentsOfFile: path(name), encoding: .utf8) }

  static func shared() throws -> KubeTestCerts {
    onceLock.lock()
    defer { onceLock.unlock() }
    if let c = madeCerts { return c }
    let c = try KubeTestCerts()
    madeCerts = c
    return c
  }

  private init() throws {
    let openssl = try KubeTestPaths.tool("openssl")
    dir = scratch.appendingPathComponent("certs")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    try "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
      .write(toFile: path("server.cnf"), atomically: true, encoding: .utf8)
    try "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
      .write(toFile: path("client.cnf"), atomically: true, encoding: .utf8)
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    func ca(_ name: String) -> [String] {
      ["req", "-x509"] + key + ["-keyout", "\(name).key", "-out", "\(name).crt", "-days", "2", "-subj", "/CN=kopilot-kube-\(name)",
                                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    }
    func leaf(_ name: String, _ cn: String) -> [[String]] {
      [["req"] + key + ["-keyout", "\(name).key", "-out", "\(name).csr", "-subj", "/CN=\(cn)"],
       ["x509", "-req", "-in", "\(name).csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "\(name).crt", "-days", "2", "-extfile", "\(name).cnf"]]
    }
    for step in [ca("ca"), ca("otherca")] + leaf("server", "localhost") + leaf("client", "kopilot-kube-client") {
      let r = try run(openssl, step, in: dir, timeout: 30)
      guard r.status == 0 else { throw FixtureError("openssl \(step.joined(separator: " ")) failed: \(r.output)") }
    }
  }
}

/// One running fakehost.
final class FakeHost {
  static let adminToken = "kube-test-admin-token-0123456789abcdef"
  static let aliceToken = "kube-test-alice-token-0123456789abcdef"

  let process = Process()
  let dir: URL
  let log: URL
  private(set) var port = 0
  var url: URL { URL(string: "https://127.0.0.1:\(port)")! }

  init(args: [String] = []) throws {
    let exe = try fakeHostBinary()
    let certs = try KubeTestCerts.shared()
    dir = scratch.appendingPathComponent("fakehost-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let tokens = dir.appendingPathComponent("tokens.csv").path
    try """
      \(Self.adminToken),admin,uid-admin,system:masters
      \(Self.aliceToken),alice,uid-alice,"devs,readers"

      """.write(toFile: tokens, atomically: true, encoding: .utf8)
    log = dir.appendingPathComponent("fakehost.log")
    _ = FileManager.default.createFile(atPath: log.path, contents: nil)
    let h = try FileHandle(forWritingTo: log)
    process.executableURL = URL(fileURLWithPath: exe)
    process.arguments = ["--cert", certs.path("server.crt"), "--key", certs.path("server.key"), "--tokens", tokens, "-v"] + args
    process.standardInput = FileHandle.nullDevice
    process.standardOutput = h
    process.standardError = h
    try process.run()
    try? h.close()
    let deadline = Date().addingTimeInterval(30)
    while port == 0 {
      if let line = logText.split(separator: "\n").first(where: { $0.hasPrefix("PORT ") }), let p = Int(line.dropFirst(5)) {
        port = p
        break
      }
      guard process.isRunning, Date() < deadline else {
        stop()
        throw FixtureError("fakehost did not print its port:\n\(logText)")
      }
      usleep(10_000)
    }
  }

  var logText: String { String(decoding: (try? Data(contentsOf: log)) ?? Data(), as: UTF8.self) }

  func stop() {
    if process.isRunning {
      kill(process.processIdentifier, SIGTERM)
      let deadline = Date().addingTimeInterval(3)
      while process.isRunning && Date() < deadline { usleep(10_000) }
      if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
    process.waitUntilExit()
    try? FileManager.default.removeItem(at: dir)
  }
}

/// Polls `cond` every 20 ms until it holds; false at `timeout` (a bound on a
/// hang, not a measured time).
func eventually(_ timeout: TimeInterval = 15, _ cond: () throws -> Bool) rethrows -> Bool {
  let deadline = Date().addingTimeInterval(timeout)
  while true {
    if try cond() { return true }
    if Date() > deadline { return false }
    usleep(20_000)
  }
}

/// Established TCP connections from this network namespace to `port` on
/// 127.0.0.1 (the client side of each), from /proc/net/tcp.
func connectionsTo(port: Int) -> Int {
  // Read to the end: /proc files say size 0 and come a page per read.
  guard let h = FileHandle(forReadingAtPath: "/proc/net/tcp") else { return -1 }
  defer { try? h.close() }
  let text = String(decoding: h.readDataToEndOfFile(), as: UTF8.self)
  let remote = String(format: "0100007F:%04X", port)
  return text.split(separator: "\n").dropFirst().filter { line in
    let f = line.split(separator: " ", omittingEmptySubsequences: true)
    return f.count > 3 && f[2] == remote && f[3] == "01"
  }.count
}
