import Crypto
import Foundation
import KopilotPKI
import X509

/// The embedded mode's state folder (default `./kopilot-state`), made on
/// first start so a newcomer can run the hub and use it at once:
///
/// | file          | what                                                    | mode |
/// |---------------|---------------------------------------------------------|------|
/// | `ca.crt`      | ECDSA P-256 CA, 10 years; agents and callers trust it   | 0644 |
/// | `ca.key`      | its key                                                  | 0600 |
/// | `hub.crt`     | the hub's serving certificate, signed by the CA          | 0644 |
/// | `hub.key`     | its key                                                  | 0600 |
/// | `clusters.yaml` | Cluster objects (`ClusterFile`) with agent tokens      | 0600 |
/// | `tokens.csv`  | callers (`TokenFile`); starts with an admin token        | 0600 |
/// | `rbac.yaml`   | ClusterRoles/Bindings (`RBACFile`); grants admins /proxy/* | 0644 |
///
/// A file that exists is never touched; every path can be set on its own
/// (the hub's flags), e.g. to use a certificate from elsewhere.
///
/// Files holding secrets (`secretFiles`: the keys, agent tokens, caller
/// tokens) are created 0600. The folder itself must not be writable by
/// group or others: whoever can write there can swap tokens.csv or
/// rbac.yaml and grant themselves everything, so `prepare` refuses such a
/// folder, and reports a secret file that group or others can read.
public struct StatePaths: Sendable, Equatable {
  public var directory: String
  public var caCert: String
  public var caKey: String
  public var hubCert: String
  public var hubKey: String
  public var clusters: String
  public var tokens: String
  public var rbac: String
  /// Live sessions per cluster, written by the running hub for
  /// `kopilot-hub clusters list`; not a secret, never read by the hub.
  public var sessions: String

  public static let defaultDirectory = "kopilot-state"

  /// Every file inside `directory`.
  public init(directory: String = StatePaths.defaultDirectory) {
    func p(_ n: String) -> String { (directory as NSString).appendingPathComponent(n) }
    self.directory = directory
    caCert = p("ca.crt")
    caKey = p("ca.key")
    hubCert = p("hub.crt")
    hubKey = p("hub.key")
    clusters = p("clusters.yaml")
    tokens = p("tokens.csv")
    rbac = p("rbac.yaml")
    sessions = p("sessions.json")
  }

  /// The files that hold secrets: private keys, agent tokens, caller tokens.
  public var secretFiles: [String] { [caKey, hubKey, clusters, tokens] }
}

public struct StateDirectory: Sendable {
  /// The caller token and identity made on first start.
  public static let adminUser = "kopilot-admin"
  public static let adminGroup = "kopilot:admins"

  /// What `prepare` did.
  public struct Report: Sendable, Equatable {
    /// Files created, in the order made.
    public var created: [String] = []
    /// Things the operator should know (a certificate near its end, a host
    /// the certificate does not cover). The hub logs them.
    public var notices: [String] = []
    /// The admin caller token, when tokens.csv was created just now; the hub
    /// prints it once so the newcomer can use it.
    public var adminToken: String?
  }

  public var paths: StatePaths
  /// Host names / IPs for the serving certificate besides localhost,
  /// 127.0.0.1 and ::1 - the host of the public address at least. Ports and
  /// brackets are allowed (`hub.example.com:8443`, `[fd00::1]:443`).
  public var hosts: [String]

  public init(paths: StatePaths = StatePaths(), hosts: [String] = []) {
    self.paths = paths
    self.hosts = hosts
  }

  /// Creates what is missing; reads (and checks) what exists. Throws when a
  /// pair is half there (a certificate without its key): guessing which half
  /// to keep could break every agent that trusts the old CA.
  @discardableResult
  public func prepare(now: Date = Date()) throws -> Report {
    var report = Report()
    try Files.ensureDirectory(paths.directory)
    try Self.checkFolder(paths.directory)
    for p in [paths.caCert, paths.caKey, paths.hubCert, paths.hubKey, paths.clusters, paths.tokens, paths.rbac] {
      try Files.ensureDirectory((p as NSString).deletingLastPathComponent)
    }
    let wantedHosts = hosts.map(HubPKI.host(ofAddress:)).filter { !$0.isEmpty }

    // The CA, made or loaded: loaded only when the hub certificate must be made.
    var ca: HubPKI.KeyPair?
    switch (Files.exists(paths.caCert), Files.exists(paths.caKey)) {
    case (false, false):
      let made = try HubPKI.makeCA(now: now)
      // Key first: a crash between the two leaves a key without a
      // certificate, which the half-pair check then reports.
      if try Files.createNew(paths.caKey, Data(made.keyPEM.utf8), mode: 0o600) { report.created.append(paths.caKey) }
      if try Files.createNew(paths.caCert, Data(made.certificatePEM.utf8), mode: 0o644) { report.created.append(paths.caCert) }
      ca = made
    case (true, true):
      break
    case (true, false), (false, true):
      throw HubError(.certificate, "\(paths.caCert) and \(paths.caKey) must both exist or both be absent; delete the one left to make a new CA (agents will need the new ca.crt)")
    }

    switch (Files.exists(paths.hubCert), Files.exists(paths.hubKey)) {
    case (false, false):
      if ca == nil {
        do {
          ca = try HubPKI.load(certificatePEM: Files.readText(paths.caCert), keyPEM: Files.readText(paths.caKey))
        } catch let e as HubError {
          throw e
        } catch {
          throw HubError(.certificate, "cannot read the CA to sign a new hub certificate: \(error)", file: paths.caCert)
        }
      }
      let hub = try HubPKI.makeServing(hosts: wantedHosts, ca: ca!, now: now)
      if try Files.createNew(paths.hubKey, Data(hub.keyPEM.utf8), mode: 0o600) { report.created.append(paths.hubKey) }
      if try Files.createNew(paths.hubCert, Data(hub.certificatePEM.utf8), mode: 0o644) { report.created.append(paths.hubCert) }
    case (true, true):
      report.notices += checkServing(hosts: wantedHosts, now: now)
    case (true, false), (false, true):
      throw HubError(.certificate, "\(paths.hubCert) and \(paths.hubKey) must both exist or both be absent; delete the one left to make a new hub certificate")
    }

    if try Files.createNew(paths.clusters, Data(Self.initialClusters.utf8), mode: 0o600) {
      report.created.append(paths.clusters)
    }
    let token = RandomToken.make()
    if try Files.createNew(paths.tokens, Data(Self.initialTokens(adminToken: token).utf8), mode: 0o600) {
      report.created.append(paths.tokens)
      report.adminToken = token
    }
    if try Files.createNew(paths.rbac, Data(try Self.initialRBAC().utf8), mode: 0o644) {
      report.created.append(paths.rbac)
    }
    report.notices += Self.exposedSecrets(paths.secretFiles)
    return report
  }

