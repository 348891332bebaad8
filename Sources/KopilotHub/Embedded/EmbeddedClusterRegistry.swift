import Foundation
import KopilotBase
import KopilotIO
import Logging
import Yams

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
/// identity: impersonate    # optional: impersonate, passthrough or agent
/// ```
public enum ClusterFile {
  private struct Shape: Decodable {
    struct Meta: Decodable {
      var name: String?
      var namespace: String?
    }
    var metadata: Meta?
    var token: String?
    var identity: String?
  }

  /// Parses and validates the whole file; the first problem throws, naming
  /// the file, the line and the object.
  public static func parse(_ text: String, file: String = "clusters.yaml") throws -> [Cluster] {
    var out: [Cluster] = []
    var lineOfID: [String: Int] = [:]
    var lineOfToken: [String: (Int, String)] = [:]
    for obj in try YAMLObjects.objects(in: text, file: file, listKinds: ["ClusterList"]) {
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

  static func cluster(from obj: YAMLObject, file: String) throws -> Cluster {
    var obj = obj
    if obj.namespace == nil { obj.namespace = "default" }
    func fail(_ m: String) -> HubError { HubError(.invalid, m, file: file, line: obj.line, object: obj.label) }
    guard obj.kind == Cluster.kind else {
      throw fail("only kind Cluster (or a List/ClusterList of them) belongs in this file")
    }
    guard obj.apiVersion == Cluster.apiVersion else {
      throw fail("apiVersion must be \(Cluster.apiVersion), not \(obj.apiVersion)")
    }
    let shape = try YAMLObjects.decode(Shape.self, obj, file: file)
    let name = shape.metadata?.name ?? ""
    let namespace = shape.metadata?.namespace ?? "default"
    guard !name.isEmpty else { throw fail("metadata.name is missing") }
    guard Names.isDNS1123Subdomain(name) else { throw fail("metadata.name must be \(Names.subdomainRule)") }
    guard Names.isDNS1123Label(namespace) else { throw fail("metadata.namespace must be \(Names.labelRule)") }
    guard let token = shape.token, !token.isEmpty else {
      throw fail("token is missing (a top-level field, next to metadata; `kopilot-hub cluster add` makes one)")
    }
    try validateToken(token, fail)
    if let p = IdentityMode.problem(shape.identity) { throw fail(p) }
    return Cluster(namespace: namespace, name: name, token: token,
                   identity: shape.identity.flatMap(IdentityMode.init(parsing:)))
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
public final class EmbeddedClusterRegistry: ClusterRegistry, Sendable {
  private let file: ReloadingFile<ClusterTable>
  private let handlers = Mutex<[@Sendable ([ClusterChange]) -> Void]>([])

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
      for h in self.handlers.withLock({ $0 }) { h(changes) }
    }
  }

  public func cluster(forAgentToken token: String) -> Cluster? { file.current.cluster(forAgentToken: token) }
  public func cluster(id: String) -> Cluster? { file.current.cluster(id: id) }
  public func clusters() -> [Cluster] { file.current.clusters }

  public func onChange(_ handler: @escaping @Sendable ([ClusterChange]) -> Void) {
    handlers.withLock { $0.append(handler) }
  }

  /// Why the last reload was refused, nil when the file in force is the one
  /// on disk. For a health or metrics endpoint.
  public var lastReloadError: HubError? { file.lastError }

  /// Stops watching the file.
  public func stop() { file.stop() }
}
