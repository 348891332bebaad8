import Foundation
import KopilotPKI

/// The four things a benchmark compares, in table order.
enum TargetKind: String, CaseIterable, Codable {
  case kopilot, baseline, nginx, direct

  var title: String {
    switch self {
    case .kopilot: return "kopilot"
    case .baseline: return "original design"
    case .nginx: return "nginx pair"
    case .direct: return "direct"
    }
  }
}

/// The programs a run needs, found or built before anything starts.
struct Tools {
  var hub: String, agent: String
  var wrk: String, curl: String, nginx: String
  var upstream: String, watchers: String, baseHub: String, baseAgent: String
  var wrkScript: String

  static func locate(repo: URL, work: URL, progress: Progress) throws -> Tools {
    let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
      .deletingLastPathComponent()
    func ours(_ name: String) throws -> String {
      let p = bin.appendingPathComponent(name).path
      guard FileManager.default.isExecutableFile(atPath: p) else {
        throw PerfError("\(name) is not beside kopilot-perf in \(bin.path): run `swift build -c release` first")
      }
      return p
    }
    func system(_ name: String, _ package: String) throws -> String {
      guard let p = which(name) else {
        throw PerfError("\(name) not found: apt-get install \(package) (Tests/setup-debian.sh installs it)")
      }
      return p
    }
    var t = Tools(hub: try ours("kopilot-hub"), agent: try ours("kopilot-agent"),
                  wrk: try system("wrk", "wrk"), curl: try system("curl", "curl"),
                  nginx: try system("nginx", "nginx-light"),
                  upstream: "", watchers: "", baseHub: "", baseAgent: "",
                  wrkScript: repo.appendingPathComponent("perf/wrk-report.lua").path)
    guard FileManager.default.fileExists(atPath: t.wrkScript) else {
      throw PerfError("\(t.wrkScript) is missing: run kopilot-perf from a checkout of the project")
    }
    // A bundle made by perf/make-bundle.sh (for a machine without Swift or
    // Go) carries the Go programs built already, in perf/bin.
    let prebuilt = repo.appendingPathComponent("perf/bin")
    let goNames = ["upstream", "watchers", "basehub", "baseagent"]
    if goNames.allSatisfy({ FileManager.default.isExecutableFile(atPath: prebuilt.appendingPathComponent($0).path) }) {
      let path = { (n: String) in prebuilt.appendingPathComponent(n).path }
      (t.upstream, t.watchers, t.baseHub, t.baseAgent) = (path("upstream"), path("watchers"), path("basehub"), path("baseagent"))
      return t
    }
    guard let go = which("go") else {
      throw PerfError("go not found: apt-get install golang-go golang-github-hashicorp-yamux-dev golang-github-gorilla-websocket-dev")
    }
    // The Go programs under perf/ build offline in GOPATH mode against
    // Debian's packages; the build cache makes a second run instant.
    let cache = FileManager.default.homeDirectoryForCurrentUser
      .appendingPathComponent(".cache/kopilot-perf/go-build").path
    let gopath = work.appendingPathComponent("go").path
    func build(_ pkg: String, _ name: String) throws -> String {
      progress.note("building \(pkg)")
      let out = work.appendingPathComponent(name).path
      let r = try runCommand(go, ["build", "-o", out, "./\(pkg)"], timeout: 600,
                             environment: ["GO111MODULE": "off", "GOFLAGS": "", "GOCACHE": cache,
                                           "GOPATH": "\(gopath):/usr/share/gocode"],
                             cwd: repo)
      guard r.status == 0 else { throw PerfError("go build ./\(pkg) failed:\n\(r.err)") }
      return out
    }
    t.upstream = try build("perf/upstream", "upstream")
    t.watchers = try build("perf/watchers", "watchers")
    t.baseHub = try build("perf/baseline/hub", "basehub")
    t.baseAgent = try build("perf/baseline/agent", "baseagent")
    return t
  }
}

