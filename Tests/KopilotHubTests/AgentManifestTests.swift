import Foundation
@testable import KopilotHub
import KopilotPKI
import XCTest
import Yams

final class AgentManifestTests: XCTestCase {
  let caPEM = try! HubPKI.makeCA().certificatePEM

  func render(_ provider: String, token: String = "tok-0123456789abcdef",
              identity: IdentityMode = .impersonate) throws -> [[String: Any]] {
    let yaml = try AgentManifest.render(publicAddr: "hub.example.com:8443", token: token, caPEM: caPEM,
                                        image: "ghcr.io/example/kopilot-agent:v1", provider: provider,
                                        identity: identity)
    let docs = try Yams.load_all(yaml: yaml).map { $0 as! [String: Any] }
    // Every object is a whole Kubernetes object.
    for d in docs {
      XCTAssertFalse((d["apiVersion"] as? String ?? "").isEmpty, "\(d)")
      XCTAssertFalse((d["kind"] as? String ?? "").isEmpty, "\(d)")
      XCTAssertFalse(((d["metadata"] as? [String: Any])?["name"] as? String ?? "").isEmpty, "\(d)")
    }
    return docs
  }

  func object(_ docs: [[String: Any]], _ kind: String) -> [String: Any] {
    docs.first { $0["kind"] as? String == kind }!
  }

  func podSpec(_ docs: [[String: Any]]) -> [String: Any] {
    let ds = object(docs, "DaemonSet")
    return ((ds["spec"] as! [String: Any])["template"] as! [String: Any])["spec"] as! [String: Any]
  }

