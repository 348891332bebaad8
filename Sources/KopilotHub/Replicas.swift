import Foundation
import KopilotKube
import Logging

/// This replica's live agent sessions per cluster, kept from the hub's
/// session callbacks (loop thread) and read by routing and the status
/// writer (any thread).
public final class LocalSessions: @unchecked Sendable {
  public struct Entry: Sendable, Equatable {
    public var count: Int
    /// When the oldest of the current run of sessions came up.
    public var since: Date
  }

  private let lock = NSLock()
  private var table: [String: Entry] = [:]

  public init() {}

  /// Counts a session up or down; returns the cluster's entry after it (nil: none left).
  @discardableResult
  public func changed(cluster: String, up: Bool, now: Date = Date()) -> Entry? {
    lock.lock()
    defer { lock.unlock() }
    var e = table[cluster] ?? Entry(count: 0, since: now)
    e.count += up ? 1 : -1
    table[cluster] = e.count > 0 ? e : nil
    return table[cluster]
  }

  public func entry(_ cluster: String) -> Entry? {
    lock.lock()
    defer { lock.unlock() }
    return table[cluster]
  }

  public func count(_ cluster: String) -> Int { entry(cluster)?.count ?? 0 }

  public func snapshot() -> [String: Entry] {
    lock.lock()
    defer { lock.unlock() }
    return table
  }
}

/// An EndpointSlice (discovery.k8s.io/v1), the parts that name hub replicas.
public struct EndpointSliceObject: KopilotKube.KubeObject, Equatable {
  public struct Endpoint: Codable, Sendable, Equatable {
    public struct Conditions: Codable, Sendable, Equatable {
      public var ready: Bool?
      public var serving: Bool?
      public var terminating: Bool?
    }
    public struct Ref: Codable, Sendable, Equatable {
      public var kind: String?
      public var name: String?
      public var namespace: String?
    }
    public var addresses: [String]
    public var conditions: Conditions?
    public var targetRef: Ref?
  }
  public struct Port: Codable, Sendable, Equatable {
    public var name: String?
    public var port: Int?
  }
  public var metadata: KopilotKube.ObjectMeta
  public var addressType: String?
  public var endpoints: [Endpoint]?
  public var ports: [Port]?
}

/// Another replica, where its peer listener is.
public struct PeerEndpoint: Sendable, Hashable {
  public var name: String
  public var host: String
  public var port: Int
  public var ready: Bool
}

/// The hub replicas behind the Service, from its EndpointSlices: pod name
/// to peer address.
public final class PeerTable: @unchecked Sendable {
  /// The Service port that carries peer traffic.
  public let portName: String
  private let lock = NSLock()
  private var slices: [String: EndpointSliceObject] = [:]
  private var byName: [String: PeerEndpoint] = [:]
  private var synced = false

  public init(portName: String = "peer") { self.portName = portName }

  /// Applies a change and returns the replicas that are no longer listed
  /// (their entries in Cluster statuses are stale now).
  @discardableResult
  public func apply(_ event: Informer<EndpointSliceObject>.Event) -> Set<String> {
    lock.lock()
    defer { lock.unlock() }
    let before = synced ? Set(byName.keys) : []
    switch event {
    case .synced(let all):
      slices = Dictionary(all.map { ($0.key, $0) }, uniquingKeysWith: { _, b in b })
      synced = true
    case .added(let s), .modified(let s): slices[s.key] = s
    case .deleted(let s): slices[s.key] = nil
    }
    byName = PeerTable.index(slices.values, portName: portName)
    return before.subtracting(byName.keys)
  }

  /// Whether `name` should tidy up after replicas that went away: the
  /// first by name of the ready ones, so one replica does it, not all.
  public func isJanitor(_ name: String) -> Bool {
    lock.lock()
    defer { lock.unlock() }
    return byName.values.filter(\.ready).map(\.name).min() == name
  }

  static func index<S: Sequence>(_ slices: S, portName: String) -> [String: PeerEndpoint] where S.Element == EndpointSliceObject {
    var out: [String: PeerEndpoint] = [:]
    for s in slices {
      guard let port = s.ports?.first(where: { $0.name == portName })?.port else { continue }
      for e in s.endpoints ?? [] {
        guard let name = e.targetRef?.name, let host = e.addresses.first else { continue }
        // Ready, or (without the condition) assumed ready, as kube-proxy does;
        // a terminating replica still serves what it holds until it is gone.
        let ready = e.conditions?.ready ?? true || (e.conditions?.serving ?? false)
        let p = PeerEndpoint(name: name, host: host, port: port, ready: ready)
        if let had = out[name], had.ready, !ready { continue }
        out[name] = p
      }
    }
    return out
  }

