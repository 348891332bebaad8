import Foundation
import KopilotBase
import KopilotIO
import KopilotKube
import Logging

// The Kubernetes mode's cluster registry: Cluster objects
// (kopilot.smartx.com/v1alpha1) watched on the host cluster's API server,
// turned into the same ClusterTable the embedded mode builds from its file.

/// The registry's state and how an informer event changes it. Pure: no
/// locks, no logging, no clock, so every event sequence is a unit test.
public struct KubeClusterState: Sendable {
  /// Every Cluster object seen, served or not, by id.
  public private(set) var objects: [String: ClusterObject] = [:]
  /// The served clusters: objects with a valid name and token, less any
  /// two that share a token (an agent token must name one cluster).
  public private(set) var table = ClusterTable([])
  /// Whether a full list has arrived.
  public private(set) var synced = false
  /// id -> the resourceVersion already warned about, so a problem is logged
  /// once per version of the object, not on every relist.
  private var warned: [String: String] = [:]

  public init() {}

  /// What applying one event did.
  public struct Outcome: Sendable, Equatable {
    /// The served set's changes (ClusterChange.diff of the tables).
    public var changes: [ClusterChange] = []
    /// New problems with objects, one per object version, for the log.
    public var warnings: [String] = []
  }

  public mutating func apply(_ event: Informer<ClusterObject>.Event) -> Outcome {
    switch event {
    case .synced(let all):
      synced = true
      var next: [String: ClusterObject] = [:]
      for o in all { next[o.id] = o }
      objects = next
      return rebuild()
    case .added(let o), .modified(let o):
      let before = objects[o.id]
      objects[o.id] = o
      // A status update (the hubs write one per session change) leaves the
      // served cluster as it was: skip the rebuild, which is O(n log n).
      if let before, case .success(let a) = before.served, case .success(let b) = o.served, a == b,
         table.cluster(id: a.id) == a {
        return Outcome()
      }
      return rebuild()
    case .deleted(let o):
      guard objects.removeValue(forKey: o.id) != nil else { return Outcome() }
      return rebuild()
    }
  }

  /// The latest object with this id, served or not.
  public func object(id: String) -> ClusterObject? { objects[id] }

  private mutating func rebuild() -> Outcome {
    var out = Outcome()
    var valid: [Cluster] = []
    var problems: [String: String] = [:]
    var idsByToken: [String: [String]] = [:]
    for (id, o) in objects {
      switch o.served {
      case .success(let c):
        valid.append(c)
        idsByToken[c.token, default: []].append(id)
      case .failure(let p):
        problems[id] = p.message
      }
    }
    var served: [Cluster] = []
    for c in valid {
      let sharing = idsByToken[c.token] ?? []
      if sharing.count > 1 {
        let others = sharing.filter { $0 != c.id }.sorted().map { $0.replacingOccurrences(of: "_", with: "/") }
        problems[c.id] = "uses the same token as Cluster \(others.joined(separator: ", ")); neither is served until every cluster has its own"
      } else {
        served.append(c)
      }
    }
    var stillWarned: [String: String] = [:]
    for id in problems.keys.sorted() {
      let o = objects[id]!
      let rv = o.metadata.resourceVersion ?? ""
      if warned[id] != rv { out.warnings.append("\(o) is not served: \(problems[id]!)") }
      stillWarned[id] = rv
    }
    warned = stillWarned
    let next = ClusterTable(served)
    out.changes = ClusterChange.diff(old: table.clusters, new: next.clusters)
    table = next
    return out
  }
}

/// Something that delivers Cluster events to the registry and can be
/// started and stopped: an `Informer<ClusterObject>` in the hub, a fake in
/// tests.
public protocol ClusterEventSource: AnyObject, Sendable {
  func start()
  func stop()
  func waitForSync(timeout: TimeInterval) -> Bool
}

extension Informer: ClusterEventSource {}

/// The Kubernetes mode's registry: Cluster objects in every namespace of
/// the host cluster, through an informer. Lookups are reads of an immutable
/// table under a Mutex, cheap enough for the loop thread.
public final class KubeClusterRegistry: ClusterRegistry, Sendable {
  /// The collection watched: every namespace.
  public static let collectionPath = "/apis/kopilot.smartx.com/v1alpha1/clusters"

  public typealias EventHandler = @Sendable (Informer<ClusterObject>.Event) -> Void

  private struct Guarded {
    var state = KubeClusterState()
    var handlers: [@Sendable ([ClusterChange]) -> Void] = []
  }
  private let guarded = Mutex(Guarded())
  // Safe: written once, in init, before `self` is shared; only read after.
  private nonisolated(unsafe) var source: (any ClusterEventSource)?
  private let logger: Logger

  /// - makeSource: builds the event source, handing it the function to call
  ///   with each event (in order, from one task at a time). nil: events come
  ///   only through `apply(_:)`.
  public init(logger: Logger = Logger(label: "kopilot.hub.registry"),
              makeSource: ((@escaping EventHandler) -> any ClusterEventSource)? = nil) {
    self.logger = logger
    // `self` is complete here; the source only calls back after start().
    source = makeSource?({ [weak self] event in self?.apply(event) })
  }

  /// The hub's registry: an informer on `collectionPath` through `client`.
  public convenience init(client: KubeClient, logger: Logger = Logger(label: "kopilot.hub.registry")) {
    self.init(logger: logger) { handler in
      Informer<ClusterObject>(client: client, path: KubeClusterRegistry.collectionPath, what: "clusters",
                              logger: logger, handler: handler)
    }
  }

  public func start() { source?.start() }
  public func stop() { source?.stop() }
  /// Blocks until the first list arrived or the time is up; readiness.
  public func waitForSync(timeout: TimeInterval) -> Bool { source?.waitForSync(timeout: timeout) ?? hasSynced }
  /// Whether a first list arrived (until then no cluster is known).
  public var hasSynced: Bool { read { $0.synced } }

  /// Applies one event: the new table is in force before the change
  /// handlers run (on the caller's task, after the lock is released).
  public func apply(_ event: Informer<ClusterObject>.Event) {
    let (outcome, hs) = guarded.withLock { g in
      let outcome = g.state.apply(event)
      return (outcome, outcome.changes.isEmpty ? [] : g.handlers)
    }
    for w in outcome.warnings { logger.warning("\(w)") }
    guard !outcome.changes.isEmpty else { return }
    logger.info("clusters changed: \(outcome.changes.map(\.description).joined(separator: ", "))")
    for h in hs { h(outcome.changes) }
  }

  public func cluster(forAgentToken token: String) -> Cluster? { read { $0.table }.cluster(forAgentToken: token) }
  public func cluster(id: String) -> Cluster? { read { $0.table.cluster(id: id) } }
  public func clusters() -> [Cluster] { read { $0.table.clusters } }

  /// The latest Cluster object with this id, served or not (its
  /// `status.hubs` says which replicas hold its sessions).
  public func object(id: String) -> ClusterObject? { read { $0.object(id: id) } }
  /// Every Cluster object seen, sorted by id.
  public func objects() -> [ClusterObject] { read { $0.objects.values.sorted { $0.id < $1.id } } }

  public func onChange(_ handler: @escaping @Sendable ([ClusterChange]) -> Void) {
    guarded.withLock { $0.handlers.append(handler) }
  }

  private func read<T>(_ body: (KubeClusterState) -> T) -> T {
    let state = guarded.withLock { $0.state }
    return body(state)
  }
}
