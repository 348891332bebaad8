import Foundation
import Synchronization

/// How big and how long each scenario is: the full run, or `--quick`.
struct Settings {
  var bulkBytes: Int
  var bulkRuns: Int
  var concurrency: [Int]
  var requestSeconds: Int
  var streams: Int
  var streamEvents: Int
  var streamIntervalMs: Int
  var idleCounts: [Int]
  var settleSeconds: Double
  /// Callers in the slow-readers figure, and how long they read slowly.
  var slowReaders = 100
  var slowSeconds = 5.0

  static let full = Settings(bulkBytes: 1 << 30, bulkRuns: 3, concurrency: [1, 16, 64, 256], requestSeconds: 10,
                             streams: 1000, streamEvents: 20, streamIntervalMs: 250, idleCounts: [1000, 10000],
                             settleSeconds: 3)
  static let quick = Settings(bulkBytes: 16 << 20, bulkRuns: 1, concurrency: [1, 16, 64, 256], requestSeconds: 1,
                              streams: 50, streamEvents: 3, streamIntervalMs: 100, idleCounts: [50],
                              settleSeconds: 0.5, slowReaders: 10, slowSeconds: 1)

  var sizeLabel: String {
    bulkBytes >= 1 << 30 ? "\(bulkBytes >> 30) GiB" : "\(bulkBytes >> 20) MiB"
  }
}

enum Scenario: String, CaseIterable {
  case bulk, cpu, requests, streams, slow, idle, storm, scale, identity
}

/// What went wrong in work spread over threads.
final class Failures: Sendable {
  private let items = Mutex<[String]>([])
  func add(_ s: String) { items.withLock { $0.append(s) } }
  var list: [String] { items.withLock { $0 } }
}

/// Runs the scenarios against running targets and records what they measured.
struct Runner {
  let bench: Bench
  let settings: Settings
  let results: Results
  let progress: Progress

  private var auth: [String] { ["-H", "Authorization: Bearer \(Bench.callerToken)"] }

  // MARK: bulk and CPU

  /// One large download and one large upload, `bulkRuns` times each; the
  /// median MB/s of each, and the CPU the hub and agent processes spent per
  /// GB carried over all of them.
  func bulk(_ t: Target, recordBulk: Bool, recordCPU: Bool) throws {
    let blob = bench.work.appendingPathComponent("upload.bin")
    if !FileManager.default.fileExists(atPath: blob.path) { try writeRandomFile(blob, bytes: settings.bulkBytes) }
    var down: [Double] = [], up: [Double] = []
    var hubCPU = 0.0, agentCPU = 0.0, carried = 0.0
    for _ in 0..<settings.bulkRuns {
      let h0 = t.hubCPU, a0 = t.agentCPU
      down.append(try curlDownload(t))
      up.append(try curlUpload(t, file: blob))
      hubCPU += t.hubCPU - h0
      agentCPU += t.agentCPU - a0
      carried += 2 * Double(settings.bulkBytes)
    }
    let label = settings.sizeLabel
    if recordBulk {
      results.add("bulk", "download \(label)", unit: "MB/s", better: "higher", target: t.kind, value: median(down))
      results.add("bulk", "upload \(label)", unit: "MB/s", better: "higher", target: t.kind, value: median(up))
    }
    var line = "download \(Format.number(median(down), unit: "MB/s")) MB/s, upload \(Format.number(median(up), unit: "MB/s")) MB/s"
    if recordCPU && t.kind != .direct {
      let gb = carried / 1e9
      results.add("cpu", "hub CPU per GB", unit: "s/GB", better: "lower", target: t.kind, value: hubCPU / gb)
      results.add("cpu", "hub + agent CPU per GB", unit: "s/GB", better: "lower", target: t.kind,
                  value: (hubCPU + agentCPU) / gb)
      line += String(format: "; hub %.2f s/GB, hub + agent %.2f s/GB", hubCPU / gb, (hubCPU + agentCPU) / gb)
    }
    progress.result(line)
  }

