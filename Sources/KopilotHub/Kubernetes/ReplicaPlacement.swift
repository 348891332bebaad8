import Foundation
import KopilotBase

/// A replica among several: here when a session of the cluster is here;
/// else a ready replica the Cluster's status says holds one; else nowhere.
public final class ReplicaPlacement: ClusterPlacement, Sendable {
  let selfName: String
  let local: LocalSessions
  let peers: PeerTable
  /// The replicas the cluster's status lists with sessions, by pod name.
  let holders: @Sendable (String) -> [String]
  private let turn = Mutex(0)

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
    let n = turn.withLock { t in
      t &+= 1
      return t
    }
    return .peer(candidates[Int(UInt(bitPattern: n) % UInt(candidates.count))])
  }
}
