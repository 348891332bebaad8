import Foundation
import KopilotBase
import KopilotCore

/// One agent session to the hub, with requests forwarded to the member's API
/// server. Reconnection is the owner's (kopilot-agent uses `KopilotBase.Backoff`).
public final class AgentSession: @unchecked Sendable {
  // Safe: the C handle is used under `handle`'s lock only; `onState` is set
  // before connect() and read on the loop thread.
  public struct Config: Sendable {
    /// wss://HOST:PORT/connect. A `token` in its query (the old way,
    /// wss://HOST/connect?token=T) is taken out of the URL and sent as
    /// `hubToken` instead.
    public var hubURL: URL
    /// The cluster's agent token, sent as `Authorization: Bearer` on the
    /// /connect upgrade, never in the URL (proxies and access logs keep
    /// URLs). Wins over a token in `hubURL`'s query.
    public var hubToken: String?
    public var hubCAFile: String?
    public var hubInsecure = false
    public var framed = true
    public var apiserver: URL       // https://HOST:PORT
    public var apiserverCAFile: String?
    /// The API server's CA, PEM in memory (from a kubeconfig), instead.
    public var apiserverCAPEM: String?
    /// A client certificate and key for the API server, PEM.
    public var clientCertPEM: String?
    public var clientKeyPEM: String?
    public var apiserverInsecure = false
    /// Keepalive ping interval and timeout (ms); 0 = 30 s.
    public var keepaliveMs: UInt64 = 0
    /// Idle keep-alive connections to the API server kept for reuse; 0 = 32.
    public var upstreamMaxIdle: UInt32 = 0
    /// How long an idle API server connection is kept (ms); 0 = 60 s.
    public var upstreamIdleMs: UInt64 = 0
    public init(hubURL: URL, apiserver: URL) {
      self.hubURL = hubURL
      self.apiserver = apiserver
    }
  }

  /// Calls on the handle are serialized with `close`, so a reconnect timer
  /// that fires while the agent is being closed finds no handle.
  private let handle = Mutex<CHandle?>(nil)

  /// The C agent, carried into the lock (a C pointer is not Sendable).
  private struct CHandle: @unchecked Sendable {
    // Safe: every call on it is made under `handle`'s lock.
    let pointer: OpaquePointer
  }
  /// Called on the loop thread: (up, status).
  public var onState: ((Bool, Int32) -> Void)?

  public init(loop: Loop, config: Config) throws {
    guard let hubHost = config.hubURL.host, let upHost = config.apiserver.host else {
      throw CoreError(code: Int32(KP_EINVAL.rawValue), context: "agent", detail: "the hub and API server URLs need a host")
    }
    let hubPort = config.hubURL.port ?? 443
    let upPort = config.apiserver.port ?? 443
    let (path, queryToken) = Self.connectTarget(config.hubURL)
    let hubToken = config.hubToken ?? queryToken
    var cbs = kp_agent_callbacks_t()
    cbs.on_state = { _, up, status, ud in
      let me = Unmanaged<AgentSession>.fromOpaque(ud!).takeUnretainedValue()
      me.onState?(up != 0, status)
    }
    var err = [CChar](repeating: 0, count: 512)
    var h: OpaquePointer?
    let rc: Int32 = withOptionalCString(hubToken) { token in
      withOptionalCString(config.hubCAFile) { hubCA in
      withOptionalCString(config.apiserverCAFile) { upCA in
      withOptionalCString(config.apiserverCAPEM) { upCAPEM in
      withOptionalCString(config.clientCertPEM) { certPEM in
      withOptionalCString(config.clientKeyPEM) { keyPEM in
        hubHost.withCString { hh in
          upHost.withCString { uh in
            path.withCString { p in
              var cfg = kp_agent_config_t()
              cfg.hub_host = hh
              cfg.hub_port = Int32(hubPort)
              cfg.hub_path = p
              cfg.hub_ca_file = hubCA
              cfg.hub_insecure = config.hubInsecure ? 1 : 0
              cfg.framed = config.framed ? 1 : 0
              cfg.upstream_host = uh
              cfg.upstream_port = Int32(upPort)
              cfg.upstream_ca_file = upCA
              cfg.upstream_ca_pem = upCAPEM
              cfg.upstream_cert_pem = certPEM
              cfg.upstream_key_pem = keyPEM
              cfg.upstream_insecure = config.apiserverInsecure ? 1 : 0
              cfg.keepalive_ms = config.keepaliveMs
              cfg.upstream_max_idle = config.upstreamMaxIdle
              cfg.upstream_idle_ms = config.upstreamIdleMs
              cfg.hub_token = token
              return kp_agent_new(&h, loop.handle, &cfg, &cbs, Unmanaged.passUnretained(self).toOpaque(), &err, err.count)
            }
          }
        }
      }
      }
      }
      }
      }
    }
    guard rc == 0, let h else {
      throw CoreError(code: rc, context: "creating the agent", detail: CoreError.message(err))
    }
    let made = CHandle(pointer: h)
    handle.withLock { $0 = made }
  }

  /// The request target the agent sends for `url` and the token its query
  /// held: every `token` parameter is taken out (the rest of the query
  /// stays, in order), the first one's value, percent-decoded, returned.
  public static func connectTarget(_ url: URL) -> (target: String, token: String?) {
    var path = url.path.isEmpty ? "/connect" : url.path
    var token: String?
    if let q = url.query {
      var kept: [Substring] = []
      for pair in q.split(separator: "&", omittingEmptySubsequences: false) {
        let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        if kv.first == "token" {
          if token == nil {
            let raw = kv.count > 1 ? String(kv[1]) : ""
            token = raw.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? raw
          }
        } else {
          kept.append(pair)
        }
      }
      if !kept.isEmpty { path += "?" + kept.joined(separator: "&") }
    }
    return (path, token.flatMap { $0.isEmpty ? nil : $0 })
  }

  private func withHandle(_ body: (OpaquePointer) -> Void) {
    handle.withLock { h in if let h { body(h.pointer) } }
  }

  public func connect() { withHandle { _ = kp_agent_connect($0) } }
  public func setToken(_ token: String) { withHandle { _ = kp_agent_set_token($0, token) } }
  /// Sends GoAway: no new requests; the session closes once the requests in
  /// flight finished or `graceMs` passed.
  public func shutdown(graceMs: UInt64 = 30_000) { withHandle { _ = kp_agent_shutdown($0, graceMs) } }
  public func close() {
    let h = handle.withLock { h in
      defer { h = nil }
      return h
    }
    if let h { kp_agent_free(h.pointer) }
  }
  deinit { close() }
}

func withOptionalCString<R>(_ s: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
  guard let s else { return body(nil) }
  return s.withCString { body($0) }
}
