import Foundation
import Yams

/// The manifest that installs kopilot-agent in a member cluster, served at
/// `GET /kopilot-agent.yaml?token=T&provider=P`.
///
/// Objects, in apply order: Namespace `kopilot-system`; ServiceAccount
/// `kopilot-agent`; its rights (below); ConfigMap `kopilot-hub-ca` with the
/// hub's CA; Secret `kopilot-agent` with the connect URL and the cluster's
/// token; DaemonSet `kopilot-agent`.
///
/// Its rights follow the cluster's identity mode. `impersonate` and
/// `passthrough`: ClusterRole `kopilot-agent-impersonate`, the verb
/// `impersonate` and nothing else (users and groups in the core group;
/// every resource of authentication.k8s.io, which is uids and
/// userextras/<key>: RBAC has no pattern for "userextras/ any key"), bound to
/// the ServiceAccount; each caller's request then runs with the member RBAC
/// of the caller the hub names. `agent`: a binding to `cluster-admin`, as the
/// original kopilot agent has, since every caller acts as the agent and only
/// the hub's RBAC limits them.
///
/// The token travels in the Secret and reaches the agent as `HUB_TOKEN`
/// (the URL as `CONNECT_URL`), rather than as a command-line argument: a
/// DaemonSet's args are readable by anyone who may read workloads (the
/// built-in `view` role), and show up in `ps` on the node. It is not in the
/// URL either: the agent sends it as `Authorization: Bearer`, since a URL's
/// query is what proxies and access logs keep.
///
/// Providers (what differs for that kind of member cluster):
/// - `""`: any conformant cluster. The agent runs on every Linux node and
///   reaches the API server through the `kubernetes` Service, the address the
///   pod's environment gives.
/// - `"minikube"`, `"kind"`: local clusters whose API server runs as a static
///   pod on the control-plane node. The agent runs only there (tolerating the
///   control-plane taint, under both its current and its pre-1.24 `master`
///   name) with `hostNetwork`, and talks to the API server on 127.0.0.1 at the
///   provider's port: 8443 for minikube, 6443 for kind (kubeadm's default).
///   Both put 127.0.0.1 in the API server certificate. So the tunnel does not
///   depend on the cluster's CNI or kube-proxy, which on these clusters are
///   what breaks first when a laptop sleeps or its network changes - the
///   tunnel stays up to debug them. The original kopilot differed per
///   provider too, but in what it mounted from the node (the PKI directory,
///   /etc/kubernetes/pki or minikube's /var/lib/minikube/certs, for the
///   front-proxy client certificate); this agent authenticates with its
///   ServiceAccount token and mounts nothing from the node.
public enum AgentManifest {
  public static let namespace = "kopilot-system"
  public static let name = "kopilot-agent"
  public static let caConfigMap = "kopilot-hub-ca"
  public static let knownProviders = ["", "minikube", "kind"]
  /// The image manifests name unless told otherwise.
  public static let defaultImage = "ghcr.io/kopilot/kopilot-agent:latest"
  static let caMountPath = "/etc/kopilot/hub-ca"

