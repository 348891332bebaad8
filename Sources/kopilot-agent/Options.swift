import ArgumentParser
import Foundation
import KopilotAgent
import KopilotIO
import KopilotKubeConfig

/// The agent's flags; each names its environment variable where it has one.
struct AgentOptions: ParsableArguments {
  @Option(name: .customLong("connect"), help: "The hub's agent URL, wss://HUB/connect. Env: CONNECT_URL. The old form wss://HUB/connect?token=T still works: the token is taken out of the URL and sent in the Authorization header like the others.")
  var connectFlag: String?
  var connect: String? { connectFlag ?? ProcessInfo.processInfo.environment["CONNECT_URL"] }

  @Option(name: .customLong("hub-token-file"), help: "A file holding the cluster's agent token (what `kopilot-hub clusters add` printed), sent to the hub as Authorization: Bearer on /connect, never in the URL. Env: HUB_TOKEN_FILE, or the token itself in HUB_TOKEN.")
  var hubTokenFile: String?

  /// The agent token, from --hub-token-file, HUB_TOKEN_FILE, HUB_TOKEN or
  /// the --connect URL's query, in that order; the first two read now.
  func hubToken() throws -> String? {
    let env = ProcessInfo.processInfo.environment
    var given: String?
    if let f = hubTokenFile ?? env["HUB_TOKEN_FILE"].flatMap({ $0.isEmpty ? nil : $0 }) {
      guard let s = try? String(contentsOfFile: f, encoding: .utf8) else {
        throw ValidationError("cannot read the hub token file \(f)")
      }
      given = s.trimmingCharacters(in: .whitespacesAndNewlines)
    } else if let t = env["HUB_TOKEN"], !t.isEmpty {
      given = t.trimmingCharacters(in: .whitespacesAndNewlines)
    }
    let inURL = connect.flatMap(URL.init(string:)).flatMap { AgentSession.connectTarget($0).token }
    if let given, let inURL, given != inURL {
      throw ValidationError("two different agent tokens: one in the --connect URL, one in the hub token file or HUB_TOKEN; give one")
    }
    guard let token = given ?? inURL, !token.isEmpty else { return nil }
    // Sent in a header line: printable ASCII without spaces, as the hub's
    // clusters.yaml takes them.
    guard token.utf8.allSatisfy({ $0 >= 0x21 && $0 <= 0x7e }) else {
      throw ValidationError("the agent token holds a space or a character outside printable ASCII")
    }
    return token
  }

  @Option(help: "The member API server URL. Default: from KUBERNETES_SERVICE_HOST/PORT, else https://kubernetes.default.svc.")
  var apiserver: String?

  @Option(name: .customLong("token-file"), help: "Bearer token for the API server, re-read when it changes.")
  var tokenFile: String = "/var/run/secrets/kubernetes.io/serviceaccount/token"

  @Option(name: .customLong("ca-file"), help: "PEM CA bundle that signs the API server's certificate.")
  var caFile: String = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"

  @Option(help: "Run outside a cluster: the API server, its CA and the credentials (token, tokenFile or client certificate) come from this kubeconfig's current context. Env: KUBECONFIG.")
  var kubeconfig: String?

  @Option(help: "The kubeconfig context to use instead of its current-context.")
  var context: String?

  @Option(name: .customLong("hub-ca"), help: "PEM CA bundle for the hub (default: the system's trust store).")
  var hubCA: String?

  @Flag(name: .customLong("insecure-skip-tls-verify"), help: "Do not verify the hub's certificate (unsafe; explicit opt-in).")
  var insecure = false

  @Option(help: "Parallel sessions to the hub; the hub spreads requests over them. Two are plenty in a cluster; the benchmark (kopilot-perf) opens thousands from one process.")
  var sessions: Int = 2

  @Option(help: "Event loops (threads) the sessions are spread over, each with its own connections to the API server. Default: the CPUs this process may use (its affinity mask and cgroup CPU quota), at most one per session. Env: LOOPS.")
  var loops: Int?

  private var loopsWanted: Int? {
    loops ?? ProcessInfo.processInfo.environment["LOOPS"].flatMap { Int($0) }
  }

  @Option(help: "Seconds between keepalive pings to the hub; a ping unanswered that long ends the session.")
  var keepalive: Double = 30

