import ArgumentParser
import Foundation
import KopilotHub
import KopilotKubeConfig
import Logging

/// Flags shared by every subcommand that touches the state folder. Each one
/// can also come from the environment variable named in its help.
struct StateOptions: ParsableArguments {
  @Option(name: .customLong("state-dir"), help: "The state folder, made 0700 with its secret files (keys, clusters.yaml, tokens.csv) 0600; the hub will not start in a folder group or others can write, and warns about secret files they can read. Env: STATE_DIR.")
  var stateDirFlag: String?

  @Option(name: .customLong("clusters-file"), help: "Cluster objects (default: STATE/clusters.yaml). Env: CLUSTERS_FILE.")
  var clustersFile: String?

  @Option(name: .customLong("tokens-file"), help: "Callers, kube-apiserver --token-auth-file format (default: STATE/tokens.csv). Env: TOKENS_FILE.")
  var tokensFile: String?

  @Option(name: .customLong("rbac-file"), help: "ClusterRoles and ClusterRoleBindings (default: STATE/rbac.yaml). Env: RBAC_FILE.")
  var rbacFile: String?

  @Option(name: .customLong("tls-cert"), help: "PEM serving certificate (default: STATE/hub.crt, made on first start). Env: TLS_CERT.")
  var tlsCert: String?

  @Option(name: .customLong("tls-key"), help: "PEM private key (default: STATE/hub.key). Env: TLS_KEY.")
  var tlsKey: String?

  func env(_ name: String) -> String? {
    let v = ProcessInfo.processInfo.environment[name]
    return v?.isEmpty == false ? v : nil
  }

  var paths: StatePaths {
    var p = StatePaths(directory: stateDirFlag ?? env("STATE_DIR") ?? StatePaths.defaultDirectory)
    if let f = clustersFile ?? env("CLUSTERS_FILE") { p.clusters = f }
    if let f = tokensFile ?? env("TOKENS_FILE") { p.tokens = f }
    if let f = rbacFile ?? env("RBAC_FILE") { p.rbac = f }
    if let f = tlsCert ?? env("TLS_CERT") { p.hubCert = f }
    if let f = tlsKey ?? env("TLS_KEY") { p.hubKey = f }
    return p
  }
}

/// The flags of `serve`, and the configuration of each mode built from them
/// and from the environment (each flag's help names its variable).
struct ServeOptions: ParsableArguments {
  @OptionGroup var state: StateOptions

  @Option(help: "embedded or kubernetes (default: kubernetes in a pod or with --kubeconfig, embedded otherwise). Env: KOPILOT_MODE.")
  var mode: String?

  @Option(help: "Address to listen on, HOST:PORT (port 0 picks a free one). Env: BIND_ADDR.")
  var bind: String?

  @Option(name: .customLong("public-addr"), help: "host[:port] that agent manifests point agents at (Kubernetes default: public_addr of ConfigMap kopilot-hub, read live). Env: PUBLIC_ADDR.")
  var publicAddr: String?

  @Option(name: .customLong("agent-image"), help: "Container image in agent manifests. Env: AGENT_IMAGE.")
  var agentImage: String?

  @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical. Env: LOG_LEVEL.")
  var logLevel: String?

  @Flag(name: .customLong("access-log"), help: "Log one line per proxied request: cluster, status, bytes each way, duration.")
  var accessLog = false

  @Option(name: .customLong("mux-window"), help: "Receive window per tunnel stream, in KiB (256 to 65536; default 4096). Each stream may buffer up to this much; larger windows carry bulk transfers faster over long round trips. Env: MUX_WINDOW_KIB.")
  var muxWindowKiB: Int?

  @Option(name: .customLong("memory-budget"), help: "MiB that tunnel streams' receive windows may grow into, all streams together. Streams start with 256 KiB and earn up to --mux-window while their readers keep up; once the budget is drawn, windows stop growing (transfers go on at the window they have). Default: a quarter of the container's memory limit (cgroup), or of the machine's memory. Env: MEMORY_BUDGET_MIB.")
  var memoryBudgetMiB: Int?

