import ArgumentParser
import KopilotAgent
import Logging
import ServiceLifecycle

struct AgentCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "kopilot-agent",
    abstract: "Dial out to a kopilot hub and serve its requests from this cluster's API server.",
    discussion: """
      The cluster's agent token comes from --hub-token-file, HUB_TOKEN_FILE or HUB_TOKEN (or, the \
      old way, from the --connect URL's ?token=) and goes to the hub as Authorization: Bearer on \
      /connect, never in the URL, which proxies and access logs keep. Nothing logs it. On SIGTERM \
      or SIGINT every session sends GoAway and requests in flight get --grace-period to finish.
      """)

  @OptionGroup var options: AgentOptions

  func run() async throws {
    let agent = AgentService(configuration: try options.configuration())
    // The agent logs its own lines (KopilotIO's logLine); the group's
    // logger only speaks when something goes wrong.
    var log = Logger(label: "kopilot.agent")
    log.logLevel = .warning
    let group = ServiceGroup(services: [agent], gracefulShutdownSignals: [.sigterm, .sigint], logger: log)
    try await group.run()
  }
}

// main.swift is top-level code (the executable has several files), so the
// command starts here rather than through @main. Called on the type as a
// generic AsyncParsableCommand, `main()` is the async entry point; on the
// concrete type it would be ParsableCommand's synchronous one.
func start<Command: AsyncParsableCommand>(_: Command.Type) async { await Command.main() }
await start(AgentCommand.self)
