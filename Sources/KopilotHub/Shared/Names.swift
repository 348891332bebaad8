/// Kubernetes name rules (k8s.io/apimachinery/pkg/util/validation).
enum Names {
  /// DNS-1123 label: namespaces. At most 63 of [a-z0-9-], alphanumeric at
  /// both ends.
  static func isDNS1123Label(_ s: String) -> Bool {
    let b = Array(s.utf8)
    guard !b.isEmpty, b.count <= 63, isAlnum(b.first!), isAlnum(b.last!) else { return false }
    return b.allSatisfy { isAlnum($0) || $0 == 0x2d }
  }

  /// DNS-1123 subdomain: most object names (Cluster, ClusterRole...). At most
  /// 253 characters, dot-separated labels.
  static func isDNS1123Subdomain(_ s: String) -> Bool {
    guard !s.isEmpty, s.utf8.count <= 253 else { return false }
    return s.split(separator: ".", omittingEmptySubsequences: false).allSatisfy {
      let b = Array($0.utf8)
      return !b.isEmpty && isAlnum(b.first!) && isAlnum(b.last!) && b.allSatisfy { isAlnum($0) || $0 == 0x2d }
    }
  }

  private static func isAlnum(_ c: UInt8) -> Bool { (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) }

  static let labelRule = "a DNS-1123 label (lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit)"
  static let subdomainRule = "a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', at most 253, each part starting and ending with a letter or digit)"
}