  @Option(help: "Seconds between keepalive pings to each agent; a ping unanswered that long drops the session. Env: KEEPALIVE_SECONDS.")
  var keepalive: Double?

  @Option(name: .customLong("header-timeout"), help: "Seconds a caller has to send each complete request head (bounds slowloris callers and idle keep-alive connections). Env: HEADER_TIMEOUT_SECONDS.")
  var headerTimeout: Double?

  @Option(help: "Event loops (threads) that serve callers and agents, each with its own connections and sessions, all on one port (SO_REUSEPORT). Default: the CPUs this process may use (its affinity mask, capped by its cgroup CPU quota: limits.cpu 4 gives 4). Env: LOOPS.")
  var loops: Int?

  @Option(name: .customLong("tls-reload-interval"), help: "Seconds between checks of the certificate files; changed files (a renewal) are loaded for new connections.")
  var tlsReloadInterval: Double = 30

  @Option(help: "How member clusters see callers, for Clusters without an `identity` field: impersonate (Kubernetes impersonation as <prefix><user> in groups --callers-group and <prefix><group>; host system: groups never pass), passthrough (the caller's own names, for a fleet with one identity provider; system: users refused, system: groups dropped) or agent (every caller acts as the agent's ServiceAccount, as the original kopilot does). Env: IDENTITY.")
  var identity: String?

  @Option(name: .customLong("identity-prefix"), help: "What impersonate puts before every user and group name. Env: IDENTITY_PREFIX.")
  var identityPrefix: String?

  @Option(name: .customLong("callers-group"), help: "The group every tunnel caller has on a member (impersonate and passthrough), for one member binding that covers them all. Env: CALLERS_GROUP.")
  var callersGroup: String?

  @Option(name: .customLong("passthrough-system-group"), help: "A system: group that passthrough carries anyway (repeat the flag for more; none by default).")
  var passthroughSystemGroups: [String] = []

  @Option(name: .customLong("audit-log-path"), help: "Write an audit.k8s.io/v1 Event (level Metadata) per /proxy/ request to this file, or - for standard output: caller, the identity the member saw, verb, object, status, bytes, and the audit ID the member logs too. Off by default. Env: AUDIT_LOG_PATH.")
  var auditLogPath: String?

  @Option(name: .customLong("audit-log-maxsize"), help: "MB the audit log may reach before it is rotated (0: never), as kube-apiserver's flag.")
  var auditLogMaxSize = 0

  @Option(name: .customLong("audit-log-maxbackup"), help: "Rotated audit logs kept (0: all).")
  var auditLogMaxBackup = 0

  @Option(name: .customLong("audit-log-maxage"), help: "Days a rotated audit log is kept (0: no limit).")
  var auditLogMaxAge = 0

  @OptionGroup(title: "Kubernetes mode") var kube: KubeOptions

  func validate() throws {
    if let l = loops ?? Int(state.env("LOOPS") ?? ""), !(1...1024).contains(l) { throw ValidationError("--loops is 1 to 1024") }
    if let h = headerTimeout, !(0.1...3600).contains(h) { throw ValidationError("--header-timeout is 0.1 to 3600 seconds") }
    if let k = keepalive, !(0.1...3600).contains(k) { throw ValidationError("--keepalive is 0.1 to 3600 seconds") }
    if let w = muxWindowKiB, !(256...65536).contains(w) { throw ValidationError("--mux-window is 256 to 65536 KiB") }
    if let b = memoryBudgetMiB ?? Int(state.env("MEMORY_BUDGET_MIB") ?? ""), !(1...(1 << 30)).contains(b) {
      throw ValidationError("--memory-budget is 1 MiB or more")
    }
    if let l = logLevel ?? state.env("LOG_LEVEL"), Logger.Level(rawValue: l) == nil {
      throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
    }
    if let m = mode ?? state.env("KOPILOT_MODE"), HubMode(rawValue: m) == nil {
      throw ValidationError("--mode must be embedded or kubernetes, not \"\(m)\"")
    }
    _ = try identityMapping
    for (flag, v) in [("maxsize", auditLogMaxSize), ("maxbackup", auditLogMaxBackup), ("maxage", auditLogMaxAge)] where v < 0 {
      throw ValidationError("--audit-log-\(flag) is 0 or more")
    }
    if let p = auditLogPath ?? state.env("AUDIT_LOG_PATH"), p.isEmpty {
      throw ValidationError("--audit-log-path is a file or -")
    }
    if !(0.1...86400).contains(tlsReloadInterval) { throw ValidationError("--tls-reload-interval is 0.1 to 86400 seconds") }
    try kube.validate()
  }


