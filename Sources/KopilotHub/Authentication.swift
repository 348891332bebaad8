import Foundation
import KopilotIO
import Logging

/// Who a caller is, as Kubernetes' `user.Info` has it.
public struct UserInfo: Hashable, Sendable, CustomStringConvertible {
  public var name: String
  public var uid: String
  public var groups: [String]
  /// `user.Info`'s extra fields (a TokenReview may return some, such as a
  /// service account's pod name); a SubjectAccessReview passes them back.
  public var extra: [String: [String]]

  public init(name: String, uid: String = "", groups: [String] = [], extra: [String: [String]] = [:]) {
    self.name = name
    self.uid = uid
    self.groups = groups
    self.extra = extra
  }

  public var description: String { name }

  /// Every authenticated user is in this group (kube-apiserver adds it too),
  /// so RBAC can grant "anyone with a valid token".
  public static let authenticatedGroup = "system:authenticated"
}

/// Why a caller gets a 401. A struct with static codes; `message` is what
/// the hub puts in the `Status` (never the token).
public struct AuthenticationError: Error, Hashable, Sendable, CustomStringConvertible {
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    private let name: String
    private init(_ name: String) { self.name = name }
    public var description: String { name }
    /// No Authorization header.
    public static let missingCredentials = Code("missingCredentials")
    /// An Authorization header that is not `Bearer <token>`.
    public static let malformedHeader = Code("malformedHeader")
    /// A well-formed token that no one holds.
    public static let invalidToken = Code("invalidToken")
  }

  public var code: Code
  public var message: String
  public init(_ code: Code, _ message: String) {
    self.code = code
    self.message = message
  }
  public var description: String { message }
}

/// Turns a caller's bearer token into a user. Embedded mode reads a token
/// file (`TokenFileAuthenticator`); the Kubernetes mode will ask the host
/// cluster with a TokenReview behind the same protocol, hence `async`.
public protocol Authenticator: Sendable {
  /// The user holding `bearerToken`; throws `AuthenticationError` with code
  /// `invalidToken` when no one does, or a `ControlPlaneError` when the
  /// answer could not be had.
  func authenticate(bearerToken: String) async throws -> UserInfo
  /// The same answer synchronously when it is at hand (a token file, a
  /// cache hit), nil when only `authenticate` can tell. Cheap: the hub
  /// calls it on its loop thread.
  func authenticateNow(bearerToken: String) -> Result<UserInfo, Error>?
}

extension Authenticator {
  public func authenticateNow(bearerToken: String) -> Result<UserInfo, Error>? { nil }
}

/// An error of the control plane that is not the caller's fault (the host
/// cluster slow or down, too many reviews pending): the router answers it
/// with this status (503 or 504), never with an allow.
public protocol ControlPlaneError: Error {
  var httpStatus: Int { get }
  /// The `Status` reason: "ServiceUnavailable", "Timeout", ...
  var statusReason: String { get }
  /// Safe to show the caller: no token, no internal address.
  var statusMessage: String { get }
}

