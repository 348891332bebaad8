import Foundation
import KopilotBase
import KopilotCore

/// A caller's request head, as the hub's router sees it.
public struct HubRequest: Sendable {
  public var method: String
  /// The request target as sent: path and query.
  public var target: String
  /// Header lines in order; names as sent.
  public var headers: [(name: String, value: String)]
  /// The caller's address, "ip:port".
  public var peer: String
  /// The request came in on the peer listener: another hub replica
  /// forwarded it (with the caller's Authorization, which is checked here
  /// again, and a `Kopilot-Forwarded-By` header naming it).
  public var viaPeer = false
  /// The core's ID for this request (never 0 from a hub; 0 in tests that
  /// make requests by hand): `Hub.ProxiedRequest.request` names it again
  /// when a proxied or forwarded request ends.
  public var id: UInt64 = 0

  public init(method: String, target: String, headers: [(name: String, value: String)], peer: String) {
    self.method = method
    self.target = target
    self.headers = headers
    self.peer = peer
  }

  /// The path without the query.
  public var path: String {
    guard let q = target.utf8.firstIndex(of: UInt8(ascii: "?")) else { return target }
    return String(target[..<q])
  }

  /// The first header of that name (ASCII case-insensitive, as HTTP
  /// field names are).
  public func header(_ name: String) -> String? {
    let want = name.utf8
    return headers.first { h in
      h.name.utf8.count == want.count
        && zip(h.name.utf8, want).allSatisfy { a, b in a == b || (a | 0x20 == b | 0x20 && (a | 0x20) >= 0x61 && (a | 0x20) <= 0x7a) }
    }?.value
  }
}

/// What to do with a request.
public enum HubAnswer: Sendable {
  /// Forward to a live session of the cluster, with this request target
  /// and `fields` added to the head the member gets: whole "Name: value\r\n"
  /// lines of the identity the hub authenticated (Impersonate-*) and its
  /// Audit-ID, nothing else (kp_http_check_hub_fields; a list it refuses
  /// answers 500).
  case proxy(cluster: String, target: String, fields: String = "")
  /// Answer here, with `fields` (lines as for `proxy`: the request's
  /// Audit-Id) in the response head.
  case respond(status: Int, contentType: String, body: String, fields: String = "")
  /// Upgrade to an agent session of the cluster.
  case acceptAgent(cluster: String)
  /// Forward to another hub replica's peer listener (mutual TLS), with the
  /// request target and the caller's Authorization unchanged (the peer
  /// authorizes it again) and `Kopilot-Forwarded-By: <hop>` added. Unreachable: 502; asked for a
  /// request that came from a peer (`viaPeer`): 508. `cluster` is the key
  /// `onProxied` reports it under (the cluster the request names).
  /// `fields`: lines as for `proxy` (the request's Audit-ID, which the
  /// peer adopts).
  case forward(cluster: String, host: String, port: Int, hop: String, fields: String = "")

  /// A Kubernetes `Status` error answer.
  public static func status(_ code: Int, _ reason: String, _ message: String) -> HubAnswer {
    .respond(status: code, contentType: "application/json",
             body: kubernetesStatus(code: code, reason: reason, message: message))
  }
}

/// The hub's data plane, with policy supplied by a router: the C core calls
/// `router` on its loop thread for every caller request head, and does what
/// the answer says. The router must be quick (it runs on the loop).
public final class Hub: @unchecked Sendable {
  // Safe: `handle`, `port`, `peerPort`, `onSession` and `onProxied` are set
  // while the hub is made, before its loops call back, and `handle` again
  // by stop(); the C hub serializes the rest on its loop threads, and late
  // answers meet stop() under `stopped`.
  public struct Config: Sendable {
    public var bindHost = "0.0.0.0"
    public var port = 8443
    public var certFile: String
    public var keyFile: String
    /// Receive window per mux stream (bytes); 0 = the yamux default, 256 KiB.
    public var muxWindow: UInt32 = 0
    /// Keepalive ping interval (ms), also how long a ping may go unanswered
    /// before the session is dropped; 0 = 30 s.
    public var keepaliveMs: UInt64 = 0
    /// How long a caller has to send each request head (ms); 0 = 30 s.
    public var headTimeoutMs: UInt64 = 0
    /// The process-wide memory budget (bytes) that stream windows grow
    /// from (kp_memory_budget_set); 0: none.
    public var memoryBudget: UInt64 = 0
    /// Peer forwarding between replicas, over mutual TLS: this certificate
    /// and key serve the peer listener and are the client certificate when
    /// forwarding; both sides' certificates must chain to `peerCAFile`.
    /// No certificate: no peer listener, and `.forward` answers 502.
    public var peerCertFile: String?
    public var peerKeyFile: String?
    public var peerCAFile: String?
    /// The name a peer's certificate must carry; nil = "kopilot-hub-peer".
    public var peerServerName: String?
    /// The peer listener's address; nil = `bindHost`.
    public var peerBindHost: String?
    /// -1: no peer listener; 0: any free port (see `Hub.peerPort`).
    public var peerPort = -1
    public init(certFile: String, keyFile: String) {
      self.certFile = certFile
      self.keyFile = keyFile
    }
  }

