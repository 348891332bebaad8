import Foundation
import KopilotBase
import Logging

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// Keeps a local copy of a collection: list, then watch from the list's
/// resourceVersion with bookmarks; a 410 (HTTP or ERROR event) lists again;
/// other errors retry with jittered exponential backoff (0.5 s doubling to
/// 30 s); a watch that ends is resumed from the last resourceVersion seen.
/// The handler gets events one at a time, in order, on the informer's own
/// task: `.synced` with the whole collection after every (re)list, then
/// single changes.
///
/// Lists are paged (`limit=500`, `continue`). Each watch asks the server to
/// end it after a random 240 to 480 s, so that replicas do not all resume at
/// once. An event whose object does not decode is logged and skipped (its
/// resourceVersion still counts). A watch that ends within a second having
/// delivered nothing counts as a failure (client-go's "very short watch"),
/// so a server that closes watches at once is not hammered.
public final class Informer<Object: KubeObject>: @unchecked Sendable {
  // Safe: the fields after `state` are used under that condition, those
  // after `delivery` under that lock, and `backoff` by the informer's one
  // task only. A condition (wait for the first list, for the task's end)
  // and a recursive lock (a handler may call stop) are what Mutex is not.
  public enum Event: Sendable {
    case synced([Object])
    case added(Object)
    case modified(Object)
    case deleted(Object)
  }

  private let client: KubeClient
  private let path: String
  private let query: [(String, String)]
  private let what: String
  private let logger: Logger
  private let handler: @Sendable (Event) -> Void
  private let watchTimeouts: ClosedRange<Int>
  private let pageSize: Int
  private var backoff: Backoff

  /// Guards the fields below it; signalled when `synced`, `stopped` or
  /// `ended` change.
  private let state = NSCondition()
  private var cache: [String: Object] = [:]
  private var synced = false
  private var stopped = false
  private var task: Task<Void, Never>?
  private var ended = false
  private var currentRV = ""

  /// Held around every handler call, so that `stop` returns only when no
  /// call is under way; recursive because a handler may call `stop`.
  private let delivery = NSRecursiveLock()
  private var delivering = false
  private var deliveryClosed = false
  private var deliveryThread: pthread_t?

  /// - path: the collection, e.g. `/apis/kopilot.smartx.com/v1alpha1/clusters`.
  /// - query: selectors (`labelSelector`, `fieldSelector`) for list and watch.
  /// - what: a name for logs ("clusters").
  public convenience init(client: KubeClient, path: String, query: [(String, String)] = [], what: String,
                          logger: Logger, handler: @escaping @Sendable (Event) -> Void) {
    self.init(client: client, path: path, query: query, what: what, logger: logger,
              watchTimeouts: 240...480, pageSize: 500, backoff: Backoff(base: 0.5, cap: 30), handler: handler)
  }

  /// - watchTimeouts: the range `timeoutSeconds` of each watch is drawn from.
  /// - pageSize: the `limit` of each list request.
  init(client: KubeClient, path: String, query: [(String, String)], what: String, logger: Logger,
       watchTimeouts: ClosedRange<Int>, pageSize: Int, backoff: Backoff,
       handler: @escaping @Sendable (Event) -> Void) {
    self.client = client
    self.path = path
    self.query = query.filter { !["watch", "resourceVersion", "limit", "continue", "timeoutSeconds"].contains($0.0) }
    self.what = what
    self.logger = logger
    self.watchTimeouts = watchTimeouts
    self.pageSize = pageSize
    self.backoff = backoff
    self.handler = handler
  }

  deinit { task?.cancel() }

  /// Starts listing and watching; once only (a stopped informer stays stopped).
  public func start() {
    state.lock()
    defer { state.unlock() }
    guard task == nil, !stopped else { return }
    task = Task { [self] in
      await run()
      locked {
        ended = true
        state.broadcast()
      }
    }
  }

