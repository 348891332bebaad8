import Foundation
import KopilotIO
import Logging
import Yams

/// The RBAC objects that matter to the hub: ClusterRoles' non-resource rules
/// and the ClusterRoleBindings that grant them.
public struct RBACPolicy: Sendable, Equatable {
  public struct Rule: Sendable, Equatable {
    public var verbs: [String]
    public var nonResourceURLs: [String]

    /// kube-apiserver's rule matching (rbac/v1 helpers): `*` matches every
    /// verb / every path; a URL ending in `*` matches by prefix; anything
    /// else matches exactly.
    public func matches(verb: String, path: String) -> Bool {
      verbs.contains { $0 == "*" || $0 == verb } && nonResourceURLs.contains { u in
        u == "*" || u == path || (u.hasSuffix("*") && path.hasPrefix(u.dropLast()))
      }
    }
  }

  public struct ClusterRole: Sendable, Equatable {
    public var name: String
    public var rules: [Rule]
  }

  public struct Subject: Sendable, Equatable, CustomStringConvertible {
    public var kind: String
    public var name: String
    public var namespace: String?

    public func matches(_ user: UserInfo) -> Bool {
      switch kind {
      case "User": return user.name == name
      case "Group": return user.groups.contains(name)
      // A service account authenticates as system:serviceaccount:NS:NAME.
      case "ServiceAccount": return user.name == "system:serviceaccount:\(namespace ?? ""):\(name)"
      default: return false
      }
    }

    /// As kube-apiserver's allow reason names subjects: `User "alice"`,
    /// `ServiceAccount "name/namespace"`.
    public var description: String {
      kind == "ServiceAccount" ? "ServiceAccount \"\(name)/\(namespace ?? "")\"" : "\(kind) \"\(name)\""
    }
  }

  public struct ClusterRoleBinding: Sendable, Equatable {
    public var name: String
    public var roleName: String
    public var subjects: [Subject]
  }

  /// By name.
  public var roles: [String: ClusterRole]
  /// Sorted by name, so the reason named for an allow is deterministic.
  public var bindings: [ClusterRoleBinding]
  /// Things that are legal but grant nothing (a binding to a missing role,
  /// a Role or RoleBinding, which cannot grant non-resource URLs): logged.
  public var warnings: [String]

  public static let apiVersion = "rbac.authorization.k8s.io/v1"
  public static let apiGroup = "rbac.authorization.k8s.io"

  public func decide(_ r: AuthorizationRequest) -> AuthorizationDecision {
    guard let verb = r.verb else {
      return .deny(r, reason: RBACVerb.noVerbReason(r))
    }
    for b in bindings {
      guard let subject = b.subjects.first(where: { $0.matches(r.user) }), let role = roles[b.roleName] else { continue }
      if role.rules.contains(where: { $0.matches(verb: verb, path: r.path) }) {
        return AuthorizationDecision(
          allowed: true,
          reason: "RBAC: allowed by ClusterRoleBinding \"\(b.name)\" of ClusterRole \"\(role.name)\" to \(subject)")
      }
    }
    let groups = r.user.groups.map { "\"\($0)\"" }.joined(separator: ", ")
    return .deny(r, reason: "no ClusterRoleBinding grants \(verb) on \(r.path) to user \"\(r.user.name)\" (groups \(groups.isEmpty ? "none" : groups))")
  }
}

/// rbac.yaml: ClusterRole and ClusterRoleBinding objects exactly as
/// `kubectl apply` takes them, in a multi-document stream or a `List`.
/// Other kinds (the ServiceAccount or Pod of a pasted example) are skipped
/// with a warning, so a manifest written for a host cluster works here as is.
public enum RBACFile {
  private struct RoleShape: Decodable {
    struct RuleShape: Decodable {
      var verbs: [String]?
      var nonResourceURLs: [String]?
      var resources: [String]?
    }
    var rules: [RuleShape]?
  }

  private struct BindingShape: Decodable {
    struct Ref: Decodable {
      var apiGroup: String?
      var kind: String?
      var name: String?
    }
    struct SubjectShape: Decodable {
      var kind: String?
      var apiGroup: String?
      var name: String?
      var namespace: String?
    }
    var roleRef: Ref?
    var subjects: [SubjectShape]?
  }

