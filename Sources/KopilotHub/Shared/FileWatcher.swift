import Crypto
import Foundation
import KopilotBase
import Logging

/// Polls one file and calls back when its content changes.
///
/// Polling rather than inotify: no extra dependency, and it also sees edits
/// that inotify misses in the places these files live - a ConfigMap or Secret
/// volume swaps a `..data` symlink, an editor renames a temp file over the
/// original. mtime + size alone miss a same-size rewrite within the clock's
/// granularity, so the content's SHA-256 is part of the fingerprint; the files
/// are small, so reading them each second is cheap.
public final class FileWatcher: Sendable {
  /// What one poll saw. `missing` when the file cannot be read.
  public struct Fingerprint: Equatable, Sendable {
    public var modified: TimeInterval?
    public var size: Int?
    public var digest: [UInt8]?
    public static let missing = Fingerprint(modified: nil, size: nil, digest: nil)
  }

  public let path: String
  public let interval: TimeInterval
  private let onChange: @Sendable (Data?) -> Void
  private let queue: DispatchQueue
  private struct State {
    var timer: DispatchSourceTimer?
    var last: Fingerprint?
  }
  private let state: Mutex<State>

  /// - Parameters:
  ///   - interval: seconds between polls (tests inject a small one).
  ///   - initial: the fingerprint of the content the caller already loaded,
  ///     so the first poll does not report it again.
  ///   - onChange: called on the watcher's own serial queue with the new
  ///     content, or nil when the file disappeared or cannot be read.
  public init(path: String, interval: TimeInterval = 1, initial: Fingerprint? = nil,
              onChange: @escaping @Sendable (Data?) -> Void) {
    self.path = path
    self.interval = interval
    self.state = Mutex(State(last: initial))
    self.onChange = onChange
    self.queue = DispatchQueue(label: "kopilot.filewatcher")
  }

  deinit { state.withLock { $0.timer?.cancel() } }

  /// Reads the file once and fingerprints what was read.
  public static func read(_ path: String) -> (Fingerprint, Data?) {
    guard let data = FileManager.default.contents(atPath: path) else { return (.missing, nil) }
    let attrs = try? FileManager.default.attributesOfItem(atPath: path)
    let mtime = (attrs?[.modificationDate] as? Date)?.timeIntervalSince1970
    return (Fingerprint(modified: mtime, size: data.count, digest: Array(SHA256.hash(data: data))), data)
  }

  /// Starts polling every `interval` seconds. Idempotent.
  public func start() {
    state.withLock { s in
      guard s.timer == nil else { return }
      let t = DispatchSource.makeTimerSource(queue: queue)
      let ns = max(1, Int(interval * 1e9))
      // 10% leeway lets the system batch wake-ups; a second's poll is no deadline.
      t.schedule(deadline: .now() + .nanoseconds(ns), repeating: .nanoseconds(ns), leeway: .nanoseconds(ns / 10))
      t.setEventHandler { [weak self] in self?.poll() }
      s.timer = t
      t.resume()
    }
  }

  public func stop() {
    state.withLock { s in
      s.timer?.cancel()
      s.timer = nil
    }
  }

  /// One poll, on the caller's thread; returns whether it reported a change.
  /// The timer calls this; tests may too.
  @discardableResult
  public func poll() -> Bool {
    let (fp, data) = FileWatcher.read(path)
    let changed = state.withLock { s in
      defer { s.last = fp }
      return fp != s.last
    }
    if changed { onChange(data) }
    return changed
  }
}

/// A value parsed from a file and kept up to date by a `FileWatcher`. A broken
/// edit (or a deleted file) keeps the last good value and logs why; the next
/// good edit applies. What the registry, the authenticator and the authorizer
/// share.
final class ReloadingFile<Value: Sendable>: Sendable {
  let path: String
  private let parse: @Sendable (Data) throws -> Value
  private let logger: Logger
  private let what: String
  private struct State {
    var value: Value
    var error: HubError?
    var handlers: [@Sendable (Value, Value) -> Void] = []
  }
  private let state: Mutex<State>
  private let watcher = Mutex<FileWatcher?>(nil)

  /// Loads the file now and throws if it is missing or broken: at start-up a
  /// bad file must stop the hub, not leave it serving nothing.
  init(path: String, what: String, pollInterval: TimeInterval?, logger: Logger,
       parse: @escaping @Sendable (Data) throws -> Value) throws {
    self.path = path
    self.parse = parse
    self.logger = logger
    self.what = what
    let (fp, data) = FileWatcher.read(path)
    guard let data else { throw HubError(.io, "cannot read the file", file: path) }
    self.state = Mutex(State(value: try parse(data)))
    if let pollInterval {
      let w = FileWatcher(path: path, interval: pollInterval, initial: fp) { [weak self] data in
        self?.apply(data)
      }
      watcher.withLock { $0 = w }
      w.start()
    }
  }

  deinit { stop() }

  var current: Value { state.withLock { $0.value } }

  /// The error of the last reload attempt, nil once a good version applied.
  var lastError: HubError? { state.withLock { $0.error } }

  /// Called after each applied reload with the old and the new value.
  func onReload(_ handler: @escaping @Sendable (Value, Value) -> Void) {
    state.withLock { $0.handlers.append(handler) }
  }

  func stop() { watcher.withLock { $0 }?.stop() }

  private func apply(_ data: Data?) {
    let parsed: Value
    do {
      guard let data else { throw HubError(.io, "the file is gone or unreadable", file: path) }
      parsed = try parse(data)
    } catch {
      let e = error as? HubError ?? HubError(.io, "\(error)", file: path)
      state.withLock { $0.error = e }
      logger.error("not reloading \(what): \(e); the last good version stays in force")
      return
    }
    let (old, hs) = state.withLock { s in
      defer {
        s.value = parsed
        s.error = nil
      }
      return (s.value, s.handlers)
    }
    logger.info("reloaded \(what) from \(path)")
    for h in hs { h(old, parsed) }
  }
}
