import Foundation
import KopilotKube
import Logging

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