  public static func parse(_ text: String, file: String = "rbac.yaml") throws -> RBACPolicy {
    var roles: [String: RBACPolicy.ClusterRole] = [:]
    var roleLines: [String: Int] = [:]
    var bindings: [String: RBACPolicy.ClusterRoleBinding] = [:]
    var bindingLines: [String: Int] = [:]
    var warnings: [String] = []
    let lists: Set<String> = ["ClusterRoleList", "ClusterRoleBindingList"]
    for obj in try YAMLObjects.objects(in: text, file: file, listKinds: lists) {
      func fail(_ m: String, _ code: HubError.Code = .invalid) -> HubError {
        HubError(code, m, file: file, line: obj.line, object: obj.label)
      }
      let at = "\(file):\(obj.line ?? 0): \(obj.label)"
      switch obj.kind {
      case "ClusterRole", "ClusterRoleBinding":
        guard obj.apiVersion == RBACPolicy.apiVersion else {
          throw fail("apiVersion must be \(RBACPolicy.apiVersion), not \(obj.apiVersion)")
        }
        guard !obj.name.isEmpty else { throw fail("metadata.name is missing") }
      case "Role", "RoleBinding":
        warnings.append("\(at): skipped: only ClusterRoles can grant nonResourceURLs such as /proxy/*")
        continue
      default:
        warnings.append("\(at): skipped: the hub reads only ClusterRole and ClusterRoleBinding here")
        continue
      }
      if obj.kind == "ClusterRole" {
        let shape = try YAMLObjects.decode(RoleShape.self, obj, file: file)
        if obj.node.mapping?["aggregationRule"] != nil {
          warnings.append("\(at): aggregationRule is not evaluated by the embedded hub; only its own rules count")
        }
        var rules: [RBACPolicy.Rule] = []
        for (i, r) in (shape.rules ?? []).enumerated() {
          let urls = r.nonResourceURLs ?? []
          if urls.isEmpty {
            // A resource rule governs API objects, which the hub does not serve.
            if r.resources == nil { throw fail("rules[\(i)] has neither nonResourceURLs nor resources") }
            continue
          }
          guard let verbs = r.verbs, !verbs.isEmpty else { throw fail("rules[\(i)].verbs must list at least one verb") }
          for u in urls {
            // As kube-apiserver validates: a path, and `*` only at the end.
            guard u == "*" || u.hasPrefix("/") else { throw fail("rules[\(i)].nonResourceURLs: \"\(u)\" must start with /") }
            guard !u.dropLast().contains("*") else {
              throw fail("rules[\(i)].nonResourceURLs: \"\(u)\" may have * only at the end")
            }
          }
          rules.append(RBACPolicy.Rule(verbs: verbs, nonResourceURLs: urls))
        }
        if let first = roleLines[obj.name] {
          throw fail("defined twice (first at line \(first))", .duplicate)
        }
        roleLines[obj.name] = obj.line ?? 0
        roles[obj.name] = RBACPolicy.ClusterRole(name: obj.name, rules: rules)
      } else {
        let shape = try YAMLObjects.decode(BindingShape.self, obj, file: file)
        guard let ref = shape.roleRef else { throw fail("roleRef is missing") }
        guard ref.kind == "ClusterRole" else {
          throw fail("roleRef.kind must be ClusterRole, not \(ref.kind ?? "nothing")")
        }
        guard ref.apiGroup == nil || ref.apiGroup == RBACPolicy.apiGroup else {
          throw fail("roleRef.apiGroup must be \(RBACPolicy.apiGroup)")
        }
        guard let roleName = ref.name, !roleName.isEmpty else { throw fail("roleRef.name is missing") }
        var subjects: [RBACPolicy.Subject] = []
        for (i, s) in (shape.subjects ?? []).enumerated() {
          guard let name = s.name, !name.isEmpty else { throw fail("subjects[\(i)].name is missing") }
          switch s.kind {
          case "User", "Group":
            // kube-apiserver defaults an empty apiGroup for these two.
            guard s.apiGroup == nil || s.apiGroup == "" || s.apiGroup == RBACPolicy.apiGroup else {
              throw fail("subjects[\(i)].apiGroup must be \(RBACPolicy.apiGroup) for kind \(s.kind!)")
            }
          case "ServiceAccount":
            guard let ns = s.namespace, !ns.isEmpty else {
              throw fail("subjects[\(i)]: a ServiceAccount subject needs a namespace")
            }
          default:
            throw fail("subjects[\(i)].kind must be User, Group or ServiceAccount, not \(s.kind ?? "nothing")")
          }
          subjects.append(RBACPolicy.Subject(kind: s.kind!, name: name, namespace: s.kind == "ServiceAccount" ? s.namespace : nil))
        }
        if let first = bindingLines[obj.name] {
          throw fail("defined twice (first at line \(first))", .duplicate)
        }
        bindingLines[obj.name] = obj.line ?? 0
        bindings[obj.name] = RBACPolicy.ClusterRoleBinding(name: obj.name, roleName: roleName, subjects: subjects)
      }
    }
    for b in bindings.values.sorted(by: { $0.name < $1.name }) where roles[b.roleName] == nil {
      warnings.append("\(file):\(bindingLines[b.name] ?? 0): ClusterRoleBinding \(b.name): ClusterRole \(b.roleName) does not exist; the binding grants nothing")
    }
    return RBACPolicy(roles: roles, bindings: bindings.values.sorted { $0.name < $1.name }, warnings: warnings)
  }
}

/// The embedded authorizer: rbac.yaml, reloaded when it changes.
public final class RBACAuthorizer: Authorizer, Sendable {
  private let file: ReloadingFile<RBACPolicy>

  /// Loads `path` now (throws when it is missing or invalid) and, when
  /// `pollInterval` is not nil, watches it; a broken edit keeps the last good
  /// policy and is logged.
  public init(path: String, pollInterval: TimeInterval? = 1,
              logger: Logger = Logger(label: "kopilot.hub.authz")) throws {
    file = try ReloadingFile(path: path, what: "RBAC policy", pollInterval: pollInterval, logger: logger) { data in
      let p = try RBACFile.parse(String(decoding: data, as: UTF8.self), file: path)
      for w in p.warnings { logger.warning("\(w)") }
      return p
    }
  }

  /// Synchronous decision, safe on the hub's loop thread.
  public func decide(_ request: AuthorizationRequest) -> AuthorizationDecision { file.current.decide(request) }

  public func authorize(_ request: AuthorizationRequest) async throws -> AuthorizationDecision { decide(request) }
  public func authorizeNow(_ request: AuthorizationRequest) -> Result<AuthorizationDecision, Error>? { .success(decide(request)) }

  /// The policy in force.
  public var policy: RBACPolicy { file.current }
  public var lastReloadError: HubError? { file.lastError }
  public func stop() { file.stop() }
}
