import Foundation
import KopilotHub
import KopilotIO
import XCTest

#if canImport(Glibc)
  import Glibc
#endif

/// Certificates for the peer listener, made once per test process: a peer
/// CA with three replica certificates (two carrying the expected name
/// "kopilot-hub-peer", one another name), and a certificate with the right
/// name from a second, unrelated CA.
final class PeerCerts {
  let dir: URL
  func path(_ name: String) -> String { dir.appendingPathComponent(name).path }
  var ca: String { path("peer-ca.crt") }

  // Read and written only while lock is held.
  nonisolated(unsafe) private static var made: PeerCerts?
  private static let lock = NSLock()

  static func shared() throws -> PeerCerts {
    lock.lock()
    defer { lock.unlock() }
    if let m = made { return m }
    let c = try PeerCerts()
    made = c
    return c
  }

  private init() throws {
    guard let openssl = Paths.tool("openssl") else { throw XCTSkip("the openssl CLI is not installed") }
    dir = FileManager.default.temporaryDirectory.appendingPathComponent("kp-e2e-peer-certs-\(getpid())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    func ext(_ name: String, _ san: String) throws {
      try "subjectAltName=\(san)\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n"
        .write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8)
    }
    try ext("peer.cnf", "DNS:kopilot-hub-peer")
    try ext("other.cnf", "DNS:not-a-kopilot-peer")
    func ca(_ name: String) -> [String] {
      ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", "\(name).key", "-out", "\(name).crt", "-days", "2", "-subj", "/CN=\(name)",
       "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    }
    func leaf(_ name: String, ca: String, ext: String) -> [[String]] {
      [["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "\(name).key", "-out", "\(name).csr", "-subj", "/CN=\(name)"],
       ["x509", "-req", "-in", "\(name).csr", "-CA", "\(ca).crt", "-CAkey", "\(ca).key", "-CAcreateserial",
        "-out", "\(name).crt", "-days", "2", "-extfile", ext]]
    }
    let steps = [ca("peer-ca"), ca("rogue-ca")] + leaf("hub-a", ca: "peer-ca", ext: "peer.cnf")
      + leaf("hub-b", ca: "peer-ca", ext: "peer.cnf") + leaf("hub-c", ca: "peer-ca", ext: "other.cnf")
      + leaf("rogue", ca: "rogue-ca", ext: "peer.cnf")
    for s in steps {
      let r = try runCommand(openssl, s, timeout: 30, in: dir)
      guard r.status == 0 else { throw E2EError("openssl \(s.joined(separator: " ")) failed: \(r.stderr)") }
    }
  }
}

/// Hub replicas forwarding to each other, in process: hub B holds the
/// agent session (an in-process AgentSession to upstream.py); hub A's
/// router forwards every /proxy/... request to B's peer listener; hub C's
/// peer certificate lacks the expected name. Callers (curl, python) talk to
/// A only.
final class PeerForwardTests: E2ETestCase {
  final class Box<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var v: T
    init(_ v: T) { self.v = v }
    var value: T {
      get { lock.lock(); defer { lock.unlock() }; return v }
      set { lock.lock(); v = newValue; lock.unlock() }
    }
    func mutate(_ f: (inout T) -> Void) { lock.lock(); f(&v); lock.unlock() }
  }

  var peer: PeerCerts!
  var loop: Loop!
  var hubA: Hub!, hubB: Hub!, hubC: Hub!
  var agent: AgentSession?
  /// What B's router saw (the forwarded requests).
  let seenAtB = Box<[HubRequest]>([])
  /// What A reported through onProxied.
  let proxiedAtA = Box<[Hub.ProxiedRequest]>([])
  var deadPort = 0

  var aURL: String { "https://127.0.0.1:\(hubA.port)" }

  func config(_ certs: TestCerts, peerCert: String) -> Hub.Config {
    var c = Hub.Config(certFile: certs.cert, keyFile: certs.key)
    c.bindHost = "127.0.0.1"
    c.port = 0
    c.peerCertFile = peer.path("\(peerCert).crt")
    c.peerKeyFile = peer.path("\(peerCert).key")
    c.peerCAFile = peer.ca
    c.peerPort = 0
    return c
  }

