import Foundation
import KopilotCore

/// The hub's data plane with a routing policy: agents connect with a token
/// that names their cluster; callers reach `/proxy/{namespace}_{name}/...`.
/// This is the first tunnel's policy (issue 2): authorization of callers
/// comes with the embedded registry.
public final class Hub: @unchecked Sendable {
  public struct Config {
    public var bindHost = "0.0.0.0"
    public var port = 8443
    public var certFile: String
    public var keyFile: String
    /// token -> cluster id (`namespace_name`)
    public var agentTokens: [String: String]
    /// Receive window per mux stream (bytes); 0 = the yamux default, 256 KiB.
    public var muxWindow: UInt32 = 0
    public init(certFile: String, keyFile: String, agentTokens: [String: String]) {
      self.certFile = certFile
      self.keyFile = keyFile
      self.agentTokens = agentTokens
    }
  }

  private let loop: Loop
  private var handle: OpaquePointer?
  private let tokens: [(token: String, cluster: String)]
  private let clusters: Set<String>
  public private(set) var port: Int = 0
  /// Called on the loop thread when an agent session comes or goes.
  public var onSession: ((String, Bool, Int32) -> Void)?
  /// Called on the loop thread when a proxied request ends.
  public var onProxied: ((ProxiedRequest) -> Void)?

  /// What the hub saw of one proxied request.
  public struct ProxiedRequest: Sendable {
    public var cluster: String
    /// The member's status; 0 when the tunnel broke before a response head.
    public var status: Int
    public var bytesUp: UInt64
    public var bytesDown: UInt64
    public var durationMicros: UInt64
  }

  /// A live agent session.
  public struct SessionInfo: Sendable, Equatable {
    public var cluster: String
    public var id: UInt64
    public var openStreams: UInt32
    public var framed: Bool
    public var peer: String
  }

  public init(loop: Loop, config: Config) throws {
    self.loop = loop
    self.tokens = config.agentTokens.map { ($0.key, $0.value) }
    self.clusters = Set(config.agentTokens.values)
    var cfg = kp_hub_config_t()
    var cbs = kp_hub_callbacks_t()
    cbs.on_request = { hub, req, head, peer, ud in
      let me = Unmanaged<Hub>.fromOpaque(ud!).takeUnretainedValue()
      me.route(req!, head!.pointee)
    }
    cbs.on_session = { _, cluster, _, up, status, ud in
      let me = Unmanaged<Hub>.fromOpaque(ud!).takeUnretainedValue()
      me.onSession?(String(cString: cluster!), up != 0, status)
    }
    cbs.on_proxied = { _, cluster, status, up, down, micros, ud in
      let me = Unmanaged<Hub>.fromOpaque(ud!).takeUnretainedValue()
      me.onProxied?(ProxiedRequest(cluster: String(cString: cluster!), status: Int(status), bytesUp: up,
                                   bytesDown: down, durationMicros: micros))
    }
    var err = [CChar](repeating: 0, count: 512)
    var h: OpaquePointer?
    let rc = config.bindHost.withCString { host in
      config.certFile.withCString { cert in
        config.keyFile.withCString { key in
          cfg.bind_host = host
          cfg.port = Int32(config.port)
          cfg.cert_file = cert
          cfg.key_file = key
          cfg.mux_window = config.muxWindow
          return kp_hub_new(&h, loop.handle, &cfg, &cbs, Unmanaged.passUnretained(self).toOpaque(), &err, err.count)
        }
      }
    }
    guard rc == 0, let h else {
      throw CoreError(code: rc, context: "starting the hub", detail: String(cString: err))
    }
    handle = h
    port = Int(kp_hub_port(h))
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
                                framed: i.framed != 0, peer: String(cString: i.peer)))
    }, Unmanaged.passUnretained(box).toOpaque())
    return box.list
  }

  /// Stops serving: closes the listener, every caller and every session.
  public func stop() {
    if let h = handle { kp_hub_free(h) }
    handle = nil
  }

  deinit { stop() }

  private func route(_ req: OpaquePointer, _ head: kp_http_head_t) {
    let method = String(decoding: UnsafeRawBufferPointer(start: head.method, count: head.method_len), as: UTF8.self)
    let target = String(decoding: UnsafeRawBufferPointer(start: head.target, count: head.target_len), as: UTF8.self)
    let path = target.split(separator: "?", maxSplits: 1).first.map(String.init) ?? target

    if path == "/connect" {
      let token = queryValue(target, "token") ?? ""
      guard method == "GET", let cluster = clusterFor(token: token) else {
        respondStatus(req, 401, "Unauthorized", "a valid agent token is required")
        return
      }
      cluster.withCString { kp_hub_request_accept_agent(req, $0) }
      return
    }
    if path == "/healthz" || path == "/readyz" {
      respond(req, 200, "text/plain", "ok")
      return
    }
    if path.hasPrefix("/proxy/") {
      guard let p = parseProxyTarget(target) else {
        respondStatus(req, 400, "BadRequest", "the path must be /proxy/{namespace}_{name}/...")
        return
      }
      guard clusters.contains(p.cluster) else {
        respondStatus(req, 404, "NotFound", "cluster \(p.cluster) is not registered")
        return
      }
      p.cluster.withCString { c in p.forwardTarget.withCString { t in kp_hub_request_proxy(req, c, t) } }
      return
    }
    respondStatus(req, 404, "NotFound", "the server could not find the requested resource")
  }

  private func clusterFor(token: String) -> String? {
    var found: String?
    // Every entry is compared, in constant time each, whatever matches.
    for entry in tokens where constantTimeEquals(entry.token, token) { found = entry.cluster }
    return token.isEmpty ? nil : found
  }

  private func respond(_ req: OpaquePointer, _ status: Int32, _ type: String, _ body: String) {
    var b = Array(body.utf8)
    type.withCString { t in kp_hub_request_respond(req, status, t, &b, b.count) }
  }

  private func respondStatus(_ req: OpaquePointer, _ code: Int32, _ reason: String, _ message: String) {
    respond(req, code, "application/json", kubernetesStatus(code: Int(code), reason: reason, message: message))
  }
}

/// A `Status` object as kube-apiserver writes errors.
public func kubernetesStatus(code: Int, reason: String, message: String) -> String {
  let obj: [String: Any] = [
    "kind": "Status", "apiVersion": "v1", "metadata": [String: Any](),
    "status": "Failure", "message": message, "reason": reason, "code": code,
  ]
  let data = (try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])) ?? Data()
  return String(decoding: data, as: UTF8.self) + "\n"
}

/// The first value of `name` in a target's query, percent-decoded.
public func queryValue(_ target: String, _ name: String) -> String? {
  guard let q = target.firstIndex(of: "?") else { return nil }
  for pair in target[target.index(after: q)...].split(separator: "&") {
    let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
    if kv.first.map(String.init) == name {
      let raw = kv.count > 1 ? String(kv[1]) : ""
      return raw.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? raw
    }
  }
  return nil
}
