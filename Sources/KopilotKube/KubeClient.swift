import AsyncHTTPClient
import Foundation
import KopilotBase
import KopilotKubeConfig
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOSSL

/// A client of one API server: JSON requests, watches, and the reviews.
/// Safe from any thread; requests run concurrently (HTTP/1.1, a pool of
/// keep-alive connections on NIO's shared event loops).
public final class KubeClient: ReviewClient, Sendable {
  public let config: KubeClientConfig
  let requestTimeout: TimeInterval
  let logger: Logger
  private let http: HTTPClient
  /// The server URL without a trailing slash; a path prefix (a proxy's
  /// `/k8s/clusters/c-1`) is kept.
  private let base: String
  let credentials: Credentials

  /// The most a response body (or one watch event) may hold.
  static let maxBody = 64 << 20
  /// The most of an error body read to find its Status.
  static let maxErrorBody = 1 << 20

  /// - requestTimeout: the default bound on one request (not on watches).
  public convenience init(config: KubeClientConfig, requestTimeout: TimeInterval = 10,
                          logger: Logger = Logger(label: "kopilot.kube")) throws {
    try self.init(config: config, requestTimeout: requestTimeout, logger: logger, tokenMaxAge: 60)
  }

  /// - tokenMaxAge: how long a token read from `tokenFile` is used before
  ///   the file is read again (tests lower it).
  init(config: KubeClientConfig, requestTimeout: TimeInterval, logger: Logger, tokenMaxAge: TimeInterval) throws {
    self.config = config
    self.requestTimeout = requestTimeout
    self.logger = logger
    var b = config.server.absoluteString
    while b.hasSuffix("/") { b.removeLast() }
    base = b
    credentials = Credentials(token: config.bearerToken, file: config.tokenFile, maxAge: tokenMaxAge, logger: logger)

    // AsyncHTTPClient retries a failed connection (refused, TLS) until the
    // connect timeout and then fails with the last error; a connect timeout
    // under the request's keeps that error (Unavailable) from turning into
    // the request's deadline (Timeout).
    let connect = min(requestTimeout / 2, 5)
    var hc = HTTPClient.Configuration(tlsConfiguration: try Self.tls(config), redirectConfiguration: .disallow,
                                      timeout: .init(connect: .nanoseconds(Int64(connect * 1e9))),
                                      decompression: .disabled)
    hc.httpVersion = .http1Only
    http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: hc)
  }

  deinit {
    // HTTPClient insists on a shutdown before it goes; the future keeps it
    // alive until its connections are closed.
    _ = http.shutdown()
  }

  /// TLS 1.2 or later. `caPEM` replaces the system's roots; a client
  /// certificate is offered when the configuration has one.
  static func tls(_ c: KubeClientConfig) throws -> TLSConfiguration {
    func fail(_ m: String) -> KubeconfigError { KubeconfigError(file: "client configuration", message: m) }
    var tls = TLSConfiguration.makeClientConfiguration()
    tls.minimumTLSVersion = .tlsv12
    if c.insecureSkipTLSVerify {
      tls.certificateVerification = .none
    } else if let ca = c.caPEM {
      let roots: [NIOSSLCertificate]
      do { roots = try NIOSSLCertificate.fromPEMBytes(Array(ca.utf8)) } catch { throw fail("the CA bundle is not PEM: \(error)") }
      guard !roots.isEmpty else { throw fail("the CA bundle holds no certificate") }
      tls.trustRoots = .certificates(roots)
    }
    switch (c.clientCertPEM, c.clientKeyPEM) {
    case (nil, nil): break
    case let (cert?, key?):
      do {
        let chain = try NIOSSLCertificate.fromPEMBytes(Array(cert.utf8))
        guard !chain.isEmpty else { throw fail("the client certificate holds no certificate") }
        tls.certificateChain = chain.map { .certificate($0) }
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(key.utf8), format: .pem))
      } catch let e as KubeconfigError {
        throw e
      } catch {
        // NIOSSL's errors name OpenSSL's reasons, never the key's bytes.
        throw fail("the client certificate or key is not usable PEM: \(error)")
      }
    default:
      throw fail("a client certificate needs its key, and a key its certificate")
    }
    return tls
  }

  // MARK: Requests

  /// One request. 2xx: the body. Otherwise throws `KubeAPIError` from the
  /// `Status` body (or one made up from the status line), code 0 when no
  /// answer came in time or at all.
  public func send(method: String, path: String, query: [(String, String)] = [], body: Data? = nil,
                   contentType: String = "application/json", timeout: TimeInterval? = nil) async throws -> Data {
    try await perform(method: method, path: path, query: query, body: body, contentType: contentType,
                      timeout: timeout, secrets: [])
  }

  /// `send`, with more strings (a reviewed token) kept out of its errors.
  func perform(method: String, path: String, query: [(String, String)], body: Data?, contentType: String,
               timeout: TimeInterval?, secrets: [String]) async throws -> Data {
    let what = "\(method) \(path)"
    var req = try request(method: method, path: path, query: query)
    if let body {
      req.headers.replaceOrAdd(name: "Content-Type", value: contentType)
      req.body = .bytes(ByteBuffer(bytes: body))
    }
    let limit = timeout ?? requestTimeout
    let deadline = NIODeadline.now() + .nanoseconds(Int64(limit * 1e9))
    let http = self.http, logger = self.logger, request = req
    do {
      let (status, bytes) = try await Self.withDeadline(deadline) { () async throws -> (HTTPResponseStatus, ByteBuffer) in
        let resp = try await http.execute(request, deadline: deadline, logger: logger)
        let ok = (200..<300).contains(resp.status.code)
        return (resp.status, try await resp.body.collect(upTo: ok ? Self.maxBody : Self.maxErrorBody))
      }
      guard (200..<300).contains(status.code) else {
        throw redact(KubeAPIError.fromResponse(status: Int(status.code), reasonPhrase: status.reasonPhrase,
                                               body: Data(bytes.readableBytesView)), secrets)
      }
      return Data(bytes.readableBytesView)
    } catch {
      throw redact(transportError(error, what: what, timeout: limit), secrets)
    }
  }

  private func request(method: String, path: String, query: [(String, String)]) throws -> HTTPClientRequest {
    var url = base + (path.hasPrefix("/") ? path : "/" + path)
    if !query.isEmpty {
      url += "?" + query.map { Self.escape($0.0) + "=" + Self.escape($0.1) }.joined(separator: "&")
    }
    var r = HTTPClientRequest(url: url)
    r.method = HTTPMethod(rawValue: method)
    r.headers.add(name: "Accept", value: "application/json")
    r.headers.add(name: "User-Agent", value: "kopilot-hub")
    if let t = try credentials.token() { r.headers.add(name: "Authorization", value: "Bearer " + t) }
    return r
  }

  private static let unreserved: CharacterSet = {
    var s = CharacterSet.alphanumerics.intersection(CharacterSet(charactersIn: Unicode.Scalar(0)..<Unicode.Scalar(128)))
    s.insert(charactersIn: "-._~")
    return s
  }()

  /// Percent-encodes a query key or value: everything but RFC 3986's
  /// unreserved characters (selectors carry `=`, `,`, `!`).
  static func escape(_ s: String) -> String { s.addingPercentEncoding(withAllowedCharacters: unreserved) ?? s }

  /// Runs `op` until `deadline`; past it the operation is cancelled (which
  /// closes its connection) and `HTTPClientError.deadlineExceeded` thrown.
  /// AsyncHTTPClient's own deadline covers the response head only; this one
  /// covers the body too.
  static func withDeadline<T: Sendable>(_ deadline: NIODeadline,
                                        _ op: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { g in
      g.addTask { try await op() }
      g.addTask {
        let ns = (deadline - .now()).nanoseconds
        if ns > 0 { try await Task.sleep(nanoseconds: UInt64(ns)) }
        return nil
      }
      defer { g.cancelAll() }
      guard let first = try await g.next(), let value = first else { throw HTTPClientError.deadlineExceeded }
      return value
    }
  }

  /// A failure to get an answer, as `KubeAPIError` code 0; API errors and
  /// cancellation pass through.
  func transportError(_ error: Error, what: String, timeout: TimeInterval?) -> Error {
    if error is KubeAPIError || error is KubeconfigError { return error }
    if error is CancellationError || Task.isCancelled { return CancellationError() }
    if let e = error as? HTTPClientError {
      if e == .deadlineExceeded || e == .readTimeout || e == .connectTimeout || e == .writeTimeout {
        let bound = timeout.map { " in \(Self.seconds($0))" } ?? ""
        return KubeAPIError(code: 0, reason: "Timeout", message: "\(what): no answer\(bound) from \(base)")
      }
      if e == .cancelled { return CancellationError() }
    }
    if error is NIOTooManyBytesError {
      return KubeAPIError(code: 0, reason: "Unavailable", message: "\(what): the response passed \(Self.maxBody >> 20) MiB")
    }
    return KubeAPIError(code: 0, reason: "Unavailable", message: "\(what): \(base): \(error)")
  }

  static func seconds(_ t: TimeInterval) -> String {
    t == t.rounded() ? "\(Int(t)) s" : String(format: "%.3g s", t)
  }

  /// The error with every credential this client knows, and `more`, blanked
  /// out of its message (an error body may echo what was sent).
  func redact(_ error: Error, _ more: [String]) -> Error {
    guard var e = error as? KubeAPIError else { return error }
    for s in credentials.secrets + more where s.count >= 4 {
      e.message = e.message.replacingOccurrences(of: s, with: "[redacted]")
      e.reason = e.reason.replacingOccurrences(of: s, with: "[redacted]")
    }
    return e
  }

  // MARK: Watch

  /// A watch (`watch=1` is added): events as they arrive. Finishes when the
  /// server ends the stream (timeoutSeconds); throws on a non-2xx answer or
  /// a broken connection. Cancelling the consuming task closes it.
  ///
  /// The response head must come within `requestTimeout`. There is no
  /// overall bound after that, but when the query has `timeoutSeconds` a
  /// watch silent for 30 s longer than that is given up as a `Timeout` (a
  /// server that vanished without a FIN).
  public func watch(path: String, query: [(String, String)] = []) -> AsyncThrowingStream<WatchEvent, Error> {
    let q = query.contains(where: { $0.0 == "watch" }) ? query : query + [("watch", "1")]
    let idle = q.last(where: { $0.0 == "timeoutSeconds" }).flatMap { TimeInterval($0.1) }.map { $0 + 30 }
    return AsyncThrowingStream { cont in
      let task = Task {
        do {
          try await self.runWatch(path: path, query: q, idle: idle) { cont.yield($0) }
          cont.finish()
        } catch {
          cont.finish(throwing: self.redact(self.transportError(error, what: "watch \(path)", timeout: nil), []))
        }
      }
      cont.onTermination = { _ in task.cancel() }
    }
  }

  private func runWatch(path: String, query: [(String, String)], idle: TimeInterval?,
                        yield: @escaping @Sendable (WatchEvent) -> Void) async throws {
    let req = try request(method: "GET", path: path, query: query)
    let headDeadline = NIODeadline.now() + .nanoseconds(Int64(requestTimeout * 1e9))
    let http = self.http, logger = self.logger
    let resp: HTTPClientResponse
    do {
      resp = try await http.execute(req, deadline: headDeadline, logger: logger)
    } catch {
      throw transportError(error, what: "watch \(path)", timeout: requestTimeout)
    }
    guard (200..<300).contains(resp.status.code) else {
      let body = try await Self.withDeadline(headDeadline + .seconds(5)) { try await resp.body.collect(upTo: Self.maxErrorBody) }
      throw KubeAPIError.fromResponse(status: Int(resp.status.code), reasonPhrase: resp.status.reasonPhrase,
                                      body: Data(body.readableBytesView))
    }
    let lastRead = NIOLockedValueBox(NIODeadline.now())
    try await withThrowingTaskGroup(of: Void.self) { g in
      g.addTask {
        var lines = LineSplitter(limit: Self.maxBody)
        for try await chunk in resp.body {
          lastRead.withLockedValue { $0 = .now() }
          for line in try lines.feed(chunk.readableBytesView) { yield(try Self.event(line, path: path)) }
        }
        if let line = lines.finish() { yield(try Self.event(line, path: path)) }
      }
      if let idle {
        // A watchdog: a watch silent past `idle` ends as a timeout.
        let limit = TimeAmount.nanoseconds(Int64(idle * 1e9))
        g.addTask {
          while true {
            let due = lastRead.withLockedValue { $0 } + limit
            if NIODeadline.now() >= due { throw HTTPClientError.readTimeout }
            try await Task.sleep(nanoseconds: UInt64(max(0, (due - .now()).nanoseconds)) + 1_000_000)
          }
        }
      }
      defer { g.cancelAll() }
      try await g.next()
    }
  }

  static func event(_ line: Data, path: String) throws -> WatchEvent {
    guard let e = WatchEventDecoder.decode(line) else {
      throw KubeAPIError(code: 0, reason: "Unavailable",
                         message: "watch \(path): a line of \(line.count) bytes is not a watch event")
    }
    return e
  }

  // MARK: Reviews

  private struct TokenReviewBody: Codable {
    struct Spec: Codable {
      var token: String?
      var audiences: [String]?
    }
    struct Status: Codable {
      var authenticated: Bool?
      var user: User?
      var error: String?
    }
    struct User: Codable {
      var username: String?
      var uid: String?
      var groups: [String]?
      var extra: [String: [String]]?
    }
    var apiVersion = "authentication.k8s.io/v1"
    var kind = "TokenReview"
    var spec: Spec?
    var status: Status?
  }

  public func tokenReview(token: String, audiences: [String]) async throws -> TokenReviewResult {
    let req = TokenReviewBody(spec: .init(token: token, audiences: audiences.isEmpty ? nil : audiences))
    let data = try await perform(method: "POST", path: "/apis/authentication.k8s.io/v1/tokenreviews", query: [],
                                 body: try JSONEncoder().encode(req), contentType: "application/json",
                                 timeout: nil, secrets: [token])
    let answer: TokenReviewBody
    do { answer = try JSONDecoder().decode(TokenReviewBody.self, from: data) } catch {
      throw KubeAPIError(code: 0, reason: "Unavailable", message: "TokenReview: the answer is not a TokenReview")
    }
    let s = answer.status
    let ok = s?.authenticated ?? false
    let user = s?.user.flatMap { u in
      u.username.map { ReviewedUser(username: $0, uid: u.uid ?? "", groups: u.groups ?? [], extra: u.extra ?? [:]) }
    }
    let why = s?.error.flatMap { $0.isEmpty ? nil : $0.replacingOccurrences(of: token, with: "[redacted]") }
    return TokenReviewResult(authenticated: ok && user != nil, user: ok ? user : nil, error: why)
  }

  private struct AccessReviewBody: Codable {
    struct Spec: Codable {
      var user: String
      var uid: String?
      var groups: [String]?
      var extra: [String: [String]]?
      var nonResourceAttributes: NonResource
    }
    struct NonResource: Codable {
      var path: String
      var verb: String
    }
    struct Status: Codable {
      var allowed: Bool?
      var denied: Bool?
      var reason: String?
      var evaluationError: String?
    }
    var apiVersion = "authorization.k8s.io/v1"
    var kind = "SubjectAccessReview"
    var spec: Spec?
    var status: Status?
  }

  public func subjectAccessReview(_ request: AccessReviewRequest) async throws -> AccessReviewResult {
    let u = request.user
    let spec = AccessReviewBody.Spec(user: u.username, uid: u.uid.isEmpty ? nil : u.uid,
                                     groups: u.groups.isEmpty ? nil : u.groups, extra: u.extra.isEmpty ? nil : u.extra,
                                     nonResourceAttributes: .init(path: request.path, verb: request.verb))
    let data = try await send(method: "POST", path: "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                              body: try JSONEncoder().encode(AccessReviewBody(spec: spec)))
    let answer: AccessReviewBody
    do { answer = try JSONDecoder().decode(AccessReviewBody.self, from: data) } catch {
      throw KubeAPIError(code: 0, reason: "Unavailable",
                         message: "SubjectAccessReview: the answer is not a SubjectAccessReview")
    }
    let s = answer.status
    return AccessReviewResult(allowed: s?.allowed ?? false, denied: s?.denied ?? false, reason: s?.reason ?? "",
                              evaluationError: s?.evaluationError ?? "")
  }

  /// Closes connections; no request may follow (one that does fails as
  /// `Unavailable`).
  public func shutdown() {
    _ = http.shutdown()
  }
}

