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
