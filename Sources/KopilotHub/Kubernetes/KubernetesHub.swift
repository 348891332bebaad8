import Foundation
import KopilotBase
import KopilotIO
import KopilotKube
import KopilotKubeConfig
import Logging
import ServiceLifecycle

/// The hub in a host cluster: Cluster objects from the host's API server,
/// callers checked with TokenReview and SubjectAccessReview, certificates
/// from files (cert-manager's Secrets), the other replicas found through the
/// Service's EndpointSlices. A `Service`: `run` starts it, serves until
/// graceful shutdown, then stops its parts in reverse order: certificate
/// reloads, this replica's entries in Cluster statuses (so peers stop
/// sending here before its sessions close), the webhook, the core, the
/// informers, the API client.
public struct KubernetesHub: Service {
  public struct Peering: Sendable, Equatable {
    public var certFile: String
    public var keyFile: String
    public var caFile: String
    public var bindHost = "0.0.0.0"
    public var port = 8444

    public init(certFile: String, keyFile: String, caFile: String) {
      self.certFile = certFile
      self.keyFile = keyFile
      self.caFile = caFile
    }
  }

  public struct Configuration: Sendable {
    /// How to reach the host cluster's API server.
    public var client: KubeClientConfig
    /// Where ConfigMap kopilot-hub and the Service's EndpointSlices are.
    public var namespace: String
    /// This replica's name in Cluster statuses and EndpointSlices.
    public var replica: String
    /// This replica's address, written to Cluster statuses.
    public var address: String
    public var tlsCert: String
    public var tlsKey: String
    /// The CA agents trust, put into agent manifests.
    public var caFile: String
    public var core = HubCoreSettings()
    /// Fixed host[:port] for agent manifests; nil: `public_addr` of
    /// ConfigMap kopilot-hub, read live.
    public var publicAddr: String?
    public var agentImage = AgentManifest.defaultImage
    /// The hub's Service, whose EndpointSlices list the replicas.
    public var serviceName = "kopilot-hub"
    /// The peer listener and forwarding; nil: this replica neither takes
    /// nor forwards requests for other replicas.
    public var peering: Peering?
    /// The admission webhook's listener; nil: none.
    public var webhook: (host: String, port: Int)?
    public var reviews = KubeAuthSettings()
    /// Why this mode (the first log line says it).
    public var reason = "in a pod"

    public init(client: KubeClientConfig, namespace: String, replica: String, address: String,
                tlsCert: String, tlsKey: String, caFile: String) {
      self.client = client
      self.namespace = namespace
      self.replica = replica
      self.address = address
      self.tlsCert = tlsCert
      self.tlsKey = tlsKey
      self.caFile = caFile
    }
  }

  public let configuration: Configuration
  let logger: Logger

  public init(configuration: Configuration, logger: Logger = Logger(label: "kopilot.hub")) {
    self.configuration = configuration
    self.logger = logger
  }

  public func run() async throws {
    try await runHub(logger: logger) { try start($0) }
  }

