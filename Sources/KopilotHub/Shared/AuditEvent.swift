import Foundation

/// One line of the hub's audit log: an `audit.k8s.io/v1` `Event` at level
/// `Metadata`, the format kube-apiserver writes with `--audit-log-path`, so
/// the tools that read a member's audit log read the hub's too.
public struct AuditEvent: Encodable, Sendable {
  public struct User: Encodable, Hashable, Sendable {
    public var username: String
    public var uid: String?
    public var groups: [String]?
    public var extra: [String: [String]]?

    public init(username: String, uid: String? = nil, groups: [String]? = nil, extra: [String: [String]]? = nil) {
      self.username = username
      self.uid = uid.flatMap { $0.isEmpty ? nil : $0 }
      self.groups = groups.flatMap { $0.isEmpty ? nil : $0 }
      self.extra = extra.flatMap { $0.isEmpty ? nil : $0 }
    }
  }

  /// metav1.Status as an audit event carries it.
  public struct ResponseStatus: Encodable, Hashable, Sendable {
    public var metadata: [String: String] = [:]
    public var status: String?
    public var message: String?
    public var reason: String?
    public var code: Int

    public init(code: Int, status: String? = nil, reason: String? = nil, message: String? = nil) {
      self.code = code
      self.status = status
      self.reason = reason
      self.message = message
    }
  }

  public var kind = "Event"
  public var apiVersion = "audit.k8s.io/v1"
  public var level = "Metadata"
  public var auditID: String
  /// RequestReceived, ResponseStarted or ResponseComplete.
  public var stage: String
  public var requestURI: String
  public var verb: String
  public var user: User
  public var impersonatedUser: User?
  public var sourceIPs: [String]
  public var userAgent: String?
  public var objectRef: RequestAttributes.ObjectRef?
  public var responseStatus: ResponseStatus?
  public var requestReceivedTimestamp: String
  public var stageTimestamp: String
  public var annotations: [String: String]?

  public init(auditID: String, stage: String, requestURI: String, verb: String, user: User,
              impersonatedUser: User? = nil, sourceIPs: [String], userAgent: String? = nil,
              objectRef: RequestAttributes.ObjectRef? = nil, responseStatus: ResponseStatus? = nil,
              requestReceivedTimestamp: String, stageTimestamp: String, annotations: [String: String]? = nil) {
    self.auditID = auditID
    self.stage = stage
    self.requestURI = requestURI
    self.verb = verb
    self.user = user
    self.impersonatedUser = impersonatedUser
    self.sourceIPs = sourceIPs
    self.userAgent = userAgent
    self.objectRef = objectRef
    self.responseStatus = responseStatus
    self.requestReceivedTimestamp = requestReceivedTimestamp
    self.stageTimestamp = stageTimestamp
    self.annotations = annotations
  }

  /// The event's JSON line (keys sorted, so lines are stable), newline
  /// included.
  public func line(_ encoder: JSONEncoder = AuditEvent.encoder()) -> Data {
    var d = (try? encoder.encode(self)) ?? Data()
    d.append(0x0a)
    return d
  }

  public static func encoder() -> JSONEncoder {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return e
  }

  /// About the bytes its line takes, without encoding it: what the audit
  /// log's queue is bounded by (the fixed part is the keys and the
  /// timestamps).
  var estimatedSize: Int {
    var n = 420 + auditID.utf8.count + requestURI.utf8.count + verb.utf8.count + (userAgent?.utf8.count ?? 0)
    for u in [user] + (impersonatedUser.map { [$0] } ?? []) {
      n += 40 + u.username.utf8.count + (u.uid?.utf8.count ?? 0)
      n += (u.groups ?? []).reduce(0) { $0 + $1.utf8.count + 3 }
      n += (u.extra ?? [:]).reduce(0) { $0 + $1.key.utf8.count + $1.value.reduce(0) { $0 + $1.utf8.count + 3 } + 6 }
    }
    n += sourceIPs.reduce(0) { $0 + $1.utf8.count + 3 }
    n += (annotations ?? [:]).reduce(0) { $0 + $1.key.utf8.count + $1.value.utf8.count + 6 }
    if let r = responseStatus { n += 60 + (r.message?.utf8.count ?? 0) + (r.reason?.utf8.count ?? 0) }
    if objectRef != nil { n += 160 }
    return n
  }