  var level: Logger.Level { Logger.Level(rawValue: logLevel ?? state.env("LOG_LEVEL") ?? "info") ?? .info }

  func chooseMode() throws -> HubMode.Choice {
    do {
      return try HubMode.choose(flag: mode ?? state.env("KOPILOT_MODE"), kubeconfig: kube.kubeconfig,
                                environment: ProcessInfo.processInfo.environment)
    } catch let e as HubError {
      throw ValidationError(e.message)
    }
  }

  var core: HubCoreSettings {
    get throws {
      var c = HubCoreSettings()
      (c.bindHost, c.port) = try splitHostPort(bind ?? state.env("BIND_ADDR") ?? "0.0.0.0:8443")
      if let n = loops ?? Int(state.env("LOOPS") ?? "") { c.loops = n }
      c.muxWindow = UInt32((muxWindowKiB ?? Int(state.env("MUX_WINDOW_KIB") ?? "") ?? 4096) * 1024)
      c.keepaliveMs = UInt64((keepalive ?? Double(state.env("KEEPALIVE_SECONDS") ?? "") ?? 30) * 1000)
      c.headTimeoutMs = UInt64((headerTimeout ?? Double(state.env("HEADER_TIMEOUT_SECONDS") ?? "") ?? 30) * 1000)
      if let mib = memoryBudgetMiB ?? Int(state.env("MEMORY_BUDGET_MIB") ?? "") { c.memoryBudget = UInt64(mib) << 20 }
      c.accessLog = accessLog
      c.tlsReloadInterval = tlsReloadInterval
      c.identity = try identityMapping
      c.auditLogPath = auditLogPath ?? state.env("AUDIT_LOG_PATH")
      c.auditRotation.maxSizeMB = auditLogMaxSize
      c.auditRotation.maxBackups = auditLogMaxBackup
      c.auditRotation.maxAgeDays = auditLogMaxAge
      return c
    }
  }

  var identityMapping: IdentityMapping {
    get throws {
      var m = IdentityMapping()
      if let s = identity ?? state.env("IDENTITY") {
        guard let mode = IdentityMode(parsing: s) else {
          throw ValidationError("--identity must be impersonate, passthrough or agent, not \"\(s)\"")
        }
        m.defaultMode = mode
      }
      if let p = identityPrefix ?? state.env("IDENTITY_PREFIX") { m.prefix = p }
      if let g = callersGroup ?? state.env("CALLERS_GROUP") { m.callersGroup = g }
      // A prefix or group in system: would hand callers the member's own
      // system identities; an empty prefix would make impersonate a
      // passthrough without its checks.
      guard !m.prefix.isEmpty, !m.prefix.hasPrefix("system:"), IdentityMapping.fitsField(m.prefix) else {
        throw ValidationError("--identity-prefix must be non-empty, printable, and not start with system:")
      }
      guard !m.callersGroup.isEmpty, !m.callersGroup.hasPrefix("system:"), IdentityMapping.fitsField(m.callersGroup) else {
        throw ValidationError("--callers-group must be non-empty, printable, and not start with system:")
      }
      for g in passthroughSystemGroups where !g.hasPrefix("system:") {
        throw ValidationError("--passthrough-system-group takes system: groups (others pass anyway), not \"\(g)\"")
      }
      m.passthroughSystemGroups = Set(passthroughSystemGroups)
      return m
    }
  }

