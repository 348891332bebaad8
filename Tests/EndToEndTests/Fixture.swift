import Foundation
import XCTest

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// Where things are: the repository (from this file's path) and the build
/// products. `swift test` builds every target, so kopilot-hub and
/// kopilot-agent sit next to the test bundle in .build/<config>/.
enum Paths {
  static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()
  static let upstreamScript = root.appendingPathComponent("Tests/EndToEndTests/upstream.py").path

  /// The directory holding kopilot-hub: next to the running xctest binary
  /// first (so a --configuration release run tests release binaries), then
  /// the usual .build directories.
  static let products: String? = {
    var dirs: [String] = []
    if let exe = Bundle.main.executablePath { dirs.append((exe as NSString).deletingLastPathComponent) }
    dirs.append((CommandLine.arguments[0] as NSString).deletingLastPathComponent)
    for b in Bundle.allBundles { dirs.append((b.bundlePath as NSString).deletingLastPathComponent) }
    dirs += [".build/debug", ".build/release"].map { root.appendingPathComponent($0).path }
    return dirs.first { FileManager.default.isExecutableFile(atPath: $0 + "/kopilot-hub") }
  }()

  static func binary(_ name: String) throws -> String {
    guard let d = products, FileManager.default.isExecutableFile(atPath: d + "/" + name) else {
      XCTFail("\(name) not found next to the test bundle; run `swift build` (swift test builds it)")
      throw CancellationError()
    }
    return d + "/" + name
  }

  static func tool(_ name: String) -> String? {
    var dirs = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
    dirs += ["/usr/bin", "/usr/local/bin", "/usr/lib/go/bin", "/usr/local/go/bin"]
    return dirs.map { $0 + "/" + name }.first { FileManager.default.isExecutableFile(atPath: $0) }
  }
}

struct E2EError: Error, CustomStringConvertible {
  var description: String
  init(_ d: String) { description = d }
}

/// The result of a command run to completion.
struct CommandResult {
  var status: Int32
  var stdout: Data
  var stderr: String
  var text: String { String(decoding: stdout, as: UTF8.self) }
}

/// Runs a command to completion with output in files (a pipe would block a
/// child that writes more than the pipe holds before we read). A command
/// still running at `timeout` is killed and reported: a hang fails the test
/// instead of the suite.
@discardableResult
func runCommand(_ exe: String, _ args: [String], timeout: TimeInterval = 60, in dir: URL? = nil,
                environment: [String: String]? = nil) throws -> CommandResult {
  let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("kp-e2e-cmd-\(UUID().uuidString)")
  try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
  defer { try? FileManager.default.removeItem(at: tmp) }
  let outURL = tmp.appendingPathComponent("out"), errURL = tmp.appendingPathComponent("err")
  _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
  _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
  let p = Process()
  p.executableURL = URL(fileURLWithPath: exe)
  p.arguments = args
  if let dir { p.currentDirectoryURL = dir }
  if let environment { p.environment = environment }
  p.standardInput = FileHandle.nullDevice
  p.standardOutput = try FileHandle(forWritingTo: outURL)
  p.standardError = try FileHandle(forWritingTo: errURL)
  try p.run()
  let deadline = Date().addingTimeInterval(timeout)
  while p.isRunning && Date() < deadline { usleep(10_000) }
  let timedOut = p.isRunning
  if timedOut { kill(p.processIdentifier, SIGKILL) }
  p.waitUntilExit()
  let out = (try? Data(contentsOf: outURL)) ?? Data()
  let err = String(decoding: (try? Data(contentsOf: errURL)) ?? Data(), as: UTF8.self)
  if timedOut {
    throw E2EError("\(exe) \(args.joined(separator: " ")) still running after \(timeout) s; killed. stderr: \(err)")
  }
  return CommandResult(status: p.terminationStatus, stdout: out, stderr: err)
}

/// A CA and a serving certificate for localhost / 127.0.0.1, made with the
/// openssl CLI once per test process; both the hub and the upstream use it.
final class TestCerts {
  let dir: URL
  var ca: String { dir.appendingPathComponent("ca.crt").path }
  var cert: String { dir.appendingPathComponent("server.crt").path }
  var key: String { dir.appendingPathComponent("server.key").path }