  public func peer(named name: String) -> PeerEndpoint? {
    lock.lock()
    defer { lock.unlock() }
    return byName[name]
  }

  /// Every replica the slices name, ready or not; nil before the first list
  /// (then nothing can be called stale).
  public func knownNames() -> Set<String>? {
    lock.lock()
    defer { lock.unlock() }
    return synced ? Set(byName.keys) : nil
  }
}

/// Where a cluster's requests go from this replica.
public enum Placement: Sendable, Equatable {
  /// A session is here (or, embedded, the core answers 503 itself).
  case local
  /// Another replica holds a session.
  case peer(PeerEndpoint)
  /// No replica does: a 503 with this message.
  case nowhere(String)
}

/// Decides placement for the router.
public protocol ClusterPlacement: Sendable {
  func place(clusterID: String) -> Placement
}

/// One hub, no peers: every request is served here.
public struct LocalPlacement: ClusterPlacement {
  public init() {}
  public func place(clusterID: String) -> Placement { .local }
}

/// A replica among several: here when a session of the cluster is here;
/// else a ready replica the Cluster's status says holds one; else nowhere.
public final class ReplicaPlacement: ClusterPlacement, @unchecked Sendable {
  let selfName: String
  let local: LocalSessions
  let peers: PeerTable
  /// The replicas the cluster's status lists with sessions, by pod name.
  let holders: @Sendable (String) -> [String]
  private let lock = NSLock()
  private var turn = 0

  public init(selfName: String, local: LocalSessions, peers: PeerTable, holders: @escaping @Sendable (String) -> [String]) {
    self.selfName = selfName
    self.local = local
    self.peers = peers
    self.holders = holders
  }

  public func place(clusterID: String) -> Placement {
    if local.count(clusterID) > 0 { return .local }
    let candidates = holders(clusterID).filter { $0 != selfName }.compactMap { peers.peer(named: $0) }.filter(\.ready)
      .sorted { $0.name < $1.name }
    guard !candidates.isEmpty else {
      let shown = clusterID.replacingOccurrences(of: "_", with: "/")
      return .nowhere("no hub replica holds a session of cluster \(shown): is its agent running and connected?")
    }
    lock.lock()
    turn &+= 1
    let pick = candidates[turn % candidates.count]
    lock.unlock()
    return .peer(pick)
  }
}

/// A ConfigMap, its data only.
public struct ConfigMapObject: KopilotKube.KubeObject, Equatable {
  public var metadata: KopilotKube.ObjectMeta
  public var data: [String: String]?
}

/// `public_addr` of ConfigMap `kopilot-hub`, as the seed's install flow has
/// the user create it after the hub: read live, so no restart is needed.
public final class PublicAddress: @unchecked Sendable {
  public static let configMapName = "kopilot-hub"
  public static let key = "public_addr"
  private let lock = NSLock()
  private var current: String?

  public init() {}

  public var value: String? {
    lock.lock()
    defer { lock.unlock() }
    return current
  }

  public func apply(_ event: Informer<ConfigMapObject>.Event, log: Logger) {
    var next: String?? = .none
    switch event {
    case .synced(let all): next = .some(all.first { $0.metadata.name == Self.configMapName }?.data?[Self.key])
    case .added(let cm), .modified(let cm):
      if cm.metadata.name == Self.configMapName { next = .some(cm.data?[Self.key]) }
    case .deleted(let cm):
      if cm.metadata.name == Self.configMapName { next = .some(nil) }
    }
    guard case .some(let raw) = next else { return }
    let v = raw?.trimmingCharacters(in: .whitespacesAndNewlines)
    let value = v?.isEmpty == false ? v : nil
    lock.lock()
    let changed = value != current
    current = value
    lock.unlock()
    if changed {
      if let value {
        log.notice("public address: \(value) (ConfigMap \(Self.configMapName), key \(Self.key))")
      } else {
        log.warning("no public address: agent manifests answer 503 until ConfigMap \(Self.configMapName) has \(Self.key)")
      }
    }
  }
}