  func testCommonObjects() throws {
    let docs = try render("")
    XCTAssertEqual(docs.map { $0["kind"] as! String },
                   ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Secret", "DaemonSet"])
    XCTAssertEqual((object(docs, "Namespace")["metadata"] as! [String: Any])["name"] as? String, "kopilot-system")
    let crb = object(docs, "ClusterRoleBinding")
    XCTAssertEqual((crb["roleRef"] as! [String: Any])["name"] as? String, "kopilot-agent-impersonate")
    let subj = (crb["subjects"] as! [[String: Any]])[0]
    XCTAssertEqual(subj["kind"] as? String, "ServiceAccount")
    XCTAssertEqual(subj["name"] as? String, "kopilot-agent")
    XCTAssertEqual(subj["namespace"] as? String, "kopilot-system")
    XCTAssertEqual((object(docs, "ConfigMap")["data"] as! [String: Any])["ca.crt"] as? String, caPEM)
    let secret = object(docs, "Secret")["stringData"] as! [String: Any]
    // The token is not in the URL: the agent sends it in a header.
    XCTAssertEqual(secret["connect-url"] as? String, "wss://hub.example.com:8443/connect")
    XCTAssertEqual(secret["token"] as? String, "tok-0123456789abcdef")

    let pod = podSpec(docs)
    XCTAssertEqual(pod["serviceAccountName"] as? String, "kopilot-agent")
    let c = (pod["containers"] as! [[String: Any]])[0]
    XCTAssertEqual(c["image"] as? String, "ghcr.io/example/kopilot-agent:v1")
    let args = c["args"] as! [String]
    XCTAssertTrue(args.contains("--hub-ca=/etc/kopilot/hub-ca/ca.crt"), "\(args)")
    let env = c["env"] as! [[String: Any]]
    XCTAssertEqual(env.map { $0["name"] as? String }, ["CONNECT_URL", "HUB_TOKEN"])
    XCTAssertEqual(env.map { (($0["valueFrom"] as? [String: Any])?["secretKeyRef"] as? [String: String])?["key"] },
                   ["connect-url", "token"])
    let sc = c["securityContext"] as! [String: Any]
    XCTAssertEqual(sc["readOnlyRootFilesystem"] as? Bool, true)
    XCTAssertEqual(sc["runAsNonRoot"] as? Bool, true)
    XCTAssertEqual(sc["allowPrivilegeEscalation"] as? Bool, false)
    XCTAssertNotNil((c["resources"] as! [String: Any])["requests"])
    XCTAssertNotNil((c["resources"] as! [String: Any])["limits"])
    let mount = (c["volumeMounts"] as! [[String: Any]])[0]
    XCTAssertEqual(mount["mountPath"] as? String, "/etc/kopilot/hub-ca")
    let vol = (pod["volumes"] as! [[String: Any]])[0]
    XCTAssertEqual((vol["configMap"] as! [String: Any])["name"] as? String, "kopilot-hub-ca")
    // The selector matches the template's labels.
    let ds = object(docs, "DaemonSet")["spec"] as! [String: Any]
    let sel = (ds["selector"] as! [String: Any])["matchLabels"] as! [String: String]
    let labels = ((ds["template"] as! [String: Any])["metadata"] as! [String: Any])["labels"] as! [String: String]
    for (k, v) in sel { XCTAssertEqual(labels[k], v) }
    // Plain: every Linux node, the pod network, the in-cluster API server address.
    XCTAssertNil(pod["hostNetwork"])
    XCTAssertNil(pod["tolerations"])
    XCTAssertFalse(args.contains { $0.hasPrefix("--apiserver") })
    // The token is not in the DaemonSet itself.
    XCTAssertFalse("\(object(docs, "DaemonSet"))".contains("tok-0123456789abcdef"))
  }

  /// impersonate and passthrough: the agent may impersonate and do nothing
  /// else; no binding to any other role.
  func testImpersonatingAgentsGetOnlyTheImpersonateVerb() throws {
    for mode in [IdentityMode.impersonate, .passthrough] {
      let docs = try render("", identity: mode)
      let roles = docs.filter { $0["kind"] as? String == "ClusterRole" || $0["kind"] as? String == "Role" }
      XCTAssertEqual(roles.count, 1)
      let rules = roles[0]["rules"] as! [[String: Any]]
      XCTAssertEqual(Set(rules.flatMap { $0["verbs"] as! [String] }), ["impersonate"], "\(mode)")
      XCTAssertTrue(rules.allSatisfy { $0["nonResourceURLs"] == nil && $0["resourceNames"] == nil })
      XCTAssertEqual(rules.map { $0["apiGroups"] as! [String] }, [[""], ["authentication.k8s.io"]])
      XCTAssertEqual(rules.map { $0["resources"] as! [String] }, [["users", "groups"], ["*"]])
      let bindings = docs.filter { ($0["kind"] as? String ?? "").hasSuffix("Binding") }
      XCTAssertEqual(bindings.map { ($0["roleRef"] as! [String: Any])["name"] as? String }, ["kopilot-agent-impersonate"])
    }
  }

  /// agent: every caller acts as the agent, which keeps cluster-admin.
  func testAgentModeKeepsClusterAdmin() throws {
    let docs = try render("", identity: .agent)
    XCTAssertEqual(docs.map { $0["kind"] as! String },
                   ["Namespace", "ServiceAccount", "ClusterRoleBinding", "ConfigMap", "Secret", "DaemonSet"])
    XCTAssertEqual((object(docs, "ClusterRoleBinding")["roleRef"] as! [String: Any])["name"] as? String, "cluster-admin")
  }

  func testLocalProviders() throws {
    for (provider, port) in [("minikube", 8443), ("kind", 6443), (" Kind ", 6443)] {
      let pod = podSpec(try render(provider))
      XCTAssertEqual(pod["hostNetwork"] as? Bool, true, provider)
      XCTAssertEqual(pod["dnsPolicy"] as? String, "Default", provider)
      XCTAssertEqual(pod["nodeSelector"] as? [String: String], ["node-role.kubernetes.io/control-plane": ""], provider)
      let keys = (pod["tolerations"] as! [[String: Any]]).map { $0["key"] as! String }
      XCTAssertEqual(Set(keys), ["node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"], provider)
      let args = (pod["containers"] as! [[String: Any]])[0]["args"] as! [String]
      XCTAssertTrue(args.contains("--apiserver=https://127.0.0.1:\(port)"), "\(provider): \(args)")
    }
  }

  func testUnknownProviderAndBadInputs() {
    XCTAssertThrowsError(try render("k3s")) { e in
      XCTAssertEqual((e as? HubError)?.code, .unknownProvider)
      XCTAssertTrue("\(e)".contains("\"minikube\", \"kind\""), "\(e)")
    }
    for addr in ["https://hub", "hub/x", "", "hub:1?x"] {
      XCTAssertThrowsError(try AgentManifest.render(publicAddr: addr, token: "t", caPEM: caPEM, image: "i"), addr)
    }
    XCTAssertThrowsError(try AgentManifest.render(publicAddr: "h", token: "t", caPEM: "junk", image: "i"))
    XCTAssertThrowsError(try AgentManifest.render(publicAddr: "h", token: "t", caPEM: caPEM, image: ""))
  }

  func testValuesStayData() throws {
    // A token that YAML would read as a number, and one with URL and YAML
    // specials: the Secret holds each as the string it is.
    for token in ["12345678901234567890", "a&b=c#d:e+f/g'h\"i"] {
      let docs = try render("", token: token)
      XCTAssertEqual((object(docs, "Secret")["stringData"] as! [String: Any])["token"] as? String, token)
    }
    // IPv6 public address.
    let v6 = try AgentManifest.render(publicAddr: "[fd00::1]:443", token: "t", caPEM: caPEM, image: "i")
    XCTAssertTrue(v6.contains("wss://[fd00::1]:443/connect\n"), v6)
    XCTAssertFalse(v6.contains("token="), v6)
    // Same input, same bytes.
    let a = try AgentManifest.render(publicAddr: "h", token: "t", caPEM: caPEM, image: "i", provider: "kind")
    let b = try AgentManifest.render(publicAddr: "h", token: "t", caPEM: caPEM, image: "i", provider: "kind")
    XCTAssertEqual(a, b)
  }
}