public enum BearerToken {
  /// Reads the token from an `Authorization` header value, strictly: the
  /// scheme `Bearer` (any case, RFC 7235 2.1), exactly one space, then a
  /// token of RFC 6750 2.1 `b64token` characters. Anything else is refused
  /// with a reason fit for the 401, rather than guessed at: a lenient parser
  /// here is how "Bearer  x" and "Bearer x, Basic y" turn into surprises.
  public static func parse(authorization value: String?) -> Result<String, AuthenticationError> {
    guard let value, !value.isEmpty else {
      return .failure(AuthenticationError(.missingCredentials, "no credentials: send Authorization: Bearer <token>"))
    }
    let bytes = Array(value.utf8)
    let schemeEnd = bytes.firstIndex(where: { $0 == 0x20 || $0 == 0x09 }) ?? bytes.count
    let scheme = String(decoding: bytes[..<schemeEnd], as: UTF8.self)
    guard scheme.lowercased() == "bearer" else {
      // Name the scheme only when it looks like one; never echo a credential.
      let safe = scheme.count <= 20 && scheme.allSatisfy({ $0.isASCII && $0.isLetter }) ? " (got \"\(scheme)\")" : ""
      return .failure(AuthenticationError(.malformedHeader, "the Authorization header must use the Bearer scheme\(safe)"))
    }
    guard schemeEnd < bytes.count, schemeEnd + 1 < bytes.count else {
      return .failure(AuthenticationError(.malformedHeader, "the Authorization header has an empty bearer token"))
    }
    guard bytes[schemeEnd] == 0x20, bytes[schemeEnd + 1] != 0x20, bytes[schemeEnd + 1] != 0x09 else {
      return .failure(AuthenticationError(.malformedHeader, "the Authorization header must be \"Bearer <token>\" with one space"))
    }
    let token = bytes[(schemeEnd + 1)...]
    guard !token.isEmpty else {
      return .failure(AuthenticationError(.malformedHeader, "the Authorization header has an empty bearer token"))
    }
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    var sawEquals = false
    for c in token {
      let isAlnum = (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39)
      if c == 0x3d { sawEquals = true; continue }
      guard !sawEquals, isAlnum || c == 0x2d || c == 0x2e || c == 0x5f || c == 0x7e || c == 0x2b || c == 0x2f else {
        let what = c == 0x20 || c == 0x09 ? "a space" : "a character a bearer token cannot hold"
        return .failure(AuthenticationError(.malformedHeader, "the bearer token contains \(what) (RFC 6750 2.1)"))
      }
    }
    guard token.first != 0x3d else {
      return .failure(AuthenticationError(.malformedHeader, "the bearer token contains a character a bearer token cannot hold (RFC 6750 2.1)"))
    }
    return .success(String(decoding: token, as: UTF8.self))
  }
}

/// One line of a token file.
public struct TokenEntry: Hashable, Sendable {
  public var token: String
  public var user: UserInfo
  /// 1-based line in the file.
  public var line: Int
}

/// kube-apiserver's `--token-auth-file`: CSV, one caller per line,
/// `token,user,uid[,"group1,group2"]`. Blank lines and lines starting with
/// `#` are skipped. Unlike kube-apiserver (which warns and lets the last one
/// win) a token given twice is an error: two users behind one token is never
/// what was meant.
public enum TokenFile {
  public static func parse(_ text: String, file: String = "tokens.csv") throws -> [TokenEntry] {
    var out: [TokenEntry] = []
    var seen: [String: Int] = [:]
    var lineNo = 0
    // "\r\n" is one Character in Swift, so it is a separator of its own.
    for raw in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
      lineNo += 1
      var line = Substring(raw)
      if line.hasSuffix("\r") { line = line.dropLast() }
      let trimmed = line.drop(while: { $0 == " " || $0 == "\t" })
      if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
      func fail(_ m: String, _ code: HubError.Code = .invalid) -> HubError { HubError(code, m, file: file, line: lineNo) }
      let fields: [String]
      do { fields = try CSV.fields(of: line) } catch let e as CSV.Failure { throw fail(e.message, .syntax) }
      guard fields.count >= 3 else {
        throw fail("expected token,user,uid[,\"group1,group2\"]; found \(fields.count) column\(fields.count == 1 ? "" : "s")")
      }
      guard fields.count <= 4 else {
        throw fail("expected at most 4 columns; quote the groups column when it lists several: \"group1,group2\"")
      }
      let token = fields[0], name = fields[1], uid = fields[2]
      guard !token.isEmpty else { throw fail("the token column is empty") }
      guard case .success = BearerToken.parse(authorization: "Bearer " + token) else {
        throw fail("the token may hold only letters, digits and - . _ ~ + / (then =), as a bearer token can")
      }
      guard !name.isEmpty else { throw fail("the user column is empty") }
      if let first = seen[token] { throw fail("this token is already on line \(first)", .duplicate) }
      seen[token] = lineNo
      var groups: [String] = []
      if fields.count == 4 {
        for g in fields[3].split(separator: ",") {
          let t = g.trimmingCharacters(in: .whitespaces)
          if !t.isEmpty && !groups.contains(t) { groups.append(t) }
        }
      }
      out.append(TokenEntry(token: token, user: UserInfo(name: name, uid: uid, groups: groups), line: lineNo))
    }
    return out
  }
}