  /// Refuses a state folder that group or others may write: they could
  /// replace clusters.yaml, tokens.csv or rbac.yaml (or a key) and so give
  /// themselves any access, whatever the files' own modes say.
  static func checkFolder(_ dir: String) throws {
    guard let mode = Files.mode(dir), mode & 0o022 != 0 else { return }
    let who = mode & 0o020 != 0 && mode & 0o002 != 0 ? "its group and everyone" : mode & 0o020 != 0 ? "its group" : "everyone"
    throw HubError(.insecure, """
      the state folder is writable by \(who) (mode \(String(mode, radix: 8))): whoever can write there can \
      replace tokens.csv or rbac.yaml and grant themselves access; the hub does not start. \
      Fix: chmod go-w \(dir) (0700 is best: it holds keys and tokens)
      """, file: dir)
  }

  /// A line per secret file group or others may read (or write), for the
  /// hub to log as a warning at start.
  static func exposedSecrets(_ files: [String]) -> [String] {
    files.compactMap { f in
      guard let mode = Files.mode(f), mode & 0o077 != 0 else { return nil }
      return "SECURITY: \(f) holds secrets but its mode is \(String(mode, radix: 8)): group or others can " +
        "\(mode & 0o022 != 0 ? "change" : "read") it; fix: chmod 600 \(f)"
    }
  }

  private func checkServing(hosts: [String], now: Date) -> [String] {
    guard let pem = try? Files.readText(paths.hubCert), let cert = try? Certificate(pemEncoded: pem) else {
      return ["\(paths.hubCert) is not a PEM certificate this hub can read; TLS will report why"]
    }
    var out: [String] = []
    let remedy = "delete \(paths.hubCert) and \(paths.hubKey) and restart to make a new one"
    if cert.notValidAfter < now {
      out.append("\(paths.hubCert) expired on \(cert.notValidAfter); \(remedy)")
    } else if cert.notValidAfter < now + 30 * 86_400 {
      out.append("\(paths.hubCert) expires on \(cert.notValidAfter); \(remedy)")
    }
    let missing = HubPKI.missingHosts(hosts, in: cert)
    if !missing.isEmpty {
      out.append("\(paths.hubCert) does not cover \(missing.joined(separator: ", ")); agents dialing that name will fail to verify the hub; \(remedy)")
    }
    return out
  }

  static let initialClusters = """
    # Member clusters this hub accepts agents from: Cluster objects, exactly as
    # for a host cluster (kubectl apply -f), separated by ---. Edits apply
    # within a second. `kopilot-hub cluster add NAMESPACE/NAME` adds one with
    # a new token. Example:
    #
    # apiVersion: kopilot.smartx.com/v1alpha1
    # kind: Cluster
    # metadata:
    #   name: sample
    #   namespace: default
    # token: at-least-16-characters

    """

  static func initialTokens(adminToken: String) -> String {
    """
    # Callers of /proxy/..., in kube-apiserver's --token-auth-file format:
    # token,user,uid,"group1,group2"
    # What each may do is in rbac.yaml. Edits apply within a second.
    \(adminToken),\(adminUser),\(adminUser),"\(adminGroup)"

    """
  }

  static func initialRBAC() throws -> String {
    let role = ManifestDocument(
      apiVersion: RBACPolicy.apiVersion, kind: "ClusterRole", metadata: ManifestMeta(name: "kopilot-admin"),
      body: ClusterRoleBody(rules: [
        PolicyRuleModel(nonResourceURLs: ["/proxy/*"], verbs: ["*"]),
        PolicyRuleModel(nonResourceURLs: ["/metrics"], verbs: ["get"]),
      ]))
    let binding = ManifestDocument(
      apiVersion: RBACPolicy.apiVersion, kind: "ClusterRoleBinding", metadata: ManifestMeta(name: "kopilot-admins"),
      body: ClusterRoleBindingBody(
        roleRef: RoleRefModel(name: "kopilot-admin"),
        subjects: [SubjectModel(kind: "Group", apiGroup: RBACPolicy.apiGroup, name: adminGroup)]))
    let header = """
      # Who may do what through the hub: ClusterRoles with nonResourceURLs
      # (/proxy/NAMESPACE_NAME/..., a trailing * matches by prefix) and verbs
      # (get, create, update, patch, delete or *), bound to users, groups and
      # service accounts, as on a host cluster. Edits apply within a second.

      """
    return header + (try YAMLStream.serialize([YAMLStream.node(role), YAMLStream.node(binding)]))
  }
}
