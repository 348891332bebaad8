import Foundation

/// Every error KopilotHub throws. A struct with static codes rather than an
/// exhaustive enum, so a new code does not break a caller's `switch`
/// (swift-service-lifecycle's `ServiceGroupError` habit).
///
/// `description` is written for the person who edits the file: it names the
/// file, the line when known, and the object (`Kind namespace/name`).
public struct HubError: Error, CustomStringConvertible, Sendable, Equatable {
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    private let name: String
    private init(_ name: String) { self.name = name }
    public var description: String { name }

    /// The file is not valid YAML / CSV at all.
    public static let syntax = Code("syntax")
    /// An object or line parses but breaks a rule (bad name, short token, ...).
    public static let invalid = Code("invalid")
    /// Two objects share a name or a token.
    public static let duplicate = Code("duplicate")
    /// The named object does not exist (admin operations).
    public static let notFound = Code("notFound")
    /// Reading or writing a file failed.
    public static let io = Code("io")
    /// Creating or reading a certificate or key failed.
    public static let certificate = Code("certificate")
    /// A file or folder's permissions would let others read secrets or
    /// change what the hub trusts.
    public static let insecure = Code("insecure")
    /// `AgentManifest.render` got a provider it does not know.
    public static let unknownProvider = Code("unknownProvider")
  }

  public var code: Code
  /// The file the error is about, when there is one.
  public var file: String?
  /// 1-based line in `file`, when known.
  public var line: Int?
  /// `Kind namespace/name` or `Kind name` of the object, when known.
  public var object: String?
  public var message: String

  public init(_ code: Code, _ message: String, file: String? = nil, line: Int? = nil, object: String? = nil) {
    self.code = code
    self.message = message
    self.file = file
    self.line = line
    self.object = object
  }

  /// `clusters.yaml:7: Cluster default/sample: token must be at least 16 characters`
  public var description: String {
    var s = ""
    if let file { s += file }
    if let line { s += (s.isEmpty ? "line " : ":") + String(line) }
    if !s.isEmpty { s += ": " }
    if let object { s += object + ": " }
    return s + message
  }
}
