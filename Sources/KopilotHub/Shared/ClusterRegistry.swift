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
  /// How its member sees callers (the top-level `identity` field); nil:
  /// the hub's default (`--identity`).
  public var identity: IdentityMode?

  public init(namespace: String, name: String, token: String, identity: IdentityMode? = nil) {
    self.namespace = namespace
    self.name = name
    self.token = token
    self.identity = identity
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
