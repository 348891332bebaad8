import ArgumentParser
import Foundation
import KopilotKubeConfig
import KopilotHub
import KopilotIO
import KopilotKube
import Logging

@main
struct HubCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "kopilot-hub",
    abstract: "The Kopilot hub: agents' tunnels in, callers' Kubernetes API requests out to member clusters.",
    discussion: """
      Agents dial wss://HUB/connect with their cluster's token as Authorization: Bearer \
      (?token=T still works for original agents; the header wins); callers send any Kubernetes API request to \
      https://HUB/proxy/{namespace}_{name}/<path>. With no Kubernetes around (the embedded \
      default) everything the hub needs lives in a state folder created on first start; in a \
      pod, or with --kubeconfig, it follows the host cluster (`serve --help` tells more).
      """,
    subcommands: [Serve.self, Clusters.self],
    defaultSubcommand: Serve.self)
}

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

struct Serve: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Run the hub (the default).",
    discussion: """
      Two modes. Embedded (the default outside a cluster): clusters, callers and RBAC come from \
      the state folder. Kubernetes (in a pod, or with --kubeconfig): Cluster objects of the host \
      cluster, callers checked with TokenReview and SubjectAccessReview, certificates from files \
      (cert-manager's Secrets), other replicas found through the Service's EndpointSlices. The \
      first log line says which mode and why.
      """)

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
    if !(0.1...86400).contains(tlsReloadInterval) { throw ValidationError("--tls-reload-interval is 0.1 to 86400 seconds") }
    try kube.validate()
  }

  /// Loads renewed certificates for new connections.
  func watchCertificates(_ hub: Hub, _ cfg: Hub.Config, _ log: Logger) -> CertificateWatcher {
    let files = [cfg.certFile, cfg.keyFile] + [cfg.peerCertFile, cfg.peerKeyFile, cfg.peerCAFile].compactMap { $0 }
    return CertificateWatcher(files: files, interval: tlsReloadInterval) {
      do {
        try hub.reloadTLS(certFile: cfg.certFile, keyFile: cfg.keyFile, peerCertFile: cfg.peerCertFile,
                          peerKeyFile: cfg.peerKeyFile, peerCAFile: cfg.peerCAFile)
        log.notice("certificates reloaded from \(cfg.certFile)\(cfg.peerCertFile.map { " and \($0)" } ?? "")")
      } catch {
        log.error("certificates changed but were not loaded (the previous ones stay): \(error)")
      }
    }
  }

  func run() throws {
    let level = Logger.Level(rawValue: logLevel ?? state.env("LOG_LEVEL") ?? "info") ?? .info
    LoggingSystem.bootstrap { label in
      var h = StreamLogHandler.standardError(label: label)
      h.logLevel = level
      return h
    }
    let log = Logger(label: "kopilot.hub")
    let choice: HubMode.Choice
    do {
      choice = try HubMode.choose(flag: mode ?? state.env("KOPILOT_MODE"), kubeconfig: kube.kubeconfig,
                                  environment: ProcessInfo.processInfo.environment)
    } catch let e as HubError {
      throw ValidationError(e.message)
    }
    switch choice.mode {
    case .embedded: try runEmbedded(log, reason: choice.reason)
    case .kubernetes: try runKubernetes(log, reason: choice.reason)
    }
  }

  var hubConfigBase: (host: String, port: Int, window: UInt32, keepaliveMs: UInt64, headMs: UInt64) {
    get throws {
      let (host, port) = try splitHostPort(bind ?? state.env("BIND_ADDR") ?? "0.0.0.0:8443")
      return (host, port,
              UInt32((muxWindowKiB ?? Int(state.env("MUX_WINDOW_KIB") ?? "") ?? 4096) * 1024),
              UInt64((keepalive ?? Double(state.env("KEEPALIVE_SECONDS") ?? "") ?? 30) * 1000),
              UInt64((headerTimeout ?? Double(state.env("HEADER_TIMEOUT_SECONDS") ?? "") ?? 30) * 1000))
    }
  }

  /// The loops the hub runs on (--loops, LOOPS, or the CPUs it may use).
  func eventLoops() throws -> [Loop] {
    let n = loops ?? Int(state.env("LOOPS") ?? "") ?? Loop.availableCPUs
    return try (0..<n).map { _ in try Loop() }
  }

  func hubConfig(cert: String, key: String) throws -> Hub.Config {
    let b = try hubConfigBase
    var cfg = Hub.Config(certFile: cert, keyFile: key)
    cfg.bindHost = b.host
    cfg.port = b.port
    cfg.muxWindow = b.window
    cfg.keepaliveMs = b.keepaliveMs
    cfg.headTimeoutMs = b.headMs
    if let mib = memoryBudgetMiB ?? Int(state.env("MEMORY_BUDGET_MIB") ?? "") {
      cfg.memoryBudget = UInt64(mib) << 20
    } else {
      cfg.memoryBudget = memoryLimit() / 4
    }
    return cfg
  }

  var image: String { agentImage ?? state.env("AGENT_IMAGE") ?? "ghcr.io/kopilot/kopilot-agent:latest" }

  /// Metrics, the access log and the session log, the same in both modes.
  func observe(_ hub: Hub, _ metrics: HubMetrics, _ log: Logger, also: @escaping (String, Bool) -> Void) {
    hub.onSession = { cluster, up, status in
      if up {
        log.info("agent session up: cluster=\(cluster)")
      } else {
        log.info("agent session down: cluster=\(cluster) status=\(CoreError(code: status, context: "session"))")
      }
      metrics.sessionChanged(cluster: cluster, up: up)
      also(cluster, up)
    }
    let access = accessLog
    hub.onProxied = { r in
      metrics.proxyEnded(r)
      if access {
        log.info("proxied cluster=\(r.cluster) session=\(r.session) status=\(r.status) up=\(r.bytesUp) down=\(r.bytesDown) ms=\(Double(r.durationMicros) / 1000)")
      }
    }
  }

  func runEmbedded(_ log: Logger, reason: String) throws {
    let given = publicAddr ?? state.env("PUBLIC_ADDR")
    let paths = state.paths
    log.notice("mode: embedded (\(reason)); state folder \(paths.directory)")

    let report = try StateDirectory(paths: paths, hosts: given.map { [$0] } ?? []).prepare()
    for f in report.created { log.info("created \(f)") }
    for n in report.notices { log.warning("\(n)") }
    if let t = report.adminToken {
      // Printed once, on the start that made it, so a newcomer can use it.
      FileHandle.standardOutput.write(Data("admin caller token (user kopilot-admin, in \(paths.tokens)): \(t)\n".utf8))
    }

    let registry = try EmbeddedClusterRegistry(path: paths.clusters)
    // The router is made once the port is known: without --public-addr,
    // manifests point at the address the hub really listens on.
    let box = RouterBox()
    let loops = try eventLoops()
    let cfg = try hubConfig(cert: paths.hubCert, key: paths.hubKey)
    let hub = try Hub(loops: loops, config: cfg, deferringRouter: { box.route($0, $1) })
    let pub = given ?? "\(cfg.bindHost == "0.0.0.0" || cfg.bindHost == "::" ? "127.0.0.1" : cfg.bindHost):\(hub.port)"
    let metrics = HubMetrics(isCluster: { registry.cluster(id: $0) != nil })
    box.router = HubRouter(
      registry: registry,
      authenticator: try TokenFileAuthenticator(path: paths.tokens),
      authorizer: try RBACAuthorizer(path: paths.rbac),
      publicAddr: pub,
      agentImage: image,
      caPEM: try String(contentsOfFile: paths.caCert, encoding: .utf8),
      logger: log,
      metrics: metrics)
    let sessions = SessionFile(path: (paths.directory as NSString).appendingPathComponent("sessions.json"))
    observe(hub, metrics, log) { cluster, up in sessions.note(cluster: cluster, up: up) }
    // A cluster removed or given a new token loses its sessions at once.
    registry.onChange { changes in
      for c in changes where c.closesSessions {
        log.notice("closing the sessions of \(c.clusterID): \(c.kind)")
        hub.dropCluster(c.clusterID)
      }
    }
    let certs = watchCertificates(hub, cfg, log)
    log.notice("kopilot-hub listening on \(cfg.bindHost):\(hub.port) loops=\(hub.loopCount) clusters=\(registry.clusters().count) public-addr=\(pub)")
    waitForTermination()
    log.notice("kopilot-hub stopping")
    certs.stop()
    hub.stop()
    sessions.clear()
  }

  func runKubernetes(_ log: Logger, reason: String) throws {
    var client: KubeClientConfig
    if let path = kube.kubeconfig {
      client = try KubeClientConfig.kubeconfig(path: path, context: kube.context)
    } else {
      client = try KubeClientConfig.inCluster()
    }
    let namespace = kube.namespace ?? state.env("POD_NAMESPACE") ?? client.namespace ?? "kopilot-system"
    let replica = kube.podName ?? state.env("POD_NAME") ?? ProcessInfo.processInfo.hostName
    let address = kube.podIP ?? state.env("POD_IP") ?? "127.0.0.1"
    log.notice("mode: kubernetes (\(reason)); API server \(client.server.absoluteString), namespace \(namespace), replica \(replica)")
    guard let cert = state.tlsCert ?? state.env("TLS_CERT"), let key = state.tlsKey ?? state.env("TLS_KEY") else {
      throw ValidationError("the Kubernetes mode needs --tls-cert and --tls-key (TLS_CERT, TLS_KEY): cert-manager's kopilot-hub-tls Secret")
    }
    guard let caFile = kube.caFile ?? state.env("CA_FILE") else {
      throw ValidationError("the Kubernetes mode needs --ca-file (CA_FILE): the CA agents trust, the ca.crt of the kopilot-hub-tls Secret")
    }
    let caPEM = try String(contentsOfFile: caFile, encoding: .utf8)

    let api = try KubeClient(config: client, logger: Logger(label: "kopilot.hub.kube"))
    let registry = KubeClusterRegistry(client: api)
    registry.start()
    var settings = KubeAuthSettings()
    settings.authenticatedTTL = kube.authnTTL
    settings.allowedTTL = kube.allowedTTL
    settings.deniedTTL = kube.deniedTTL
    settings.maxInFlight = kube.reviewConcurrency
    settings.maxCacheBytes = kube.reviewCacheMiB << 20
    settings.reviewTimeout = kube.reviewTimeout
    let (authn, authz) = KubeAuthenticator.pair(client: api, settings: settings)

    // The other replicas, from the Service's EndpointSlices.
    let peers = PeerTable()
    let gone = GoneReplicas()
    let slices = Informer<EndpointSliceObject>(
      client: api, path: "/apis/discovery.k8s.io/v1/namespaces/\(namespace)/endpointslices",
      query: [("labelSelector", "kubernetes.io/service-name=\(kube.serviceName)")], what: "endpointslices",
      logger: Logger(label: "kopilot.hub.peers")) { gone.note(peers.apply($0)) }
    slices.start()
    // The public address, live from the ConfigMap unless a flag fixes it.
    let fixedPublic = publicAddr ?? state.env("PUBLIC_ADDR")
    let publicAddress = PublicAddress()
    let configMaps = Informer<ConfigMapObject>(
      client: api, path: "/api/v1/namespaces/\(namespace)/configmaps",
      query: [("fieldSelector", "metadata.name=kopilot-hub")], what: "configmap kopilot-hub",
      logger: Logger(label: "kopilot.hub.config")) { publicAddress.apply($0, log: log) }
    if fixedPublic == nil { configMaps.start() }

    let local = LocalSessions()
    let status = ClusterStatusWriter(client: api, replica: replica, address: address, local: local, peers: peers)
    let box = RouterBox()
    let loops = try eventLoops()
    var cfg = try hubConfig(cert: cert, key: key)
    if let pc = kube.peerCert ?? state.env("PEER_CERT"), let pk = kube.peerKey ?? state.env("PEER_KEY"),
       let pca = kube.peerCA ?? state.env("PEER_CA") {
      let (ph, pp) = try splitHostPort(kube.peerBind ?? state.env("PEER_BIND") ?? "0.0.0.0:8444")
      cfg.peerCertFile = pc
      cfg.peerKeyFile = pk
      cfg.peerCAFile = pca
      cfg.peerBindHost = ph
      cfg.peerPort = pp
    } else {
      log.warning("no --peer-cert/--peer-key/--peer-ca (PEER_CERT, PEER_KEY, PEER_CA): this replica neither takes nor forwards requests for other replicas")
    }
    let hub = try Hub(loops: loops, config: cfg, deferringRouter: { box.route($0, $1) })
    let metrics = HubMetrics(isCluster: { registry.cluster(id: $0) != nil })
    metrics.beforeRender = { m in
      m.reviews(kind: "token", authn.stats)
      m.reviews(kind: "access", authz.stats)
    }
    var router = HubRouter(registry: registry, authenticator: authn, authorizer: authz, publicAddr: fixedPublic ?? "",
                           agentImage: image, caPEM: caPEM, logger: log, metrics: metrics)
    router.replicaName = replica
    router.placement = ReplicaPlacement(selfName: replica, local: local, peers: peers) { id in
      (registry.object(id: id)?.status?.hubs ?? []).filter { $0.sessions > 0 }.map(\.name)
    }
    if fixedPublic == nil { router.publicAddrSource = { publicAddress.value } }
    router.ready = { registry.hasSynced }
    box.router = router
    observe(hub, metrics, log) { cluster, up in
      local.changed(cluster: cluster, up: up)
      status.touch(cluster)
    }
    registry.onChange { changes in
      for c in changes where c.closesSessions {
        log.notice("closing the sessions of \(c.clusterID): \(c.kind)")
        hub.dropCluster(c.clusterID)
      }
    }
    // A replica that vanished without withdrawing (killed, node lost) is
    // still named in Cluster statuses: one replica rewrites those, which
    // drops every entry of a replica the EndpointSlices no longer list.
    gone.handler = { names in
      guard peers.isJanitor(replica) else { return }
      for c in registry.objects() where (c.status?.hubs ?? []).contains(where: { names.contains($0.name) }) {
        log.info("cluster \(c.metadata.namespace ?? "")/\(c.metadata.name): dropping status entries of replicas gone: \(names.sorted())")
        status.touch(c.id)
      }
    }
    let webhook: WebhookServer?
    if kube.webhookBind != "off" {
      let (wh, wp) = try splitHostPort(kube.webhookBind)
      webhook = try WebhookServer(host: wh, port: wp, certFile: cert, keyFile: key)
    } else {
      webhook = nil
    }
    if !registry.waitForSync(timeout: 30) {
      log.warning("the Clusters are not listed yet (the host API is slow or refuses): /readyz says not ready until they are")
    }
    // Entries a previous run of this replica left in Cluster statuses.
    for c in registry.objects() where (c.status?.hubs ?? []).contains(where: { $0.name == replica }) { status.touch(c.id) }
    log.notice("kopilot-hub listening on \(cfg.bindHost):\(hub.port) loops=\(hub.loopCount) peer-port=\(hub.peerPort) webhook-port=\(webhook?.port ?? 0) clusters=\(registry.clusters().count) public-addr=\(fixedPublic ?? "(ConfigMap kopilot-hub)")")
    let certs = watchCertificates(hub, cfg, log)
    waitForTermination()
    log.notice("kopilot-hub stopping")
    certs.stop()
    // Peers stop sending here before the sessions close.
    status.withdraw(clusters: Array(local.snapshot().keys))
    webhook?.stop()
    hub.stop()
    registry.stop()
    slices.stop()
    configMaps.stop()
    api.shutdown()
  }
}