  override func setUpWithError() throws {
    try super.setUpWithError()
    peer = try PeerCerts.shared()
    try startWorld { w in try w.startUpstream() }
    loop = try Loop()
    let certs = world.certs
    // A port nobody listens on: bound, read back, closed.
    let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var sa = sockaddr_in()
    sa.sin_family = sa_family_t(AF_INET)
    sa.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, len) } }
    _ = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &len) } }
    deadPort = Int(UInt16(bigEndian: sa.sin_port))
    close(s)

    let bPeerPort = Box(0)
    let seen = seenAtB
    var cb = config(certs, peerCert: "hub-b")
    // B closes connections idle for half a second, the peer's too.
    cb.headTimeoutMs = 500
    hubB = try Hub(loop: loop, config: cb) { r in
      if r.path == "/connect" { return .acceptAgent(cluster: "default_sample") }
      // Policy would never do this; the core must refuse it (508).
      if r.path.hasPrefix("/loop/") { return .forward(cluster: "", host: "127.0.0.1", port: bPeerPort.value, hop: "hub-b") }
      if let t = parseProxyTarget(r.target) {
        seen.mutate { $0.append(r) }
        return .proxy(cluster: t.cluster, target: t.forwardTarget)
      }
      return .status(404, "NotFound", "nothing at \(r.path)")
    }
    bPeerPort.value = hubB.peerPort
    hubC = try Hub(loop: loop, config: config(certs, peerCert: "hub-c")) { _ in .status(404, "NotFound", "C") }
    let targets = (b: hubB.peerPort, c: hubC.peerPort, dead: deadPort)
    var ca = config(certs, peerCert: "hub-a")
    ca.peerPort = -1 // A only dials
    hubA = try Hub(loop: loop, config: ca) { r in
      let p = r.path
      // The key A reports the forward under, as the router passes it.
      let key = parseProxyTarget(r.target)?.cluster ?? ""
      if p.hasPrefix("/proxy/") || p.hasPrefix("/loop/") {
        return .forward(cluster: key, host: "127.0.0.1", port: targets.b, hop: "hub-a")
      }
      if p.hasPrefix("/wrongname/") { return .forward(cluster: key, host: "127.0.0.1", port: targets.c, hop: "hub-a") }
      if p.hasPrefix("/dead/") { return .forward(cluster: key, host: "127.0.0.1", port: targets.dead, hop: "hub-a") }
      return .status(404, "NotFound", "nothing at \(p)")
    }
    XCTAssertEqual(hubA.peerPort, 0, "no peer listener on A")
    XCTAssertGreaterThan(hubB.peerPort, 0)
    let proxied = proxiedAtA
    hubA.onProxied = { r in proxied.mutate { $0.append(r) } }

    let up = DispatchSemaphore(value: 0)
    hubB.onSession = { _, isUp, _ in if isUp { up.signal() } }
    var ac = AgentSession.Config(hubURL: URL(string: "wss://127.0.0.1:\(hubB.port)/connect?token=t")!,
                                 apiserver: URL(string: world.upstreamURL)!)
    ac.hubCAFile = certs.ca
    ac.apiserverCAFile = certs.ca
    let a = try AgentSession(loop: loop, config: ac)
    a.setToken(Tokens.apiserver)
    a.connect()
    agent = a
    XCTAssertEqual(up.wait(timeout: .now() + 15), .success, "the agent session did not come up at B")
  }

  override func tearDown() {
    agent?.close()
    agent = nil
    hubA?.stop()
    hubB?.stop()
    hubC?.stop()
    hubA = nil
    hubB = nil
    hubC = nil
    loop = nil
    super.tearDown()
  }

  func statusBody(_ url: String) throws -> (Int, String) {
    let r = try world.curl(["-w", "\n%{http_code}", url], timeout: 20)
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    let lines = r.text.split(separator: "\n", omittingEmptySubsequences: false)
    return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
  }

  /// A 16 MiB body arrives intact (A -> B -> agent -> upstream and back),
  /// and A reports the forward once, with the cluster from the path.
  func testGet16MiBThroughAPeer() throws {
    let n = 16 << 20
    let out = world.dir.appendingPathComponent("bytes").path
    let r = try world.curl(["-o", out, "-w", "%{http_code}", "\(aURL)/proxy/default_sample/bytes/\(n)"])
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    XCTAssertEqual(r.text, "200")
    XCTAssertEqual(try world.sha256(files: [out]), try world.expectedDigests([n]), "body SHA-256")
    let deadline = Date().addingTimeInterval(10)
    while proxiedAtA.value.isEmpty && Date() < deadline { usleep(10_000) }
    let p = proxiedAtA.value
    XCTAssertEqual(p.count, 1)
    XCTAssertEqual(p.first?.cluster, "default_sample")
    XCTAssertEqual(p.first?.status, 200)
    XCTAssertEqual(p.first?.session, 0)
    XCTAssertGreaterThan(p.first?.bytesDown ?? 0, UInt64(n))
  }

  /// Two requests on one caller connection: keep-alive through a forward
  /// (the second also reuses the idle peer connection).
  func testKeepAliveAfterAForward() throws {
    let r = try world.curl(["-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n",
                            "\(aURL)/proxy/default_sample/bytes/1000", "\(aURL)/proxy/default_sample/bytes/2000"])
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    XCTAssertEqual(r.text, "200 1\n200 0\n")
  }

  /// B closes the idle peer connection A kept; the next forward still
  /// works, and each forward is reported once.
  func testForwardAfterThePeerClosedAnIdleConnection() throws {
    XCTAssertEqual(try statusBody("\(aURL)/proxy/default_sample/bytes/10").0, 200)
    usleep(1_500_000) // past B's 500 ms head deadline: B closes the conn
    XCTAssertEqual(try statusBody("\(aURL)/proxy/default_sample/bytes/20").0, 200)
    let deadline = Date().addingTimeInterval(10)
    while proxiedAtA.value.count < 2 && Date() < deadline { usleep(10_000) }
    usleep(100_000)
    XCTAssertEqual(proxiedAtA.value.map(\.status), [200, 200])
  }

  /// A watch-like response: line i must arrive through both hubs before the
  /// upstream is allowed to send line i+1.
  func testStreamingResponse() throws {
    let gate = UUID().uuidString
    let reader = try LineReader(exe: world.curl, args: [
      "-sS", "-N", "--cacert", world.certs.ca, "-H", "Authorization: Bearer \(Tokens.caller)", "--max-time", "60",
      "\(aURL)/proxy/default_sample/stream?n=4&gate=\(gate)",
    ])
    defer { reader.stop() }
    for i in 0..<4 {
      if i > 0 {
        let rel = try world.curl(["\(world.upstreamURL)/release?gate=\(gate)"], timeout: 10)
        XCTAssertEqual(rel.status, 0, rel.stderr)
      }
      let line = try reader.nextLine(timeout: 10)
      XCTAssertTrue(line?.contains("\"i\": \(i)") == true, "line \(i): \(line ?? "<end>")")
    }
    XCTAssertNil(try reader.nextLine(timeout: 10), "the response ends after the last line")
  }

  /// A 16 MiB chunked upload echoed back (request body backpressure through
  /// the peer connection).
  func testUploadEcho() throws {
    let input = world.dir.appendingPathComponent("in").path
    let output = world.dir.appendingPathComponent("out").path
    let w = try runCommand(world.python, [Paths.upstreamScript, "--write", "\(16 << 20)", input])
    XCTAssertEqual(w.status, 0, w.stderr)
    let r = try world.curl(["-o", output, "-w", "%{http_code}", "-H", "Content-Type: application/octet-stream",
                            "-H", "Transfer-Encoding: chunked", "--data-binary", "@" + input,
                            "\(aURL)/proxy/default_sample/echo"])
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    XCTAssertEqual(r.text, "200")
    let sums = try world.sha256(files: [input, output])
    XCTAssertEqual(sums.first, sums.last, "the echoed body differs from the uploaded one")
  }

  /// An upgrade: after the 101, raw bytes both ways through A and B.
  func testUpgradeCarriesRawBytes() throws {
    let script = """
      import socket, ssl, sys
      port, ca, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
      ctx = ssl.create_default_context(cafile=ca)
      s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=15), server_hostname="127.0.0.1")
      s.sendall(("GET /proxy/default_sample/upgrade-echo HTTP/1.1\\r\\nHost: x\\r\\nConnection: Upgrade\\r\\n"
                 "Upgrade: kp-echo\\r\\nAuthorization: Bearer " + token + "\\r\\n\\r\\n").encode())
      buf = b""
      while b"\\r\\n\\r\\n" not in buf:
          d = s.recv(4096)
          if not d: sys.exit("closed before the head: %r" % buf)
          buf += d
      head, rest = buf.split(b"\\r\\n\\r\\n", 1)
      print(head.split(b"\\r\\n")[0].decode())
      for i in range(3):
          msg = ("ping-%d-" % i).encode() * 1000
          s.sendall(msg)
          while len(rest) < len(msg):
              d = s.recv(65536)
              if not d: sys.exit("closed mid-echo")
              rest += d
          assert rest[:len(msg)] == msg, "echo %d differs" % i
          rest = rest[len(msg):]
          print("echo", i, "ok")
      """
    let r = try runCommand(world.python, ["-c", script, "\(hubA.port)", world.certs.ca, Tokens.caller], timeout: 30)
    XCTAssertEqual(r.status, 0, "python: \(r.stderr)")
    XCTAssertEqual(r.text, "HTTP/1.1 101 Switching Protocols\necho 0 ok\necho 1 ok\necho 2 ok\n")
  }

  /// The caller's Authorization reaches B (which authorizes it again) but
  /// never the member; B sees
  /// A's hop marker (the caller's own dropped) and viaPeer; the member sees
  /// the agent's token and the caller's address in X-Forwarded-For.
  func testHeadersAcrossTheForward() throws {
    // From 127.0.0.2 (Linux routes all of 127/8 to lo), so the caller's
    // address differs from A's own (127.0.0.1, which B sees).
    let r = try world.curl(["--interface", "127.0.0.2", "-H", "Authorization: Bearer \(Tokens.caller)",
                            "-H", "Kopilot-Forwarded-By: forged", "-H", "X-Forwarded-For: 6.6.6.6",
                            "\(aURL)/proxy/default_sample/headers"], timeout: 20)
    XCTAssertEqual(r.status, 0, "curl: \(r.stderr)")
    guard let pairs = try JSONSerialization.jsonObject(with: r.stdout) as? [[String]] else {
      return XCTFail("not a header list: \(r.text)")
    }
    func values(_ name: String) -> [String] { pairs.filter { $0[0].lowercased() == name }.map { $0[1] } }
    XCTAssertEqual(values("authorization"), ["Bearer \(Tokens.apiserver)"])
    XCTAssertEqual(values("x-forwarded-for"), ["127.0.0.2"], "the caller's address, kept by B")
    XCTAssertEqual(values("x-forwarded-proto"), ["https"])
    XCTAssertEqual(values("kopilot-forwarded-by"), [], "the hop marker stops at B")
    guard let atB = seenAtB.value.last else { return XCTFail("B's router saw nothing") }
    XCTAssertTrue(atB.viaPeer)
    XCTAssertEqual(atB.header("authorization"), "Bearer \(Tokens.caller)", "B authorizes the caller again")
    XCTAssertEqual(atB.headers.filter { $0.name.lowercased() == "kopilot-forwarded-by" }.map(\.value), ["hub-a"])
    XCTAssertEqual(atB.target, "/proxy/default_sample/headers")
  }

  /// The peer port takes only clients with a certificate from the peer CA.
  func testPeerPortRequiresAPeerCertificate() throws {
    let url = "https://kopilot-hub-peer:\(hubB.peerPort)/nothing"
    let base = ["-o", "/dev/null", "-w", "%{http_code}", "--resolve", "kopilot-hub-peer:\(hubB.peerPort):127.0.0.1",
                "--cacert", peer.ca]
    func run(_ extra: [String]) throws -> CommandResult {
      try runCommand(world.curl, ["-sS", "--max-time", "15"] + base + extra + [url], timeout: 25)
    }
    let none = try run([])
    XCTAssertNotEqual(none.status, 0, "no client certificate: \(none.text)")
    let rogue = try run(["--cert", peer.path("rogue.crt"), "--key", peer.path("rogue.key")])
    XCTAssertNotEqual(rogue.status, 0, "a certificate from another CA: \(rogue.text)")
    let good = try run(["--cert", peer.path("hub-a.crt"), "--key", peer.path("hub-a.key")])
    XCTAssertEqual(good.status, 0, "a peer certificate: \(good.stderr)")
    XCTAssertEqual(good.text, "404")
  }

  /// A peer whose certificate lacks kopilot-hub-peer is refused: 502.
  func testPeerWithoutTheExpectedNameGets502() throws {
    let (code, body) = try statusBody("\(aURL)/wrongname/x")
    XCTAssertEqual(code, 502)
    XCTAssertTrue(body.contains("replica 127.0.0.1:\(hubC.peerPort) unreachable: certificate"), body)
    XCTAssertTrue(body.contains("\"kind\":\"Status\""), body)
  }

  /// Nobody listening: 502 Status at once (connection refused).
  func testDeadPeerGets502() throws {
    let (code, body) = try statusBody("\(aURL)/dead/x")
    XCTAssertEqual(code, 502)
    XCTAssertTrue(body.contains("replica 127.0.0.1:\(deadPort) unreachable: connection refused"), body)
    // The caller's connection stays usable after the 502.
    let r = try world.curl(["-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} ",
                            "\(aURL)/dead/x", "\(aURL)/proxy/default_sample/bytes/10"])
    XCTAssertEqual(r.text, "502 200 ")
  }

  /// A stand-in peer (python, mutual TLS with B's certificate) that
  /// answers the first request on each connection and closes the
  /// connection, unanswered, when a second one arrives: what a peer's idle
  /// timeout crossing a request looks like.
  static let closingPeer = """
    import socket, ssl, sys, threading
    cert, key, ca = sys.argv[1:4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    srv = socket.create_server(("127.0.0.1", 0))
    print("PORT %d" % srv.getsockname()[1], flush=True)
    def serve(raw):
        try:
            s = ctx.wrap_socket(raw, server_side=True)
            buf, n = b"", 0
            while True:
                while b"\\r\\n\\r\\n" not in buf:
                    d = s.recv(65536)
                    if not d: return
                    buf += d
                head, buf = buf.split(b"\\r\\n\\r\\n", 1)
                n += 1
                print("request %d on a conn: %s" % (n, head.split(b"\\r\\n")[0].decode()), flush=True)
                if n > 1:
                    s.close()
                    return
                s.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
        except (OSError, ssl.SSLError) as e:
            print("conn error:", e, flush=True)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
    """

  /// A pooled peer connection that dies under a request: a GET is sent
  /// again once on a new connection (and reported once); a POST with a body
  /// is not, and gets the 502.
  func testPooledPeerConnectionClosedUnderARequest() throws {
    let fake = try world.start("closing-peer", world.python, [
      "-c", Self.closingPeer, peer.path("hub-b.crt"), peer.path("hub-b.key"), peer.ca,
    ])
    let port = Int(try fake.waitFor("PORT ").split(separator: " ").last ?? "") ?? 0
    XCTAssertGreaterThan(port, 0)
    let proxied = Box<[Int]>([])
    hubA.stop()
    var ca = config(world.certs, peerCert: "hub-a")
    ca.peerPort = -1
    hubA = try Hub(loop: loop, config: ca) { _ in .forward(cluster: "default_sample", host: "127.0.0.1", port: port, hop: "hub-a") }
    hubA.onProxied = { r in proxied.mutate { $0.append(r.status) } }
    // One caller connection for all three, so each forward finds the idle
    // peer connection the previous one left.
    let r = try world.curl(["-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} ",
                            "\(aURL)/proxy/default_sample/a", "\(aURL)/proxy/default_sample/b"])
    XCTAssertEqual(r.text, "200 200 ", r.stderr)
    let post = try world.curl(["-w", "\n%{http_code}", "--data-binary", "body", "\(aURL)/proxy/default_sample/c"])
    XCTAssertTrue(post.text.hasSuffix("\n502"), post.text)
    XCTAssertTrue(post.text.contains("replica 127.0.0.1:\(port) unreachable"), post.text)
    let deadline = Date().addingTimeInterval(10)
    while proxied.value.count < 3 && Date() < deadline { usleep(10_000) }
    usleep(100_000)
    // 0: the request went out and no response head came back (as for a
    // tunnel that broke); a peer never reached would report 502.
    XCTAssertEqual(proxied.value, [200, 200, 0], fake.log)
    // The GET went out twice (the second time on a new connection).
    XCTAssertEqual(fake.log.components(separatedBy: "GET /proxy/default_sample/b").count - 1, 2, fake.log)
  }

  /// Peer settings that cannot work are refused at start, with the reason.
  func testIncompletePeerSettingsAreRefused() throws {
    var c = config(world.certs, peerCert: "hub-a")
    c.peerCAFile = nil
    XCTAssertThrowsError(try Hub(loop: loop, config: c) { _ in .status(404, "NotFound", "") }) { e in
      XCTAssertTrue("\(e)".contains("needs a certificate, a key and a CA"), "\(e)")
    }
    c = config(world.certs, peerCert: "hub-a")
    c.peerCertFile = peer.path("missing.crt")
    XCTAssertThrowsError(try Hub(loop: loop, config: c) { _ in .status(404, "NotFound", "") })
    c = config(world.certs, peerCert: "hub-a")
    c.peerPort = hubB.peerPort // taken
    XCTAssertThrowsError(try Hub(loop: loop, config: c) { _ in .status(404, "NotFound", "") }) { e in
      XCTAssertTrue("\(e)".contains("listen on"), "\(e)")
    }
  }

  /// B asked to forward a request that came from a peer: 508 from the core.
  func testForwardOnThePeerListenerIsALoop() throws {
    let (code, body) = try statusBody("\(aURL)/loop/x")
    XCTAssertEqual(code, 508)
    XCTAssertTrue(body.contains("\"code\":508"), body)
  }
}
