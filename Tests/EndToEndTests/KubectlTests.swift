import Foundation
import XCTest

#if canImport(Glibc)
  import Glibc
#endif

/// The real kubectl through hub -> agent -> a faithful fake kube-apiserver
/// (Tests/FakeAPIServer), with the oldest and the newest kubectl on this
/// machine: 1.27 upgrades over SPDY/3.1, 1.33 over WebSocket, so both kinds
/// of upgrade cross the tunnel.
class KubectlTestCase: E2ETestCase {
  var kubectlName: String { fatalError("a subclass names its kubectl") }
  /// The agent finds the API server through a kubeconfig (as outside a
  /// cluster) instead of --apiserver/--token-file/--ca-file.
  var agentUsesKubeconfig: Bool { false }
  /// The member's agent is one built the original design's way
  /// (perf/baseline/agent) instead of ours.
  var useGoAgent: Bool { false }
  /// More flags for the fake member API server and for the hub. Both keep
  /// an audit log (the fake's as kube-apiserver's, with the audit IDs it
  /// adopted).
  var fakeArgs: [String] { ["--audit-log", memberAuditLog.path] }
  var hubArgs: [String] { ["--audit-log-path", hubAuditLog.path] }
  var memberAuditLog: URL { world.dir.appendingPathComponent("member-audit.jsonl") }
  var hubAuditLog: URL { world.dir.appendingPathComponent("hub-audit.jsonl") }
  /// The caller's groups on the host (tokens.csv); kopilot:admins may use
  /// every /proxy/ path.
  var callerGroups: [String] { ["kopilot:admins"] }
  var kubectl = ""
  var fakePort = 0
  var kubeconfig: URL { world.dir.appendingPathComponent("kubeconfig") }

  static let kubectlDir = "/usr/lib/google-cloud-sdk/bin"

  override func setUpWithError() throws {
    try super.setUpWithError()
    let path = "\(Self.kubectlDir)/\(kubectlName)"
    guard FileManager.default.isExecutableFile(atPath: path) else {
      throw XCTSkip("\(path) is not installed")
    }
    kubectl = path
    let fake = try GoBuild.binary("Tests/FakeAPIServer", name: "fakeapi")
    try startWorld { w in
      let api = try w.start("fakeapi", fake, [
        "--cert", w.certs.cert, "--key", w.certs.key, "--token", Tokens.apiserver, "-v",
      ] + fakeArgs)
      fakePort = Int(try api.waitFor("PORT ").split(separator: " ").last ?? "") ?? 0
      try startTunnel(w)
    }
  }

  /// Starts the hub side and an agent to the fake member, and writes
  /// `kubeconfig` for the caller. Here: one hub in the embedded mode.
  func startTunnel(_ w: E2EWorld) throws {
    try w.startHub(extraArgs: hubArgs, callerGroups: callerGroups)
    var upstream = ["--apiserver", "https://127.0.0.1:\(fakePort)", "--token-file", w.tokenFile.path,
                    "--ca-file", w.certs.ca]
    if agentUsesKubeconfig {
      let ca = try Data(contentsOf: URL(fileURLWithPath: w.certs.ca)).base64EncodedString()
      let member = w.dir.appendingPathComponent("member.kubeconfig")
      try """
        apiVersion: v1
        kind: Config
        current-context: member
        clusters: [{name: m, cluster: {server: "https://127.0.0.1:\(fakePort)", certificate-authority-data: \(ca)}}]
        users: [{name: agent, user: {token: \(Tokens.apiserver)}}]
        contexts: [{name: member, context: {cluster: m, user: agent}}]
        """.write(to: member, atomically: true, encoding: .utf8)
      upstream = ["--kubeconfig", member.path]
    }
    let agent = useGoAgent
      ? try w.start("goagent", try GoBuild.binary("perf/baseline/agent", name: "goagent"), [
        "-connect", "wss://127.0.0.1:\(w.hubPort)/connect?token=\(Tokens.sample)", "-hub-ca", w.certs.ca,
        "-apiserver", "https://127.0.0.1:\(fakePort)", "-ca-file", w.certs.ca, "-token-file", w.tokenFile.path,
      ])
      : try w.start("agent", try Paths.binary("kopilot-agent"), [
        "--connect", "wss://127.0.0.1:\(w.hubPort)/connect?token=\(Tokens.sample)", "--hub-ca", w.certs.ca,
      ] + upstream)
    try agent.waitFor("connected to the hub")
    try w.hub.waitFor("agent session up: cluster=default_sample")
    try """
      apiVersion: v1
      kind: Config
      clusters:
      - name: member
        cluster:
          server: \(w.hubURL)/proxy/default_sample
          certificate-authority: \(w.certs.ca)
      users:
      - name: caller
        user:
          token: \(Tokens.caller)
      contexts:
      - name: member
        context: {cluster: member, user: caller}
      current-context: member
      """.write(to: kubeconfig, atomically: true, encoding: .utf8)
  }

