import ArgumentParser
import Foundation

struct PerfCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "kopilot-perf",
    abstract: "Benchmark kopilot side by side with the original design, two chained nginx proxies and no tunnel.",
    discussion: """
      Everything runs on 127.0.0.1 and is started by this command: a fast stand-in for a \
      kube-apiserver (perf/upstream), kopilot's hub and agent, the original design rebuilt in Go \
      (perf/baseline), two nginx reverse proxies chained in the hub's and the agent's places, and \
      the load generators (wrk, curl, perf/watchers). Each scenario runs against every target in \
      the same run; the table gives each figure and kopilot's advantage over each other target \
      (above 1× means kopilot is ahead, whichever way the figure is better). The record of the \
      run is written as JSON to --results.

      Scenarios: bulk (1 GiB download and upload), cpu (hub CPU seconds per GB during bulk), \
      requests (small GETs at 1, 16, 64, 256 connections: requests/s, p50, p99, p99.9), streams \
      (1,000 watch streams on one agent session: delivery latency and hub memory), slow (100 \
      callers each reading a large download at 16 KiB/s: hub memory per slow reader), idle (1,000 \
      and 10,000 idle agent sessions, all from one agent process: hub memory per session), storm \
      (the hub restarts under those sessions: time until all are back), scale (a wrk thread and \
      32 connections per core, one download per core, and kopilot's hub alone on /healthz: \
      req/s, MB/s, p99 and the cores each process group used). idle and storm compare kopilot \
      with the original design only.

      Needs: a release build (`swift build -c release`), go with Debian's yamux and gorilla \
      websocket packages, wrk, curl and nginx (Tests/setup-debian.sh installs them).
      """)

  @Flag(help: "A seconds-long smoke pass: every scenario, small sizes; checks that each works and gives numbers.")
  var quick = false

  @Option(help: "Comma-separated scenarios to run: \(Scenario.allCases.map(\.rawValue).joined(separator: ",")).")
  var scenarios: String = Scenario.allCases.map(\.rawValue).joined(separator: ",")

  @Option(help: "Comma-separated targets: \(TargetKind.allCases.map(\.rawValue).joined(separator: ",")).")
  var targets: String = TargetKind.allCases.map(\.rawValue).joined(separator: ",")

  @Option(name: .customLong("bulk-mib"), help: "Size of the bulk download and upload, MiB (default 1024; 16 with --quick).")
  var bulkMiB: Int?

  @Option(help: "Runs of each bulk transfer; the median counts (default 3; 1 with --quick).")
  var runs: Int?

  @Option(help: "Seconds of load for each requests figure (default 10; 1 with --quick).")
  var seconds: Int?

  @Option(help: "Comma-separated connection counts for the requests scenario.")
  var concurrency: String?

  @Option(name: .customLong("slow-readers"), help: "Callers in the slow scenario (default 100; 10 with --quick).")
  var slowReaders: Int?

  @Option(help: "Concurrent watch streams in the streams scenario (default 1000; 50 with --quick).")
  var streams: Int?

  @Option(help: "Comma-separated idle agent session counts (default 1000,10000; 50 with --quick).")
  var idle: String?

  @Option(help: "kopilot's carriage between agent and hub: framed (the default, WebSocket messages) or raw.")
  var wire: String = "framed"

  @Option(name: .customLong("results"), help: "Folder for the JSON record (default: perf/results in the checkout).")
  var resultsDir: String?

  @Option(help: "The project checkout (default: found from this executable's path, else the current folder).")
  var repo: String?

  @Flag(help: "Keep the work folder (logs, configs, certificates) and print its path.")
  var keep = false

  func validate() throws {
    guard wire == "framed" || wire == "raw" else { throw ValidationError("--wire is framed or raw") }
    _ = try parsedScenarios()
    _ = try parsedTargets()
    if let b = bulkMiB, b < 1 { throw ValidationError("--bulk-mib must be at least 1") }
    if let r = runs, r < 1 { throw ValidationError("--runs must be at least 1") }
    if let s = seconds, s < 1 { throw ValidationError("--seconds must be at least 1") }
    if let s = streams, !(1...20000).contains(s) { throw ValidationError("--streams is 1 to 20000") }
    if let s = slowReaders, !(1...2000).contains(s) { throw ValidationError("--slow-readers is 1 to 2000") }
    _ = try ints(concurrency, "--concurrency", 1...20000)
    _ = try ints(idle, "--idle", 1...10000)
  }

  private func parsedScenarios() throws -> [Scenario] {
    try scenarios.split(separator: ",").map {
      guard let s = Scenario(rawValue: String($0)) else {
        throw ValidationError("unknown scenario \($0); known: \(Scenario.allCases.map(\.rawValue).joined(separator: ", "))")
      }
      return s
    }
  }

  private func parsedTargets() throws -> [TargetKind] {
    let chosen = try targets.split(separator: ",").map {
      guard let t = TargetKind(rawValue: String($0)) else {
        throw ValidationError("unknown target \($0); known: \(TargetKind.allCases.map(\.rawValue).joined(separator: ", "))")
      }
      return t
    }
    return TargetKind.allCases.filter { chosen.contains($0) }  // table order
  }

  private func ints(_ s: String?, _ flag: String, _ range: ClosedRange<Int>) throws -> [Int]? {
    guard let s else { return nil }
    return try s.split(separator: ",").map {
      guard let v = Int($0), range.contains(v) else {
        throw ValidationError("\(flag): \($0) is not a number from \(range.lowerBound) to \(range.upperBound)")
      }
      return v
    }
  }

  func run() throws {
    let chosen = try parsedScenarios(), kinds = try parsedTargets()
    var settings = quick ? Settings.quick : Settings.full
    if let b = bulkMiB { settings.bulkBytes = b << 20 }
    if let r = runs { settings.bulkRuns = r }
    if let s = seconds { settings.requestSeconds = s }
    if let c = try ints(concurrency, "--concurrency", 1...20000) { settings.concurrency = c }
    if let s = streams { settings.streams = s }
    if let s = slowReaders { settings.slowReaders = s }
    if let i = try ints(idle, "--idle", 1...10000) { settings.idleCounts = i }

    raiseFileLimit()
    let repoURL = try findRepo()
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

  private func findRepo() throws -> URL {
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

PerfCommand.main()