  /// Stops: no handler call begins after this returns, and one under way is
  /// waited for (unless the handler itself is stopping). The list or watch in
  /// flight is cancelled, which closes its connection, and the informer's
  /// task is waited for, up to 5 s.
  public func stop() {
    delivery.lock()
    deliveryClosed = true
    let fromHandler = delivering && deliveryThread.map { pthread_equal($0, pthread_self()) != 0 } == true
    delivery.unlock()

    state.lock()
    stopped = true
    let t = task
    state.broadcast()
    state.unlock()
    guard let t else { return }
    t.cancel()
    if fromHandler { return }
    let deadline = Date().addingTimeInterval(5)
    state.lock()
    while !ended, state.wait(until: deadline) {}
    state.unlock()
  }

  /// Whether a first list has completed (and its `.synced` been handled).
  public var hasSynced: Bool {
    state.lock()
    defer { state.unlock() }
    return synced
  }

  /// Blocks the calling thread until the first list completes or the time
  /// is up (or the informer stops). For start-up, not for a loop thread.
  public func waitForSync(timeout: TimeInterval) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    state.lock()
    defer { state.unlock() }
    while !synced, !stopped, state.wait(until: deadline) {}
    return synced
  }

  /// The cache now, in key order.
  public var objects: [Object] {
    state.lock()
    defer { state.unlock() }
    return cache.keys.sorted().compactMap { cache[$0] }
  }

  /// The resourceVersion the next watch starts from.
  var resourceVersion: String { locked { currentRV } }

  // MARK: The loop

  private func run() async {
    var resourceVersion = ""
    var mustList = true
    // Set by a list, cleared by a watch that delivered something: a 410 at
    // once after a list waits out a backoff before the next list.
    var listedSinceProgress = false
    while !Task.isCancelled {
      do {
        if mustList {
          resourceVersion = try await relist()
          let listed = resourceVersion
          locked { currentRV = listed }
          mustList = false
          listedSinceProgress = true
          backoff.reset()
        }
        if try await watchOnce(from: &resourceVersion) {
          listedSinceProgress = false
          backoff.reset()
        } else {
          let delay = backoff.next()
          logger.info("\(what): the watch ended at once with nothing; again in \(KubeClient.seconds(delay.rounded3))")
          try await Task.sleep(nanoseconds: UInt64(delay * 1e9))
        }
      } catch let e as KubeAPIError where e.isGone && !mustList {
        if listedSinceProgress {
          let delay = backoff.next()
          logger.warning("\(what): resourceVersion \(resourceVersion) expired again right after a list (\(e)); listing in \(KubeClient.seconds(delay.rounded3))")
          do { try await Task.sleep(nanoseconds: UInt64(delay * 1e9)) } catch { break }
        } else {
          logger.info("\(what): resourceVersion \(resourceVersion) expired (\(e)); listing again")
        }
        mustList = true
      } catch {
        if error is CancellationError || Task.isCancelled { break }
        let delay = backoff.next()
        logger.warning("\(what): \(mustList ? "list" : "watch") failed: \(error); again in \(KubeClient.seconds(delay.rounded3))")
        do { try await Task.sleep(nanoseconds: UInt64(delay * 1e9)) } catch { break }
      }
    }
  }

  private struct ListPage: Decodable {
    struct Meta: Decodable {
      var resourceVersion: String?
      var `continue`: String?
    }
    var metadata: Meta?
    var items: [Lenient<Object>]?
  }

  /// A value that may fail to decode without failing its list.
  private struct Lenient<T: Decodable>: Decodable {
    var value: T?
    var error: Error?
    init(from decoder: Decoder) throws {
      do { value = try T(from: decoder) } catch { self.error = error }
    }
  }

  /// Lists the whole collection page by page, replaces the cache, hands
  /// `.synced` to the handler; returns the list's resourceVersion.
  private func relist() async throws -> String {
    var items: [Object] = []
    var next: String?
    var restarts = 0
    var rv = ""
    var skipped = 0
    repeat {
      var q = query + [("limit", String(pageSize))]
      if let next { q.append(("continue", next)) }
      let data: Data
      do {
        data = try await client.send(method: "GET", path: path, query: q)
      } catch let e as KubeAPIError where e.isGone && next != nil && restarts < 3 {
        // The continue token outlived the server's compaction window: the
        // pages so far are of a snapshot that is gone; start over.
        logger.info("\(what): the list's continue token expired; listing from the start")
        restarts += 1
        items = []
        next = nil
        skipped = 0
        continue
      }
      let page: ListPage
      do { page = try JSONDecoder().decode(ListPage.self, from: data) } catch {
        throw KubeAPIError(code: 0, reason: "Unavailable", message: "list \(path): the answer is not a list: \(error)")
      }
      for item in page.items ?? [] {
        if let v = item.value { items.append(v) } else {
          skipped += 1
          logger.warning("\(what): skipping an object of the list that does not decode: \(item.error.map { "\($0)" } ?? "")")
        }
      }
      rv = page.metadata?.resourceVersion ?? ""
      next = page.metadata?.continue.flatMap { $0.isEmpty ? nil : $0 }
    } while next != nil
    guard !rv.isEmpty else {
      throw KubeAPIError(code: 0, reason: "Unavailable", message: "list \(path): the list has no resourceVersion")
    }
    try Task.checkCancellation()
    locked { cache = Dictionary(items.map { ($0.key, $0) }, uniquingKeysWith: { _, b in b }) }
    logger.info("\(what): listed \(items.count)\(skipped > 0 ? " (\(skipped) skipped)" : "") at resourceVersion \(rv)")
    deliver(.synced(items))
    locked {
      if !synced {
        synced = true
        state.broadcast()
      }
    }
    return rv
  }

  private struct MetaOnly: Decodable {
    struct Meta: Decodable { var resourceVersion: String? }
    var metadata: Meta?
  }

  /// One watch from `rv`, which it advances. True when the watch delivered
  /// something or lasted; false for a watch that ended at once with nothing.
  /// Throws the ERROR event's Status, or what broke the watch.
  private func watchOnce(from rv: inout String) async throws -> Bool {
    let seconds = Int.random(in: watchTimeouts)
    let q = query + [("allowWatchBookmarks", "true"), ("resourceVersion", rv), ("timeoutSeconds", String(seconds))]
    let began = DispatchTime.now().uptimeNanoseconds
    var received = 0
    let decoder = JSONDecoder()
    for try await event in client.watch(path: path, query: q) {
      received += 1
      switch event.type {
      case "ADDED", "MODIFIED", "DELETED":
        let newRV = (try? decoder.decode(MetaOnly.self, from: event.object))?.metadata?.resourceVersion
        do {
          let obj = try decoder.decode(Object.self, from: event.object)
          locked { cache[obj.key] = event.type == "DELETED" ? nil : obj }
          switch event.type {
          case "ADDED": deliver(.added(obj))
          case "MODIFIED": deliver(.modified(obj))
          default: deliver(.deleted(obj))
          }
        } catch {
          logger.warning("\(what): skipping a \(event.type) event whose object does not decode: \(error)")
        }
        if let newRV, !newRV.isEmpty { advance(&rv, to: newRV) }
      case "BOOKMARK":
        if let newRV = (try? decoder.decode(MetaOnly.self, from: event.object))?.metadata?.resourceVersion, !newRV.isEmpty {
          advance(&rv, to: newRV)
        }
      case "ERROR":
        throw KubeAPIError.fromStatus(event.object)
          ?? KubeAPIError(code: 0, reason: "Unavailable", message: "watch \(path): an ERROR event without a Status")
      default:
        logger.warning("\(what): skipping a watch event of unknown type \(event.type)")
      }
      try Task.checkCancellation()
    }
    try Task.checkCancellation()
    return received > 0 || DispatchTime.now().uptimeNanoseconds - began >= 1_000_000_000
  }

  private func advance(_ rv: inout String, to newRV: String) {
    rv = newRV
    locked { currentRV = newRV }
  }

  private func locked<T>(_ body: () throws -> T) rethrows -> T {
    state.lock()
    defer { state.unlock() }
    return try body()
  }

  /// Calls the handler unless stopped; `stop` waits for a call under way.
  private func deliver(_ event: Event) {
    delivery.lock()
    defer { delivery.unlock() }
    guard !deliveryClosed else { return }
    delivering = true
    deliveryThread = pthread_self()
    defer {
      delivering = false
      deliveryThread = nil
    }
    handler(event)
  }
}

extension TimeInterval {
  fileprivate var rounded3: TimeInterval { (self * 1000).rounded() / 1000 }
}