  var image: String { agentImage ?? state.env("AGENT_IMAGE") ?? AgentManifest.defaultImage }

  func embedded(reason: String) throws -> EmbeddedHub.Configuration {
    var c = EmbeddedHub.Configuration(paths: state.paths)
    c.core = try core
    c.publicAddr = publicAddr ?? state.env("PUBLIC_ADDR")
    c.agentImage = image
    c.reason = reason
    return c
  }

  func kubernetes(reason: String) throws -> KubernetesHub.Configuration {
    let client = try kube.kubeconfig.map { try KubeClientConfig.kubeconfig(path: $0, context: kube.context) }
      ?? KubeClientConfig.inCluster()
    guard let cert = state.tlsCert ?? state.env("TLS_CERT"), let key = state.tlsKey ?? state.env("TLS_KEY") else {
      throw ValidationError("the Kubernetes mode needs --tls-cert and --tls-key (TLS_CERT, TLS_KEY): cert-manager's kopilot-hub-tls Secret")
    }
    guard let caFile = kube.caFile ?? state.env("CA_FILE") else {
      throw ValidationError("the Kubernetes mode needs --ca-file (CA_FILE): the CA agents trust, the ca.crt of the kopilot-hub-tls Secret")
    }
    var c = KubernetesHub.Configuration(
      client: client,
      namespace: kube.namespace ?? state.env("POD_NAMESPACE") ?? client.namespace ?? "kopilot-system",
      replica: kube.podName ?? state.env("POD_NAME") ?? ProcessInfo.processInfo.hostName,
      address: kube.podIP ?? state.env("POD_IP") ?? "127.0.0.1",
      tlsCert: cert, tlsKey: key, caFile: caFile)
    c.core = try core
    c.publicAddr = publicAddr ?? state.env("PUBLIC_ADDR")
    c.agentImage = image
    c.serviceName = kube.serviceName
    c.reason = reason
    if let pc = kube.peerCert ?? state.env("PEER_CERT"), let pk = kube.peerKey ?? state.env("PEER_KEY"),
       let pca = kube.peerCA ?? state.env("PEER_CA") {
      var p = KubernetesHub.Peering(certFile: pc, keyFile: pk, caFile: pca)
      (p.bindHost, p.port) = try splitHostPort(kube.peerBind ?? state.env("PEER_BIND") ?? "0.0.0.0:8444")
      c.peering = p
    }
    if kube.webhookBind != "off" { c.webhook = try splitHostPort(kube.webhookBind) }
    c.reviews.authenticatedTTL = kube.authnTTL
    c.reviews.allowedTTL = kube.allowedTTL
    c.reviews.deniedTTL = kube.deniedTTL
    c.reviews.maxInFlight = kube.reviewConcurrency
    c.reviews.maxCacheBytes = kube.reviewCacheMiB << 20
    c.reviews.reviewTimeout = kube.reviewTimeout
    return c
  }
}

/// Flags of the Kubernetes mode.
struct KubeOptions: ParsableArguments {
  @Option(help: "A kubeconfig for the host cluster (implies --mode kubernetes); default in a pod: the pod's service account.")
  var kubeconfig: String?

  @Option(help: "The kubeconfig context (default: its current-context).")
  var context: String?

  @Option(help: "The hub's namespace: where ConfigMap kopilot-hub and the Service's EndpointSlices are. Env: POD_NAMESPACE (default: the pod's, else kopilot-system).")
  var namespace: String?

  @Option(name: .customLong("pod-name"), help: "This replica's name in Cluster statuses and EndpointSlices. Env: POD_NAME (default: the host name).")
  var podName: String?