  private func curlDownload(_ t: Target) throws -> Double {
    let url = "\(t.base)/blob?bytes=\(settings.bulkBytes)"
    let r = try runCommand(bench.tools.curl, ["-sS", "--http1.1", "--cacert", bench.caFile] + auth +
                           ["-o", "/dev/null", "-w", "%{http_code} %{speed_download} %{size_download}", url])
    let f = r.out.split(separator: " ")
    guard r.status == 0, f.count == 3, f[0] == "200", Int(f[2]) == settings.bulkBytes, let speed = Double(f[1]) else {
      throw PerfError("download from \(t.kind.title) failed: curl exit \(r.status), \(r.out) \(r.err)")
    }
    return speed / 1e6
  }

  private func curlUpload(_ t: Target, file: URL) throws -> Double {
    let url = "\(t.base)/upload"
    let body = bench.work.appendingPathComponent("upload-answer.json").path
    // "Expect:" turns off curl's wait for 100 Continue, which no proxy here sends.
    let r = try runCommand(bench.tools.curl, ["-sS", "--http1.1", "--cacert", bench.caFile] + auth +
                           ["-H", "Expect:", "-T", file.path, "-o", body,
                            "-w", "%{http_code} %{speed_upload} %{size_upload}", url])
    let f = r.out.split(separator: " ")
    let answer = (try? String(contentsOfFile: body, encoding: .utf8)) ?? ""
    guard r.status == 0, f.count == 3, f[0] == "200", Int(f[2]) == settings.bulkBytes,
          answer.contains("\"bytes\":\(settings.bulkBytes)"), let speed = Double(f[1]) else {
      throw PerfError("upload to \(t.kind.title) failed: curl exit \(r.status), \(r.out) \(r.err) \(answer)")
    }
    return speed / 1e6
  }

  // MARK: requests