  // Read and written only while lock is held.
  nonisolated(unsafe) private static var made: TestCerts?
  private static let lock = NSLock()

  static func shared() throws -> TestCerts {
    lock.lock()
    defer { lock.unlock() }
    if let m = made { return m }
    let c = try TestCerts()
    made = c
    return c
  }

  private init() throws {
    guard let openssl = Paths.tool("openssl") else { throw XCTSkip("the openssl CLI is not installed") }
    dir = FileManager.default.temporaryDirectory.appendingPathComponent("kp-e2e-certs-\(getpid())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    try "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
      .write(to: dir.appendingPathComponent("ext.cnf"), atomically: true, encoding: .utf8)
    let steps: [[String]] = [
      ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=kopilot-e2e-ca",
       "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
      ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
      ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
       "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf"],
    ]
    for s in steps {
      let r = try runCommand(openssl, s, timeout: 30, in: dir)
      guard r.status == 0 else { throw E2EError("openssl \(s.joined(separator: " ")) failed: \(r.stderr)") }
    }
  }
}

/// A child process (upstream, hub, agent) with stdout and stderr in one log
/// file, so a readiness line can be waited for and the log shown on failure.
final class ManagedProcess {
  let name: String
  let process = Process()
  let logURL: URL

  init(name: String, exe: String, args: [String], logDir: URL) throws {
    self.name = name
    logURL = logDir.appendingPathComponent("\(name).log")
    _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
    let log = try FileHandle(forWritingTo: logURL)
    process.executableURL = URL(fileURLWithPath: exe)
    process.arguments = args
    process.standardInput = FileHandle.nullDevice
    process.standardOutput = log
    process.standardError = log
    try process.run()
  }

  var log: String { String(decoding: (try? Data(contentsOf: logURL)) ?? Data(), as: UTF8.self) }

  /// Waits until the log has a line containing `needle` and returns that
  /// line. Fails with the process's log if it exits first or on timeout.
  @discardableResult
  func waitFor(_ needle: String, timeout: TimeInterval = 15, file: StaticString = #filePath,
               line: UInt = #line) throws -> String {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
      if let l = log.split(separator: "\n").first(where: { $0.contains(needle) }) { return String(l) }
      if !process.isRunning {
        throw E2EError("\(name) exited (status \(process.terminationStatus)) before printing '\(needle)'. Its log:\n\(log)")
      }
      if Date() > deadline {
        throw E2EError("\(name) did not print '\(needle)' within \(timeout) s. Its log:\n\(log)")
      }
      usleep(20_000)
    }
  }

  /// SIGTERM, a grace period for a clean exit, then SIGKILL.
  func stop(grace: TimeInterval = 3) {
    guard process.isRunning else { return }
    kill(process.processIdentifier, SIGTERM)
    let deadline = Date().addingTimeInterval(grace)
    while process.isRunning && Date() < deadline { usleep(10_000) }
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
  }
}

/// Builds a Go program of this repository once per test process, offline, in
/// GOPATH mode against Debian's Go packages (golang-go and the
/// golang-github-* libraries); skips with the reason when go is absent, and
/// fails when go is here but the build breaks.
enum GoBuild {
  // Both are read and written only while lock is held.
  nonisolated(unsafe) private static var built: [String: String] = [:]
  nonisolated(unsafe) private static var failed: [String: String] = [:]
  private static let lock = NSLock()

  static func binary(_ package: String, name: String) throws -> String {
    lock.lock()
    defer { lock.unlock() }
    if let p = built[package] { return p }
    if let e = failed[package] { throw XCTSkip(e) }
    guard let go = Paths.tool("go") else {
      failed[package] = "go is not installed: \(package) needs golang-go and Debian's golang-github-* packages"
      throw XCTSkip(failed[package]!)
    }
    let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("kp-e2e-go-\(getpid())")
    try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    let out = tmp.appendingPathComponent(name).path
    var env = ProcessInfo.processInfo.environment
    env["GO111MODULE"] = "off"
    env["GOPATH"] = tmp.path + ":/usr/share/gocode"
    env["GOFLAGS"] = ""
    env["GOPROXY"] = "off"
    env["GOCACHE"] = tmp.appendingPathComponent("cache").path
    let r = try runCommand(go, ["build", "-o", out, "./" + package], timeout: 180, in: Paths.root, environment: env)
    guard r.status == 0 else {
      XCTFail("building \(package) failed: \(r.stderr)")
      failed[package] = "\(package) did not build"
      throw XCTSkip(failed[package]!)
    }
    built[package] = out
    return out
  }
}

