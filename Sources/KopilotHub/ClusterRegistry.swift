import Foundation
import KopilotIO
import Logging
import Yams

/// A member cluster as the hub knows it: the `Cluster` object
/// (`kopilot.smartx.com/v1alpha1`) and the agent token it accepts.
public struct Cluster: Hashable, Sendable, CustomStringConvertible {
  public var namespace: String
  public var name: String
  /// What agents of this cluster present on `/connect?token=`.
  public var token: String

  public init(namespace: String, name: String, token: String) {
    self.namespace = namespace
    self.name = name
    self.token = token
  }

  /// `namespace_name`, the id in `/proxy/{id}/...` and the C core's session
  /// table. Unambiguous because neither part may contain '_'.
  public var id: String { "\(namespace)_\(name)" }
  /// Never prints the token, so a Cluster may be logged.
  public var description: String { "\(namespace)/\(name)" }

  public static let apiVersion = "kopilot.smartx.com/v1alpha1"
  public static let kind = "Cluster"
  /// Shortest agent token accepted: anything shorter is guessable.
  public static let minimumTokenLength = 16
}

/// What changed between two versions of the registry. The hub closes the
/// sessions of a cluster that was removed or whose token changed: those agents
/// authenticated with a token that no longer opens that cluster.
public struct ClusterChange: Hashable, Sendable, CustomStringConvertible {
  public struct Kind: Hashable, Sendable, CustomStringConvertible {
    private let name: String
    private init(_ name: String) { self.name = name }
    public var description: String { name }
    public static let added = Kind("added")
    public static let removed = Kind("removed")
    public static let tokenChanged = Kind("tokenChanged")
  }

  public var kind: Kind
  /// `namespace_name`
  public var clusterID: String

  public init(kind: Kind, clusterID: String) {
    self.kind = kind
    self.clusterID = clusterID
  }

  /// Whether the hub must close this cluster's live agent sessions.
  public var closesSessions: Bool { kind != .added }
  public var description: String { "\(kind) \(clusterID)" }

