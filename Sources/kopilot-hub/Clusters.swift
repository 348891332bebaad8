import ArgumentParser
import Foundation
import KopilotHub

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
      let live = SessionFile(path: state.paths.sessions).read()
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
