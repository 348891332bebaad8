import Foundation
import Yams

// The few Kubernetes object shapes KopilotHub writes (rbac.yaml, clusters.yaml,
// agent manifests), as Encodable data. Optional fields that are nil are left
// out, as kubectl leaves them out; field order is the order declared, which is
// the order `kubectl get -o yaml` prints.

struct ManifestMeta: Encodable {
  var name: String
  var namespace: String?
  var labels: StringMap?
  var annotations: StringMap?
}

/// A string map that keeps the order it was written in: a Swift Dictionary
/// would encode in a different order on every run, and a manifest should be
/// the same bytes for the same input.
struct StringMap: Encodable, ExpressibleByDictionaryLiteral {
  var pairs: [(String, String)]
  init(dictionaryLiteral elements: (String, String)...) { pairs = elements }
  init(_ pairs: [(String, String)]) { self.pairs = pairs }

  func encode(to encoder: Encoder) throws {
    var c = encoder.container(keyedBy: ManifestDocument<NoBody>.Key.self)
    for (k, v) in pairs { try c.encode(v, forKey: .init(k)) }
  }
}

/// The `apiVersion`, `kind`, `metadata` header and one body, flattened into a
/// single mapping as Kubernetes objects are.
struct ManifestDocument<Body: Encodable>: Encodable {
  var apiVersion: String
  var kind: String
  var metadata: ManifestMeta
  var body: Body

  func encode(to encoder: Encoder) throws {
    var c = encoder.container(keyedBy: Key.self)
    try c.encode(apiVersion, forKey: Key("apiVersion"))
    try c.encode(kind, forKey: Key("kind"))
    try c.encode(metadata, forKey: Key("metadata"))
    try body.encode(to: encoder)
  }

  struct Key: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ s: String) { stringValue = s }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
  }
}

struct NoBody: Encodable {
  func encode(to encoder: Encoder) throws {}
}

/// A PolicyRule: nonResourceURLs, or apiGroups and resources (nil fields
/// are left out).
struct PolicyRuleModel: Encodable {
  var apiGroups: [String]?
  var resources: [String]?
  var nonResourceURLs: [String]?
  var verbs: [String]

  init(nonResourceURLs: [String], verbs: [String]) {
    self.nonResourceURLs = nonResourceURLs
    self.verbs = verbs
  }

  init(apiGroups: [String], resources: [String], verbs: [String]) {
    self.apiGroups = apiGroups
    self.resources = resources
    self.verbs = verbs
  }
}

struct ClusterRoleBody: Encodable { var rules: [PolicyRuleModel] }

struct RoleRefModel: Encodable {
  var apiGroup = "rbac.authorization.k8s.io"
  var kind = "ClusterRole"
  var name: String
}

struct SubjectModel: Encodable {
  var kind: String
  var apiGroup: String?
  var name: String
  var namespace: String?
}

struct ClusterRoleBindingBody: Encodable {
  var roleRef: RoleRefModel
  var subjects: [SubjectModel]
}

struct DataBody: Encodable { var data: StringMap }
struct StringDataBody: Encodable {
  var type = "Opaque"
  var stringData: StringMap
}
struct TokenBody: Encodable { var token: String }

/// Turns Encodable documents into one multi-document YAML stream through
/// Yams' node tree, so every value is quoted as YAML needs (a token that
/// looks like a number stays a string) and nothing is pasted as text.
enum YAMLStream {
  static func node<T: Encodable>(_ value: T) throws -> Node {
    let encoder = YAMLEncoder()
    // Multi-line values (a PEM bundle) as `|` blocks, readable and diffable.
    encoder.options.newLineScalarStyle = .literal
    let text = try encoder.encode(value)
    guard let node = try Yams.compose(yaml: text) else { throw HubError(.invalid, "encoded an empty document") }
    return node
  }

  static func serialize(_ nodes: [Node]) throws -> String {
    try Yams.serialize(nodes: nodes, explicitStart: nodes.count > 1, sortKeys: false)
  }
}
