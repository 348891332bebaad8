import Foundation
import KopilotBase
import Logging

#if canImport(Glibc)
  import Glibc
#endif

/// The hub's audit log (`--audit-log-path`): one JSON `Event` per line, to a
/// file or to standard output (`-`), rotated as kube-apiserver's
/// `--audit-log-maxsize`, `--audit-log-maxbackup` and `--audit-log-maxage`
/// rotate its own.
///
/// The request path never waits for it: `record` appends the event to a
/// queue bounded by bytes (each event's estimated line) and returns; a
/// thread of its own encodes the events and writes them out, so the JSON
/// encoding costs the loops nothing either. A sink that cannot keep up (a full disk, a pipe nobody reads)
/// makes the queue fill, and further events are dropped and counted
/// (`droppedEvents`, exported as a metric) with one warning in the log.
public final class AuditLog: Sendable {
  public struct Rotation: Sendable, Equatable {
    /// MiB a file may reach before it is rotated; 0: never.
    public var maxSizeMB = 0
    /// Rotated files kept; 0: all (as kube-apiserver).
    public var maxBackups = 0
    /// Days a rotated file is kept; 0: no limit.
    public var maxAgeDays = 0
    public init() {}
  }

  private struct State {
    var queue: [AuditEvent] = []
    var queuedBytes = 0
    var closed = false
    var dropped: UInt64 = 0
    var warned = false
  }

  public let path: String
  private let rotation: Rotation
  private let queueLimit: Int
  private let logger: Logger
  private let state = Mutex(State())
  private let wake = DispatchSemaphore(value: 0)
  private let finished = DispatchSemaphore(value: 0)

  /// Opens (creates, mode 0600) the file and starts the writer. `queueLimit`
  /// bounds the bytes waiting to be written.
  public init(path: String, rotation: Rotation = Rotation(), queueLimit: Int = 8 << 20,
              logger: Logger = Logger(label: "kopilot.hub.audit")) throws {
    self.path = path
    self.rotation = rotation
    self.queueLimit = queueLimit
    self.logger = logger
    let fd = path == "-" ? STDOUT_FILENO : try Self.open(path)
    let thread = Thread { [self] in self.writer(fd: fd) }
    thread.name = "kopilot-audit"
    thread.start()
  }

  /// Queues one event; never blocks. A full queue drops it (counted).
  public func record(_ event: AuditEvent) {
    let size = event.estimatedSize
    let warn = state.withLock { s -> Bool in
      guard !s.closed else { return false }
      guard s.queuedBytes + size <= queueLimit else {
        s.dropped += 1
        defer { s.warned = true }
        return !s.warned
      }
      s.queue.append(event)
      s.queuedBytes += size
      return false
    }
    if warn {
      logger.warning("audit log \(path) cannot keep up (full disk or slow reader?): dropping events; see the metric kopilot_hub_audit_events_dropped")
    }
    wake.signal()
  }

  /// Events dropped because the queue was full or a write failed.
  public var droppedEvents: UInt64 { state.withLock { $0.dropped } }

  /// Writes out what is queued and stops the writer; waits at most
  /// `timeout` for a sink that does not take it.
  public func close(timeout: TimeInterval = 2) {
    state.withLock { $0.closed = true }
    wake.signal()
    _ = finished.wait(timeout: .now() + timeout)
  }

  // MARK: - The writer thread

  private func writer(fd start: Int32) {
    var fd = start
    var size = path == "-" ? 0 : Int(Self.fileSize(fd))
    let encoder = AuditEvent.encoder()
    defer {
      if fd != STDOUT_FILENO { Glibc.close(fd) }
      finished.signal()
    }
    while true {
      wake.wait()
      let (events, closed) = state.withLock { s -> ([AuditEvent], Bool) in
        defer {
          s.queue.removeAll(keepingCapacity: true)
          s.queuedBytes = 0
        }
        return (s.queue, s.closed)
      }
      for event in events {
        let line = event.line(encoder)
        if path != "-", rotation.maxSizeMB > 0, size > 0, size + line.count > rotation.maxSizeMB << 20 {
          if let next = rotate(fd) {
            fd = next
            size = 0
          }
        }
        if Self.writeAll(fd, line) {
          size += line.count
        } else {
          let warn = state.withLock { s -> Bool in
            s.dropped += 1
            defer { s.warned = true }
            return !s.warned
          }
          if warn { logger.warning("audit log \(path): write failed (errno \(errno)); dropping events") }
        }
      }
      if closed && state.withLock({ $0.queue.isEmpty }) { return }
    }
  }

  /// Renames the file to `<name>-<UTC time><.ext>`, opens a new one and
  /// prunes old backups. Returns the new descriptor, or nil (keep writing
  /// to the old one) when a step failed.
  private func rotate(_ fd: Int32) -> Int32? {
    let url = URL(fileURLWithPath: path)
    let ext = url.pathExtension.isEmpty ? "" : "." + url.pathExtension
    let base = url.deletingPathExtension().lastPathComponent
    let dir = url.deletingLastPathComponent()
    let backup = dir.appendingPathComponent("\(base)-\(Self.backupStamp(Date()))\(ext)")
    guard rename(path, backup.path) == 0, let next = try? Self.open(path) else {
      logger.warning("audit log \(path): rotation failed (errno \(errno)); writing on")
      return nil
    }
    Glibc.close(fd)
    Self.prune(dir: dir, base: base, ext: ext, keep: rotation.maxBackups, maxAgeDays: rotation.maxAgeDays)
    return next
  }

  /// Backups of `base`, newest first: `<base>-<stamp><ext>`.
  static func backups(dir: URL, base: String, ext: String) -> [URL] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
    return names.filter { $0.hasPrefix(base + "-") && $0.hasSuffix(ext) && $0.count > base.count + 1 + ext.count }
      .sorted(by: >).map { dir.appendingPathComponent($0) }
  }

  static func prune(dir: URL, base: String, ext: String, keep: Int, maxAgeDays: Int, now: Date = Date()) {
    let all = backups(dir: dir, base: base, ext: ext)
    for (i, url) in all.enumerated() {
      var old = keep > 0 && i >= keep
      if maxAgeDays > 0, let m = (try? FileManager.default.attributesOfItem(atPath: url.path))?[.modificationDate] as? Date,
         now.timeIntervalSince(m) > Double(maxAgeDays) * 86400 {
        old = true
      }
      if old { try? FileManager.default.removeItem(at: url) }
    }
  }

  /// UTC, sortable, millisecond precision (two rotations in one second
  /// must not share a name): 2026-12-06T05-00-00.123.
  static func backupStamp(_ date: Date) -> String { AuditEvent.utc(date, digits: 3, timeSeparator: "-") }

  static func open(_ path: String) throws -> Int32 {
    let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
    guard fd >= 0 else {
      throw HubError(.invalid, "cannot open the audit log \(path): \(String(cString: strerror(errno)))")
    }
    return fd
  }

  static func fileSize(_ fd: Int32) -> off_t {
    var st = stat()
    return fstat(fd, &st) == 0 ? st.st_size : 0
  }

  static func writeAll(_ fd: Int32, _ data: Data) -> Bool {
    data.withUnsafeBytes { raw in
      var off = 0
      while off < raw.count {
        let n = Glibc.write(fd, raw.baseAddress! + off, raw.count - off)
        if n < 0 {
          if errno == EINTR { continue }
          return false
        }
        off += n
      }
      return true
    }
  }
}