  /// kubectl with the tunnel's kubeconfig and a cache of its own (discovery
  /// from another run must not leak in).
  @discardableResult
  func run(_ args: [String], timeout: TimeInterval = 60) throws -> CommandResult {
    let cache = world.dir.appendingPathComponent("cache-\(kubectlName)").path
    return try runCommand(kubectl, ["--kubeconfig", kubeconfig.path, "--cache-dir", cache] + args, timeout: timeout)
  }

  func checkGetAllNamespaces() throws {
    let r = try run(["get", "pods", "-A"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertTrue(r.text.hasPrefix("NAMESPACE"), r.text)
    XCTAssertTrue(r.text.contains("kube-system"), r.text)
    XCTAssertTrue(r.text.contains("web-0"), r.text)
  }

  func checkGetJSON() throws {
    let r = try run(["get", "pods", "-o", "json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let obj = try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any]
    XCTAssertEqual(obj?["kind"] as? String, "List")
    XCTAssertFalse((obj?["items"] as? [Any] ?? []).isEmpty)
  }

  /// A watch streams through the tunnel: a pod added on the member side
  /// while kubectl watches shows up without the watch ending.
  func checkWatch() throws {
    try withBackground(["get", "pods", "-w"]) { output in
      try waitUntil("the first rows") { output().contains("web-0") }
      // Straight to the fake (not through the tunnel): a new pod appears.
      let added = try world.curl(["-X", "POST", "-H", "Authorization: Bearer \(Tokens.apiserver)",
                                  "https://127.0.0.1:\(fakePort)/_fake/pods?namespace=default&name=watched-pod"])
      XCTAssertEqual(added.status, 0, added.stderr)
      try waitUntil("the added pod in the watch") { output().contains("watched-pod") }
    }
  }

  func checkLogsFollow() throws {
    try withBackground(["logs", "-f", "web-0"]) { output in
      // Lines arrive one by one while the stream stays open: not buffered.
      func lines() -> Int { output().split(separator: "\n").count }
      try waitUntil("a first log line") { lines() >= 1 }
      let first = lines()
      try waitUntil("more log lines while following") { lines() >= first + 3 }
    }
  }

  func checkExec() throws {
    let hello = try run(["exec", "web-0", "--", "echo", "hello"])
    XCTAssertEqual(hello.status, 0, hello.stderr)
    XCTAssertEqual(hello.text, "hello\n")
    let failing = try run(["exec", "web-0", "--", "sh", "-c", "exit 3"])
    XCTAssertEqual(failing.status, 3, "kubectl must see the exit status: \(failing.stderr)")
  }

  func checkExecStdin() throws {
    let input = world.dir.appendingPathComponent("stdin.txt")
    try "through the tunnel and back\n".write(to: input, atomically: true, encoding: .utf8)
    let sh = try XCTUnwrap(Paths.tool("sh"))
    let cache = world.dir.appendingPathComponent("cache-i").path
    let r = try runCommand(sh, ["-c", "\"$0\" --kubeconfig \"$1\" --cache-dir \"$2\" exec -i web-0 -- cat < \"$3\"",
                                kubectl, kubeconfig.path, cache, input.path])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertEqual(r.text, "through the tunnel and back\n")
  }

  func checkPortForward() throws {
    try withBackground(["port-forward", "pod/web-0", "0:80"]) { output in
      var port = 0
      try waitUntil("port-forward to listen") {
        let text = output()
        guard let r = text.range(of: "Forwarding from 127.0.0.1:") else { return false }
        port = Int(text[r.upperBound...].prefix { $0.isNumber }) ?? 0
        return port > 0
      }
      // The fake's port 80 echoes: bytes go through kubectl, the hub, the
      // agent and the fake's port-forward stream, and come back.
      for round in 0..<2 {
        let payload = "echo round \(round) " + String(repeating: "x", count: 1000)
        XCTAssertEqual(try echo(port: port, payload), payload)
      }
    }
  }

  func checkCreateDelete() throws {
    let c = try run(["create", "configmap", "through-tunnel", "--from-literal=a=b"])
    XCTAssertEqual(c.status, 0, c.stderr)
    let g = try run(["get", "configmap", "through-tunnel", "-o", "jsonpath={.data.a}"])
    XCTAssertEqual(g.text, "b", g.stderr)
    let d = try run(["delete", "configmap", "through-tunnel"], timeout: 60)
    XCTAssertEqual(d.status, 0, d.stderr)
    let gone = try run(["get", "configmap", "through-tunnel"])
    XCTAssertNotEqual(gone.status, 0)
    XCTAssertTrue(gone.stderr.contains("NotFound") || gone.stderr.contains("not found"), gone.stderr)
  }

  /// The hub's audit log after a session of kubectl: every event an
  /// audit.k8s.io/v1 Event, with the verb and object kube-apiserver would
  /// log for get, list, watch, create, delete, exec, logs and port-forward;
  /// a refusal audited too; and one audit ID per request, the one the
  /// member logged.
  func checkAuditTrail() throws {
    XCTAssertEqual(try run(["get", "pods", "-n", "default"]).status, 0)
    XCTAssertEqual(try run(["get", "pod", "web-0", "-n", "default", "-o", "name"]).status, 0)
    XCTAssertEqual(try run(["get", "--raw", "/proxy/default_sample/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=1"]).status, 0)
    try checkCreateDelete()
    try checkExec()
    XCTAssertEqual(try run(["logs", "web-0", "--tail=1"]).status, 0)
    try checkPortForward()
    let refused = try world.curl(["-D", "-", "-o", "/dev/null", "-H", "Authorization: Bearer not-a-caller",
                                  "\(world.hubURL)/proxy/default_sample/api/v1/namespaces/default/pods"])
    XCTAssertTrue(refused.text.hasPrefix("HTTP/1.1 401"), refused.text)
    let refusedID = refused.text.split(separator: "\r\n").first { $0.lowercased().hasPrefix("audit-id:") }
      .map { $0.dropFirst("audit-id:".count).trimmingCharacters(in: .whitespaces) }

    func events(_ url: URL) -> [[String: Any]] {
      ((try? Data(contentsOf: url)) ?? Data()).split(separator: 0x0a).compactMap {
        (try? JSONSerialization.jsonObject(with: Data($0))) as? [String: Any]
      }
    }
    func proxied(_ e: [String: Any]) -> Bool { (e["annotations"] as? [String: String])?["kopilot.smartx.com/session"] != nil }
    // Both sides write when a request ends: wait until every request the
    // member logged is in the hub's log too.
    try waitUntil("the hub's events for every request the member logged") {
      let hubIDs = Set(events(hubAuditLog).filter(proxied).compactMap { $0["auditID"] as? String })
      let memberIDs = Set(events(memberAuditLog).compactMap { $0["auditID"] as? String })
      return !memberIDs.isEmpty && memberIDs == hubIDs
    }
    let all = events(hubAuditLog)
    let hub = all.filter { $0["stage"] as? String == "ResponseComplete" }
    for e in all {
      XCTAssertEqual(e["kind"] as? String, "Event")
      XCTAssertEqual(e["apiVersion"] as? String, "audit.k8s.io/v1")
      XCTAssertEqual(e["level"] as? String, "Metadata")
      XCTAssertTrue(["ResponseStarted", "ResponseComplete"].contains(e["stage"] as? String ?? ""), "\(e)")
      for k in ["auditID", "requestURI", "verb", "requestReceivedTimestamp", "stageTimestamp"] {
        XCTAssertFalse((e[k] as? String ?? "").isEmpty, "\(k) in \(e)")
      }
      XCTAssertNotNil(e["user"] as? [String: Any], "\(e)")
      XCTAssertNotNil((e["responseStatus"] as? [String: Any])?["code"] as? Int, "\(e)")
      XCTAssertFalse((e["sourceIPs"] as? [String] ?? []).isEmpty, "\(e)")
    }
    // The member saw each request as the caller the hub mapped.
    for m in events(memberAuditLog) {
      let h = hub.first { $0["auditID"] as? String == m["auditID"] as? String }
      XCTAssertEqual((h?["impersonatedUser"] as? [String: Any])?["username"] as? String,
                     (m["impersonatedUser"] as? [String: Any])?["username"] as? String, "\(m)")
      XCTAssertEqual((h?["responseStatus"] as? [String: Any])?["code"] as? Int,
                     (m["responseStatus"] as? [String: Any])?["code"] as? Int, "\(m)")
    }
    func has(_ verbs: Set<String>, _ resource: String, _ sub: String? = nil, name: String? = nil, code: Int? = nil) -> Bool {
      hub.contains { e in
        let o = e["objectRef"] as? [String: Any]
        return verbs.contains(e["verb"] as? String ?? "") && o?["resource"] as? String == resource
          && o?["subresource"] as? String == sub && (name == nil || o?["name"] as? String == name)
          && (code == nil || (e["responseStatus"] as? [String: Any])?["code"] as? Int == code)
      }
    }
    XCTAssertTrue(has(["list"], "pods"), "list")
    XCTAssertTrue(has(["get"], "pods", name: "web-0"), "get")
    XCTAssertTrue(has(["watch"], "pods"), "watch")
    XCTAssertTrue(has(["create"], "configmaps", code: 201), "create")
    XCTAssertTrue(has(["delete"], "configmaps", name: "through-tunnel"), "delete")
    // An upgrade's verb follows its method, as kube-apiserver's RequestInfo:
    // POST (SPDY, kubectl 1.27) create, GET (WebSocket) get.
    XCTAssertTrue(has(["get", "create"], "pods", "exec", name: "web-0", code: 101), "exec")
    XCTAssertTrue(has(["get"], "pods", "log", name: "web-0"), "log")
    XCTAssertTrue(has(["get", "create"], "pods", "portforward", name: "web-0", code: 101), "port-forward")
    // Long-running requests get a ResponseStarted event first, under the
    // same ID: the watch, exec and port-forward (logs without -f is not).
    let started = all.filter { $0["stage"] as? String == "ResponseStarted" }
    let startedRefs = Set(started.map { e -> String in
      let o = e["objectRef"] as? [String: Any]
      return (o?["subresource"] as? String) ?? (e["verb"] as? String ?? "")
    })
    XCTAssertEqual(startedRefs, ["watch", "exec", "portforward"], "\(started)")
    for s in started {
      XCTAssertTrue(hub.contains { $0["auditID"] as? String == s["auditID"] as? String }, "a ResponseStarted without its end: \(s)")
    }
    let anonymous = hub.filter { (($0["responseStatus"] as? [String: Any])?["code"] as? Int) == 401 }
    XCTAssertEqual(anonymous.count, 1, "the refused caller is audited")
    XCTAssertEqual(anonymous.first?["verb"] as? String, "list")
    XCTAssertEqual(anonymous.first?["auditID"] as? String, refusedID, "the refusal's Audit-Id is its event's ID")
  }

  /// A 16 MiB object, compared by SHA-256 with what the fake says it serves.
  func checkBigObject() throws {
    let fake = try GoBuild.binary("Tests/FakeAPIServer", name: "fakeapi")
    let digests = try runCommand(fake, ["--print-big-digest"]).text
    let want = digests.split(separator: "\n").first { $0.hasPrefix("raw ") }.map { String($0.dropFirst(4)) }
    let r = try run(["get", "--raw", "/proxy/default_sample/api/v1/namespaces/default/configmaps/big"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertGreaterThan(r.stdout.count, 16 << 20)
    let file = world.dir.appendingPathComponent("big.json")
    try r.stdout.write(to: file)
    XCTAssertEqual(try world.sha256(files: [file.path]).first, want)
  }

  // MARK: helpers

  /// kubectl left running (watch, logs -f, port-forward), its stdout in a
  /// file the test polls; killed when `body` returns.
  func withBackground(_ args: [String], _ body: (_ output: () -> String) throws -> Void) throws {
    let out = world.dir.appendingPathComponent("bg-\(UUID().uuidString.prefix(8)).out")
    _ = FileManager.default.createFile(atPath: out.path, contents: nil)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: kubectl)
    p.arguments = ["--kubeconfig", kubeconfig.path, "--cache-dir", world.dir.appendingPathComponent("cache-bg").path]
      + args
    p.standardOutput = try FileHandle(forWritingTo: out)
    p.standardError = FileHandle.nullDevice
    try p.run()
    defer {
      if p.isRunning { kill(p.processIdentifier, SIGKILL) }
      p.waitUntilExit()
    }
    try body { (try? String(contentsOf: out, encoding: .utf8)) ?? "" }
    XCTAssertTrue(p.isRunning, "kubectl \(args.joined(separator: " ")) ended while it should stream")
  }

  func waitUntil(_ what: String, timeout: TimeInterval = 20, _ ok: () -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while !ok() {
      if Date() > deadline { throw E2EError("timed out waiting for \(what)") }
      usleep(50_000)
    }
  }

  /// Writes payload to 127.0.0.1:port and reads the same number of bytes back.
  func echo(port: Int, _ payload: String) throws -> String {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw E2EError("socket failed") }
    defer { close(fd) }
    var tv = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else { throw E2EError("connect to the forwarded port failed") }
    let bytes = Array(payload.utf8)
    guard write(fd, bytes, bytes.count) == bytes.count else { throw E2EError("write failed") }
    var got: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while got.count < bytes.count {
      let n = read(fd, &buf, buf.count)
      if n <= 0 { break }
      got += buf[0..<n]
    }
    return String(decoding: got, as: UTF8.self)
  }
}

/// kubectl 1.27: exec and port-forward upgrade to SPDY/3.1.
final class Kubectl127Tests: KubectlTestCase {
  override var kubectlName: String { "kubectl.1.27" }
  func testGetAllNamespaces() throws { try checkGetAllNamespaces() }
  func testGetJSON() throws { try checkGetJSON() }
  func testWatch() throws { try checkWatch() }
  func testLogsFollow() throws { try checkLogsFollow() }
  func testExec() throws { try checkExec() }
  func testExecStdin() throws { try checkExecStdin() }
  func testPortForward() throws { try checkPortForward() }
  func testCreateDelete() throws { try checkCreateDelete() }
  func testBigObject() throws { try checkBigObject() }
  func testAuditTrail() throws { try checkAuditTrail() }
}

/// kubectl 1.33: exec over WebSocket (v5.channel.k8s.io), port-forward over
/// WebSocket carrying SPDY, create in protobuf.
final class Kubectl133Tests: KubectlTestCase {
  override var kubectlName: String { "kubectl.1.33" }
  func testGetAllNamespaces() throws { try checkGetAllNamespaces() }
  func testGetJSON() throws { try checkGetJSON() }
  func testWatch() throws { try checkWatch() }
  func testLogsFollow() throws { try checkLogsFollow() }
  func testExec() throws { try checkExec() }
  func testExecStdin() throws { try checkExecStdin() }
  func testPortForward() throws { try checkPortForward() }
  func testCreateDelete() throws { try checkCreateDelete() }
  func testBigObject() throws { try checkBigObject() }
  func testAuditTrail() throws { try checkAuditTrail() }
}

/// The agent run outside a cluster, against a kubeconfig's server and token.
final class AgentKubeconfigTests: KubectlTestCase {
  override var kubectlName: String { "kubectl.1.33" }
  override var agentUsesKubeconfig: Bool { true }
  func testGetAllNamespaces() throws { try checkGetAllNamespaces() }
  func testExec() throws { try checkExec() }
}
