import Foundation

/// One measured quantity of one scenario, for every target that ran it.
struct Figure: Codable {
  var scenario: String
  var metric: String
  var unit: String
  /// "higher" or "lower": which way is better.
  var better: String
  var values: [String: Double] = [:]
  var notes: [String: String] = [:]
}

/// Everything a run produced, as written to perf/results/*.json.
struct RunRecord: Codable {
  var started: String
  var seconds: Double = 0
  var quick: Bool
  var machine: [String: String]
  var settings: [String: String]
  var figures: [Figure] = []
  var failures: [String] = []
}

/// Collects figures in the order they were first reported.
final class Results {
  private(set) var figures: [Figure] = []
  private(set) var failures: [String] = []

  func add(_ scenario: String, _ metric: String, unit: String, better: String,
           target: TargetKind, value: Double, note: String? = nil) {
    if let i = figures.firstIndex(where: { $0.scenario == scenario && $0.metric == metric }) {
      figures[i].values[target.rawValue] = value
      if let note { figures[i].notes[target.rawValue] = note }
    } else {
      var f = Figure(scenario: scenario, metric: metric, unit: unit, better: better)
      f.values[target.rawValue] = value
      if let note { f.notes[target.rawValue] = note }
      figures.append(f)
    }
  }

  func fail(_ what: String) { failures.append(what) }
}

/// Prints what is running and what it measured, one line per step, with the
/// step count and the time since the start.
final class Progress {
  private let start = Date()
  private var step = 0
  var total = 0

  private func stamp() -> String {
    let s = Int(Date().timeIntervalSince(start))
    return String(format: "%02d:%02d", s / 60, s % 60)
  }

  func begin(_ what: String) {
    step += 1
    let count = total > 0 ? "[\(step)/\(total)] " : ""
    FileHandle.standardError.write(Data("\(stamp()) \(count)\(what) ...\n".utf8))
  }

  func result(_ text: String) {
    FileHandle.standardError.write(Data("\(stamp())     \(text)\n".utf8))
  }

  func note(_ text: String) {
    FileHandle.standardError.write(Data("\(stamp()) \(text)\n".utf8))
  }
}

enum Format {
  static func number(_ v: Double, unit: String) -> String {
    if v.isNaN { return "—" }
    switch unit {
    case "MB/s", "req/s", "streams", "sessions": return grouped(v.rounded())
    case "µs", "KiB", "MiB", "ms": return v >= 100 ? grouped(v.rounded()) : String(format: "%.1f", v)
    case "s", "s/GB": return String(format: v >= 10 ? "%.1f" : "%.2f", v)
    default: return String(format: "%.2f", v)
    }
  }

  static func grouped(_ v: Double) -> String {
    let digits = String(Int64(v.magnitude))
    var out = ""
    for (i, c) in digits.reversed().enumerated() {
      if i > 0 && i % 3 == 0 { out.append(",") }
      out.append(c)
    }
    return (v < 0 ? "-" : "") + String(out.reversed())
  }

  /// "kopilot / other", written so that above 1 is always kopilot ahead:
  /// for lower-is-better figures it is other / kopilot.
  static func ratio(_ k: Double?, _ o: Double?, better: String) -> String {
    // "info" figures (cores used) are context, not a contest.
    guard let k, let o, k > 0, o > 0, better != "info" else { return "—" }
    let r = better == "higher" ? k / o : o / k
    return String(format: "%.2f×", r)
  }

  /// The table as Markdown: one row per figure, the four targets, then
  /// kopilot's advantage over each of the others (above 1: kopilot ahead).
  static func table(_ figures: [Figure], targets: [TargetKind]) -> String {
    let others = targets.filter { $0 != .kopilot }
    var header = ["scenario", "figure"] + targets.map(\.title)
    if targets.contains(.kopilot) { header += others.map { "vs \($0.title)" } }
    var rows = [header, header.map { _ in "---" }]
    for f in figures {
      let arrow = f.better == "higher" ? "↑" : f.better == "lower" ? "↓" : "·"
      var row = [f.scenario, "\(f.metric) (\(f.unit)) \(arrow)"]
      row += targets.map { t in f.values[t.rawValue].map { number($0, unit: f.unit) } ?? "—" }
      if targets.contains(.kopilot) {
        row += others.map { ratio(f.values["kopilot"], f.values[$0.rawValue], better: f.better) }
      }
      rows.append(row)
    }
    return rows.map { "| " + $0.joined(separator: " | ") + " |" }.joined(separator: "\n")
  }
}

/// The machine, as the record and the README describe it.
func describeMachine() -> [String: String] {
  var m: [String: String] = [:]
  var u = utsname()
  uname(&u)
  func field<T>(_ v: T) -> String {
    withUnsafeBytes(of: v) { b in String(decoding: b.prefix { $0 != 0 }, as: UTF8.self) }
  }
  m["arch"] = field(u.machine)
  m["kernel"] = field(u.release)
  m["cores"] = "\(ProcessInfo.processInfo.activeProcessorCount)"
  m["memory_gib"] = String(format: "%.0f", Double(ProcessInfo.processInfo.physicalMemory) / 1_073_741_824)
  if let cpu = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
     let line = cpu.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
     let colon = line.firstIndex(of: ":") {
    m["cpu"] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
  }
  if let os = try? String(contentsOfFile: "/etc/os-release", encoding: .utf8),
     let line = os.split(separator: "\n").first(where: { $0.hasPrefix("PRETTY_NAME=") }) {
    m["os"] = line.dropFirst("PRETTY_NAME=".count).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
  }
  m["load_at_start"] = loadAverage()
  return m
}

func loadAverage() -> String {
  let s = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? ""
  return s.split(separator: " ").prefix(3).joined(separator: " ")
}
