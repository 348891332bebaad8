import Foundation
import KopilotBase
import KopilotKube
import Logging

/// An EndpointSlice (discovery.k8s.io/v1), the parts that name hub replicas.
public struct EndpointSliceObject: KubeObject, Equatable {
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
  public var metadata: ObjectMeta
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
public final class PeerTable: Sendable {
  /// The Service port that carries peer traffic.
  public let portName: String
  private struct State {
    var slices: [String: EndpointSliceObject] = [:]
    var byName: [String: PeerEndpoint] = [:]
    var synced = false
  }
  private let state = Mutex(State())

  public init(portName: String = "peer") { self.portName = portName }

  /// Applies a change and returns the replicas that are no longer listed
  /// (their entries in Cluster statuses are stale now).
  @discardableResult
  public func apply(_ event: Informer<EndpointSliceObject>.Event) -> Set<String> {
    state.withLock { t in
      let before = t.synced ? Set(t.byName.keys) : []
      switch event {
      case .synced(let all):
        t.slices = Dictionary(all.map { ($0.key, $0) }, uniquingKeysWith: { _, b in b })
        t.synced = true
      case .added(let s), .modified(let s): t.slices[s.key] = s
      case .deleted(let s): t.slices[s.key] = nil
      }
      t.byName = PeerTable.index(t.slices.values, portName: portName)
      return before.subtracting(t.byName.keys)
    }
  }

  /// Whether `name` should tidy up after replicas that went away: the
  /// first by name of the ready ones, so one replica does it, not all.
  public func isJanitor(_ name: String) -> Bool {
    state.withLock { $0.byName.values.filter(\.ready).map(\.name).min() } == name
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
    state.withLock { $0.byName[name] }
  }

  /// Every replica the slices name, ready or not; nil before the first list
  /// (then nothing can be called stale).
  public func knownNames() -> Set<String>? {
    state.withLock { $0.synced ? Set($0.byName.keys) : nil }
  }
}