/// The hub's agent tokens: `default/sample` gets an agent, `default/idle`
/// is registered but never gets one (the 503 case).
enum Tokens {
  static let sample = "e2e-sample-token-0123456789abcdef"
  static let idle = "e2e-idle-token-0123456789abcdef0"
  /// What the agent sends upstream; the upstream must see this and only this.
  static let apiserver = "e2e-apiserver-bearer-token-from-the-agent"
  /// What the caller sends the hub; it must never reach the upstream.
  static let caller = "e2e-caller-secret-that-must-not-leak"
}

/// One world: upstream + hub (+ an agent, started by the test). Everything
/// is on 127.0.0.1 with ports chosen by the kernel and read back from
/// readiness lines.
final class E2EWorld {
  let dir: URL
  let certs: TestCerts
  private(set) var processes: [ManagedProcess] = []
  private(set) var upstreamPort = 0
  private(set) var hubPort = 0
  private(set) var hub: ManagedProcess!
  let curl: String
  let python: String

  init() throws {
    guard let c = Paths.tool("curl") else { throw XCTSkip("curl is not installed") }
    guard let p = Paths.tool("python3") else { throw XCTSkip("python3 is not installed") }
    curl = c
    python = p
    certs = try TestCerts.shared()
    dir = FileManager.default.temporaryDirectory.appendingPathComponent("kp-e2e-\(getpid())-\(UUID().uuidString.prefix(8))")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    try (Tokens.apiserver + "\n").write(to: tokenFile, atomically: true, encoding: .utf8)
  }

  var tokenFile: URL { dir.appendingPathComponent("apiserver-token") }
  var hubURL: String { "https://127.0.0.1:\(hubPort)" }
  var upstreamURL: String { "https://127.0.0.1:\(upstreamPort)" }
  func proxy(_ path: String, cluster: String = "default_sample") -> String { "\(hubURL)/proxy/\(cluster)\(path)" }

  func start(_ name: String, _ exe: String, _ args: [String]) throws -> ManagedProcess {
    let p = try ManagedProcess(name: name, exe: exe, args: args, logDir: dir)
    processes.append(p)
    return p
  }

  func startUpstream() throws {
    let up = try start("upstream", python, [Paths.upstreamScript, "--cert", certs.cert, "--key", certs.key])
    let line = try up.waitFor("PORT ")
    upstreamPort = Int(line.split(separator: " ").last ?? "") ?? 0
    XCTAssertGreaterThan(upstreamPort, 0)
  }

  /// The hub's state folder: the test writes clusters.yaml and tokens.csv
  /// (fixed tokens); the hub makes the rest (CA, rbac.yaml) on first start.
  var stateDir: URL { dir.appendingPathComponent("state") }

  func startHub(port: Int = 0, extraArgs: [String] = [], name: String = "hub", cert: String? = nil,
                key: String? = nil, callerGroups: [String] = ["kopilot:admins"]) throws {
    try FileManager.default.createDirectory(at: stateDir, withIntermediateDirectories: true)
    try """
      apiVersion: kopilot.smartx.com/v1alpha1
      kind: Cluster
      metadata: {namespace: default, name: sample}
      token: \(Tokens.sample)
      ---
      apiVersion: kopilot.smartx.com/v1alpha1
      kind: Cluster
      metadata: {namespace: default, name: idle}
      token: \(Tokens.idle)

      """.write(to: stateDir.appendingPathComponent("clusters.yaml"), atomically: true, encoding: .utf8)
    // The caller is in the group the hub's first-start rbac.yaml lets use
    // every verb on /proxy/*.
    try "\(Tokens.caller),e2e-caller,e2e-caller-uid,\"\(callerGroups.joined(separator: ","))\"\n"
      .write(to: stateDir.appendingPathComponent("tokens.csv"), atomically: true, encoding: .utf8)
    hub = try start(name, try Paths.binary("kopilot-hub"), [
      "--state-dir", stateDir.path,
      "--bind", "127.0.0.1:\(port)", "--tls-cert", cert ?? certs.cert, "--tls-key", key ?? certs.key,
      "--access-log",
    ] + extraArgs)
    let line = try hub.waitFor("kopilot-hub listening on 127.0.0.1:")
    // "... listening on 127.0.0.1:PORT clusters=N"
    let afterHost = line.components(separatedBy: "listening on 127.0.0.1:").last ?? ""
    hubPort = Int(afterHost.prefix { $0.isNumber }) ?? 0
    XCTAssertGreaterThan(hubPort, 0)
  }

