import Foundation
import KopilotIO
import KopilotKube
import Logging

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
public struct ClusterObject: KubeObject, Hashable, CustomStringConvertible {
  public var apiVersion: String?
  public var kind: String?
  public var metadata: ObjectMeta
  /// The agent token, top-level next to metadata (the hub's mutating webhook
  /// fills it when a user leaves it out).
  public var token: String?
  /// How the member sees callers: impersonate, passthrough or agent
  /// (top-level; absent: the hub's default).
  public var identity: String?
  public var status: ClusterStatus?

  public init(namespace: String, name: String, token: String?, resourceVersion: String? = nil,
              status: ClusterStatus? = nil, identity: String? = nil) {
    apiVersion = Cluster.apiVersion
    kind = Cluster.kind
    metadata = ObjectMeta(name: name, namespace: namespace)
    metadata.resourceVersion = resourceVersion
    self.token = token
    self.identity = identity
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
    if let p = IdentityMode.problem(identity) { return .failure(ClusterObjectProblem(message: p)) }
    return .success(Cluster(namespace: namespace, name: metadata.name, token: token!,
                            identity: identity.flatMap(IdentityMode.init(parsing:))))
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
