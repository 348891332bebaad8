import Foundation

/// How to reach one API server, from inside a pod or from a kubeconfig.
public struct KubeClientConfig: Sendable, Equatable {
  /// `https://host:port`, no trailing slash.
  public var server: URL
  /// PEM CA bundle; nil: the system's trust store.
  public var caPEM: String?
  public var insecureSkipTLSVerify = false
  public var bearerToken: String?
  /// Re-read when it changes (projected service-account tokens rotate).
  public var tokenFile: String?
  public var clientCertPEM: String?
  public var clientKeyPEM: String?
  /// The namespace of the pod (in-cluster) or of the kubeconfig context.
  public var namespace: String?

  public init(server: URL) { self.server = server }

  /// The default service-account folder of a pod.
  public static let serviceAccountDirectory = "/var/run/secrets/kubernetes.io/serviceaccount"
}

extension KubeClientConfig {
  /// A pod's own configuration: KUBERNETES_SERVICE_HOST/PORT, the
  /// service-account token file (re-read as it rotates), ca.crt and namespace
  /// from `directory`. Throws `KubeconfigError` naming what is missing.
  public static func inCluster(environment: [String: String] = ProcessInfo.processInfo.environment,
                               directory: String = serviceAccountDirectory) throws -> KubeClientConfig {
    func fail(_ what: String, _ m: String) -> KubeconfigError { KubeconfigError(file: what, message: m) }
    let host = environment["KUBERNETES_SERVICE_HOST"] ?? "", port = environment["KUBERNETES_SERVICE_PORT"] ?? ""
    let missing = [("KUBERNETES_SERVICE_HOST", host), ("KUBERNETES_SERVICE_PORT", port)].filter { $0.1.isEmpty }.map(\.0)
    guard missing.isEmpty else {
      throw fail("in-cluster configuration", "\(missing.joined(separator: " and ")) not set (not running in a pod?)")
    }
    guard let p = Int(port), (1...65535).contains(p) else {
      throw fail("in-cluster configuration", "KUBERNETES_SERVICE_PORT is not a port number: \"\(port)\"")
    }
    // An IPv6 service address (a dual-stack or IPv6 cluster) goes in brackets.
    let h = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
    guard let server = URL(string: "https://\(h):\(p)"), server.host != nil else {
      throw fail("in-cluster configuration", "KUBERNETES_SERVICE_HOST is not a host: \"\(host)\"")
    }
    let dir = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
    let tokenPath = dir + "/token", caPath = dir + "/ca.crt"
    // Read now so that a pod without a mounted token fails at start, not at
    // its first request; the client reads it again itself (it rotates).
    guard let token = try? String(contentsOfFile: tokenPath, encoding: .utf8) else {
      throw fail(tokenPath, "cannot read the service-account token (automountServiceAccountToken off?)")
    }
    guard !token.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
      throw fail(tokenPath, "the service-account token file is empty")
    }
    guard let ca = try? String(contentsOfFile: caPath, encoding: .utf8) else {
      throw fail(caPath, "cannot read the cluster's CA bundle")
    }
    var c = KubeClientConfig(server: server)
    c.caPEM = ca
    c.tokenFile = tokenPath
    let ns = (try? String(contentsOfFile: dir + "/namespace", encoding: .utf8))?
      .trimmingCharacters(in: .whitespacesAndNewlines)
    c.namespace = ns?.isEmpty == false ? ns : nil
    return c
  }

  /// The current (or named) context of a kubeconfig; its namespace too.
  /// Throws `KubeconfigError`.
  public static func kubeconfig(path: String, context: String? = nil) throws -> KubeClientConfig {
    let t = try Kubeconfig.load(path: path, context: context)
    var c = KubeClientConfig(server: t.server)
    c.caPEM = t.caPEM
    c.insecureSkipTLSVerify = t.insecureSkipTLSVerify
    c.bearerToken = t.token
    c.tokenFile = t.tokenFile
    c.clientCertPEM = t.clientCertPEM
    c.clientKeyPEM = t.clientKeyPEM
    c.namespace = t.namespace
    return c
  }
}