/// Replicas the EndpointSlices stopped listing, handed to `handler` once it
/// is set (the informer starts before the status writer exists).
final class GoneReplicas: @unchecked Sendable {
  private let lock = NSLock()
  private var pending: Set<String> = []
  private var h: ((Set<String>) -> Void)?

  var handler: ((Set<String>) -> Void)? {
    get { lock.lock(); defer { lock.unlock() }; return h }
    set {
      lock.lock()
      h = newValue
      let p = pending
      pending = []
      lock.unlock()
      if !p.isEmpty { newValue?(p) }
    }
  }

  func note(_ names: Set<String>) {
    guard !names.isEmpty else { return }
    lock.lock()
    guard let h else {
      pending.formUnion(names)
      lock.unlock()
      return
    }
    lock.unlock()
    h(names)
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

struct Clusters: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Manage the embedded registry's clusters (clusters.yaml); a running hub picks changes up by itself.",
    subcommands: [Add.self, List.self, Remove.self])

  struct Add: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Register NAMESPACE/NAME and print its new agent token.")
    @OptionGroup var state: StateOptions
    @Argument(help: "NAMESPACE/NAME (NAME alone means default/NAME).") var cluster: String

    func run() throws {
      let (ns, name) = try splitCluster(cluster)
      let report = try StateDirectory(paths: state.paths).prepare()
      if let t = report.adminToken {
        FileHandle.standardError.write(Data("created \(state.paths.directory); admin caller token (user kopilot-admin, in \(state.paths.tokens)): \(t)\n".utf8))
      }
      print(try ClusterAdmin(path: state.paths.clusters).addCluster(namespace: ns, name: name))
    }
  }

  struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show every cluster and its live agent sessions.")
    @OptionGroup var state: StateOptions

    func run() throws {
      let clusters = try ClusterAdmin(path: state.paths.clusters).listClusters()
      let live = SessionFile(path: (state.paths.directory as NSString).appendingPathComponent("sessions.json")).read()
      print("NAMESPACE".padding(toLength: 24, withPad: " ", startingAt: 0) + "NAME".padding(toLength: 32, withPad: " ", startingAt: 0) + "SESSIONS")
      for c in clusters {
        print(c.namespace.padding(toLength: 24, withPad: " ", startingAt: 0) + c.name.padding(toLength: 32, withPad: " ", startingAt: 0) + "\(live[c.id] ?? 0)")
      }
    }
  }

  struct Remove: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Unregister NAMESPACE/NAME; its agents are disconnected.")
    @OptionGroup var state: StateOptions
    @Argument(help: "NAMESPACE/NAME (NAME alone means default/NAME).") var cluster: String

    func run() throws {
      let (ns, name) = try splitCluster(cluster)
      try ClusterAdmin(path: state.paths.clusters).removeCluster(namespace: ns, name: name)
    }
  }
}