  /// Our agent in the given carriage ("framed" or "raw"); returns once the
  /// hub says the session is up, so requests cannot race the registration.
  func startAgent(wire: String) throws {
    let agent = try start("agent-\(wire)", try Paths.binary("kopilot-agent"), [
      "--connect", "wss://127.0.0.1:\(hubPort)/connect?token=\(Tokens.sample)",
      "--apiserver", upstreamURL, "--token-file", tokenFile.path, "--ca-file", certs.ca,
      "--hub-ca", certs.ca, "--wire", wire,
    ])
    try agent.waitFor("connected to the hub")
    try hub.waitFor("agent session up: cluster=default_sample")
  }

  /// Stops in reverse order of start: agents before the hub before the
  /// upstream. The log directory goes too unless KP_E2E_KEEP is set.
  func tearDown() {
    for p in processes.reversed() { p.stop() }
    if ProcessInfo.processInfo.environment["KP_E2E_KEEP"] == nil {
      try? FileManager.default.removeItem(at: dir)
    }
  }

  /// Every process's log, for failure messages.
  var logs: String {
    processes.map { "--- \($0.name) ---\n\($0.log)" }.joined(separator: "\n")
  }

  /// curl with our CA, silent but showing errors, a hard time limit, and
  /// --path-as-is so the test's target reaches the hub exactly as written.
  @discardableResult
  func curl(_ args: [String], timeout: TimeInterval = 60) throws -> CommandResult {
    // Callers must authenticate: the test's caller token goes with every
    // request unless the test sends an Authorization header of its own.
    let auth = args.contains { $0.lowercased().hasPrefix("authorization:") }
      ? [] : ["-H", "Authorization: Bearer \(Tokens.caller)"]
    return try runCommand(curl, ["-sS", "--path-as-is", "--cacert", certs.ca, "--max-time", "\(Int(timeout))"]
                            + auth + args, timeout: timeout + 10)
  }

  /// SHA-256 of /bytes/N, computed by upstream.py's generator in a process of
  /// its own (not through the tunnel).
  func expectedDigests(_ sizes: [Int]) throws -> [String] {
    let r = try runCommand(python, [Paths.upstreamScript, "--digest"] + sizes.map(String.init))
    guard r.status == 0 else { throw E2EError("upstream.py --digest failed: \(r.stderr)") }
    return r.text.split(separator: "\n").map(String.init)
  }

  /// SHA-256 of files, in order, with sha256sum.
  func sha256(files: [String]) throws -> [String] {
    guard let tool = Paths.tool("sha256sum") else { throw XCTSkip("sha256sum is not installed") }
    let r = try runCommand(tool, files)
    guard r.status == 0 else { throw E2EError("sha256sum failed: \(r.stderr)") }
    return r.text.split(separator: "\n").map { String($0.prefix(64)) }
  }

  /// The request targets the upstream has received, asked of it directly.
  func upstreamRequests() throws -> [String] {
    let r = try curl(["\(upstreamURL)/_requests"], timeout: 10)
    guard r.status == 0, let list = try JSONSerialization.jsonObject(with: r.stdout) as? [String] else {
      throw E2EError("upstream /_requests failed: \(r.stderr)")
    }
    return list.filter { $0 != "/_requests" }
  }
}

/// Reads a child's stdout line by line with a per-line deadline, for
/// responses that must arrive before they end (watches).
final class LineReader {
  let process = Process()
  private let fd: Int32
  private var buffer: [UInt8] = []
  private let pipe = Pipe()