  /// Starts the informers and the core, waits (30 s at most) for the first
  /// list of Clusters, adding each running part to `parts`.
  func start(_ parts: StartedParts) throws {
    let c = configuration, log = logger, replica = c.replica
    log.notice("mode: kubernetes (\(c.reason)); API server \(c.client.server.absoluteString), namespace \(c.namespace), replica \(replica)")
    let caPEM = try String(contentsOfFile: c.caFile, encoding: .utf8)

    let api = try KubeClient(config: c.client, logger: Logger(label: "kopilot.hub.kube"))
    parts.add("host API client") { api.shutdown() }
    let registry = KubeClusterRegistry(client: api)
    let (authn, authz) = KubeAuthenticator.pair(client: api, settings: c.reviews)

    // The other replicas, from the Service's EndpointSlices.
    let peers = PeerTable()
    let gone = GoneReplicas()
    let slices = Informer<EndpointSliceObject>(
      client: api, path: "/apis/discovery.k8s.io/v1/namespaces/\(c.namespace)/endpointslices",
      query: [("labelSelector", "kubernetes.io/service-name=\(c.serviceName)")], what: "endpointslices",
      logger: Logger(label: "kopilot.hub.peers")) { gone.note(peers.apply($0)) }
    // The public address, live from the ConfigMap unless fixed.
    let publicAddress = PublicAddress()
    let configMaps = Informer<ConfigMapObject>(
      client: api, path: "/api/v1/namespaces/\(c.namespace)/configmaps",
      query: [("fieldSelector", "metadata.name=kopilot-hub")], what: "configmap kopilot-hub",
      logger: Logger(label: "kopilot.hub.config")) { publicAddress.apply($0, log: log) }
    if c.publicAddr == nil {
      configMaps.start()
      parts.add("configmap informer") { configMaps.stop() }
    }
    slices.start()
    parts.add("endpointslice informer") { slices.stop() }
    registry.start()
    parts.add("cluster registry") { registry.stop() }

    let local = LocalSessions()
    let status = ClusterStatusWriter(client: api, replica: replica, address: c.address, local: local, peers: peers)
    let box = RouterBox()
    var cfg = c.core.hubConfig(cert: c.tlsCert, key: c.tlsKey)
    if let p = c.peering {
      cfg.peerCertFile = p.certFile
      cfg.peerKeyFile = p.keyFile
      cfg.peerCAFile = p.caFile
      cfg.peerBindHost = p.bindHost
      cfg.peerPort = p.port
    } else {
      log.warning("no --peer-cert/--peer-key/--peer-ca (PEER_CERT, PEER_KEY, PEER_CA): this replica neither takes nor forwards requests for other replicas")
    }
    let audit = try c.core.startAudit(parts, log)
    let hub = try Hub(loops: c.core.startLoops(), config: cfg, deferringRouter: { box.route($0, $1) })
    parts.add("hub") {
      log.notice("kopilot-hub stopping")
      hub.stop()
    }
    let metrics = HubMetrics(isCluster: { registry.cluster(id: $0) != nil })
    metrics.beforeRender = { m in
      m.reviews(kind: "token", authn.stats)
      m.reviews(kind: "access", authz.stats)
    }
    var router = HubRouter(registry: registry, authenticator: authn, authorizer: authz, publicAddr: c.publicAddr ?? "",
                           agentImage: c.agentImage, caPEM: caPEM, logger: log, metrics: metrics)
    router.replicaName = replica
    router.identity = c.core.identity
    router.audit = audit
    router.placement = ReplicaPlacement(selfName: replica, local: local, peers: peers) { id in
      (registry.object(id: id)?.status?.hubs ?? []).filter { $0.sessions > 0 }.map(\.name)
    }
    if c.publicAddr == nil { router.publicAddrSource = { publicAddress.value } }
    router.ready = { registry.hasSynced }
    box.router = router
    hub.observe(metrics, accessLog: c.core.accessLog, audit: audit, log) { cluster, up in
      local.changed(cluster: cluster, up: up)
      status.touch(cluster)
    }
    hub.closeSessions(on: registry, log)
    // A replica that vanished without withdrawing (killed, node lost) is
    // still named in Cluster statuses: one replica rewrites those, which
    // drops every entry of a replica the EndpointSlices no longer list.
    gone.handler = { names in
      guard peers.isJanitor(replica) else { return }
      for cluster in registry.objects() where (cluster.status?.hubs ?? []).contains(where: { names.contains($0.name) }) {
        log.info("cluster \(cluster.metadata.namespace ?? "")/\(cluster.metadata.name): dropping status entries of replicas gone: \(names.sorted())")
        status.touch(cluster.id)
      }
    }
    var webhookPort = 0
    if let w = c.webhook {
      let webhook = try WebhookServer(host: w.host, port: w.port, certFile: c.tlsCert, keyFile: c.tlsKey)
      webhookPort = webhook.port
      parts.add("admission webhook") { webhook.stop() }
    }
    if !registry.waitForSync(timeout: 30) {
      log.warning("the Clusters are not listed yet (the host API is slow or refuses): /readyz says not ready until they are")
    }
    // Entries a previous run of this replica left in Cluster statuses.
    for cluster in registry.objects() where (cluster.status?.hubs ?? []).contains(where: { $0.name == replica }) {
      status.touch(cluster.id)
    }
    // At shutdown peers stop sending here before the sessions close.
    parts.add("cluster status writer") { status.withdraw(clusters: Array(local.snapshot().keys)) }
    log.notice("kopilot-hub listening on \(cfg.bindHost):\(hub.port) loops=\(hub.loopCount) peer-port=\(hub.peerPort) webhook-port=\(webhookPort) clusters=\(registry.clusters().count) public-addr=\(c.publicAddr ?? "(ConfigMap kopilot-hub)")")
    let certificates = hub.reloadingCertificates(cfg, every: c.core.tlsReloadInterval, log)
    parts.add("certificate reloader") { certificates.stop() }
  }
}
