import Foundation

/// A process the harness started, with its stdout and stderr in one log file
/// in the work folder. Stopped with SIGTERM (then SIGKILL) by `stop()`.
final class Child {
  let name: String
  let log: URL
  private let process = Process()

  init(name: String, executable: String, arguments: [String], in work: URL,
       environment: [String: String]? = nil) throws {
    self.name = name
    log = work.appendingPathComponent("\(name).log")
    _ = FileManager.default.createFile(atPath: log.path, contents: nil)
    let out = try FileHandle(forWritingTo: log)
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.standardOutput = out
    process.standardError = out
    process.standardInput = FileHandle.nullDevice
    if let environment {
      process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    }
    do { try process.run() } catch {
      throw PerfError("cannot start \(name) (\(executable)): \(error)")
    }
    try? out.close()
  }

  var pid: Int32 { process.processIdentifier }
  var isRunning: Bool { process.isRunning }

  /// The log so far, decoded leniently (Go and nginx write plain ASCII).
  func output() -> String {
    guard let d = try? Data(contentsOf: log) else { return "" }
    return String(decoding: d, as: UTF8.self)
  }


  /// Waits until the log has `times` lines containing `text`; fails with
  /// the log's tail if the process exits or the time runs out.
  @discardableResult
  func waitFor(_ text: String, times: Int = 1, timeout: Double = 30) throws -> String {
    let deadline = Date().addingTimeInterval(timeout)
    var delay = 0.01
    while true {
      let out = output()
      let n = out.split(separator: "\n").reduce(0) { $0 + ($1.contains(text) ? 1 : 0) }
      if n >= times { return out }
      if !process.isRunning {
        throw PerfError("\(name) exited (status \(process.terminationStatus)) before \"\(text)\":\n\(tail(out))")
      }
      if Date() > deadline {
        throw PerfError("\(name): \(n) of \(times) \"\(text)\" after \(Int(timeout)) s:\n\(tail(out))")
      }
      Thread.sleep(forTimeInterval: delay)
      delay = min(delay * 2, 0.1)
    }
  }

  /// The port in the first "listening on 127.0.0.1:PORT" line of the log.
  func listeningPort(timeout: Double = 60) throws -> Int {
    let out = try waitFor("listening on 127.0.0.1:", timeout: timeout)
    guard let r = out.range(of: "listening on 127.0.0.1:") else { throw PerfError("\(name): no port") }
    let digits = out[r.upperBound...].prefix { $0.isNumber }
    guard let port = Int(digits) else { throw PerfError("\(name): no port in its log") }
    return port
  }

  func stop(timeout: Double = 10) {
    guard process.isRunning else { return }
    process.terminate()
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
    if process.isRunning { kill(pid, SIGKILL) }
    process.waitUntilExit()
  }

  private func tail(_ s: String) -> String {
    s.split(separator: "\n", omittingEmptySubsequences: false).suffix(15).joined(separator: "\n")
  }
}

/// Runs a command to completion and returns its exit status and output.
/// Both streams go through files, so a chatty child never blocks on a pipe.
func runCommand(_ executable: String, _ arguments: [String], timeout: Double = 600,
                environment: [String: String]? = nil, cwd: URL? = nil) throws -> (status: Int32, out: String, err: String) {
  let p = Process()
  p.executableURL = URL(fileURLWithPath: executable)
  p.arguments = arguments
  if let environment {
    p.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
  }
  if let cwd { p.currentDirectoryURL = cwd }
  let stem = FileManager.default.temporaryDirectory
    .appendingPathComponent("kopilot-perf-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
  let files = [stem + ".out", stem + ".err"]
  defer { for f in files { try? FileManager.default.removeItem(atPath: f) } }
  var handles: [FileHandle] = []
  for f in files {
    _ = FileManager.default.createFile(atPath: f, contents: nil)
    handles.append(try FileHandle(forWritingTo: URL(fileURLWithPath: f)))
  }
  p.standardOutput = handles[0]
  p.standardError = handles[1]
  p.standardInput = FileHandle.nullDevice
  do { try p.run() } catch { throw PerfError("cannot run \(executable): \(error)") }
  for h in handles { try? h.close() }
  let deadline = Date().addingTimeInterval(timeout)
  while p.isRunning {
    if Date() > deadline {
      p.terminate()
      p.waitUntilExit()
      throw PerfError("\(URL(fileURLWithPath: executable).lastPathComponent) ran longer than \(Int(timeout)) s")
    }
    Thread.sleep(forTimeInterval: 0.01)
  }
  p.waitUntilExit()
  let read = { (f: String) in String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: f))) ?? Data(), as: UTF8.self) }
  return (p.terminationStatus, read(files[0]), read(files[1]))
}

/// Looks a program up in PATH (and /usr/sbin, where Debian puts nginx).
func which(_ name: String) -> String? {
  let path = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
  for dir in path.split(separator: ":") {
    let candidate = "\(dir)/\(name)"
    if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
  }
  return nil
}

/// What /proc says about a set of processes.
enum ProcStat {
  static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

  /// User + system CPU seconds of one process (0 if it is gone).
  /// The fields of /proc/PID/stat after "(comm)": index 0 is field 3
  /// (state), 1 the parent, 11 and 12 utime and stime.
  private static func statFields(_ pid: Int32) -> [Substring] {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = s.lastIndex(of: ")") else { return [] }
    return s[s.index(after: close)...].split(separator: " ")
  }

  static func cpuSeconds(_ pid: Int32) -> Double {
    let fields = statFields(pid)
    guard fields.count > 13, let u = Double(fields[11]), let k = Double(fields[12]) else { return 0 }
    return (u + k) / ticksPerSecond
  }

  /// Resident set size in bytes (0 if the process is gone).
  static func rssBytes(_ pid: Int32) -> Double {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
    for line in s.split(separator: "\n") where line.hasPrefix("VmRSS:") {
      let kb = line.split(separator: " ").compactMap { Double($0) }.first ?? 0
      return kb * 1024
    }
    return 0
  }

  /// The process and its children (nginx's master and its workers).
  static func family(_ pid: Int32) -> [Int32] {
    var out = [pid]
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return out }
    for e in entries {
      guard let child = Int32(e), child != pid else { continue }
      let fields = statFields(child)
      if fields.count > 2, Int32(fields[1]) == pid { out.append(child) }
    }
    return out
  }
}

struct PerfError: Error, CustomStringConvertible {
  let description: String
  init(_ message: String) { description = message }
}

/// Lets every child open as many sockets as the system allows: the idle
/// scenario holds 10,000 sessions in one hub and one agent process.
func raiseFileLimit() {
  var lim = rlimit()
  guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0, lim.rlim_cur < lim.rlim_max else { return }
  lim.rlim_cur = lim.rlim_max
  _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
}

func fileLimit() -> Int {
  var lim = rlimit()
  guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 else { return 0 }
  return Int(clamping: lim.rlim_cur)
}