  /// RFC 3339 with microseconds in UTC, as kube-apiserver's MicroTime.
  public static func timestamp(_ date: Date) -> String { utc(date, digits: 6, timeSeparator: ":") + "Z" }

  /// `date` in UTC as YYYY-MM-DDThh<sep>mm<sep>ss.<digits of the second>,
  /// rounded down.
  static func utc(_ date: Date, digits: Int, timeSeparator sep: String) -> String {
    var scale: Int64 = 1
    for _ in 0..<digits { scale *= 10 }
    let units = Int64((date.timeIntervalSince1970 * Double(scale)).rounded(.down))
    var t = time_t(units / scale)
    var tm = tm()
    gmtime_r(&t, &tm)
    return String(format: "%04d-%02d-%02dT%02d\(sep)%02d\(sep)%02d.%0\(digits)lld", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, units % scale)
  }
}

/// What kube-apiserver's RequestInfo makes of a request: the verb an audit
/// event and RBAC name, and the object it is about. Derived from the path
/// below `/proxy/{namespace}_{name}` and the method, as the Kubernetes docs
/// ("Determine the Request Verb") describe it.
public enum RequestAttributes {
  public struct ObjectRef: Encodable, Hashable, Sendable {
    public var resource: String?
    public var namespace: String?
    public var name: String?
    public var apiGroup: String?
    public var apiVersion: String?
    public var subresource: String?

    public init(resource: String? = nil, namespace: String? = nil, name: String? = nil, apiGroup: String? = nil,
                apiVersion: String? = nil, subresource: String? = nil) {
      self.resource = resource
      self.namespace = namespace
      self.name = name
      self.apiGroup = apiGroup
      self.apiVersion = apiVersion
      self.subresource = subresource
    }
  }

  /// (verb, objectRef): objectRef is nil for a non-resource path
  /// (`/version`, `/api`, `/apis/apps`), whose verb is the method in
  /// lower case (HEAD as get).
  public static func of(method: String, path: String, query: String?) -> (verb: String, objectRef: ObjectRef?) {
    let m = method.uppercased()
    var parts = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
    var ref = ObjectRef()
    if parts.count >= 3, parts[0] == "api" {
      ref.apiGroup = ""
      ref.apiVersion = parts[1]
      parts.removeFirst(2)
    } else if parts.count >= 4, parts[0] == "apis" {
      ref.apiGroup = parts[1]
      ref.apiVersion = parts[2]
      parts.removeFirst(3)
    } else {
      return (m == "HEAD" ? "get" : m.lowercased(), nil)
    }
    // namespaces/{ns}/{resource}... (a namespaced resource); namespaces/{ns}
    // alone is the namespace object itself.
    if parts.count >= 3, parts[0] == "namespaces" {
      ref.namespace = parts[1]
      parts.removeFirst(2)
    }
    ref.resource = parts.first
    if parts.count >= 2 { ref.name = parts[1] }
    if parts.count >= 3 { ref.subresource = parts[2] }
    if ref.resource == "namespaces", let n = ref.name { ref.namespace = n }
    let collection = ref.name == nil
    let verb: String
    switch m {
    case "GET", "HEAD":
      if isTrue(queryValue(query, "watch")) { verb = "watch" } else { verb = collection ? "list" : "get" }
    case "POST": verb = "create"
    case "PUT": verb = "update"
    case "PATCH": verb = "patch"
    case "DELETE": verb = collection ? "deletecollection" : "delete"
    default: verb = m.lowercased()
    }
    return (verb, ref)
  }

  static func isTrue(_ v: String?) -> Bool { v == "1" || v == "true" }

  /// A value of the query, as the shared parser of request targets reads it.
  static func queryValue(_ query: String?, _ key: String) -> String? {
    query.flatMap { KopilotHub.queryValue("?" + $0, key) }
  }

  /// Requests that stream until one side ends them: watches, `logs -f`,
  /// exec, attach, port-forward (an upgrade). They get a ResponseStarted
  /// event as well as the ResponseComplete one.
  public static func isLongRunning(verb: String, objectRef: ObjectRef?, query: String?, upgrade: Bool) -> Bool {
    if upgrade || verb == "watch" { return true }
    return objectRef?.subresource == "log" && isTrue(queryValue(query, "follow"))
  }
}