  private let loops: [Loop]
  private var handle: OpaquePointer?
  private let router: (HubRequest, HubResponder) -> HubAnswer?
  /// Whether stop() began. Held while a late answer is handed to the core,
  /// and by stop(): an answer never reaches a hub that is being freed.
  fileprivate let stopped = Mutex(false)
  public private(set) var port: Int = 0
  /// The peer listener's port; 0 when there is none.
  public private(set) var peerPort: Int = 0
  /// Called on the loop thread when an agent session comes or goes.
  public var onSession: ((String, Bool, Int32) -> Void)?
  /// Called on the loop thread when a proxied request ends.
  public var onProxied: ((ProxiedRequest) -> Void)?
  /// Called on the loop thread when a proxied request's final response
  /// head came (request ID, status), before it goes on to the caller.
  public var onResponse: ((UInt64, Int) -> Void)?

  /// What the hub saw of one proxied request.
  public struct ProxiedRequest: Sendable {
    /// The request's `HubRequest.id`.
    public var request: UInt64 = 0
    public var cluster: String
    /// The agent session that carried it (0: no session was live).
    public var session: UInt64
    /// The member's status; 0 when the tunnel broke before a response head.
    public var status: Int
    public var bytesUp: UInt64
    public var bytesDown: UInt64
    public var durationMicros: UInt64

    public init(request: UInt64 = 0, cluster: String, session: UInt64, status: Int, bytesUp: UInt64,
                bytesDown: UInt64, durationMicros: UInt64) {
      self.request = request
      self.cluster = cluster
      self.session = session
      self.status = status
      self.bytesUp = bytesUp
      self.bytesDown = bytesDown
      self.durationMicros = durationMicros
    }
  }

  /// A live agent session.
  public struct SessionInfo: Sendable, Equatable {
    public var cluster: String
    public var id: UInt64
    public var openStreams: UInt32
    public var framed: Bool
    public var peer: String
    /// The loop that holds it (0 ..< loopCount).
    public var loop: Int = 0
  }

  /// A router that always answers at once.
  public convenience init(loop: Loop, config: Config, router: @escaping (HubRequest) -> HubAnswer) throws {
    try self.init(loops: [loop], config: config, deferringRouter: { r, _ in router(r) })
  }

  /// A router that always answers at once, on several loops.
  public convenience init(loops: [Loop], config: Config, router: @escaping (HubRequest) -> HubAnswer) throws {
    try self.init(loops: loops, config: config, deferringRouter: { r, _ in router(r) })
  }

  public convenience init(loop: Loop, config: Config, deferringRouter router: @escaping (HubRequest, HubResponder) -> HubAnswer?) throws {
    try self.init(loops: [loop], config: config, deferringRouter: router)
  }

