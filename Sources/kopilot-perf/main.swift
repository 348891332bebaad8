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
      req/s, MB/s, p99 and the cores each process group used), identity (small GETs at 16 \
      connections through kopilot with impersonation off, on, and on with the audit log: what \
      the member seeing the caller costs). idle and storm compare kopilot with the original \
      design only; identity runs kopilot alone.

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
    var settings = quick ? Settings.quick : Settings.full
    if let b = bulkMiB { settings.bulkBytes = b << 20 }
    if let r = runs { settings.bulkRuns = r }
    if let s = seconds { settings.requestSeconds = s }
    if let c = try ints(concurrency, "--concurrency", 1...20000) { settings.concurrency = c }
    if let s = streams { settings.streams = s }
    if let s = slowReaders { settings.slowReaders = s }
    if let i = try ints(idle, "--idle", 1...10000) { settings.idleCounts = i }
    let perfRun = PerfRun(scenarios: try parsedScenarios(), targets: try parsedTargets(), settings: settings,
                          quick: quick, wire: wire, keep: keep, repo: try findRepo(repo), resultsDir: resultsDir)
    try perfRun.run()
  }
}

PerfCommand.main()