/// One target, running: the URL prefix a caller uses, and the processes in
/// the hub's and the agent's places (for CPU and memory figures).
final class Target {
  let kind: TargetKind
  let base: String
  let hub: Child?
  let agent: Child?
  init(kind: TargetKind, base: String, hub: Child?, agent: Child?) {
    self.kind = kind
    self.base = base
    self.hub = hub
    self.agent = agent
  }
  /// nginx forks its workers: they count with the master. Looked up once
  /// (a scan of /proc), not at every sample taken while load runs.
  lazy var hubPids: [Int32] = hub.map { ProcStat.family($0.pid) } ?? []
  lazy var agentPids: [Int32] = agent.map { ProcStat.family($0.pid) } ?? []
  var hubCPU: Double { hubPids.reduce(0) { $0 + ProcStat.cpuSeconds($1) } }
  var agentCPU: Double { agentPids.reduce(0) { $0 + ProcStat.cpuSeconds($1) } }
  var hubRSS: Double { hubPids.reduce(0) { $0 + ProcStat.rssBytes($1) } }
}

/// The work folder and everything started in it: certificates, the
/// upstream, and the targets. Every child dies with `shutdown()`.
final class Bench {
  static let cluster = "default_perf"
  static let agentToken = "perf-agent-token-0123456789abcdef"
  static let callerToken = "perf-caller-token-0123456789abcdef"

  let work: URL
  let tools: Tools
  let caFile: String, certFile: String, keyFile: String, saTokenFile: String
  let kopilotWire: String
  private(set) var children: [Child] = []
  private(set) var upstreamPort = 0

  init(work: URL, tools: Tools, kopilotWire: String) throws {
    self.work = work
    self.tools = tools
    self.kopilotWire = kopilotWire
    let ca = try HubPKI.makeCA(commonName: "kopilot-perf-ca")
    let serving = try HubPKI.makeServing(hosts: ["localhost", "127.0.0.1"], ca: ca, commonName: "kopilot-perf")
    caFile = work.appendingPathComponent("ca.crt").path
    certFile = work.appendingPathComponent("serving.crt").path
    keyFile = work.appendingPathComponent("serving.key").path
    saTokenFile = work.appendingPathComponent("sa.token").path
    try ca.certificatePEM.write(toFile: caFile, atomically: true, encoding: .utf8)
    try serving.certificatePEM.write(toFile: certFile, atomically: true, encoding: .utf8)
    try serving.keyPEM.write(toFile: keyFile, atomically: true, encoding: .utf8)
    try "perf-service-account-token\n".write(toFile: saTokenFile, atomically: true, encoding: .utf8)
    // The hub's embedded registry: one cluster, one caller in the group that
    // the generated rbac.yaml lets use /proxy/*.
    let state = work.appendingPathComponent("kopilot-state")
    try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
    try """
      apiVersion: kopilot.smartx.com/v1alpha1
      kind: Cluster
      metadata: {namespace: default, name: perf}
      token: \(Bench.agentToken)

      """.write(to: state.appendingPathComponent("clusters.yaml"), atomically: true, encoding: .utf8)
    try "\(Bench.callerToken),perf,perf,\"kopilot:admins\"\n"
      .write(to: state.appendingPathComponent("tokens.csv"), atomically: true, encoding: .utf8)
  }

  func start(_ name: String, _ exe: String, _ args: [String]) throws -> Child {
    let c = try Child(name: name, executable: exe, arguments: args, in: work)
    children.append(c)
    return c
  }

  func shutdown() {
    for c in children.reversed() { c.stop() }
    children.removeAll()
  }

  func stop(_ c: Child?) {
    guard let c else { return }
    c.stop()
    children.removeAll { $0 === c }
  }

  var upstreamURL: String { "https://127.0.0.1:\(upstreamPort)" }

  func startUpstream() throws {
    let up = try start("upstream", tools.upstream, ["-bind", "127.0.0.1:0", "-tls-cert", certFile, "-tls-key", keyFile])
    upstreamPort = try up.listeningPort()
  }

  // MARK: targets