  /// `deferringRouter` answers at once, or returns nil and answers later,
  /// from any thread, through the responder (an authorization that has to
  /// ask the host cluster). The caller may hang up meanwhile; the answer is
  /// then dropped by the core.
  /// Runs on every loop in `loops`: each listens on the same port and owns
  /// the connections it accepts; the router is called on the loop of the
  /// connection, so from several threads at once.
  public init(loops: [Loop], config: Config, deferringRouter router: @escaping (HubRequest, HubResponder) -> HubAnswer?) throws {
    self.loops = loops
    self.router = router
    var cfg = kp_hub_config_t()
    var cbs = kp_hub_callbacks_t()
    cbs.on_request = { hub, req, head, peer, ud in
      let me = Unmanaged<Hub>.fromOpaque(ud!).takeUnretainedValue()
      me.handle(req!, head!.pointee, String(cString: peer!))
    }
    cbs.on_session = { _, cluster, _, up, status, ud in
      let me = Unmanaged<Hub>.fromOpaque(ud!).takeUnretainedValue()
      me.onSession?(String(cString: cluster!), up != 0, status)
    }
    cbs.on_proxied = { _, request, cluster, session, status, up, down, micros, ud in
      let me = Unmanaged<Hub>.fromOpaque(ud!).takeUnretainedValue()
      me.onProxied?(ProxiedRequest(request: request, cluster: String(cString: cluster!), session: session,
                                   status: Int(status), bytesUp: up, bytesDown: down, durationMicros: micros))
    }
    cbs.on_response = { _, request, status, ud in
      let me = Unmanaged<Hub>.fromOpaque(ud!).takeUnretainedValue()
      me.onResponse?(request, Int(status))
    }
    var err = [CChar](repeating: 0, count: 512)
    var h: OpaquePointer?
    // The peer settings are optional strings: C copies for the call.
    let peerStrings = [config.peerCertFile, config.peerKeyFile, config.peerCAFile, config.peerServerName,
                       config.peerBindHost].map { $0.flatMap { strdup($0) } }
    defer { peerStrings.forEach { free($0) } }
    cfg.peer_cert_file = UnsafePointer(peerStrings[0])
    cfg.peer_key_file = UnsafePointer(peerStrings[1])
    cfg.peer_ca_file = UnsafePointer(peerStrings[2])
    cfg.peer_server_name = UnsafePointer(peerStrings[3])
    cfg.peer_bind_host = UnsafePointer(peerStrings[4])
    cfg.peer_port = Int32(config.peerPort)
    let rc = config.bindHost.withCString { host in
      config.certFile.withCString { cert in
        config.keyFile.withCString { key in
          cfg.bind_host = host
          cfg.port = Int32(config.port)
          cfg.cert_file = cert
          cfg.key_file = key
          cfg.mux_window = config.muxWindow
          cfg.keepalive_ms = config.keepaliveMs
          cfg.head_timeout_ms = config.headTimeoutMs
          kp_memory_budget_set(config.memoryBudget)
          let handles: [OpaquePointer?] = loops.map { $0.handle }
          return handles.withUnsafeBufferPointer { l in
            kp_hub_new_on(&h, l.baseAddress, l.count, &cfg, &cbs, Unmanaged.passUnretained(self).toOpaque(), &err, err.count)
          }
        }
      }
    }
    guard rc == 0, let h else {
      throw CoreError(code: rc, context: "starting the hub", detail: CoreError.message(err))
    }
    handle = h
    port = Int(kp_hub_port(h))
    peerPort = Int(kp_hub_peer_port(h))
  }

  /// Every live agent session, from the loop's own view.
  public func sessions() -> [SessionInfo] {
    guard let h = handle else { return [] }
    final class Box { var list: [SessionInfo] = [] }
    let box = Box()
    _ = kp_hub_list_sessions(h, { info, arg in
      let b = Unmanaged<Box>.fromOpaque(arg!).takeUnretainedValue()
      let i = info!.pointee
      b.list.append(SessionInfo(cluster: String(cString: i.cluster), id: i.session, openStreams: i.streams,
                                framed: i.framed != 0, peer: String(cString: i.peer), loop: Int(i.loop)))
    }, Unmanaged.passUnretained(box).toOpaque())
    return box.list
  }

  /// The loops the hub runs on.
  public var loopCount: Int { loops.count }
  /// Connections each loop's caller listener accepted (callers and agents).
  public func accepted(loop: Int) -> UInt64 { handle.map { kp_hub_accepted($0, UInt32(loop)) } ?? 0 }
  /// Connections moved to another loop: requests whose cluster had no
  /// session on their own loop, and agents spread over the loops.
  public var moved: UInt64 { handle.map { kp_hub_moved($0) } ?? 0 }

  /// Stops serving: closes the listener, every caller and every session.
  public func stop() {
    stopped.withLock { $0 = true }
    if let h = handle { kp_hub_free(h) }
    handle = nil
  }

  deinit { stop() }

  /// Reads the certificate files again (renewed in place, as cert-manager
  /// does): new connections use them, open ones keep theirs. The peer files
  /// count only when the hub has a peer listener. Throws, changing nothing,
  /// when a file is missing or the pair does not match.
  public func reloadTLS(certFile: String, keyFile: String, peerCertFile: String? = nil, peerKeyFile: String? = nil,
                        peerCAFile: String? = nil) throws {
    try stopped.withLock { stopped in
      guard !stopped, let h = handle else { return }
      var err = [CChar](repeating: 0, count: 512)
      let peer = [peerCertFile, peerKeyFile, peerCAFile].map { $0.flatMap { strdup($0) } }
      defer { peer.forEach { free($0) } }
      let rc = kp_hub_reload_tls(h, certFile, keyFile, peer[0], peer[1], peer[2], &err, err.count)
      guard rc == 0 else { throw CoreError(code: rc, context: "reloading the certificates", detail: CoreError.message(err)) }
    }
  }

  /// Closes every session of a cluster (removed, or its token changed).
  public func dropCluster(_ id: String) {
    if let h = handle { _ = id.withCString { kp_hub_drop_cluster(h, $0) } }
  }