/// The bearer token: a fixed one, or the contents of a file read again when
/// the copy in hand is older than `maxAge` (projected service-account tokens
/// are rewritten by the kubelet well before they expire).
final class Credentials: Sendable {
  private let fixed: String?
  private let file: String?
  private let maxAge: TimeInterval
  private let logger: Logger
  private struct State {
    var cached: String?
    var readAt: UInt64 = 0
    var failing = false
  }
  private let state = Mutex(State())

  init(token: String?, file: String?, maxAge: TimeInterval, logger: Logger) {
    fixed = token?.isEmpty == false ? token : nil
    self.file = file?.isEmpty == false ? file : nil
    self.maxAge = maxAge
    self.logger = logger
    // A kubeconfig's tokenFile comes already read: use that until it ages.
    if self.file != nil, let t = fixed {
      state.withLock { $0 = State(cached: t, readAt: DispatchTime.now().uptimeNanoseconds) }
    }
  }

  func token() throws -> String? {
    guard let file else { return fixed }
    // One reader at a time: a burst of requests reads the file once.
    return try state.withLock { s in
      let now = DispatchTime.now().uptimeNanoseconds
      if let c = s.cached, Double(now - s.readAt) / 1e9 < maxAge { return c }
      let text = (try? String(contentsOfFile: file, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
      if let t = text, !t.isEmpty {
        if s.failing { logger.info("kube: the token file \(file) is readable again") }
        s.failing = false
        s.cached = t
        s.readAt = now
        return t
      }
      // Unreadable now (mid-rotation, or gone): keep the last token, if any,
      // and try again at the next request.
      if !s.failing { logger.warning("kube: cannot read the token file \(file)\(s.cached == nil ? "" : "; using the last token read")") }
      s.failing = true
      if let c = s.cached { return c }
      throw KubeAPIError(code: 0, reason: "Unavailable", message: "cannot read the token file \(file)")
    }
  }

  /// The tokens in hand, to keep out of error text.
  var secrets: [String] {
    [fixed, state.withLock { $0.cached }].compactMap { $0 }
  }
}

extension KubeAPIError {
  private struct StatusBody: Decodable {
    var kind: String?
    var code: Int?
    var reason: String?
    var message: String?
  }

  /// The error a `Status` object describes (a watch's ERROR event, an error
  /// response), or nil when `data` is not one.
  public static func fromStatus(_ data: Data, httpStatus: Int? = nil) -> KubeAPIError? {
    guard let s = try? JSONDecoder().decode(StatusBody.self, from: data), s.kind == "Status" else { return nil }
    let code = s.code.flatMap { $0 > 0 ? $0 : nil } ?? httpStatus ?? 0
    let reason = s.reason.flatMap { $0.isEmpty ? nil : $0 } ?? reasonForCode(code) ?? "Unknown"
    return KubeAPIError(code: code, reason: reason, message: s.message ?? "")
  }

  /// A non-2xx answer: its Status, or one made from the status line (and
  /// the start of a short text body).
  static func fromResponse(status: Int, reasonPhrase: String, body: Data) -> KubeAPIError {
    if let e = fromStatus(body, httpStatus: status) { return e }
    let phrase = reasonPhrase.split(separator: " ").map { $0.prefix(1).uppercased() + $0.dropFirst().lowercased() }.joined()
    let reason = reasonForCode(status) ?? (phrase.isEmpty ? "Unknown" : phrase)
    var text = String(decoding: body.prefix(256), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    text = String(text.map { $0.isNewline ? " " : $0 })
    let message = "HTTP \(status) \(reasonPhrase)" + (text.isEmpty ? "" : ": " + text) + (body.count > 256 ? "..." : "")
    return KubeAPIError(code: status, reason: reason, message: message)
  }

  /// The reason the API server gives each status (apimachinery's
  /// `NewGenericServerResponse`), for answers that carry no Status.
  static func reasonForCode(_ code: Int) -> String? {
    switch code {
    case 400: "BadRequest"
    case 401: "Unauthorized"
    case 403: "Forbidden"
    case 404: "NotFound"
    case 405: "MethodNotAllowed"
    case 406: "NotAcceptable"
    case 409: "Conflict"
    case 410: "Gone"
    case 413: "RequestEntityTooLarge"
    case 415: "UnsupportedMediaType"
    case 422: "Invalid"
    case 429: "TooManyRequests"
    case 500: "InternalError"
    case 503: "ServiceUnavailable"
    case 504: "Timeout"
    default: nil
    }
  }
}