/// The smallest CSV reader the token file needs (RFC 4180 within one line):
/// fields split on commas, a field may be double-quoted and then hold commas
/// and `""` for a quote.
enum CSV {
  struct Failure: Error { var message: String }

  static func fields(of line: Substring) throws -> [String] {
    var out: [String] = []
    var i = line.startIndex
    while true {
      var field = ""
      if i < line.endIndex && line[i] == "\"" {
        i = line.index(after: i)
        var closed = false
        while i < line.endIndex {
          let c = line[i]
          i = line.index(after: i)
          if c == "\"" {
            if i < line.endIndex && line[i] == "\"" {
              field.append("\"")
              i = line.index(after: i)
            } else {
              closed = true
              break
            }
          } else {
            field.append(c)
          }
        }
        guard closed else { throw Failure(message: "a quoted field is not closed (a field cannot span lines)") }
        guard i == line.endIndex || line[i] == "," else {
          throw Failure(message: "unexpected text after a closing quote; write a quote inside quotes as \"\"")
        }
      } else {
        while i < line.endIndex && line[i] != "," {
          guard line[i] != "\"" else { throw Failure(message: "a bare quote inside an unquoted field; quote the whole field") }
          field.append(line[i])
          i = line.index(after: i)
        }
      }
      out.append(field)
      guard i < line.endIndex else { return out }
      i = line.index(after: i)  // the comma
    }
  }
}

/// An immutable token table; every entry is compared in constant time and
/// all of them always, so timing does not tell which token matched.
public struct TokenTable: Sendable, Equatable {
  public let entries: [TokenEntry]
  public init(_ entries: [TokenEntry]) { self.entries = entries }

  public func user(for token: String) -> UserInfo? {
    guard !token.isEmpty else { return nil }
    var found: UserInfo?
    for e in entries where constantTimeEquals(e.token, token) { found = e.user }
    guard var user = found else { return nil }
    if !user.groups.contains(UserInfo.authenticatedGroup) { user.groups.append(UserInfo.authenticatedGroup) }
    return user
  }
}

/// The embedded authenticator: tokens.csv, reloaded when it changes.
public final class TokenFileAuthenticator: Authenticator, @unchecked Sendable {
  private let file: ReloadingFile<TokenTable>

  /// Loads `path` now (throws when it is missing or invalid) and, when
  /// `pollInterval` is not nil, watches it; a broken edit keeps the last good
  /// table and is logged.
  public init(path: String, pollInterval: TimeInterval? = 1,
              logger: Logger = Logger(label: "kopilot.hub.authn")) throws {
    file = try ReloadingFile(path: path, what: "caller tokens", pollInterval: pollInterval, logger: logger) { data in
      TokenTable(try TokenFile.parse(String(decoding: data, as: UTF8.self), file: path))
    }
  }

  /// Synchronous lookup, safe on the hub's loop thread: the user holding
  /// `bearerToken`, with `system:authenticated` added, or nil.
  public func user(for bearerToken: String) -> UserInfo? { file.current.user(for: bearerToken) }

  public func authenticate(bearerToken: String) async throws -> UserInfo {
    try authenticateNow(bearerToken: bearerToken)!.get()
  }

  public func authenticateNow(bearerToken: String) -> Result<UserInfo, Error>? {
    guard let u = user(for: bearerToken) else { return .failure(AuthenticationError(.invalidToken, "Unauthorized")) }
    return .success(u)
  }

  public var lastReloadError: HubError? { file.lastError }
  public func stop() { file.stop() }
}