  private func handle(_ req: OpaquePointer, _ head: kp_http_head_t, _ peer: String) {
    func str(_ p: UnsafePointer<CChar>?, _ n: Int) -> String {
      String(decoding: UnsafeRawBufferPointer(start: p, count: n), as: UTF8.self)
    }
    var headers: [(name: String, value: String)] = []
    headers.reserveCapacity(head.num_headers)
    withUnsafeBytes(of: head.headers) { raw in
      let hs = raw.bindMemory(to: kp_http_header_t.self)
      for i in 0..<head.num_headers {
        headers.append((str(hs[i].name, hs[i].name_len), str(hs[i].value, hs[i].value_len)))
      }
    }
    var request = HubRequest(method: str(head.method, head.method_len), target: str(head.target, head.target_len),
                             headers: headers, peer: peer)
    request.viaPeer = kp_hub_request_via_peer(req) != 0
    request.id = kp_hub_request_id(req)
    let responder = HubResponder(hub: self, request: req)
    guard let answer = router(request, responder) else { return }
    responder.claim()
    Hub.deliver(answer, to: req)
  }

  /// Hands an answer to the core (any thread: the core posts it to the loop).
  /// Returns the core's code: nonzero only for an answer from another
  /// thread that could not be carried (the core then fails the request
  /// itself and closes the caller's connection; nothing is left waiting).
  @discardableResult
  fileprivate static func deliver(_ answer: HubAnswer, to req: OpaquePointer) -> Int32 {
    switch answer {
    case .proxy(let cluster, let target, let fields):
      let rc = cluster.withCString { c in
        target.withCString { t in fields.withCString { kp_hub_request_proxy_as(req, c, t, $0) } }
      }
      // Refused fields: answered nothing. A router bug, never a caller's
      // doing (the router checks what it puts there): a 500, and the
      // request never leaves the hub.
      if rc == Int32(KP_EINVAL.rawValue) {
        return deliver(.status(500, "InternalError", "the hub could not carry the caller's identity to the member"), to: req)
      }
      return rc
    case .acceptAgent(let cluster):
      return cluster.withCString { kp_hub_request_accept_agent(req, $0) }
    case .respond(let status, let type, var body, let fields):
      let rc = body.withUTF8 { b in
        type.withCString { t in fields.withCString { kp_hub_request_respond_as(req, Int32(status), t, b.baseAddress, b.count, $0) } }
      }
      if rc == Int32(KP_EINVAL.rawValue) { return deliver(.respond(status: status, contentType: type, body: body), to: req) }
      return rc
    case .forward(let cluster, let host, let port, let hop, let fields):
      let rc = cluster.withCString { c in
        host.withCString { h in
          hop.withCString { o in fields.withCString { kp_hub_request_forward_as(req, c, h, Int32(port), o, $0) } }
        }
      }
      if rc == Int32(KP_EINVAL.rawValue) { return deliver(.forward(cluster: cluster, host: host, port: port, hop: hop), to: req) }
      return rc
    }
  }
}

/// Answers one request later, from any thread, exactly once. A responder
/// dropped unanswered answers 500, so no caller waits for ever on a bug.
public final class HubResponder: @unchecked Sendable {
  // Safe: `request` is the core's handle for this request, which stays
  // valid until it is answered once (`answered`), and `hub` is weak and
  // only read.
  private weak var hub: Hub?
  private let request: OpaquePointer
  private let answered = Mutex(false)

  fileprivate init(hub: Hub, request: OpaquePointer) {
    self.hub = hub
    self.request = request
  }

  /// Marks the request answered by the router's return value.
  fileprivate func claim() {
    answered.withLock { $0 = true }
  }

  /// The answer. A second call is ignored; so is an answer after the hub
  /// stopped (the core closed the caller's connection already).
  public func answer(_ a: HubAnswer) {
    let first = answered.withLock { answered in
      defer { answered = true }
      return !answered
    }
    guard first, let hub else { return }
    hub.stopped.withLock { stopped in
      if !stopped { Hub.deliver(a, to: request) }
    }
  }

  deinit {
    if !answered.withLock({ $0 }) { answer(.status(500, "InternalError", "the hub dropped this request without an answer")) }
  }
}

/// A `Status` object as kube-apiserver writes errors: the core's builder
/// (`kp_status_json`), so the hub's answers look the same whichever side
/// wrote them.
public func kubernetesStatus(code: Int, reason: String, message: String) -> String {
  var len = 0
  guard let p = reason.withCString({ r in message.withCString { kp_status_json(Int32(code), r, $0, &len) } }) else {
    // Out of memory: still a Status, with no message.
    return "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"code\":\(code)}\n"
  }
  defer { free(p) }
  return String(cString: p)
}

/// The memory this process may use, as the kernel will enforce it: the
/// cgroup's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`) when one is
/// set, else the machine's physical memory.
public func memoryLimit() -> UInt64 {
  let physical = ProcessInfo.processInfo.physicalMemory
  for path in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"] {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8),
          let limit = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines))
    else { continue } // "max", absent, unreadable
    return min(limit, physical)
  }
  return physical
}
