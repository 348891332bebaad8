import Foundation

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
  // Every request passes through here: work on the UTF-8 bytes (this runs
  // on the hub's event loop, and Foundation's string search costs ~10x).
  var target = target
  return target.withUTF8 { t -> ProxyTarget? in
    guard t.first == UInt8(ascii: "/") else { return nil }
    let q = t.firstIndex(of: UInt8(ascii: "?")) ?? t.count
    // Refuse %2e, %2f, %5c in any case, and backslashes, in the path.
    var i = 0
    while i < q {
      let c = t[i]
      if c == UInt8(ascii: "\\") { return nil }
      if c == UInt8(ascii: "%"), i + 2 < q {
        let a = t[i + 1], b = t[i + 2] | 0x20
        if (a == UInt8(ascii: "2") && (b == UInt8(ascii: "e") || b == UInt8(ascii: "f")))
          || (a == UInt8(ascii: "5") && b == UInt8(ascii: "c")) {
          return nil
        }
      }
      i += 1
    }
    // Segments after the leading "/", dot segments resolved.
    var out: [Range<Int>] = []
    var start = 1
    while start <= q {
      var end = start
      while end < q && t[end] != UInt8(ascii: "/") { end += 1 }
      let last = end >= q
      let n = end - start
      if n == 1 && t[start] == UInt8(ascii: ".") {
        if last { out.append(end..<end) }
      } else if n == 2 && t[start] == UInt8(ascii: ".") && t[start + 1] == UInt8(ascii: ".") {
        guard !out.isEmpty else { return nil }
        out.removeLast()
        if last { out.append(end..<end) }
      } else {
        out.append(start..<end)
      }
      start = end + 1
    }
    guard out.count >= 2, out[0].count == 5,
          UnsafeBufferPointer(rebasing: t[out[0]]).elementsEqual("proxy".utf8) else { return nil }
    let cluster = String(decoding: UnsafeBufferPointer(rebasing: t[out[1]]), as: UTF8.self)
    guard isValidClusterID(cluster) else { return nil }
    var rest: [UInt8] = []
    rest.reserveCapacity(t.count)
    for r in out.dropFirst(2) {
      rest.append(UInt8(ascii: "/"))
      rest.append(contentsOf: UnsafeBufferPointer(rebasing: t[r]))
    }
    if rest.isEmpty { rest.append(UInt8(ascii: "/")) }
    if q < t.count { rest.append(contentsOf: UnsafeBufferPointer(rebasing: t[q...])) }
    return ProxyTarget(cluster: cluster, forwardTarget: String(decoding: rest, as: UTF8.self))
  }
}

/// `namespace_name`: both parts DNS-1123 labels/subdomains, which cannot
/// contain '_', so the first '_' splits them unambiguously.
public func isValidClusterID(_ id: String) -> Bool {
  let u = id.utf8
  guard let us = u.firstIndex(of: UInt8(ascii: "_")) else { return false }
  let ns = u[..<us], name = u[u.index(after: us)...]
  func label(_ p: Substring.UTF8View) -> Bool {
    !p.isEmpty && p.count <= 253 && p.allSatisfy { c in
      (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c == 0x2d || c == 0x2e
    }
  }
  return label(ns) && label(name)
}

/// The first value of `name` in a target's query, percent-decoded.
public func queryValue(_ target: String, _ name: String) -> String? {
  guard let q = target.firstIndex(of: "?") else { return nil }
  for pair in target[target.index(after: q)...].split(separator: "&") {
    let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
    if kv.first.map(String.init) == name {
      let raw = kv.count > 1 ? String(kv[1]) : ""
      return raw.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? raw
    }
  }
  return nil
}