  @Option(name: .customLong("pod-ip"), help: "This replica's address, written to Cluster statuses. Env: POD_IP.")
  var podIP: String?

  @Option(name: .customLong("ca-file"), help: "PEM CA that agents trust, put into agent manifests (cert-manager's ca.crt). Env: CA_FILE.")
  var caFile: String?

  @Option(name: .customLong("service-name"), help: "The hub's Service, whose EndpointSlices list the replicas.")
  var serviceName = "kopilot-hub"

  @Option(name: .customLong("peer-bind"), help: "The peer listener, HOST:PORT (mutual TLS; other replicas forward here). Env: PEER_BIND (default 0.0.0.0:8444).")
  var peerBind: String?

  @Option(name: .customLong("peer-cert"), help: "PEM certificate for the peer listener and for forwarding (name kopilot-hub-peer). Env: PEER_CERT.")
  var peerCert: String?

  @Option(name: .customLong("peer-key"), help: "Its private key. Env: PEER_KEY.")
  var peerKey: String?

  @Option(name: .customLong("peer-ca"), help: "PEM CA every replica's peer certificate chains to. Env: PEER_CA.")
  var peerCA: String?

  @Option(name: .customLong("webhook-bind"), help: "The admission webhook listener, HOST:PORT, or \"off\".")
  var webhookBind = "0.0.0.0:9443"

  @Option(name: .customLong("authn-cache-ttl"), help: "Seconds a TokenReview's answer is kept.")
  var authnTTL: Double = 120

  @Option(name: .customLong("authz-allowed-ttl"), help: "Seconds an allowing SubjectAccessReview is kept.")
  var allowedTTL: Double = 300

  @Option(name: .customLong("authz-denied-ttl"), help: "Seconds a denying SubjectAccessReview is kept.")
  var deniedTTL: Double = 30

  @Option(name: .customLong("review-concurrency"), help: "Reviews in flight to the host API at most, for TokenReviews and for SubjectAccessReviews each (so unknown tokens cannot crowd out authorizations); more wait (up to 1,000, then 503).")
  var reviewConcurrency = 32

  @Option(name: .customLong("review-cache-mib"), help: "MiB each review cache (TokenReviews, SubjectAccessReviews) may hold, beside its 10,000 entries; the oldest answers go first.")
  var reviewCacheMiB = 32

  @Option(name: .customLong("review-timeout"), help: "Seconds a review may take before the caller gets 504.")
  var reviewTimeout: Double = 5

  func validate() throws {
    for (name, v) in [("--authn-cache-ttl", authnTTL), ("--authz-allowed-ttl", allowedTTL), ("--authz-denied-ttl", deniedTTL)]
    where !(0...86400).contains(v) {
      throw ValidationError("\(name) is 0 to 86400 seconds")
    }
    if !(1...1024).contains(reviewConcurrency) { throw ValidationError("--review-concurrency is 1 to 1024") }
    if !(1...4096).contains(reviewCacheMiB) { throw ValidationError("--review-cache-mib is 1 to 4096") }
    if !(0.1...60).contains(reviewTimeout) { throw ValidationError("--review-timeout is 0.1 to 60 seconds") }
  }
}

func splitCluster(_ s: String) throws -> (String, String) {
  let parts = s.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
  switch parts.count {
  case 1: return ("default", parts[0])
  case 2: return (parts[0], parts[1])
  default: throw ValidationError("expected NAMESPACE/NAME, got \(s)")
  }
}

func splitHostPort(_ s: String) throws -> (String, Int) {
  guard let i = s.lastIndex(of: ":"), let port = Int(s[s.index(after: i)...]), (0...65535).contains(port) else {
    throw ValidationError("expected HOST:PORT, got \(s)")
  }
  var host = String(s[..<i])
  if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
  return (host.isEmpty ? "0.0.0.0" : host, port)
}