  /// Small GETs of a ~1 KiB JSON object over `c` keep-alive connections
  /// from wrk (one thread), with requests/s and latency percentiles.
  func requests(_ t: Target, connections c: Int) throws {
    let url = "\(t.base)/api/v1/namespaces/default/pods/small"
    let r = try runCommand(bench.tools.wrk, ["-t1", "-c\(c)", "-d\(settings.requestSeconds)s", "--timeout", "10s",
                                             "-s", bench.tools.wrkScript] + auth + [url],
                           timeout: Double(settings.requestSeconds) + 60)
    guard r.status == 0, let line = r.out.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
          let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Double] else {
      throw PerfError("wrk against \(t.kind.title) failed (exit \(r.status)):\n\(r.out)\n\(r.err)")
    }
    let n = obj["requests"] ?? 0, secs = (obj["duration_us"] ?? 1) / 1e6
    let errors = ["connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"]
      .reduce(0) { $0 + (obj[$1] ?? 0) }
    guard n > 0 else { throw PerfError("wrk against \(t.kind.title): no request completed:\n\(r.out)") }
    let s = "requests"
    results.add(s, "c=\(c) requests/s", unit: "req/s", better: "higher", target: t.kind, value: n / secs)
    results.add(s, "c=\(c) p50", unit: "µs", better: "lower", target: t.kind, value: obj["p50_us"] ?? .nan)
    results.add(s, "c=\(c) p99", unit: "µs", better: "lower", target: t.kind, value: obj["p99_us"] ?? .nan)
    results.add(s, "c=\(c) p99.9", unit: "µs", better: "lower", target: t.kind, value: obj["p999_us"] ?? .nan)
    progress.result(String(format: "%@ req/s, p50 %.0f µs, p99 %.0f µs, p99.9 %.0f µs%@",
                           Format.grouped((n / secs).rounded()), obj["p50_us"] ?? 0, obj["p99_us"] ?? 0,
                           obj["p999_us"] ?? 0, errors > 0 ? ", \(Int(errors)) errors" : ""))
    if errors > 0 { results.fail("requests c=\(c) via \(t.kind.title): \(Int(errors)) errors of \(Int(n))") }
  }

  // MARK: identity and audit

  /// What the member seeing the caller costs: small GETs at c=16 through
  /// Kopilot with impersonation off (`--identity agent`), on (the
  /// default), and on with the audit log written to a file. A fresh hub
  /// and agent for each; the rows name the setting.
  func identity() throws {
    let log = bench.work.appendingPathComponent("audit.log").path
    let setups: [(String, [String])] = [
      ("identity off (--identity agent)", ["--identity", "agent"]),
      ("impersonation", []),
      ("impersonation + audit log", ["--audit-log-path", log]),
    ]
    for (label, args) in setups {
      progress.begin("identity: \(label), requests, 16 connections, \(settings.requestSeconds) s → kopilot")
      let t = try bench.startTarget(.kopilot, hubArgs: args)
      defer {
        bench.stop(t.agent)
        bench.stop(t.hub)
      }
      try probe(t, tools: bench.tools, caFile: bench.caFile)
      let r = try runCommand(bench.tools.wrk, ["-t1", "-c16", "-d\(settings.requestSeconds)s", "--timeout", "10s",
                                               "-s", bench.tools.wrkScript] + auth + ["\(t.base)/api/v1/namespaces/default/pods/small"],
                             timeout: Double(settings.requestSeconds) + 60)
      guard r.status == 0, let line = r.out.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
            let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Double],
            let n = obj["requests"], n > 0 else {
        throw PerfError("wrk (\(label)) failed (exit \(r.status)):\n\(r.out)\n\(r.err)")
      }
      let rps = n / ((obj["duration_us"] ?? 1) / 1e6)
      results.add("identity", "c=16 requests/s, \(label)", unit: "req/s", better: "higher", target: .kopilot, value: rps)
      results.add("identity", "c=16 p99, \(label)", unit: "µs", better: "lower", target: .kopilot, value: obj["p99_us"] ?? .nan)
      progress.result(String(format: "%@ req/s, p99 %.0f µs", Format.grouped(rps.rounded()), obj["p99_us"] ?? 0))
    }
  }

  // MARK: scale

  /// Load from every core at once, and the cores each process group used
  /// for it (CPU seconds over wall seconds, from /proc): small GETs from
  /// wrk with one thread and 32 connections per core, then one download
  /// per core in parallel. For Kopilot also the hub alone: wrk against its
  /// own /healthz answer, with no agent or member in the way, which is the
  /// run that shows whether the hub itself spreads over the cores.
  func scale(_ t: Target, cores: Int) throws {
    let s = "scale"
    let (rps, p99, hubGET, agentGET) = try wrkLoad(t, url: "\(t.base)/api/v1/namespaces/default/pods/small",
                                                    threads: cores, connections: 32 * cores)
    results.add(s, "small GETs req/s", unit: "req/s", better: "higher", target: t.kind, value: rps)
    results.add(s, "small GETs p99", unit: "µs", better: "lower", target: t.kind, value: p99)
    var line = String(format: "GETs %@ req/s, p99 %.0f µs", Format.grouped(rps.rounded()), p99)
    if t.kind != .direct {
      results.add(s, "small GETs, hub cores", unit: "cores", better: "info", target: t.kind, value: hubGET)
      results.add(s, "small GETs, agent cores", unit: "cores", better: "info", target: t.kind, value: agentGET)
      line += String(format: " (hub %.2f, agent %.2f cores)", hubGET, agentGET)
    }
    // One download per core at once, each a share of the bulk size.
    let each = max(settings.bulkBytes / cores, 1 << 20)
    let h0 = t.hubCPU, a0 = t.agentCPU, start = Date()
    let failures = Failures()
    let curl = bench.tools.curl, args = ["-sS", "--http1.1", "--cacert", bench.caFile] + auth
    let url = "\(t.base)/blob?bytes=\(each)"
    DispatchQueue.concurrentPerform(iterations: cores) { _ in
      do {
        let r = try runCommand(curl, args + ["-o", "/dev/null", "-w", "%{http_code} %{size_download}", url])
        if r.out != "200 \(each)" { failures.add("\(r.out) \(r.err)") }
      } catch { failures.add("\(error)") }
    }
    let secs = Date().timeIntervalSince(start)
    guard failures.list.isEmpty else { throw PerfError("parallel downloads via \(t.kind.title): \(failures.list)") }
    let mbs = Double(each * cores) / secs / 1e6
    results.add(s, "parallel downloads MB/s", unit: "MB/s", better: "higher", target: t.kind, value: mbs)
    line += ", downloads \(Format.number(mbs, unit: "MB/s")) MB/s"
    if t.kind != .direct {
      let hub = (t.hubCPU - h0) / secs, agent = (t.agentCPU - a0) / secs
      results.add(s, "downloads, hub cores", unit: "cores", better: "info", target: t.kind, value: hub)
      results.add(s, "downloads, agent cores", unit: "cores", better: "info", target: t.kind, value: agent)
      line += String(format: " (hub %.2f, agent %.2f cores)", hub, agent)
    }
    if t.kind == .kopilot, let root = t.base.range(of: "/proxy/") {
      let (local, _, hubLocal, _) = try wrkLoad(t, url: String(t.base[..<root.lowerBound]) + "/healthz",
                                                threads: cores, connections: 32 * cores)
      results.add(s, "hub alone (/healthz) req/s", unit: "req/s", better: "higher", target: t.kind, value: local)
      results.add(s, "hub alone, hub cores", unit: "cores", better: "info", target: t.kind, value: hubLocal)
      line += String(format: "; hub alone %@ req/s on %.2f cores", Format.grouped(local.rounded()), hubLocal)
    }
    progress.result(line)
  }

  /// wrk for `requestSeconds`: requests/s, p99 (µs), and the cores the hub
  /// and agent process groups used meanwhile.
  private func wrkLoad(_ t: Target, url: String, threads: Int, connections: Int) throws
    -> (Double, Double, Double, Double) {
    let h0 = t.hubCPU, a0 = t.agentCPU, start = Date()
    let r = try runCommand(bench.tools.wrk, ["-t\(threads)", "-c\(connections)", "-d\(settings.requestSeconds)s",
                                             "--timeout", "10s", "-s", bench.tools.wrkScript] + auth + [url],
                           timeout: Double(settings.requestSeconds) + 60)
    let secs = Date().timeIntervalSince(start)
    guard r.status == 0, let line = r.out.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
          let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Double],
          let n = obj["requests"], n > 0 else {
      throw PerfError("wrk against \(url) failed (exit \(r.status)):\n\(r.out)\n\(r.err)")
    }
    let errors = ["connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"]
      .reduce(0) { $0 + (obj[$1] ?? 0) }
    if errors > 0 { results.fail("scale via \(t.kind.title): \(Int(errors)) errors of \(Int(n)) at \(url)") }
    return (n / ((obj["duration_us"] ?? 1) / 1e6), obj["p99_us"] ?? .nan,
            (t.hubCPU - h0) / secs, (t.agentCPU - a0) / secs)
  }

  // MARK: streams

  /// `streams` watch-like streams at once, each on its own caller
  /// connection (one agent session carries them all), each receiving
  /// `streamEvents` events; delivery latency, and the hub's memory while
  /// all are open.
  func streams(_ t: Target) throws {
    let url = "\(t.base)/watch?events=\(settings.streamEvents)&interval=\(settings.streamIntervalMs)&stagger=1"
    let before = t.hubRSS
    let w = try bench.start("watchers-\(t.kind.rawValue)", bench.tools.watchers, [
      "-url", url, "-ca", bench.caFile, "-token", Bench.callerToken, "-streams", "\(settings.streams)",
      "-timeout", "\(60 + settings.streamEvents * settings.streamIntervalMs / 1000 * 2)",
    ])
    defer { bench.stop(w) }
    try w.waitFor("all streams open", timeout: 120)
    var peak = t.hubRSS
    while w.isRunning {
      peak = max(peak, t.hubRSS)
      Thread.sleep(forTimeInterval: 0.1)
    }
    guard let line = w.output().split(separator: "\n").last(where: { $0.hasPrefix("{") }),
          let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
      throw PerfError("watchers against \(t.kind.title) printed no result:\n\(w.output())")
    }
    let num = { (k: String) in (obj[k] as? NSNumber)?.doubleValue ?? .nan }
    let completed = num("completed")
    let s = "streams"
    let n = settings.streams
    results.add(s, "\(n) streams completed", unit: "streams", better: "higher", target: t.kind, value: completed)
    results.add(s, "delivery p50", unit: "µs", better: "lower", target: t.kind, value: num("p50_us"))
    results.add(s, "delivery p99", unit: "µs", better: "lower", target: t.kind, value: num("p99_us"))
    results.add(s, "delivery p99.9", unit: "µs", better: "lower", target: t.kind, value: num("p999_us"))
    var line2 = String(format: "%.0f/%d complete, p50 %.0f µs, p99 %.0f µs", completed, n, num("p50_us"), num("p99_us"))
    if t.kind != .direct {
      let grew = max(0, peak - before)
      results.add(s, "hub memory while open", unit: "MiB", better: "lower", target: t.kind, value: grew / 1_048_576)
      results.add(s, "hub memory per stream", unit: "KiB", better: "lower", target: t.kind,
                  value: grew / 1024 / Double(n))
      line2 += String(format: ", hub +%.1f MiB", grew / 1_048_576)
    }
    progress.result(line2)
    if Int(completed) != n {
      results.fail("streams via \(t.kind.title): \(Int(completed)) of \(n) complete (\(obj["first_error"] ?? ""))")
    }
  }

  // MARK: slow readers

  /// `slowReaders` callers each start a 1 GiB download and read it at
  /// 16 KiB/s (curl --limit-rate) for `slowSeconds`: the hub's extra
  /// resident memory per reader at its peak. That is what a slow caller
  /// can make the hub hold (stream window, relay queue, TLS buffers).
  func slowReaders(_ t: Target) throws {
    let n = settings.slowReaders
    let url = "\(t.base)/blob?bytes=\(1 << 30)"
    let before = t.hubRSS
    var readers: [Child] = []
    defer { readers.forEach { bench.stop($0) } }
    for i in 0..<n {
      readers.append(try bench.start("slow-\(t.kind.rawValue)-\(i)", bench.tools.curl, [
        "-sS", "--http1.1", "--cacert", bench.caFile, "-H", "Authorization: Bearer \(Bench.callerToken)",
        "--limit-rate", "16k", "-o", "/dev/null", "--max-time", "\(Int(settings.slowSeconds) + 30)", url,
      ]))
    }
    var peak = t.hubRSS
    let end = Date().addingTimeInterval(settings.slowSeconds)
    while Date() < end {
      peak = max(peak, t.hubRSS)
      Thread.sleep(forTimeInterval: 0.1)
    }
    let gone = readers.filter { !$0.isRunning }.count
    let grew = max(0, peak - before)
    results.add("slow readers", "\(n) slow readers: hub memory per reader", unit: "KiB", better: "lower",
                target: t.kind, value: grew / 1024 / Double(n))
    progress.result(String(format: "hub +%.1f MiB for %d readers (%.0f KiB each)", grew / 1_048_576, n,
                           grew / 1024 / Double(n)))
    if gone > 0 { results.fail("slow readers via \(t.kind.title): \(gone) of \(n) curl processes ended early") }
  }

  // MARK: idle agents and the connect storm

  /// `count` idle agent sessions on a fresh hub (all from one agent
  /// process): the hub's resident memory per session. Then the hub is
  /// restarted on the same port and the time until every session is back
  /// is the connect storm.
  func idleAndStorm(_ kind: TargetKind, count: Int, recordIdle: Bool, recordStorm: Bool) throws {
    precondition(kind == .kopilot || kind == .baseline)
    let startHub = { (name: String, port: Int) throws -> Child in
      kind == .kopilot ? try bench.startKopilotHub(name: name, port: port) : try bench.startBaseHub(name: name, port: port)
    }
    let tag = "\(kind.rawValue)-\(count)"
    var hub = try startHub("idle-hub-\(tag)", 0)
    let port = try hub.listeningPort()
    Thread.sleep(forTimeInterval: settings.settleSeconds)
    let rss0 = ProcStat.rssBytes(hub.pid)
    let agent = kind == .kopilot
      ? try bench.startKopilotAgent(name: "idle-agent-\(tag)", hubPort: port, sessions: count)
      : try bench.startBaseAgent(name: "idle-agent-\(tag)", hubPort: port, sessions: count)
    defer {
      bench.stop(agent)
      bench.stop(hub)
    }
    let connectStart = Date()
    let timeout = 60 + Double(count) / 50
    try hub.waitFor("agent session up", times: count, timeout: timeout)
    let connectAll = Date().timeIntervalSince(connectStart)
    Thread.sleep(forTimeInterval: settings.settleSeconds)
    let rss1 = ProcStat.rssBytes(hub.pid)
    let perSession = max(0, rss1 - rss0) / Double(count)
    if recordIdle {
      let s = "idle agents"
      results.add(s, "\(count) sessions: hub memory per session", unit: "KiB", better: "lower", target: kind,
                  value: perSession / 1024)
      results.add(s, "\(count) sessions: hub memory in all", unit: "MiB", better: "lower", target: kind,
                  value: rss1 / 1_048_576)
    }
    progress.result(String(format: "%d sessions up in %.1f s; hub %.1f MiB → %.1f MiB, %.1f KiB per session",
                           count, connectAll, rss0 / 1_048_576, rss1 / 1_048_576, perSession / 1024))
    guard recordStorm else { return }
    // The storm: the hub goes away and comes back on the same port; every
    // agent session dials again (each agent's own backoff and jitter).
    // Each restart is one sample; reconnect delays are random (jitter), so
    // the median of `bulkRuns` restarts is reported.
    var backs: [Double] = [], hubMs: [Double] = [], agentMs: [Double] = []
    for run in 1...settings.bulkRuns {
      bench.stop(hub)
      let agentCPU0 = ProcStat.cpuSeconds(agent.pid)
      let restart = Date()
      hub = try startHub("storm-hub-\(tag)-\(run)", port)
      _ = try hub.listeningPort(timeout: 30)
      try hub.waitFor("agent session up", times: count, timeout: timeout + 60)
      backs.append(Date().timeIntervalSince(restart))
      // Where the time went: the new hub's CPU (all of it is the storm)
      // and the agent process's, per session.
      hubMs.append(ProcStat.cpuSeconds(hub.pid) * 1000 / Double(count))
      agentMs.append((ProcStat.cpuSeconds(agent.pid) - agentCPU0) * 1000 / Double(count))
    }
    results.add("connect storm", "\(count) sessions back after a hub restart", unit: "s", better: "lower",
                target: kind, value: median(backs))
    results.add("connect storm", "\(count) sessions: hub CPU per reconnect", unit: "ms", better: "lower",
                target: kind, value: median(hubMs))
    progress.result(String(format: "all %d sessions back after each restart in %@ s; CPU per reconnect: hub %.2f ms, agent process %.2f ms",
                           count, backs.map { String(format: "%.2f", $0) }.joined(separator: ", "),
                           median(hubMs), median(agentMs)))
  }
}

func median(_ xs: [Double]) -> Double {
  guard !xs.isEmpty else { return .nan }
  let s = xs.sorted()
  return s[(s.count - 1) / 2]
}

/// A file of random bytes to upload (random so nothing on the path can
/// compress it).
func writeRandomFile(_ url: URL, bytes: Int) throws {
  _ = FileManager.default.createFile(atPath: url.path, contents: nil)
  let h = try FileHandle(forWritingTo: url)
  defer { try? h.close() }
  var block = [UInt8](repeating: 0, count: 1 << 20)
  var left = bytes
  var rng = SystemRandomNumberGenerator()
  for i in 0..<block.count / 8 {
    let v = rng.next() as UInt64
    withUnsafeBytes(of: v) { for j in 0..<8 { block[i * 8 + j] = $0[j] } }
  }
  while left > 0 {
    let n = min(left, block.count)
    // Vary each block a little so no two are the same.
    block[0] &+= 1
    try h.write(contentsOf: block[0..<n])
    left -= n
  }
}
