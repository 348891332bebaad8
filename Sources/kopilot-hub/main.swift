import ArgumentParser
import KopilotHub
import Logging
import ServiceLifecycle

struct HubCommand: AsyncParsableCommand {
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

struct Serve: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Run the hub (the default).",
    discussion: """
      Two modes. Embedded (the default outside a cluster): clusters, callers and RBAC come from \
      the state folder. Kubernetes (in a pod, or with --kubeconfig): Cluster objects of the host \
      cluster, callers checked with TokenReview and SubjectAccessReview, certificates from files \
      (cert-manager's Secrets), other replicas found through the Service's EndpointSlices. The \
      first log line says which mode and why. SIGTERM or SIGINT stops the hub gracefully.
      """)

  @OptionGroup var options: ServeOptions

  func run() async throws {
    let level = options.level
    LoggingSystem.bootstrap { label in
      var h = StreamLogHandler.standardError(label: label)
      h.logLevel = level
      return h
    }
    let log = Logger(label: "kopilot.hub")
    let choice = try options.chooseMode()
    let hub: any Service
    switch choice.mode {
    case .embedded: hub = EmbeddedHub(configuration: try options.embedded(reason: choice.reason), logger: log)
    case .kubernetes: hub = KubernetesHub(configuration: try options.kubernetes(reason: choice.reason), logger: log)
    }
    let group = ServiceGroup(services: [hub], gracefulShutdownSignals: [.sigterm, .sigint], logger: log)
    try await group.run()
  }
}

// main.swift is top-level code (the executable has several files), so the
// command starts here rather than through @main. Called on the type as a
// generic AsyncParsableCommand, `main()` is the async entry point; on the
// concrete type it would be ParsableCommand's synchronous one.
func start<Command: AsyncParsableCommand>(_: Command.Type) async { await Command.main() }
await start(HubCommand.self)
