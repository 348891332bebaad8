import ArgumentParser
import Foundation

/// One run of the harness, once the flags are parsed: start the upstream,
/// run each chosen scenario against each chosen target, print the table
/// and write the JSON record.
struct PerfRun {
  var scenarios: [Scenario]
  var targets: [TargetKind]
  var settings: Settings
  var quick: Bool
  var wire: String
  var keep: Bool
  var repo: URL
  var resultsDir: String?

  func run() throws {
    let chosen = scenarios, kinds = targets
    raiseFileLimit()
    let repoURL = repo
    let work = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("kopilot-perf.\(getpid())")
    try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
    // nginx's workers run as an unprivileged user and must reach their folders.
    chmod(work.path, 0o755)
    let progress = Progress()
    let results = Results()
    let startedAt = Date()
    var record = RunRecord(started: ISO8601DateFormatter().string(from: startedAt), quick: quick,
                           machine: describeMachine(), settings: [
                             "bulk_bytes": "\(settings.bulkBytes)", "bulk_runs": "\(settings.bulkRuns)",
                             "concurrency": settings.concurrency.map(String.init).joined(separator: ","),
                             "request_seconds": "\(settings.requestSeconds)", "streams": "\(settings.streams)",
                             "slow_readers": "\(settings.slowReaders)",
                             "stream_events": "\(settings.streamEvents)",
                             "stream_interval_ms": "\(settings.streamIntervalMs)",
                             "idle_counts": settings.idleCounts.map(String.init).joined(separator: ","),
                             "kopilot_wire": wire, "kopilot_agent_sessions": "1", "file_limit": "\(fileLimit())",
                           ])
    progress.note("kopilot-perf\(quick ? " --quick" : ""): \(record.machine["cores"] ?? "?") cores, \(record.machine["cpu"] ?? ""), load \(loadAverage()); work folder \(work.path)")

    let tools = try Tools.locate(repo: repoURL, work: work, progress: progress)
    let bench = try Bench(work: work, tools: tools, kopilotWire: wire)
    Cleanup.shared.arm(bench: bench, work: keep ? nil : work)
    defer {
      bench.shutdown()
      if !keep { try? FileManager.default.removeItem(at: work) }
    }
    try bench.startUpstream()

    let has = { (s: Scenario) in chosen.contains(s) }
    let loadTargets = has(.bulk) || has(.cpu) || has(.requests) || has(.streams) || has(.slow)
    let idleKinds = kinds.filter { $0 == .kopilot || $0 == .baseline }
    progress.total = (loadTargets ? kinds.count * ((has(.bulk) || has(.cpu) ? 1 : 0) +
                                                   (has(.requests) ? settings.concurrency.count : 0) +
                                                   (has(.streams) ? 1 : 0)) +
                                    (has(.slow) ? kinds.filter { $0 != .direct }.count : 0) : 0)
      + (has(.idle) || has(.storm) ? idleKinds.count * settings.idleCounts.count : 0)
      + (has(.scale) ? kinds.count : 0)
      + (has(.identity) && kinds.contains(.kopilot) ? 3 : 0)
    let runner = Runner(bench: bench, settings: settings, results: results, progress: progress)

    /// A scenario that fails is recorded and the run goes on.
    func attempt(_ what: String, _ body: () throws -> Void) {
      do { try body() } catch {
        progress.result("FAILED: \(error)")
        results.fail("\(what): \(error)")
      }
    }

    if loadTargets {
      var running: [Target] = []
      for k in kinds {
        attempt("starting \(k.title)") {
          let t = try bench.startTarget(k)
          try probe(t, tools: tools, caFile: bench.caFile)
          running.append(t)
        }
      }
      if has(.bulk) || has(.cpu) {
        for t in running {
          progress.begin("bulk \(settings.sizeLabel) down and up × \(settings.bulkRuns) → \(t.kind.title)")
          attempt("bulk via \(t.kind.title)") { try runner.bulk(t, recordBulk: has(.bulk), recordCPU: has(.cpu)) }
        }
      }
      if has(.requests) {
        for c in settings.concurrency {
          for t in running {
            progress.begin("requests, \(c) connection\(c == 1 ? "" : "s"), \(settings.requestSeconds) s → \(t.kind.title)")
            attempt("requests c=\(c) via \(t.kind.title)") { try runner.requests(t, connections: c) }
          }
        }
      }
      if has(.streams) {
        for t in running {
          progress.begin("\(settings.streams) watch streams × \(settings.streamEvents) events → \(t.kind.title)")
          attempt("streams via \(t.kind.title)") { try runner.streams(t) }
        }
      }
      if has(.slow) {
        for t in running where t.kind != .direct {
          progress.begin("\(settings.slowReaders) slow readers, \(Int(settings.slowSeconds)) s → \(t.kind.title)")
          attempt("slow readers via \(t.kind.title)") { try runner.slowReaders(t) }
        }
      }
      for t in running {
        bench.stop(t.agent)
        bench.stop(t.hub)
      }
    }
    if has(.scale) {
      // Fresh targets, the agents with one session per core (ours spread
      // over its loops), so no single session caps a group at one core.
      let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)
      for k in kinds {
        progress.begin("scale: \(cores) wrk threads × 32 connections, then \(cores) downloads → \(k.title)")
        attempt("scale via \(k.title)") {
          let t = try bench.startTarget(k, sessions: cores)
          defer {
            bench.stop(t.agent)
            bench.stop(t.hub)
          }
          try probe(t, tools: tools, caFile: bench.caFile)
          try runner.scale(t, cores: cores)
        }
      }
    }
    if has(.identity) && kinds.contains(.kopilot) {
      attempt("identity") { try runner.identity() }
    }
    if has(.idle) || has(.storm) {
      for n in settings.idleCounts {
        for k in idleKinds {
          progress.begin("\(n) idle agent sessions\(has(.storm) ? ", then a hub restart" : "") → \(k.title)")
          attempt("idle/storm \(n) via \(k.title)") {
            try runner.idleAndStorm(k, count: n, recordIdle: has(.idle), recordStorm: has(.storm))
          }
        }
      }
    }

