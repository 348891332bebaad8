import Foundation
import Yams

/// One Kubernetes object read from a YAML stream, with where it starts so
/// errors can name the line.
struct YAMLObject {
  var node: Node
  var line: Int?
  var apiVersion: String
  var kind: String
  var name: String
  var namespace: String?

  /// `Cluster default/sample`, `ClusterRole view`: how errors name it.
  var label: String {
    let n = name.isEmpty ? "(no name)" : name
    return namespace.map { "\(kind) \($0)/\(n)" } ?? "\(kind) \(n)"
  }
}

enum YAMLObjects {
  /// Reads every object of a multi-document YAML stream, the way `kubectl
  /// apply -f` takes a file: empty documents are skipped, and a `List` (or a
  /// kind in `listKinds`, such as `ClusterList`) is replaced by its `items`.
  static func objects(in text: String, file: String, listKinds: Set<String> = []) throws -> [YAMLObject] {
    var roots: [Node] = []
    do {
      // The Parser itself, not compose_all: compose_all's sequence ends
      // quietly at a syntax error, which would drop the rest of the file.
      let parser = try Parser(yaml: text)
      while let root = try parser.nextRoot() { roots.append(root) }
    } catch {
      throw HubError(.syntax, "not valid YAML: \(error)", file: file)
    }
    var out: [YAMLObject] = []
    for root in roots {
      if root.null != nil { continue }  // `---` followed by nothing
      let obj = try header(of: root, file: file)
      if obj.kind == "List" || listKinds.contains(obj.kind) {
        guard let items = root.mapping?["items"] else { continue }  // an empty list
        guard let seq = items.sequence else {
          throw HubError(.invalid, "items must be a sequence", file: file, line: items.mark?.line, object: obj.kind)
        }
        for item in seq { out.append(try header(of: item, file: file)) }
      } else {
        out.append(obj)
      }
    }
    return out
  }

  private static func header(of node: Node, file: String) throws -> YAMLObject {
    let line = node.mark?.line
    guard let map = node.mapping else {
      throw HubError(.invalid, "expected a Kubernetes object (a mapping with apiVersion, kind and metadata)", file: file, line: line)
    }
    let kind = map["kind"]?.string ?? ""
    let meta = map["metadata"]?.mapping
    var obj = YAMLObject(
      node: node, line: line, apiVersion: map["apiVersion"]?.string ?? "", kind: kind,
      name: meta?["name"]?.string ?? "", namespace: meta?["namespace"]?.string)
    if kind.isEmpty { obj.kind = "object" }
    guard !kind.isEmpty else { throw HubError(.invalid, "kind is missing", file: file, line: line, object: obj.label) }
    guard !obj.apiVersion.isEmpty else { throw HubError(.invalid, "apiVersion is missing", file: file, line: line, object: obj.label) }
    return obj
  }

  /// Decodes an object's node into a Codable shape, turning a DecodingError
  /// into a message that names the field (`spec.rules[0].verbs: expected a
  /// sequence`).
  static func decode<T: Decodable>(_ type: T.Type, _ obj: YAMLObject, file: String) throws -> T {
    do {
      return try YAMLDecoder().decode(T.self, from: obj.node)
    } catch let e as DecodingError {
      throw HubError(.invalid, describe(e), file: file, line: obj.line, object: obj.label)
    } catch {
      throw HubError(.invalid, "\(error)", file: file, line: obj.line, object: obj.label)
    }
  }

  static func describe(_ e: DecodingError) -> String {
    func path(_ p: [CodingKey]) -> String {
      var s = ""
      for k in p {
        if let i = k.intValue { s += "[\(i)]" } else { s += (s.isEmpty ? "" : ".") + k.stringValue }
      }
      return s
    }
    switch e {
    case .keyNotFound(let key, let ctx):
      let parent = path(ctx.codingPath)
      return "\(parent.isEmpty ? "" : parent + ".")\(key.stringValue) is missing"
    case .typeMismatch(let type, let ctx):
      return "\(path(ctx.codingPath)): expected \(typeName(type))"
    case .valueNotFound(let type, let ctx):
      return "\(path(ctx.codingPath)): expected \(typeName(type)), found nothing"
    case .dataCorrupted(let ctx):
      return "\(path(ctx.codingPath)): \(ctx.debugDescription)"
    @unknown default:
      return "\(e)"
    }
  }

  private static func typeName(_ t: Any.Type) -> String {
    let n = String(describing: t)
    if n.hasPrefix("Array") || n.hasSuffix("Sequence") { return "a sequence" }
    if n.hasPrefix("Dictionary") || n.hasSuffix("Mapping") { return "a mapping" }
    if n == "String" { return "a string" }
    return n
  }
}
