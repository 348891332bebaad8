import Foundation
import KopilotIO

/// How a member cluster sees the callers the hub lets through: a Cluster's
/// top-level `identity` field, or the hub's `--identity` default.
///
/// - `impersonate` (the default): Kubernetes impersonation of the caller
///   under a prefix, `kopilot:alice` in groups `kopilot:callers` and
///   `kopilot:<group>`, so no host name can pass for a member-local one.
/// - `passthrough`: the caller's own names, for a fleet with one identity
///   provider.
/// - `agent`: no impersonation; every caller acts as the agent's
///   ServiceAccount (the original kopilot's behaviour).
public struct IdentityMode: Hashable, Sendable, CustomStringConvertible {
  private let name: String
  private init(_ name: String) { self.name = name }
  public var description: String { name }

  public static let impersonate = IdentityMode("impersonate")
  public static let passthrough = IdentityMode("passthrough")
  public static let agent = IdentityMode("agent")
  public static let all: [IdentityMode] = [.impersonate, .passthrough, .agent]

  /// The mode a field or flag names; nil for anything else.
  public init?(parsing s: String) {
    guard let m = Self.all.first(where: { $0.name == s }) else { return nil }
    self = m
  }

  /// nil when a Cluster's `identity` field is absent or names a mode;
  /// otherwise what is wrong, for the person who wrote it.
  public static func problem(_ field: String?) -> String? {
    guard let field, IdentityMode(parsing: field) == nil else { return nil }
    return "identity must be one of \(all.map(\.description).joined(separator: ", ")), not \"\(field)\""
  }
}

/// The identity a member sees for one caller: what the hub sends as
/// Kubernetes impersonation headers.
public struct MemberIdentity: Hashable, Sendable {
  public var user: String
  public var uid: String
  public var groups: [String]
  public var extra: [String: [String]]

  /// The impersonation fields, as whole "Name: value\r\n" lines for the C
  /// core (kp_hub_request_proxy_as): `Impersonate-User`, one
  /// `Impersonate-Group` per group, `Impersonate-Uid` when there is one, and
  /// `Impersonate-Extra-<key>` per extra value, keys escaped as client-go
  /// escapes them (`extraKey`). Sorted extra keys, so the same identity is
  /// always the same bytes.
  public var fields: String {
    var s = "Impersonate-User: \(user)\r\n"
    for g in groups { s += "Impersonate-Group: \(g)\r\n" }
    if !uid.isEmpty { s += "Impersonate-Uid: \(uid)\r\n" }
    for key in extra.keys.sorted() {
      for v in extra[key] ?? [] { s += "Impersonate-Extra-\(Self.extraKey(key)): \(v)\r\n" }
    }
    return s
  }

  /// An extra key as a header name suffix: every byte that is not an RFC
  /// 9110 tchar, and '%' itself, becomes %XX (upper-case hex). kube-apiserver
  /// lower-cases the name and percent-decodes it back
  /// (`authentication.kubernetes.io/pod-name` travels as
  /// `authentication.kubernetes.io%2Fpod-name`).
  public static func extraKey(_ key: String) -> String {
    var out = ""
    for b in key.utf8 {
      if b != UInt8(ascii: "%") && isTokenChar(b) {
        out.unicodeScalars.append(Unicode.Scalar(b))
      } else {
        out += String(format: "%%%02X", b)
      }
    }
    return out
  }

  static func isTokenChar(_ b: UInt8) -> Bool {
    switch b {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
      return true
    default:
      return "!#$%&'*+-.^_`|~".utf8.contains(b)
    }
  }
}

/// Why a caller cannot be carried to a member (a 403 to the caller).
public struct IdentityRefusal: Error, Hashable, Sendable, CustomStringConvertible {
  public var message: String
  public var description: String { message }
}

/// Maps the identity the hub authenticated to the one a member sees. Pure:
/// tested without sockets.
public struct IdentityMapping: Hashable, Sendable {
  /// For clusters that name no mode of their own.
  public var defaultMode: IdentityMode = .impersonate
  /// What `impersonate` puts before every user and group name.
  public var prefix = "kopilot:"
  /// The group every tunnel caller gets on the member (`impersonate` and
  /// `passthrough`), so one member binding can grant all of them something.
  public var callersGroup = "kopilot:callers"
  /// `system:` groups that `passthrough` carries anyway (none by default:
  /// `system:masters` on the host must not become `system:masters` on a
  /// member).
  public var passthroughSystemGroups: Set<String> = []

  public init() {}

  /// The identity a member of a cluster in `mode` (nil: the default) sees
  /// for `user`; nil in the `agent` mode (no impersonation). Throws when the
  /// caller cannot be carried: `passthrough` of a `system:` user (a host
  /// ServiceAccount or component would become the member's own), or a name
  /// a header cannot hold.
  public func member(for user: UserInfo, mode: IdentityMode?) throws(IdentityRefusal) -> MemberIdentity? {
    let mode = mode ?? defaultMode
    let name: String
    var groups: [String] = [callersGroup]
    switch mode {
    case .agent:
      return nil
    case .passthrough:
      guard !user.name.hasPrefix("system:") else {
        throw IdentityRefusal(message: "user \(user.name) is a system identity of the host cluster; passthrough does not carry system: users to a member")
      }
      name = user.name
      groups += user.groups.filter { !$0.isEmpty && (!$0.hasPrefix("system:") || passthroughSystemGroups.contains($0)) }
    default:
      name = prefix + user.name
      groups += user.groups.filter { !$0.isEmpty && !$0.hasPrefix("system:") }.map { prefix + $0 }
    }
    var seen = Set<String>()
    groups = groups.filter { seen.insert($0).inserted }
    let id = MemberIdentity(user: name, uid: user.uid, groups: groups, extra: user.extra.filter { !$0.key.isEmpty })
    for v in [id.user, id.uid] + id.groups + id.extra.values.joined() where !Self.fitsField(v) {
      throw IdentityRefusal(message: "the caller's identity holds a value that an HTTP header cannot carry (control characters or whitespace at either end)")
    }
    return id
  }

  /// A value an HTTP field may carry unchanged (RFC 9110 5.5): no control
  /// byte but tab, no whitespace at either end. What the C core checks too
  /// (kp_http_check_hub_fields); checked here to give the caller a reason.
  public static func fitsField(_ v: String) -> Bool {
    let u = Array(v.utf8)
    if let f = u.first, let l = u.last, f == 0x20 || f == 0x09 || l == 0x20 || l == 0x09 { return false }
    return u.allSatisfy { $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7f) }
  }
}