/// Holds the router for the hub's callback: set once, before any request
/// can arrive that needs more than a 503.
final class RouterBox: @unchecked Sendable {
  private let lock = NSLock()
  private var value: HubRouter?
  var router: HubRouter? {
    get { lock.lock(); defer { lock.unlock() }; return value }
    set { lock.lock(); value = newValue; lock.unlock() }
  }
  func route(_ r: HubRequest, _ responder: HubResponder) -> HubAnswer? {
    guard let router else { return .status(503, "ServiceUnavailable", "the hub is starting") }
    return router.route(r, later: { responder.answer($0) })
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

/// Live sessions per cluster, written by the running hub for `clusters list`
/// (a separate process). Rewritten whole, atomically, on every change.
final class SessionFile: @unchecked Sendable {
  let path: String
  private let lock = NSLock()
  private var counts: [String: Int] = [:]
  private var writeQueued = false
  private var stopped = false
  private let writer = DispatchQueue(label: "kopilot.sessions-file")

  init(path: String) { self.path = path }

  /// Called on the loop thread for every session change: it only counts.
  /// The file is written on another queue, at most every 200 ms, so a storm
  /// of 10,000 agents reconnecting costs 50 writes rather than 10,000 on
  /// the loop.
  func note(cluster: String, up: Bool) {
    lock.lock()
    defer { lock.unlock() }
    counts[cluster, default: 0] += up ? 1 : -1
    if counts[cluster] ?? 0 <= 0 { counts[cluster] = nil }
    if writeQueued { return }
    writeQueued = true
    writer.asyncAfter(deadline: .now() + 0.2) { [self] in
      lock.lock()
      let snapshot = counts
      writeQueued = false
      let skip = stopped
      lock.unlock()
      if !skip, let data = try? JSONSerialization.data(withJSONObject: snapshot, options: [.sortedKeys]) {
        try? data.write(to: URL(fileURLWithPath: path), options: .atomic)
      }
    }
  }

  /// At shutdown: no session is live any more, and no late write may
  /// bring the file back.
  func clear() {
    lock.lock()
    stopped = true
    lock.unlock()
    writer.sync { try? FileManager.default.removeItem(atPath: path) }
  }

  func read() -> [String: Int] {
    guard let d = FileManager.default.contents(atPath: path),
          let obj = try? JSONSerialization.jsonObject(with: d) as? [String: Int] else { return [:] }
    return obj
  }
}