  func startTarget(_ kind: TargetKind, sessions: Int = 1, hubArgs: [String] = []) throws -> Target {
    switch kind {
    case .direct:
      return Target(kind: .direct, base: upstreamURL, hub: nil, agent: nil)
    case .kopilot:
      let hub = try startKopilotHub(name: "kopilot-hub", port: 0, extra: hubArgs)
      let port = try hub.listeningPort()
      let agent = try startKopilotAgent(name: "kopilot-agent", hubPort: port, sessions: sessions)
      try agent.waitFor("connected to the hub")
      try hub.waitFor("agent session up")
      return Target(kind: .kopilot, base: "https://127.0.0.1:\(port)/proxy/\(Bench.cluster)", hub: hub, agent: agent)
    case .baseline:
      let hub = try startBaseHub(name: "basehub", port: 0)
      let port = try hub.listeningPort()
      let agent = try startBaseAgent(name: "baseagent", hubPort: port, sessions: sessions)
      try hub.waitFor("agent session up")
      return Target(kind: .baseline, base: "https://127.0.0.1:\(port)/proxy/\(Bench.cluster)", hub: hub, agent: agent)
    case .nginx:
      return try startNginxPair()
    }
  }

  func startKopilotHub(name: String, port: Int, extra: [String] = []) throws -> Child {
    try start(name, tools.hub, [
      "serve", "--state-dir", work.appendingPathComponent("kopilot-state").path,
      "--bind", "127.0.0.1:\(port)", "--tls-cert", certFile, "--tls-key", keyFile,
    ] + extra)
  }

  func startKopilotAgent(name: String, hubPort: Int, sessions: Int) throws -> Child {
    try start(name, tools.agent, [
      "--connect", "wss://127.0.0.1:\(hubPort)/connect?token=\(Bench.agentToken)", "--hub-ca", caFile,
      "--apiserver", upstreamURL, "--ca-file", caFile, "--token-file", saTokenFile,
      "--sessions", "\(sessions)", "--wire", kopilotWire, "--grace-period", "1",
    ])
  }

  func startBaseHub(name: String, port: Int) throws -> Child {
    try start(name, tools.baseHub, [
      "-bind", "127.0.0.1:\(port)", "-tls-cert", certFile, "-tls-key", keyFile,
      "-agent-token", Bench.agentToken, "-cluster", Bench.cluster,
    ])
  }

  func startBaseAgent(name: String, hubPort: Int, sessions: Int) throws -> Child {
    try start(name, tools.baseAgent, [
      "-connect", "wss://127.0.0.1:\(hubPort)/connect?token=\(Bench.agentToken)", "-hub-ca", caFile,
      "-apiserver", upstreamURL, "-ca-file", caFile, "-token-file", saTokenFile,
      "-sessions", "\(sessions)", "-reconnect",
    ])
  }

