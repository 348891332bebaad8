import Foundation
import KopilotBase
import KopilotIO

/// The audit trail of caller requests to `/proxy/`: one `ResponseComplete`
/// event per request, allowed or not, in the hub's audit log. The router
/// tells it how each request was answered; a request the core proxied or
/// forwarded is written when the core reports its end (`ended`), with the
/// member's status, the bytes each way and the session that carried it.
/// A long-running one (a watch, `logs -f`, exec, attach, port-forward)
/// also gets a `ResponseStarted` event when its response head comes
/// (`started`), as kube-apiserver writes for its long-running requests.
public final class HubAudit: Sendable {
  public let log: AuditLog
  /// Proxied and forwarded requests whose end the core has yet to report,
  /// by request ID. The core reports every one exactly once (on_proxied),
  /// so this holds only requests in flight.
  private let pending = Mutex<[UInt64: (event: AuditEvent, longRunning: Bool)]>([:])
  private let clock: @Sendable () -> Date

  public init(log: AuditLog, clock: @escaping @Sendable () -> Date = { Date() }) {
    self.log = log
    self.clock = clock
  }

  /// What the router learns of one request as it decides: filled from the
  /// authentication and authorization callbacks, read when it answers.
  public final class Note: Sendable {
    struct Info {
      var user: UserInfo?
      var member: MemberIdentity?
      var cluster: String?
      var decision: String?
      var reason: String?
    }
    let info = Mutex(Info())
    public init() {}
    func set(_ f: (inout Info) -> Void) { info.withLock { f(&$0) } }
  }

  /// Now, as the audit log writes times.
  func now() -> Date { clock() }

  /// The router answered `r` with `answer`: a local answer is written now;
  /// a proxy or a forward when it ends.
  func answered(_ r: HubRequest, received: Date, auditID: String, note: Note, answer: HubAnswer) {
    let info = note.info.withLock { $0 }
    let path = r.path
    // The verb and object are the member's view of the request: the path
    // below /proxy/{namespace}_{name}.
    let inner = parseProxyTarget(r.target)?.forwardTarget ?? path
    let q = inner.firstIndex(of: "?")
    let query = q.map { String(inner[inner.index(after: $0)...]) }
    let attrs = RequestAttributes.of(method: r.method, path: q.map { String(inner[..<$0]) } ?? inner, query: query)
    var annotations: [String: String] = [:]
    if let c = info.cluster { annotations["kopilot.smartx.com/cluster"] = c.replacingOccurrences(of: "_", with: "/") }
    if let d = info.decision { annotations["authorization.k8s.io/decision"] = d }
    if let why = info.reason, !why.isEmpty { annotations["authorization.k8s.io/reason"] = why }
    var e = AuditEvent(
      auditID: auditID, stage: "ResponseComplete", requestURI: r.target, verb: attrs.verb,
      user: info.user.map { AuditEvent.User(username: $0.name, uid: $0.uid, groups: $0.groups, extra: $0.extra) }
        ?? AuditEvent.User(username: ""),
      impersonatedUser: info.member.map { AuditEvent.User(username: $0.user, uid: $0.uid, groups: $0.groups, extra: $0.extra) },
      sourceIPs: Self.sourceIPs(r), userAgent: r.header("User-Agent"), objectRef: attrs.objectRef,
      requestReceivedTimestamp: AuditEvent.timestamp(received), stageTimestamp: "",
      annotations: annotations.isEmpty ? nil : annotations)
    switch answer {
    case .proxy, .forward:
      // An upgrade as the router authorized it (RBACVerb.isUpgrade).
      let long = RequestAttributes.isLongRunning(verb: attrs.verb, objectRef: attrs.objectRef, query: query,
                                                 upgrade: RBACVerb.isUpgrade(r.headers))
      pending.withLock { $0[r.id] = (e, long) }
    case .respond(let status, _, let body, _):
      e.responseStatus = Self.status(code: status, body: body)
      e.stageTimestamp = AuditEvent.timestamp(now())
      log.record(e)
    case .acceptAgent:
      break
    }
  }

  /// The response head of a proxied or forwarded request came: a
  /// long-running one gets its ResponseStarted event.
  public func started(request: UInt64, status: Int) {
    guard var e = pending.withLock({ p -> AuditEvent? in
      guard let entry = p[request], entry.longRunning else { return nil }
      return entry.event
    }) else { return }
    e.stage = "ResponseStarted"
    e.responseStatus = AuditEvent.ResponseStatus(code: status)
    e.stageTimestamp = AuditEvent.timestamp(now())
    log.record(e)
  }

  /// The core reports the end of a proxied or forwarded request.
  public func ended(_ p: Hub.ProxiedRequest) {
    guard var e = pending.withLock({ $0.removeValue(forKey: p.request)?.event }) else { return }
    // 0: no response head came back (the tunnel or the peer broke); the
    // caller got the core's 502 or a closed connection.
    e.responseStatus = p.status > 0
      ? AuditEvent.ResponseStatus(code: p.status)
      : AuditEvent.ResponseStatus(code: 502, status: "Failure", reason: "BadGateway",
                                  message: "no response came back from the member")
    e.stageTimestamp = AuditEvent.timestamp(now())
    var a = e.annotations ?? [:]
    a["kopilot.smartx.com/session"] = String(p.session)
    a["kopilot.smartx.com/bytes-up"] = String(p.bytesUp)
    a["kopilot.smartx.com/bytes-down"] = String(p.bytesDown)
    a["kopilot.smartx.com/duration-us"] = String(p.durationMicros)
    e.annotations = a
    log.record(e)
  }

  /// Requests waiting for their end (tests and metrics).
  public var inFlight: Int { pending.withLock { $0.count } }

  /// The caller's address, after the addresses a forwarding replica named
  /// (X-Forwarded-For) for a request that came from one.
  static func sourceIPs(_ r: HubRequest) -> [String] {
    var ips: [String] = []
    if r.viaPeer, let xff = r.header("X-Forwarded-For") {
      ips += xff.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }
    let peer = r.peer
    if let colon = peer.lastIndex(of: ":") {
      ips.append(String(peer[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]")))
    } else {
      ips.append(peer)
    }
    return ips
  }

  /// The responseStatus of a local answer: its code, and the reason and
  /// message of the Status body it carries.
  static func status(code: Int, body: String) -> AuditEvent.ResponseStatus {
    var s = AuditEvent.ResponseStatus(code: code)
    if code >= 400, let o = (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] {
      s.status = o["status"] as? String
      s.reason = o["reason"] as? String
      s.message = o["message"] as? String
    }
    return s
  }
}
