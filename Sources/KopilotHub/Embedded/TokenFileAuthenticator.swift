import Foundation
import KopilotIO
import Logging

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
public final class TokenFileAuthenticator: Authenticator, Sendable {
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
