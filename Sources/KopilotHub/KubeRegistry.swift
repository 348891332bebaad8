import Foundation
import KopilotIO
import KopilotKube
import Logging

// The Kubernetes mode's cluster registry: Cluster objects
// (kopilot.smartx.com/v1alpha1) watched on the host cluster's API server,
// turned into the same ClusterTable the embedded mode builds from its file.

/// How many agent sessions one hub replica holds for a cluster, as its
/// status writer records them in `status.hubs`; peers read it to find the
/// replica that can carry a request.
public struct HubSessions: Codable, Sendable, Hashable {
  /// The replica (its pod name).
  public var name: String
  /// The pod IP; peers reach it at the `peer` port its EndpointSlice names.
  public var address: String
  public var sessions: Int
  /// RFC 3339 time its first live session of this cluster came up.
  public var since: String?

  public init(name: String, address: String, sessions: Int, since: String? = nil) {
    self.name = name
    self.address = address
    self.sessions = sessions
    self.since = since
  }

  // Lenient: a field another version of the hub left out reads as empty
  // rather than making the whole Cluster unreadable.
  public init(from decoder: Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    name = try c.decodeIfPresent(String.self, forKey: .name) ?? ""
    address = try c.decodeIfPresent(String.self, forKey: .address) ?? ""
    sessions = try c.decodeIfPresent(Int.self, forKey: .sessions) ?? 0
    since = try c.decodeIfPresent(String.self, forKey: .since)
  }
}

/// `Cluster.status`: written by the hubs, never read back as policy.
public struct ClusterStatus: Codable, Sendable, Hashable {
  /// Whether any replica holds a live agent session.
  public var connected: Bool?
  /// Live agent sessions over all replicas.
  public var sessions: Int?
  /// Per replica.
  public var hubs: [HubSessions]?

  public init(connected: Bool? = nil, sessions: Int? = nil, hubs: [HubSessions]? = nil) {
    self.connected = connected
    self.sessions = sessions
    self.hubs = hubs
  }
}

/// A `Cluster` object as the API server serves it. `description` never
/// prints the token, so one may be logged.
public struct ClusterObject: KopilotKube.KubeObject, Hashable, CustomStringConvertible {
  public var apiVersion: String?
  public var kind: String?
  public var metadata: KopilotKube.ObjectMeta
  /// The agent token, top-level next to metadata (the hub's mutating webhook
  /// fills it when a user leaves it out).
  public var token: String?
  public var status: ClusterStatus?

  public init(namespace: String, name: String, token: String?, resourceVersion: String? = nil,
              status: ClusterStatus? = nil) {
    apiVersion = Cluster.apiVersion
    kind = Cluster.kind
    metadata = KopilotKube.ObjectMeta(name: name, namespace: namespace)
    metadata.resourceVersion = resourceVersion
    self.token = token
    self.status = status
  }

  /// `namespace_name`; a missing namespace reads as "default", as kubectl
  /// defaults it.
  public var id: String { "\(metadata.namespace ?? "default")_\(metadata.name)" }

  public var description: String {
    "Cluster \(metadata.namespace ?? "default")/\(metadata.name) (resourceVersion \(metadata.resourceVersion ?? "none"))"
  }

  /// The Cluster the hub serves for this object, or why it serves none.
  public var served: Result<Cluster, ClusterObjectProblem> {
    let namespace = metadata.namespace ?? "default"
    if let p = ClusterRules.nameProblem(namespace: namespace, name: metadata.name) {
      return .failure(ClusterObjectProblem(message: p))
    }
    if let p = ClusterRules.tokenProblem(token) { return .failure(ClusterObjectProblem(message: p)) }
    return .success(Cluster(namespace: namespace, name: metadata.name, token: token!))
  }
}

/// Why a Cluster object is not served; never holds the token.
public struct ClusterObjectProblem: Error, Hashable, Sendable, CustomStringConvertible {
  public var message: String
  public var description: String { message }
}

/// The rules a served Cluster keeps, shared by the registry and the
/// admission webhook; each returns what is wrong, worded for the person who
/// wrote the object, or nil.
public enum ClusterRules {
  /// nil when `token` is one the hub accepts: at least
  /// `Cluster.minimumTokenLength` characters of printable ASCII, no spaces
  /// (it travels in a URL query and a YAML manifest). Never quotes the token.
  public static func tokenProblem(_ token: String?) -> String? {
    guard let token, !token.isEmpty else {
      return "token is missing (a top-level string field next to metadata; the hub's webhook fills it when left empty)"
    }
    guard token.utf8.count >= Cluster.minimumTokenLength else {
      return "token must be at least \(Cluster.minimumTokenLength) characters"
    }
    guard token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
      return "token must be printable ASCII without spaces"
    }
    return nil
  }

  /// nil when `namespace_name` names this cluster and no other: neither part
  /// may hold '_'. (The API server already keeps both to DNS-1123 rules,
  /// which have no '_'; checked again because the id depends on it.)
  public static func nameProblem(namespace: String, name: String) -> String? {
    if name.isEmpty { return "metadata.name is missing" }
    if name.contains("_") {
      return "metadata.name must not contain '_': the cluster id namespace_name must stay unambiguous"
    }
    if namespace.contains("_") {
      return "metadata.namespace must not contain '_': the cluster id namespace_name must stay unambiguous"
    }
    return nil
  }
}

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
/// the host cluster, through an informer. Lookups are lock-protected reads
/// of an immutable table, cheap enough for the loop thread.
public final class KubeClusterRegistry: ClusterRegistry, @unchecked Sendable {
  /// The collection watched: every namespace.
  public static let collectionPath = "/apis/kopilot.smartx.com/v1alpha1/clusters"

  public typealias EventHandler = @Sendable (Informer<ClusterObject>.Event) -> Void

  private let lock = NSLock()
  private var state = KubeClusterState()
  private var handlers: [@Sendable ([ClusterChange]) -> Void] = []
  private var source: (any ClusterEventSource)?
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
    lock.lock()
    let outcome = state.apply(event)
    let hs = outcome.changes.isEmpty ? [] : handlers
    lock.unlock()
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
    lock.lock()
    handlers.append(handler)
    lock.unlock()
  }

  private func read<T>(_ body: (KubeClusterState) -> T) -> T {
    lock.lock()
    defer { lock.unlock() }
    return body(state)
  }
}