  /// The changes from `old` to `new`, sorted by cluster id.
  public static func diff(old: [Cluster], new: [Cluster]) -> [ClusterChange] {
    let before = Dictionary(old.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
    let after = Dictionary(new.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
    var out: [ClusterChange] = []
    for (id, c) in before {
      if let n = after[id] {
        if n.token != c.token { out.append(ClusterChange(kind: .tokenChanged, clusterID: id)) }
      } else {
        out.append(ClusterChange(kind: .removed, clusterID: id))
      }
    }
    for id in after.keys where before[id] == nil { out.append(ClusterChange(kind: .added, clusterID: id)) }
    return out.sorted { ($0.clusterID, $0.kind.description) < ($1.clusterID, $1.kind.description) }
  }
}

/// Where the hub learns which clusters exist and which agent token opens
/// which cluster. Embedded mode reads clusters.yaml
/// (`EmbeddedClusterRegistry`); the Kubernetes mode will watch the Cluster
/// CRD behind the same protocol.
///
/// Lookups are synchronous and cheap so the hub may call them on its loop
/// thread for every `/connect`.
public protocol ClusterRegistry: AnyObject, Sendable {
  /// The cluster whose agent token is `token`, or nil. Every entry is
  /// compared in constant time, and all of them always, so the time taken
  /// tells nothing about which token (or how much of one) matched.
  func cluster(forAgentToken token: String) -> Cluster?
  /// The cluster with id `namespace_name`, or nil.
  func cluster(id: String) -> Cluster?
  /// Every cluster, sorted by id.
  func clusters() -> [Cluster]
  /// Registers a handler for changes; it runs on the registry's own queue
  /// after the new state is in force, with a non-empty list.
  func onChange(_ handler: @escaping @Sendable ([ClusterChange]) -> Void)
}

/// An immutable set of clusters with the lookups the protocol needs; the
/// pure core of every registry.
public struct ClusterTable: Sendable, Equatable {
  /// Sorted by id.
  public let clusters: [Cluster]
  private let byID: [String: Cluster]

  public init(_ clusters: [Cluster]) {
    self.clusters = clusters.sorted { $0.id < $1.id }
    self.byID = Dictionary(clusters.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
  }

  public func cluster(forAgentToken token: String) -> Cluster? {
    guard !token.isEmpty else { return nil }
    var found: Cluster?
    // No early exit: every entry costs the same whether or not it matches.
    for c in clusters where constantTimeEquals(c.token, token) { found = c }
    return found
  }

  public func cluster(id: String) -> Cluster? { byID[id] }

  public static func == (a: ClusterTable, b: ClusterTable) -> Bool { a.clusters == b.clusters }
}

/// clusters.yaml: the Cluster objects a user would `kubectl apply` to a host
/// cluster, as a multi-document stream or a `List`/`ClusterList`.
///
/// ```yaml
/// apiVersion: kopilot.smartx.com/v1alpha1
/// kind: Cluster
/// metadata:
///   name: sample
///   namespace: default     # optional, "default" when absent, as kubectl does
/// token: 4T0Zc3...         # at least 16 characters
/// ```
public enum ClusterFile {
  private struct Shape: Decodable {
    struct Meta: Decodable {
      var name: String?
      var namespace: String?
    }
    var metadata: Meta?
    var token: String?
  }

  /// Parses and validates the whole file; the first problem throws, naming
  /// the file, the line and the object.
  public static func parse(_ text: String, file: String = "clusters.yaml") throws -> [Cluster] {
    var out: [Cluster] = []
    var lineOfID: [String: Int] = [:]
    var lineOfToken: [String: (Int, String)] = [:]
    for obj in try KubeYAML.objects(in: text, file: file, listKinds: ["ClusterList"]) {
      let c = try cluster(from: obj, file: file)
      let line = obj.line ?? 0
      let label = "Cluster \(c)"
      if let first = lineOfID[c.id] {
        throw HubError(.duplicate, "defined twice (first at line \(first))", file: file, line: obj.line, object: label)
      }
      if let (first, other) = lineOfToken[c.token] {
        throw HubError(.duplicate, "uses the same token as Cluster \(other) (line \(first)); every cluster needs its own",
                       file: file, line: obj.line, object: label)
      }
      lineOfID[c.id] = line
      lineOfToken[c.token] = (line, c.description)
      out.append(c)
    }
    return out
  }

  static func cluster(from obj: KubeObject, file: String) throws -> Cluster {
    var obj = obj
    if obj.namespace == nil { obj.namespace = "default" }
    func fail(_ m: String) -> HubError { HubError(.invalid, m, file: file, line: obj.line, object: obj.label) }
    guard obj.kind == Cluster.kind else {
      throw fail("only kind Cluster (or a List/ClusterList of them) belongs in this file")
    }
    guard obj.apiVersion == Cluster.apiVersion else {
      throw fail("apiVersion must be \(Cluster.apiVersion), not \(obj.apiVersion)")
    }
    let shape = try KubeYAML.decode(Shape.self, obj, file: file)
    let name = shape.metadata?.name ?? ""
    let namespace = shape.metadata?.namespace ?? "default"
    guard !name.isEmpty else { throw fail("metadata.name is missing") }
    guard Names.isDNS1123Subdomain(name) else { throw fail("metadata.name must be \(Names.subdomainRule)") }
    guard Names.isDNS1123Label(namespace) else { throw fail("metadata.namespace must be \(Names.labelRule)") }
    guard let token = shape.token, !token.isEmpty else {
      throw fail("token is missing (a top-level field, next to metadata; `kopilot-hub cluster add` makes one)")
    }
    try validateToken(token, fail)
    return Cluster(namespace: namespace, name: name, token: token)
  }

  static func validateToken(_ token: String, _ fail: (String) -> HubError) throws {
    guard token.count >= Cluster.minimumTokenLength else {
      throw fail("token must be at least \(Cluster.minimumTokenLength) characters")
    }
    // Printable ASCII, no space: the token travels in a URL query and in a
    // YAML manifest, and an invisible character is a support call.
    guard token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
      throw fail("token must be printable ASCII without spaces")
    }
  }
}

/// The embedded registry: clusters.yaml, reloaded when it changes.
public final class EmbeddedClusterRegistry: ClusterRegistry, @unchecked Sendable {
  private let file: ReloadingFile<ClusterTable>
  private let lock = NSLock()
  private var handlers: [@Sendable ([ClusterChange]) -> Void] = []

  /// Loads `path` now (throws when it is missing or invalid) and, when
  /// `pollInterval` is not nil, watches it; a broken edit keeps the last good
  /// clusters and is logged.
  public init(path: String, pollInterval: TimeInterval? = 1,
              logger: Logger = Logger(label: "kopilot.hub.registry")) throws {
    file = try ReloadingFile(path: path, what: "clusters", pollInterval: pollInterval, logger: logger) { data in
      ClusterTable(try ClusterFile.parse(String(decoding: data, as: UTF8.self), file: path))
    }
    file.onReload { [weak self] old, new in
      guard let self else { return }
      let changes = ClusterChange.diff(old: old.clusters, new: new.clusters)
      guard !changes.isEmpty else { return }
      logger.info("clusters changed: \(changes.map(\.description).joined(separator: ", "))")
      self.lock.lock()
      let hs = self.handlers
      self.lock.unlock()
      for h in hs { h(changes) }
    }
  }

  public func cluster(forAgentToken token: String) -> Cluster? { file.current.cluster(forAgentToken: token) }
  public func cluster(id: String) -> Cluster? { file.current.cluster(id: id) }
  public func clusters() -> [Cluster] { file.current.clusters }

  public func onChange(_ handler: @escaping @Sendable ([ClusterChange]) -> Void) {
    lock.lock()
    handlers.append(handler)
    lock.unlock()
  }

  /// Why the last reload was refused, nil when the file in force is the one
  /// on disk. For a health or metrics endpoint.
  public var lastReloadError: HubError? { file.lastError }

  /// Stops watching the file.
  public func stop() { file.stop() }
}
