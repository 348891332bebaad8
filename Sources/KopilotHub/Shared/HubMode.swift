import Foundation

/// Where the hub's clusters, callers and permissions come from.
public enum HubMode: String, Sendable, CaseIterable {
  /// A state folder: clusters.yaml, tokens.csv, rbac.yaml, a self-made CA.
  case embedded
  /// The host cluster: Cluster objects, TokenReview, SubjectAccessReview,
  /// cert-manager's certificates, the other replicas behind the Service.
  case kubernetes

  /// The mode and, in words for the log's first line, why.
  public struct Choice: Sendable, Equatable {
    public var mode: HubMode
    public var reason: String
  }

  /// `--mode` wins; without it, a `--kubeconfig` or a pod's environment
  /// (KUBERNETES_SERVICE_HOST) means Kubernetes, anything else the embedded
  /// default. A `KUBECONFIG` variable alone does not switch modes: a
  /// developer's shell has one, and the embedded default must stay the
  /// default there.
  public static func choose(flag: String?, kubeconfig: String?, environment: [String: String]) throws -> Choice {
    if let flag {
      guard let mode = HubMode(rawValue: flag) else {
        throw HubError(.invalid, "--mode must be kubernetes or embedded, not \"\(flag)\"")
      }
      if mode == .embedded, kubeconfig != nil {
        throw HubError(.invalid, "--mode embedded takes no --kubeconfig (the embedded mode does not talk to a cluster)")
      }
      return Choice(mode: mode, reason: "--mode \(flag) was given")
    }
    if let kubeconfig { return Choice(mode: .kubernetes, reason: "--kubeconfig \(kubeconfig) was given") }
    if let host = environment["KUBERNETES_SERVICE_HOST"], !host.isEmpty {
      return Choice(mode: .kubernetes, reason: "running in a pod (KUBERNETES_SERVICE_HOST is set)")
    }
    return Choice(mode: .embedded, reason: "no --mode, no --kubeconfig and not in a pod (KUBERNETES_SERVICE_HOST is unset)")
  }
}
