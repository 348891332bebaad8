/// The parts of a caller's `/proxy/{namespace}_{name}/<path>` request target.
public struct ProxyTarget: Equatable, Sendable {
  /// `namespace_name`
  public var cluster: String
  /// What the member's API server gets: the rest of the path, with the query.
  public var forwardTarget: String

  public init(cluster: String, forwardTarget: String) {
    self.cluster = cluster
    self.forwardTarget = forwardTarget
  }
}

/// Parses and normalizes a request target. Dot segments are resolved before
/// the cluster is read (RFC 3986 5.2.4), so `/proxy/a_b/../c_d/x` names c_d
/// and can never reach a_b; a path that climbs above the root, or that is
/// not under /proxy/, gives nil. Percent-encoded dots and slashes are refused
/// outright rather than decoded: no Kubernetes path needs them.
public func parseProxyTarget(_ target: String) -> ProxyTarget? {
  guard target.hasPrefix("/") else { return nil }
  let pathPart: Substring
  let query: Substring?
  if let q = target.firstIndex(of: "?") {
    pathPart = target[..<q]
    query = target[target.index(after: q)...]
  } else {
    pathPart = target[...]
    query = nil
  }
  let lowered = pathPart.lowercased()
  if lowered.contains("%2e") || lowered.contains("%2f") || lowered.contains("%5c") || pathPart.contains("\\") {
    return nil
  }
  var out: [Substring] = []
  let segments = pathPart.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
  for (i, seg) in segments.enumerated() {
    let last = i == segments.count - 1
    switch seg {
    case ".":
      if last { out.append("") }
    case "..":
      guard !out.isEmpty else { return nil }
      out.removeLast()
      if last { out.append("") }
    default:
      out.append(seg)
    }
  }
  guard out.count >= 2, out[0] == "proxy" else { return nil }
  let cluster = String(out[1])
  guard isValidClusterID(cluster) else { return nil }
  var rest = "/" + out.dropFirst(2).joined(separator: "/")
  if let query { rest += "?" + query }
  return ProxyTarget(cluster: cluster, forwardTarget: rest)
}

/// `namespace_name`: both parts DNS-1123 labels/subdomains, which cannot
/// contain '_', so the first '_' splits them unambiguously.
public func isValidClusterID(_ id: String) -> Bool {
  let parts = id.split(separator: "_", omittingEmptySubsequences: false)
  guard parts.count == 2 else { return false }
  return parts.allSatisfy { p in
    !p.isEmpty && p.count <= 253 && p.utf8.allSatisfy { c in
      (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c == 0x2d || c == 0x2e
    }
  }
}
