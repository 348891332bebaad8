import Foundation
import Yams

/// What a client needs from a kubeconfig to reach one API server: the
/// server, how to trust it, and the credentials of the current context.
public struct KubeconfigTarget: Equatable, Sendable {
  public var server: URL
  /// PEM of the CA bundle (from certificate-authority or -data); nil: the
  /// system's trust store.
  public var caPEM: String?
  public var insecureSkipTLSVerify = false
  /// A bearer token (token, or the contents of tokenFile).
  public var token: String?
  /// Where the token came from, for re-reading when it rotates.
  public var tokenFile: String?
  /// A client certificate and key, PEM.
  public var clientCertPEM: String?
  public var clientKeyPEM: String?
  /// The context's namespace, when it names one.
  public var namespace: String?
}

/// An error reading a kubeconfig, naming the file and what is wrong.
public struct KubeconfigError: Error, CustomStringConvertible, Equatable {
  public var file: String
  public var message: String
  public var description: String { "\(file): \(message)" }

  public init(file: String, message: String) {
    self.file = file
    self.message = message
  }
}

/// Reads the parts of a kubeconfig (clientcmd v1) the agent needs. Relative
/// file paths are relative to the kubeconfig's folder, as kubectl resolves
/// them; `-data` fields are base64. Exec and auth-provider plugins are not
/// supported: the agent names them in the error rather than failing later.
public enum Kubeconfig {
  public static func load(path: String, context wanted: String? = nil) throws -> KubeconfigTarget {
    func fail(_ m: String) -> KubeconfigError { KubeconfigError(file: path, message: m) }
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw fail("cannot read the file") }
    let root: Any?
    do { root = try Yams.load(yaml: text) } catch { throw fail("not YAML: \(error)") }
    guard let doc = root as? [String: Any] else { throw fail("not a kubeconfig (no top-level mapping)") }
    let dir = (path as NSString).deletingLastPathComponent

    func named(_ list: String, _ name: String, _ key: String) throws -> [String: Any] {
      let items = doc[list] as? [[String: Any]] ?? []
      guard let item = items.first(where: { $0["name"] as? String == name }),
            let body = item[key] as? [String: Any] else { throw fail("no \(key) named \"\(name)\" in \(list)") }
      return body
    }
    func file(_ p: String) throws -> String {
      let full = p.hasPrefix("/") ? p : (dir as NSString).appendingPathComponent(p)
      guard let s = try? String(contentsOfFile: full, encoding: .utf8) else { throw fail("cannot read \(full)") }
      return s
    }
    func data(_ b64: String, _ what: String) throws -> String {
      guard let d = Data(base64Encoded: b64.filter { !$0.isWhitespace }) else { throw fail("\(what) is not base64") }
      return String(decoding: d, as: UTF8.self)
    }

    guard let ctxName = wanted ?? doc["current-context"] as? String, !ctxName.isEmpty else {
      throw fail("no current-context (and none asked for)")
    }
    let ctx = try named("contexts", ctxName, "context")
    guard let clusterName = ctx["cluster"] as? String else { throw fail("context \"\(ctxName)\" names no cluster") }
    let cluster = try named("clusters", clusterName, "cluster")
    guard let s = cluster["server"] as? String, let server = URL(string: s), server.scheme == "https" else {
      throw fail("cluster \"\(clusterName)\" has no https server")
    }
    var t = KubeconfigTarget(server: server)
    if let ns = ctx["namespace"] as? String, !ns.isEmpty { t.namespace = ns }
    if let d = cluster["certificate-authority-data"] as? String {
      t.caPEM = try data(d, "certificate-authority-data")
    } else if let f = cluster["certificate-authority"] as? String {
      t.caPEM = try file(f)
    }
    t.insecureSkipTLSVerify = cluster["insecure-skip-tls-verify"] as? Bool ?? false

    if let userName = ctx["user"] as? String {
      let user = try named("users", userName, "user")
      if user["exec"] != nil || user["auth-provider"] != nil {
        throw fail("user \"\(userName)\" uses an exec or auth-provider plugin; give a token, tokenFile or client certificate")
      }
      if let tok = user["token"] as? String {
        t.token = tok
      } else if let f = user["tokenFile"] as? String {
        let full = f.hasPrefix("/") ? f : (dir as NSString).appendingPathComponent(f)
        t.tokenFile = full
        t.token = try file(full).trimmingCharacters(in: .whitespacesAndNewlines)
      }
      if let c = user["client-certificate-data"] as? String { t.clientCertPEM = try data(c, "client-certificate-data") }
      else if let c = user["client-certificate"] as? String { t.clientCertPEM = try file(c) }
      if let k = user["client-key-data"] as? String { t.clientKeyPEM = try data(k, "client-key-data") }
      else if let k = user["client-key"] as? String { t.clientKeyPEM = try file(k) }
      if (t.clientCertPEM == nil) != (t.clientKeyPEM == nil) {
        throw fail("user \"\(userName)\" has a client certificate without its key, or a key without its certificate")
      }
    }
    return t
  }
}