    record.seconds = Date().timeIntervalSince(startedAt)
    record.machine["load_at_end"] = loadAverage()
    record.figures = results.figures
    record.failures = results.failures
    let table = Format.table(results.figures, targets: kinds)
    print("""

      kopilot-perf\(quick ? " --quick" : "") \(record.started), \(record.machine["cores"] ?? "?") cores \
      \(record.machine["arch"] ?? "") (\(record.machine["cpu"] ?? "")), \(record.machine["memory_gib"] ?? "?") GiB, \
      \(record.machine["os"] ?? ""); load \(record.machine["load_at_start"] ?? "") → \(loadAverage())
      kopilot: \(wire) carriage, one agent session. Ratios: kopilot's advantage (above 1× = kopilot ahead).

      \(table)

      """)
    let dir = URL(fileURLWithPath: resultsDir ?? repoURL.appendingPathComponent("perf/results").path)
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let stamp = record.started.replacingOccurrences(of: ":", with: "-")
    let out = dir.appendingPathComponent("\(quick ? "quick-" : "")\(stamp).json")
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    try enc.encode(record).write(to: out)
    print("record: \(out.path)")
    if keep { print("work folder kept: \(work.path)") }
    if !results.failures.isEmpty {
      print("\n\(results.failures.count) failure(s):")
      for f in results.failures { print("  - \(f)") }
      throw ExitCode(1)
    }
  }

}

/// One GET of the small object through a target before anything is
/// measured: a target that does not answer 200 is a setup failure.
func probe(_ t: Target, tools: Tools, caFile: String) throws {
  let r = try runCommand(tools.curl, ["-sS", "--http1.1", "--cacert", caFile, "-H", "Authorization: Bearer \(Bench.callerToken)",
                                      "-o", "/dev/null", "-w", "%{http_code}",
                                      "\(t.base)/api/v1/namespaces/default/pods/small"], timeout: 30)
  guard r.out == "200" else { throw PerfError("\(t.kind.title) answers \(r.out) \(r.err)") }
}

/// SIGINT and SIGTERM stop every child before the harness exits.
final class Cleanup: @unchecked Sendable {
  // Safe: armed once, from the main thread, before any signal can arrive.
  static let shared = Cleanup()
  private var sources: [DispatchSourceSignal] = []

  func arm(bench: Bench, work: URL?) {
    for sig in [SIGINT, SIGTERM] {
      signal(sig, SIG_IGN)
      let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
      src.setEventHandler {
        FileHandle.standardError.write(Data("kopilot-perf: interrupted; stopping everything\n".utf8))
        bench.shutdown()
        if let work { try? FileManager.default.removeItem(at: work) }
        exit(130)
      }
      src.resume()
      sources.append(src)
    }
  }
}


/// The project checkout: the --repo flag, else the folder above this
/// executable that holds perf/baseline, else the current folder.
func findRepo(_ repo: String?) throws -> URL {
  if let repo { return URL(fileURLWithPath: repo) }
  var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
  while dir.path != "/" {
    if FileManager.default.fileExists(atPath: dir.appendingPathComponent("perf/baseline").path) { return dir }
    dir = dir.deletingLastPathComponent()
  }
  let cwd = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
  guard FileManager.default.fileExists(atPath: cwd.appendingPathComponent("perf/baseline").path) else {
    throw PerfError("cannot find the project checkout (a folder with perf/baseline): pass --repo")
  }
  return cwd
}