  @Option(name: .customLong("grace-period"), help: "Seconds that requests in flight get to finish after SIGTERM.")
  var gracePeriod: Double = 30

  @Option(help: "How mux frames travel after the WebSocket upgrade: framed (kopilot.v2) or raw (the original agent's way).")
  var wire: String = "framed"

  @Option(name: .customLong("upstream-idle-conns"), help: "Idle keep-alive connections to the API server each session keeps for the next requests.")
  var upstreamIdleConns: Int = 256

  @Option(name: .customLong("upstream-idle-timeout"), help: "Seconds an idle connection to the API server is kept before it is closed.")
  var upstreamIdleTimeout: Double = 60

  func validate() throws {
    guard let c = connect, let u = URL(string: c), u.scheme == "wss" || u.scheme == "https" else {
      throw ValidationError("--connect wss://HUB/connect is required (and the token: --hub-token-file or HUB_TOKEN)")
    }
    guard try hubToken() != nil else {
      throw ValidationError("the cluster's agent token is missing: --hub-token-file FILE, HUB_TOKEN, or the old --connect wss://HUB/connect?token=T")
    }
    guard wire == "framed" || wire == "raw" else { throw ValidationError("--wire is framed or raw") }
    guard (1...10_000).contains(sessions) else { throw ValidationError("--sessions is 1 to 10000") }
    if let l = loopsWanted, !(1...1024).contains(l) { throw ValidationError("--loops is 1 to 1024") }
    guard (1...4096).contains(upstreamIdleConns) else { throw ValidationError("--upstream-idle-conns is 1 to 4096") }
    guard upstreamIdleTimeout > 0 else { throw ValidationError("--upstream-idle-timeout must be positive") }
  }

  /// The agent's configuration from these flags and the environment.
  func configuration() throws -> AgentService.Configuration {
    let env = ProcessInfo.processInfo.environment
    var session: AgentSession.Config
    let token: AgentService.APIServerToken
    if let kc = kubeconfig ?? env["KUBECONFIG"].flatMap({ $0.isEmpty ? nil : $0 }) {
      let t: KubeconfigTarget
      do { t = try Kubeconfig.load(path: kc, context: context) } catch { throw ValidationError("\(error)") }
      session = AgentSession.Config(hubURL: URL(string: connect!)!, apiserver: t.server)
      session.apiserverCAPEM = t.caPEM
      session.apiserverInsecure = t.insecureSkipTLSVerify
      session.clientCertPEM = t.clientCertPEM
      session.clientKeyPEM = t.clientKeyPEM
      if let f = t.tokenFile { token = .file(f) } else { token = t.token.map { .fixed($0) } ?? .none }
      logLine("using kubeconfig \(kc): API server \(t.server.absoluteString)")
    } else {
      let upstream: String
      if let a = apiserver {
        upstream = a
      } else if let h = env["KUBERNETES_SERVICE_HOST"] {
        let host = h.contains(":") ? "[\(h)]" : h
        upstream = "https://\(host):\(env["KUBERNETES_SERVICE_PORT"] ?? "443")"
      } else {
        upstream = "https://kubernetes.default.svc"
      }
      guard let upURL = URL(string: upstream), upURL.scheme == "https" else {
        throw ValidationError("--apiserver must be an https:// URL")
      }
      session = AgentSession.Config(hubURL: URL(string: connect!)!, apiserver: upURL)
      session.apiserverCAFile = FileManager.default.fileExists(atPath: caFile) ? caFile : nil
      token = .file(tokenFile)
    }
    session.hubToken = try hubToken()
    session.hubCAFile = hubCA
    session.hubInsecure = insecure
    session.framed = wire == "framed"
    session.keepaliveMs = UInt64(max(0.1, keepalive) * 1000)
    session.upstreamMaxIdle = UInt32(upstreamIdleConns)
    session.upstreamIdleMs = UInt64(max(0.001, upstreamIdleTimeout) * 1000)
    var c = AgentService.Configuration(session: session)
    c.apiserverToken = token
    c.sessions = sessions
    c.loops = loopsWanted ?? Loop.availableCPUs
    c.gracePeriod = gracePeriod
    return c
  }
}