  init(exe: String, args: [String]) throws {
    process.executableURL = URL(fileURLWithPath: exe)
    process.arguments = args
    process.standardInput = FileHandle.nullDevice
    process.standardOutput = pipe
    process.standardError = FileHandle.nullDevice
    try process.run()
    fd = pipe.fileHandleForReading.fileDescriptor
  }

  /// The next line, or nil at end of output; throws at the deadline.
  func nextLine(timeout: TimeInterval) throws -> String? {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
      if let nl = buffer.firstIndex(of: 0x0A) {
        let line = String(decoding: buffer[..<nl], as: UTF8.self)
        buffer.removeSubrange(...nl)
        return line
      }
      let left = deadline.timeIntervalSinceNow
      if left <= 0 { throw E2EError("no complete line within \(timeout) s (have \(buffer.count) bytes)") }
      var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
      let r = poll(&pfd, 1, Int32(min(left, 1) * 1000))
      if r < 0 && errno == EINTR { continue }
      if r <= 0 { continue }
      var chunk = [UInt8](repeating: 0, count: 65536)
      let n = read(fd, &chunk, chunk.count)
      if n < 0 && errno == EINTR { continue }
      if n <= 0 {
        if buffer.isEmpty { return nil }
        let line = String(decoding: buffer, as: UTF8.self)
        buffer.removeAll()
        return line
      }
      buffer += chunk[..<n]
    }
  }

  func stop() {
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
  }
}

extension E2EWorld {
  /// `count` requests at once, each for a different size (so a body delivered
  /// to the wrong request shows), each on its own connection to the hub.
  func checkParallel(count: Int) throws {
    let sizes = (0..<count).map { 1000 + $0 * 517 }
    let outDir = dir.appendingPathComponent("parallel")
    try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
    // A curl config file: one url/output pair per request.
    let config = sizes.map { "url = \"\(proxy("/bytes/\($0)"))\"\noutput = \"\(outDir.path)/\($0)\"\n" }.joined()
    let cfgURL = dir.appendingPathComponent("parallel.curlrc")
    try config.write(to: cfgURL, atomically: true, encoding: .utf8)
    let r = try curl(["--parallel", "--parallel-max", "\(count)", "--parallel-immediate",
                            "-K", cfgURL.path, "-w", "%{http_code} %{url_effective}\n"], timeout: 90)
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    let codes = r.text.split(separator: "\n")
    XCTAssertEqual(codes.count, count, "one status line per request")
    let bad = codes.filter { !$0.hasPrefix("200 ") }
    // The first failure's body is usually a Status saying why.
    let firstBad = bad.first.flatMap { $0.split(separator: "/").last }
      .flatMap { try? String(contentsOfFile: "\(outDir.path)/\($0)", encoding: .utf8) } ?? ""
    XCTAssertTrue(bad.isEmpty, "\(bad.count) of \(count) requests did not get 200: \(bad.prefix(3)); first body: \(firstBad.prefix(300))")
    let got = try sha256(files: sizes.map { "\(outDir.path)/\($0)" })
    let want = try expectedDigests(sizes)
    let wrong = zip(sizes, zip(got, want)).filter { $0.1.0 != $0.1.1 }.map { $0.0 }
    XCTAssertEqual(got.count, count)
    XCTAssertTrue(wrong.isEmpty, "\(wrong.count) bodies differ, e.g. sizes \(wrong.prefix(5))")
  }

}



/// The base of every end-to-end test class: a world per test, torn down
/// after it, with every process's log printed when the test failed.
class E2ETestCase: XCTestCase {
  var world: E2EWorld!

  /// Makes the world and runs `start` on it; a failure tears it down again.
  func startWorld(_ start: (E2EWorld) throws -> Void) throws {
    world = try E2EWorld()
    do {
      try start(world)
    } catch {
      world.tearDown()
      throw error
    }
  }

  override func tearDown() {
    // The processes' logs explain most end-to-end failures; show them then.
    if let run = testRun, run.failureCount + run.unexpectedExceptionCount > 0 {
      print("logs of \(name):\n\(world?.logs ?? "")")
    }
    world?.tearDown()
    world = nil
    super.tearDown()
  }
}