  /// - Parameters:
  ///   - publicAddr: `host` or `host:port` the agent dials (no scheme, no path).
  ///   - token: the cluster's agent token.
  ///   - caPEM: the hub's CA certificate(s), PEM, which the agent trusts.
  ///   - image: the agent's container image.
  ///   - provider: `""`, `"minikube"` or `"kind"` (case and surrounding space
  ///     ignored, as the original hub did).
  /// - Returns: a multi-document YAML stream.
  ///   - identity: the cluster's identity mode, which decides the agent's
  ///     rights.
  public static func render(publicAddr: String, token: String, caPEM: String, image: String,
                            provider: String = "", identity: IdentityMode = .impersonate) throws -> String {
    let p = provider.trimmingCharacters(in: .whitespaces).lowercased()
    guard knownProviders.contains(p) else {
      throw HubError(.unknownProvider,
                     "unknown provider \"\(provider)\"; known providers: \"\" (any Kubernetes), \"minikube\", \"kind\"")
    }
    guard !publicAddr.isEmpty, !publicAddr.contains("/"), !publicAddr.contains("?"), !publicAddr.contains("#"),
          !publicAddr.contains("@"), !publicAddr.contains(where: { $0 == " " }) else {
      throw HubError(.invalid, "the public address must be host or host:port, not \"\(publicAddr)\"")
    }
    guard !token.isEmpty else { throw HubError(.invalid, "the agent token is empty") }
    guard caPEM.contains("-----BEGIN CERTIFICATE-----") else {
      throw HubError(.invalid, "the hub CA is not a PEM certificate")
    }
    guard !image.isEmpty else { throw HubError(.invalid, "the agent image is empty") }

    // host[:port] (an IPv6 host in brackets) is already in URL form.
    let connect = "wss://\(publicAddr)/connect"

    let labels: StringMap = ["app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "kopilot"]
    let ns = ManifestDocument(apiVersion: "v1", kind: "Namespace",
                          metadata: ManifestMeta(name: namespace, labels: ["app.kubernetes.io/part-of": "kopilot"]),
                          body: NoBody())
    let sa = ManifestDocument(apiVersion: "v1", kind: "ServiceAccount",
                          metadata: ManifestMeta(name: name, namespace: namespace, labels: labels), body: NoBody())
    let rights = try identity == .agent ? agentRights(labels: labels) : impersonateRights(labels: labels)
    let cm = ManifestDocument(apiVersion: "v1", kind: "ConfigMap",
                          metadata: ManifestMeta(name: caConfigMap, namespace: namespace, labels: labels),
                          body: DataBody(data: ["ca.crt": caPEM]))
    let secret = ManifestDocument(apiVersion: "v1", kind: "Secret",
                              metadata: ManifestMeta(name: name, namespace: namespace, labels: labels),
                              body: StringDataBody(stringData: ["connect-url": connect, "token": token]))
    let ds = ManifestDocument(apiVersion: "apps/v1", kind: "DaemonSet",
                          metadata: ManifestMeta(name: name, namespace: namespace, labels: labels),
                          body: daemonSet(provider: p, image: image, labels: labels))
    return try YAMLStream.serialize([YAMLStream.node(ns), YAMLStream.node(sa)] + rights + [
      YAMLStream.node(cm), YAMLStream.node(secret), YAMLStream.node(ds),
    ])
  }

  /// The name of the role and binding of the impersonate modes.
  public static let impersonateRole = "\(name)-impersonate"

  private static func binding(_ name: String, role: String, labels: StringMap) -> ManifestDocument<ClusterRoleBindingBody> {
    ManifestDocument(
      apiVersion: "rbac.authorization.k8s.io/v1", kind: "ClusterRoleBinding",
      metadata: ManifestMeta(name: name, labels: labels),
      body: ClusterRoleBindingBody(
        roleRef: RoleRefModel(name: role),
        subjects: [SubjectModel(kind: "ServiceAccount", name: Self.name, namespace: namespace)]))
  }

  private static func impersonateRights(labels: StringMap) throws -> [Node] {
    let role = ManifestDocument(
      apiVersion: "rbac.authorization.k8s.io/v1", kind: "ClusterRole",
      metadata: ManifestMeta(name: impersonateRole, labels: labels),
      body: ClusterRoleBody(rules: [
        PolicyRuleModel(apiGroups: [""], resources: ["users", "groups"], verbs: ["impersonate"]),
        PolicyRuleModel(apiGroups: ["authentication.k8s.io"], resources: ["*"], verbs: ["impersonate"]),
      ]))
    let b = binding(impersonateRole, role: impersonateRole, labels: labels)
    return [try YAMLStream.node(role), try YAMLStream.node(b)]
  }

  private static func agentRights(labels: StringMap) throws -> [Node] {
    [try YAMLStream.node(binding("\(name)-cluster-admin", role: "cluster-admin", labels: labels))]
  }

  private static func daemonSet(provider: String, image: String, labels: StringMap) -> DaemonSetBody {
    var args = ["--hub-ca=\(caMountPath)/ca.crt"]
    var pod = PodSpec(
      serviceAccountName: name,
      containers: [],
      volumes: [Volume(name: "hub-ca", configMap: .init(name: caConfigMap))])
    switch provider {
    case "minikube", "kind":
      let port = provider == "minikube" ? 8443 : 6443
      args.append("--apiserver=https://127.0.0.1:\(port)")
      pod.hostNetwork = true
      // The node's resolver, not CoreDNS: the hub is outside the cluster,
      // and the point of hostNetwork is not to depend on cluster add-ons.
      pod.dnsPolicy = "Default"
      pod.nodeSelector = ["node-role.kubernetes.io/control-plane": ""]
      pod.tolerations = [
        Toleration(key: "node-role.kubernetes.io/control-plane", operator: "Exists", effect: "NoSchedule"),
        Toleration(key: "node-role.kubernetes.io/master", operator: "Exists", effect: "NoSchedule"),
      ]
    default:
      pod.nodeSelector = ["kubernetes.io/os": "linux"]
    }
    pod.containers = [
      Container(
        name: name, image: image, args: args,
        env: [EnvVar(name: "CONNECT_URL",
                     valueFrom: .init(secretKeyRef: .init(name: name, key: "connect-url"))),
              EnvVar(name: "HUB_TOKEN",
                     valueFrom: .init(secretKeyRef: .init(name: name, key: "token")))],
        resources: Resources(requests: ["cpu": "10m", "memory": "32Mi"], limits: ["memory": "256Mi"]),
        securityContext: ContainerSecurityContext(),
        volumeMounts: [VolumeMount(name: "hub-ca", mountPath: caMountPath, readOnly: true)])
    ]
    return DaemonSetBody(spec: .init(
      selector: .init(matchLabels: ["app.kubernetes.io/name": name]),
      template: .init(metadata: .init(labels: labels), spec: pod)))
  }
}

// MARK: - The DaemonSet's shape

struct DaemonSetBody: Encodable {
  struct Spec: Encodable {
    struct Selector: Encodable { var matchLabels: StringMap }
    struct Template: Encodable {
      struct Meta: Encodable { var labels: StringMap }
      var metadata: Meta
      var spec: PodSpec
    }
    struct Strategy: Encodable {
      struct RollingUpdate: Encodable { var maxUnavailable = 1 }
      var type = "RollingUpdate"
      var rollingUpdate = RollingUpdate()
    }
    var selector: Selector
    var updateStrategy = Strategy()
    var template: Template
  }
  var spec: Spec
}

struct PodSpec: Encodable {
  struct PodSecurityContext: Encodable {
    struct Seccomp: Encodable { var type = "RuntimeDefault" }
    var runAsNonRoot = true
    var runAsUser = 65532
    var runAsGroup = 65532
    var seccompProfile = Seccomp()
  }
  var serviceAccountName: String
  // The agent needs its token to reach the API server.
  var automountServiceAccountToken = true
  var hostNetwork: Bool?
  var dnsPolicy: String?
  var nodeSelector: StringMap?
  var tolerations: [Toleration]?
  var securityContext = PodSecurityContext()
  // The agent drains requests in flight for 30 s after SIGTERM (--grace-period).
  var terminationGracePeriodSeconds = 35
  var containers: [Container]
  var volumes: [Volume]
}

struct Toleration: Encodable {
  var key: String
  var `operator`: String
  var effect: String
}

struct Container: Encodable {
  var name: String
  var image: String
  var args: [String]
  var env: [EnvVar]
  var resources: Resources
  var securityContext: ContainerSecurityContext
  var volumeMounts: [VolumeMount]
}

struct EnvVar: Encodable {
  struct Source: Encodable {
    struct KeyRef: Encodable {
      var name: String
      var key: String
    }
    var secretKeyRef: KeyRef
  }
  var name: String
  var valueFrom: Source
}

struct Resources: Encodable {
  var requests: StringMap
  var limits: StringMap
}

/// What the `restricted` Pod Security Standard asks of a container: the
/// agent only dials out and reads two mounted files, so it needs nothing more.
struct ContainerSecurityContext: Encodable {
  struct Capabilities: Encodable { var drop = ["ALL"] }
  var allowPrivilegeEscalation = false
  var readOnlyRootFilesystem = true
  var runAsNonRoot = true
  var capabilities = Capabilities()
}

struct VolumeMount: Encodable {
  var name: String
  var mountPath: String
  var readOnly: Bool
}

struct Volume: Encodable {
  struct ConfigMapSource: Encodable { var name: String }
  var name: String
  var configMap: ConfigMapSource
}