  /// Two nginx reverse proxies chained in the hub's and the agent's places:
  /// each terminates TLS and re-encrypts to the next, with keep-alive
  /// upstream connections and large proxy buffers; the front strips
  /// /proxy/default_perf as the hub does and the back sets the service
  /// account's bearer token as the agent does. One worker each, as the hub
  /// and the agent each run one event loop.
  func startNginxPair() throws -> Target {
    let backPort = try freePort(), frontPort = try freePort()
    let sa = try String(contentsOfFile: saTokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    func conf(_ role: String, listen: Int, location: String, next: Int, extra: String) throws -> String {
      let dir = work.appendingPathComponent("nginx-\(role)")
      try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
      let path = dir.appendingPathComponent("nginx.conf").path
      try """
        daemon off;
        worker_processes 1;
        worker_rlimit_nofile 65536;
        pid \(dir.path)/nginx.pid;
        error_log \(dir.path)/error.log warn;
        events { worker_connections 16384; }
        http {
          access_log off;
          client_body_temp_path \(dir.path)/body;
          proxy_temp_path \(dir.path)/proxy;
          fastcgi_temp_path \(dir.path)/fastcgi;
          uwsgi_temp_path \(dir.path)/uwsgi;
          scgi_temp_path \(dir.path)/scgi;
          keepalive_requests 1000000;
          keepalive_timeout 300s;
          upstream next {
            server 127.0.0.1:\(next);
            keepalive 512;
            keepalive_requests 1000000;
            keepalive_timeout 300s;
          }
          server {
            listen 127.0.0.1:\(listen) ssl;
            ssl_certificate \(certFile);
            ssl_certificate_key \(keyFile);
            client_max_body_size 0;
            location \(location) {
              proxy_pass https://next/;
              proxy_http_version 1.1;
              proxy_set_header Connection "";
              proxy_set_header Host $host;
              \(extra)
              proxy_ssl_server_name on;
              proxy_ssl_name localhost;
              proxy_ssl_verify on;
              proxy_ssl_trusted_certificate \(caFile);
              proxy_ssl_session_reuse on;
              proxy_request_buffering off;
              proxy_buffer_size 64k;
              proxy_buffers 64 64k;
              proxy_busy_buffers_size 512k;
              proxy_max_temp_file_size 0;
              proxy_read_timeout 300s;
              proxy_send_timeout 300s;
            }
          }
        }

        """.write(toFile: path, atomically: true, encoding: .utf8)
      return path
    }
    // The upstream marks watch responses "X-Accel-Buffering: no"; the back
    // passes that on so that the front streams them unbuffered too.
    let backConf = try conf("back", listen: backPort, location: "/", next: upstreamPort,
                            extra: "proxy_set_header Authorization \"Bearer \(sa)\";\n      proxy_pass_header X-Accel-Buffering;")
    let frontConf = try conf("front", listen: frontPort, location: "/proxy/\(Bench.cluster)/", next: backPort,
                             extra: "")
    let back = try start("nginx-back", tools.nginx, ["-c", backConf, "-e", "stderr"])
    let front = try start("nginx-front", tools.nginx, ["-c", frontConf, "-e", "stderr"])
    for (c, port) in [(back, backPort), (front, frontPort)] { try waitListening(c, port: port) }
    return Target(kind: .nginx, base: "https://127.0.0.1:\(frontPort)/proxy/\(Bench.cluster)", hub: front, agent: back)
  }

  /// nginx says nothing when it is ready: dial until it answers.
  private func waitListening(_ c: Child, port: Int) throws {
    let deadline = Date().addingTimeInterval(20)
    while Date() < deadline {
      if !c.isRunning { throw PerfError("\(c.name) exited:\n\(c.output())") }
      if canConnect(port: port) { return }
      Thread.sleep(forTimeInterval: 0.05)
    }
    throw PerfError("\(c.name) is not listening on \(port) after 20 s:\n\(c.output())")
  }
}

/// A free TCP port from the kernel (for nginx, which cannot listen on 0).
func freePort() throws -> Int {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  guard fd >= 0 else { throw PerfError("socket: \(String(cString: strerror(errno)))") }
  defer { close(fd) }
  var addr = sockaddr_in()
  addr.sin_family = sa_family_t(AF_INET)
  addr.sin_addr.s_addr = inet_addr("127.0.0.1")
  addr.sin_port = 0
  var len = socklen_t(MemoryLayout<sockaddr_in>.size)
  let ok = withUnsafeMutablePointer(to: &addr) { p in
    p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
      bind(fd, sa, len) == 0 && getsockname(fd, sa, &len) == 0
    }
  }
  guard ok else { throw PerfError("bind: \(String(cString: strerror(errno)))") }
  return Int(UInt16(bigEndian: addr.sin_port))
}

func canConnect(port: Int) -> Bool {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  guard fd >= 0 else { return false }
  defer { close(fd) }
  var addr = sockaddr_in()
  addr.sin_family = sa_family_t(AF_INET)
  addr.sin_addr.s_addr = inet_addr("127.0.0.1")
  addr.sin_port = in_port_t(UInt16(port).bigEndian)
  return withUnsafePointer(to: &addr) { p in
    p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
      connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
    }
  }
}
