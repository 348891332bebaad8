import Foundation
import Yams

/// What `kopilot-hub cluster add|remove|list` does to clusters.yaml. Each
/// edit holds a lock (clusters.yaml.lock), re-reads and validates the file,
/// changes only the object concerned, checks the result parses to exactly the
/// intended set, and replaces the file atomically (temp + rename), so a
/// running hub's watcher sees either the old file or the new one.
public struct ClusterAdmin: Sendable {
  public var path: String

  public init(path: String) { self.path = path }

  /// The clusters in the file, sorted by id; an absent file has none.
  public func listClusters() throws -> [Cluster] {
    try ClusterFile.parse(read(), file: path).sorted { $0.id < $1.id }
  }

  /// Appends a Cluster object with a new random token (256 bits, URL-safe
  /// base64 without padding) and returns the token. Everything already in the
  /// file, comments included, stays as it was.
  @discardableResult
  public func addCluster(namespace: String = "default", name: String) throws -> String {
    let label = "Cluster \(namespace)/\(name)"
    guard Names.isDNS1123Label(namespace) else {
      throw HubError(.invalid, "the namespace must be \(Names.labelRule)", object: label)
    }
    guard Names.isDNS1123Subdomain(name) else {
      throw HubError(.invalid, "the name must be \(Names.subdomainRule)", object: label)
    }
    return try Files.withLock(path) {
      let text = try read()
      let existing = try ClusterFile.parse(text, file: path)
      if existing.contains(where: { $0.namespace == namespace && $0.name == name }) {
        throw HubError(.duplicate, "already exists", file: path, object: label)
      }
      var token = RandomToken.make()
      while existing.contains(where: { $0.token == token }) { token = RandomToken.make() }
      let doc = ManifestDocument(apiVersion: Cluster.apiVersion, kind: Cluster.kind,
                             metadata: ManifestMeta(name: name, namespace: namespace), body: TokenBody(token: token))
      let yaml = try Yams.serialize(nodes: [YAMLStream.node(doc)], explicitStart: true)
      var out = text
      if !out.isEmpty && !out.hasSuffix("\n") { out += "\n" }
      out += yaml
      try commit(out, expecting: existing + [Cluster(namespace: namespace, name: name, token: token)])
      return token
    }
  }

  /// Removes the Cluster `namespace/name`; throws `notFound` when absent.
  /// Other documents keep their text and comments; a `List` that held it is
  /// written again without it.
  public func removeCluster(namespace: String = "default", name: String) throws {
    try Files.withLock(path) {
      let text = try read()
      let existing = try ClusterFile.parse(text, file: path)
      guard existing.contains(where: { $0.namespace == namespace && $0.name == name }) else {
        throw HubError(.notFound, "not in the file", file: path, object: "Cluster \(namespace)/\(name)")
      }
      let expected = existing.filter { !($0.namespace == namespace && $0.name == name) }
      let edited = try removingDocument(from: text, namespace: namespace, name: name)
      if (try? ClusterFile.parse(edited, file: path)) == expected {
        try commit(edited, expecting: expected)
      } else {
        // A layout the text edit could not follow (a directive, a `---`
        // carrying content): write every remaining object anew instead.
        try commit(try Self.canonical(expected), expecting: expected)
      }
    }
  }

  private func read() throws -> String {
    Files.exists(path) ? try Files.readText(path) : ""
  }

  private func commit(_ text: String, expecting expected: [Cluster]) throws {
    let got = try ClusterFile.parse(text, file: path)
    guard Set(got) == Set(expected), got.count == expected.count else {
      throw HubError(.invalid, "internal: the edited file does not hold the intended clusters; nothing written", file: path)
    }
    // Agent tokens: readable by the hub's user alone.
    try Files.replace(path, Data(text.utf8), defaultMode: 0o600, secret: true)
  }

  static func canonical(_ clusters: [Cluster]) throws -> String {
    let nodes = try clusters.map {
      try YAMLStream.node(ManifestDocument(apiVersion: Cluster.apiVersion, kind: Cluster.kind,
                                       metadata: ManifestMeta(name: $0.name, namespace: $0.namespace),
                                       body: TokenBody(token: $0.token)))
    }
    return nodes.isEmpty ? "" : try Yams.serialize(nodes: nodes, explicitStart: true)
  }

  /// The text without the document holding the cluster. Documents are split
  /// at `---` lines: at column 0 such a line can only be a document marker
  /// (YAML 1.2 9.1.1), never content of a block.
  func removingDocument(from text: String, namespace: String, name: String) throws -> String {
    let lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).map(String.init)
    var chunks: [[String]] = [[]]
    for l in lines {
      if l == "---" || l.hasPrefix("--- ") || l.hasPrefix("---\t") { chunks.append([l]) } else { chunks[chunks.count - 1].append(l) }
    }
    func isTarget(_ o: YAMLObject) -> Bool { o.kind == Cluster.kind && o.name == name && (o.namespace ?? "default") == namespace }
    var out: [[String]] = []
    for chunk in chunks {
      let body = chunk.joined(separator: "\n")
      guard let root = try Yams.compose(yaml: body), root.null == nil else { out.append(chunk); continue }
      let objs = try YAMLObjects.objects(in: body, file: path, listKinds: ["ClusterList"])
      guard objs.contains(where: isTarget) else { out.append(chunk); continue }
      if root.mapping?["items"] != nil {
        // A List: rewrite this document only, without the item.
        guard var map = root.mapping, let items = map["items"]?.sequence else { out.append(chunk); continue }
        let kept = try items.filter { !isTarget(try YAMLObjects.objects(in: Yams.serialize(node: $0), file: path)[0]) }
        map["items"] = Node(Array<Node>(kept))
        let yaml = try Yams.serialize(nodes: [Node.mapping(map)], explicitStart: chunk.first?.hasPrefix("---") == true)
        out.append(yaml.split(separator: "\n", omittingEmptySubsequences: false).map(String.init))
      } else if out.isEmpty {
        // The first document may open with the file's header comment: keep it.
        let header = chunk.prefix { $0.hasPrefix("#") || $0.trimmingCharacters(in: .whitespaces).isEmpty }
        out.append(Array(header))
      }
    }
    var result = out.map { $0.joined(separator: "\n") }.filter { !$0.isEmpty }.joined(separator: "\n")
    if !result.isEmpty && !result.hasSuffix("\n") { result += "\n" }
    return result
  }
}
