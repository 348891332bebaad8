import Foundation
import KopilotCore
import KopilotTestSupport
import XCTest

// The TLS engine does no I/O, so these tests wire a client engine and a
// server engine back to back in memory: the ciphertext one pops is fed to
// the other. Certificates are made once per run with the openssl command
// line (Tests/setup-debian.sh installs it):
//   root CA -> intermediate CA -> server "localhost" + IP 127.0.0.1
//   root CA -> client certificate (mutual TLS)
//   other, unrelated CA -> a client certificate it signs

private let EAGAIN = KP_EAGAIN.rawValue
private let ECERT = KP_ECERT.rawValue
private let ETLS = KP_ETLS.rawValue
private let ECLOSED = KP_ECLOSED.rawValue
private let EINVAL = KP_EINVAL.rawValue

/// Where the test PKI lives; made in `TLSTests.setUp()`.
private struct PKI {
  var dir: URL
  func path(_ name: String) -> String { dir.appendingPathComponent(name).path }
  func pem(_ name: String) -> String { try! String(contentsOfFile: path(name), encoding: .utf8) }
}

// Made once, before the first test reads it; XCTest runs one test at a time.
nonisolated(unsafe) private var pki: PKI!

private func openssl(_ args: [String], in dir: URL) throws {
  let p = Process()
  p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
  p.arguments = ["openssl"] + args
  p.currentDirectoryURL = dir
  let errPipe = Pipe()
  p.standardError = errPipe
  p.standardOutput = FileHandle.nullDevice
  try p.run()
  let errData = errPipe.fileHandleForReading.readDataToEndOfFile()
  p.waitUntilExit()
  if p.terminationStatus != 0 {
    throw NSError(domain: "openssl", code: Int(p.terminationStatus), userInfo: [
      NSLocalizedDescriptionKey: "openssl \(args.joined(separator: " ")): "
        + (String(data: errData, encoding: .utf8) ?? ""),
    ])
  }
}

private func makePKI() throws -> PKI {
  let dir = FileManager.default.temporaryDirectory
    .appendingPathComponent("kopilot-tls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
  try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
  let cnf = """
    [req]
    distinguished_name = dn
    prompt = no
    [dn]
    CN = unused
    [v3_ca]
    basicConstraints = critical,CA:TRUE
    keyUsage = critical,keyCertSign,cRLSign
    subjectKeyIdentifier = hash
    [v3_server]
    basicConstraints = CA:FALSE
    keyUsage = critical,digitalSignature
    extendedKeyUsage = serverAuth
    subjectAltName = DNS:localhost,IP:127.0.0.1
    [v3_client]
    basicConstraints = CA:FALSE
    keyUsage = critical,digitalSignature
    extendedKeyUsage = clientAuth

    """
  try cnf.write(to: dir.appendingPathComponent("x.cnf"), atomically: true, encoding: .utf8)
  func key(_ n: String) throws {
    try openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "\(n).key"], in: dir)
  }
  func root(_ n: String, _ cn: String) throws {
    try key(n)
    try openssl(["req", "-x509", "-new", "-key", "\(n).key", "-subj", "/CN=\(cn)", "-days", "2",
                 "-config", "x.cnf", "-extensions", "v3_ca", "-out", "\(n).crt"], in: dir)
  }
  var serial = 1
  func issue(_ n: String, _ cn: String, by ca: String, ext: String) throws {
    try key(n)
    try openssl(["req", "-new", "-key", "\(n).key", "-subj", "/CN=\(cn)", "-config", "x.cnf", "-out", "\(n).csr"], in: dir)
    serial += 1
    try openssl(["x509", "-req", "-in", "\(n).csr", "-CA", "\(ca).crt", "-CAkey", "\(ca).key",
                 "-set_serial", "\(serial)", "-days", "2", "-extfile", "x.cnf", "-extensions", ext,
                 "-out", "\(n).crt"], in: dir)
  }
  try root("ca", "Kopilot Test Root")
  try issue("int", "Kopilot Test Intermediate", by: "ca", ext: "v3_ca")
  try issue("server", "localhost", by: "int", ext: "v3_server")
  try issue("client", "agent-1", by: "ca", ext: "v3_client")
  try root("other", "Unrelated CA")
  try issue("otherclient", "intruder", by: "other", ext: "v3_client")
  // The server presents its chain, leaf first.
  let p = PKI(dir: dir)
  try (p.pem("server.crt") + p.pem("int.crt")).write(
    toFile: p.path("server-chain.crt"), atomically: true, encoding: .utf8)
  return p
}

/// Options in Swift terms; `make()` turns them into a context.
private struct Opts {
  var isServer = false
  var certFile: String?, certPEM: String?
  var keyFile: String?, keyPEM: String?
  var caFile: String?, caPEM: String?
  var insecure = false
  var requireClientCert = false
  var alpn: [String] = []
  var maxVersion: Int32 = 0
  var explicitPEMLengths = false  // pass *_pem_len instead of relying on the NUL

  static func server() -> Opts {
    var o = Opts()
    o.isServer = true
    o.certPEM = pki.pem("server-chain.crt")
    o.keyPEM = pki.pem("server.key")
    return o
  }
  static func client() -> Opts {
    var o = Opts()
    o.caPEM = pki.pem("ca.crt")
    return o
  }

  /// (ctx, rc, error message); ctx is nil unless rc == 0.
  func tryMake() -> (OpaquePointer?, Int32, String) {
    var cstrs: [UnsafeMutablePointer<CChar>] = []
    defer { cstrs.forEach { free($0) } }
    func dup(_ s: String?) -> UnsafePointer<CChar>? {
      guard let s else { return nil }
      let p = strdup(s)!
      cstrs.append(p)
      return UnsafePointer(p)
    }
    var o = kp_tls_ctx_options_t()
    o.is_server = isServer ? 1 : 0
    o.cert_file = dup(certFile)
    o.cert_pem = dup(certPEM)
    o.key_file = dup(keyFile)
    o.key_pem = dup(keyPEM)
    o.ca_file = dup(caFile)
    o.ca_pem = dup(caPEM)
    o.insecure_skip_verify = insecure ? 1 : 0
    o.require_client_cert = requireClientCert ? 1 : 0
    o.max_version = maxVersion
    if explicitPEMLengths {
      o.cert_pem_len = certPEM?.utf8.count ?? 0
      o.key_pem_len = keyPEM?.utf8.count ?? 0
      o.ca_pem_len = caPEM?.utf8.count ?? 0
    }
    let names: [UnsafePointer<CChar>?] = alpn.map { dup($0) }
    var ctx: OpaquePointer?
    var err = [CChar](repeating: 0, count: 256)
    let rc = names.withUnsafeBufferPointer { np -> Int32 in
      o.alpn = names.isEmpty ? nil : np.baseAddress
      o.alpn_count = names.count
      return kp_tls_ctx_new(&ctx, &o, &err, err.count)
    }
    return (ctx, rc, String(cString: err))
  }

  func make(file: StaticString = #filePath, line: UInt = #line) -> OpaquePointer {
    let (ctx, rc, err) = tryMake()
    XCTAssertEqual(rc, 0, "kp_tls_ctx_new: \(err)", file: file, line: line)
    return ctx!
  }
}

/// One side of a connection: an engine plus what it has received.
private final class End {
  let t: OpaquePointer
  var received: [UInt8] = []
  var hs: Int32 = KP_EAGAIN.rawValue  // last handshake result
  var readErr: Int32 = 0               // first read result other than data/EAGAIN
  private var buf = [UInt8](repeating: 0, count: 16384)

  init(_ t: OpaquePointer) { self.t = t }
  deinit { kp_tls_free(t) }

  var established: Bool { kp_tls_is_established(t) != 0 }
  var failure: Int32 { hs != 0 && hs != EAGAIN ? hs : readErr }
  var lastError: String { String(cString: kp_tls_last_error(t)) }

  /// Runs the handshake, then reads all the plaintext there is.
  func step() {
    if !established && hs == EAGAIN { hs = kp_tls_handshake(t) }
    guard established, readErr == 0 else { return }
    while true {
      let r = buf.withUnsafeMutableBufferPointer { kp_tls_read(t, $0.baseAddress, $0.count) }
      if r > 0 {
        received.append(contentsOf: buf[0..<Int(r)])
      } else {
        if r != EAGAIN { readErr = r }
        return
      }
    }
  }

  func write(_ data: [UInt8], file: StaticString = #filePath, line: UInt = #line) {
    let r = data.withUnsafeBufferPointer { kp_tls_write(t, $0.baseAddress, $0.count) }
    XCTAssertEqual(r, Int64(data.count), "kp_tls_write: \(lastError)", file: file, line: line)
  }
}

/// A client and a server engine wired back to back.
private final class Pair {
  let c: End, s: End

  init(client: OpaquePointer, server: OpaquePointer, name: String? = "localhost") {
    var ct: OpaquePointer?, st: OpaquePointer?
    XCTAssertEqual(kp_tls_new(&ct, client, name), 0)
    XCTAssertEqual(kp_tls_new(&st, server, nil), 0)
    c = End(ct!)
    s = End(st!)
  }

  /// Moves every pending slice from a to b. The slice's chunk is handed to
  /// b by reference (the owner's zero-copy path); one byte at a time, each
  /// byte is fed on its own and processed before the next one.
  @discardableResult
  func transfer(_ a: End, _ b: End, oneByte: Bool = false) -> Bool {
    var slice = kp_slice_t()
    var moved = false
    while kp_tls_out_pop(a.t, &slice) == 1 {
      if oneByte {
        for i in 0..<slice.len {
          XCTAssertEqual(kp_tls_feed(b.t, slice.base + i, 1, nil), 0)
          b.step()
        }
      } else {
        XCTAssertEqual(kp_tls_feed(b.t, slice.base, slice.len, slice.chunk), 0)
        b.step()
      }
      kp_chunk_unref(slice.chunk)
      moved = true
    }
    return moved
  }

  /// Drives both sides until neither has anything left to say.
  func run(oneByte: Bool = false) {
    for _ in 0..<1000 {
      c.step()
      s.step()
      let a = transfer(c, s, oneByte: oneByte)
      let b = transfer(s, c, oneByte: oneByte)
      if !a && !b { return }
    }
    XCTFail("pump did not settle")
  }

  var bothEstablished: Bool { c.established && s.established && c.failure == 0 && s.failure == 0 }
}

private func randomBytes(_ n: Int) -> [UInt8] {
  var g = SystemRandomNumberGenerator()
  var out = [UInt8](repeating: 0, count: n)
  out.withUnsafeMutableBytes { raw in
    let words = raw.bindMemory(to: UInt64.self)
    for i in 0..<words.count { words[i] = g.next() }
  }
  return out
}

private func alpnString(_ t: OpaquePointer) -> String? {
  var len = 0
  guard let p = kp_tls_alpn(t, &len) else { return nil }
  return String(decoding: UnsafeBufferPointer(start: p, count: len), as: UTF8.self)
}

final class TLSTests: XCTestCase {
  override class func setUp() {
    super.setUp()
    do { pki = try makePKI() } catch { fatalError("cannot make test certificates: \(error)") }
  }

  override class func tearDown() {
    if let pki { try? FileManager.default.removeItem(at: pki.dir) }
    super.tearDown()
  }

  private func pair(client: Opts = .client(), server: Opts = .server(),
                    name: String? = "localhost") -> Pair {
    let cc = client.make(), sc = server.make()
    defer { kp_tls_ctx_free(cc); kp_tls_ctx_free(sc) }  // the engines keep their own references
    return Pair(client: cc, server: sc, name: name)
  }

  // MARK: handshake and data

  private func exchangeMegabyte(_ p: Pair) {
    let up = randomBytes(1 << 20), down = randomBytes(1 << 20)
    p.c.write(up)
    XCTAssertGreaterThan(kp_tls_out_pending(p.c.t), up.count)  // records add overhead
    p.s.write(down)
    p.run()
    XCTAssertEqual(p.s.received.count, up.count)
    XCTAssertTrue(p.s.received == up, "client -> server bytes differ")
    XCTAssertEqual(p.c.received.count, down.count)
    XCTAssertTrue(p.c.received == down, "server -> client bytes differ")
  }

  func testHandshakeAndMegabyteBothWaysTLS13() {
    let p = pair()
    p.run()
    XCTAssertTrue(p.bothEstablished, "client: \(p.c.lastError) server: \(p.s.lastError)")
    XCTAssertEqual(kp_tls_version(p.c.t), Int32(KP_TLS_VERSION_1_3))
    XCTAssertEqual(kp_tls_version(p.s.t), Int32(KP_TLS_VERSION_1_3))
    exchangeMegabyte(p)
  }

  func testHandshakeAndMegabyteBothWaysTLS12() {
    var c = Opts.client()
    c.maxVersion = Int32(KP_TLS_VERSION_1_2)
    let p = pair(client: c)
    p.run()
    XCTAssertTrue(p.bothEstablished, "client: \(p.c.lastError) server: \(p.s.lastError)")
    XCTAssertEqual(kp_tls_version(p.s.t), Int32(KP_TLS_VERSION_1_2))
    exchangeMegabyte(p)
  }

  func testWriteBeforeHandshakeIsRefused() {
    let p = pair()
    let r = [UInt8](repeating: 1, count: 10).withUnsafeBufferPointer {
      kp_tls_write(p.c.t, $0.baseAddress, $0.count)
    }
    XCTAssertEqual(r, Int64(EAGAIN))
  }

  func testFeedingOneByteAtATime() {
    let p = pair()
    p.run(oneByte: true)
    XCTAssertTrue(p.bothEstablished, "client: \(p.c.lastError) server: \(p.s.lastError)")
    let msg = randomBytes(40_000)
    p.c.write(msg)
    p.run(oneByte: true)
    XCTAssertTrue(p.s.received == msg)
    XCTAssertEqual(kp_tls_chunks_held(p.s.t), 0)
  }

  func testWritevCoalescesSmallPiecesIntoOneRecord() {
    let p = pair()
    p.run()
    XCTAssertTrue(p.bothEstablished)
    // 100 mux-sized pieces (a 12-byte header each): one record, not 100.
    let pieces = (0..<100).map { _ in randomBytes(16) }
    let ptrs = pieces.map { $0.withUnsafeBufferPointer { UnsafePointer(strdup_bytes($0)) } }
    defer { ptrs.forEach { free(UnsafeMutableRawPointer(mutating: $0)) } }
    let lens = pieces.map { $0.count }
    let ptrArray: [UnsafePointer<UInt8>?] = ptrs
    let r = ptrArray.withUnsafeBufferPointer { pp in
      lens.withUnsafeBufferPointer { lp in kp_tls_writev(p.c.t, pp.baseAddress, lp.baseAddress, pieces.count) }
    }
    XCTAssertEqual(r, 1600)
    // One TLS 1.3 record: 5-byte header + 1600 + content type byte + 16-byte tag.
    XCTAssertEqual(kp_tls_out_pending(p.c.t), 1600 + 22)
    p.run()
    XCTAssertTrue(p.s.received == pieces.flatMap { $0 })
  }

  // MARK: ALPN and SNI

  func testALPNServerPreferenceWins() {
    var s = Opts.server(), c = Opts.client()
    s.alpn = ["kopilot", "http/1.1"]
    c.alpn = ["http/1.1", "kopilot"]
    let p = pair(client: c, server: s)
    p.run()
    XCTAssertTrue(p.bothEstablished)
    XCTAssertEqual(alpnString(p.c.t), "kopilot")
    XCTAssertEqual(alpnString(p.s.t), "kopilot")
  }

  func testALPNSingleMatchAndAbsent() {
    var s = Opts.server(), c = Opts.client()
    s.alpn = ["kopilot", "http/1.1"]
    c.alpn = ["http/1.1"]
    let p = pair(client: c, server: s)
    p.run()
    XCTAssertTrue(p.bothEstablished)
    XCTAssertEqual(alpnString(p.c.t), "http/1.1")
    // A client that offers nothing gets nothing, and that is fine.
    let q = pair(server: s)
    q.run()
    XCTAssertTrue(q.bothEstablished)
    XCTAssertNil(alpnString(q.c.t))
  }

  func testALPNNoOverlapIsRefused() {
    var s = Opts.server(), c = Opts.client()
    s.alpn = ["kopilot", "http/1.1"]
    c.alpn = ["h2"]
    let p = pair(client: c, server: s)
    p.run()
    XCTAssertEqual(p.s.failure, ETLS, p.s.lastError)
    XCTAssertEqual(p.c.failure, ETLS, p.c.lastError)
    XCTAssertTrue(p.c.lastError.contains("no application protocol"), p.c.lastError)
  }

  func testServerSeesSNI() {
    let p = pair()
    p.run()
    XCTAssertTrue(p.bothEstablished)
    XCTAssertEqual(String(cString: kp_tls_server_name(p.s.t)), "localhost")
    XCTAssertEqual(String(cString: kp_tls_server_name(p.c.t)), "localhost")
  }

  // MARK: certificate checks

  func testIPSANAccepted() {
    let p = pair(name: "127.0.0.1")
    p.run()
    XCTAssertTrue(p.bothEstablished, "client: \(p.c.lastError)")
    XCTAssertNil(kp_tls_server_name(p.s.t), "an IP literal is never sent as SNI")
  }

  func testHostnameMismatch() {
    let p = pair(name: "kopilot.example.com")
    p.run()
    XCTAssertEqual(p.c.failure, ECERT)
    XCTAssertTrue(p.c.lastError.contains("hostname mismatch"), p.c.lastError)
    XCTAssertFalse(p.s.established)
    XCTAssertNotEqual(p.s.failure, 0, "the client's alert reaches the server")
  }

  func testIPMismatch() {
    let p = pair(name: "10.1.2.3")
    p.run()
    XCTAssertEqual(p.c.failure, ECERT)
    XCTAssertTrue(p.c.lastError.contains("IP address mismatch"), p.c.lastError)
  }

  func testUntrustedCAAndInsecureSkipVerify() {
    var c = Opts.client()
    c.caPEM = pki.pem("other.crt")
    let p = pair(client: c)
    p.run()
    XCTAssertEqual(p.c.failure, ECERT)
    XCTAssertTrue(p.c.lastError.contains("certificate verify failed"), p.c.lastError)

    // Only an explicit opt-in skips the check (name too).
    c.insecure = true
    let q = pair(client: c, name: "whatever.invalid")
    q.run()
    XCTAssertTrue(q.bothEstablished, q.c.lastError)
    // Without a name, verification cannot happen: refused up front.
    var ct: OpaquePointer?
    let cc = Opts.client().make()
    XCTAssertEqual(kp_tls_new(&ct, cc, nil), EINVAL)
    kp_tls_ctx_free(cc)
  }

  func testTLS11OnlyClientRefused() {
    let cc = Opts.client().make(), sc = Opts.server().make()
    XCTAssertEqual(kp__tls_ctx_force_versions(cc, Int32(KP_TLS_VERSION_1_1), Int32(KP_TLS_VERSION_1_1)), 0)
    let p = Pair(client: cc, server: sc)
    kp_tls_ctx_free(cc)
    kp_tls_ctx_free(sc)
    p.run()
    XCTAssertEqual(p.s.failure, ETLS)
    XCTAssertTrue(p.s.lastError.contains("unsupported protocol"), p.s.lastError)
    XCTAssertEqual(p.c.failure, ETLS)
    XCTAssertFalse(p.c.established)
  }

  func testMutualTLS() {
    var s = Opts.server()
    s.caPEM = pki.pem("ca.crt")
    s.requireClientCert = true

    // Without a certificate: the server refuses; the TLS 1.3 client may
    // have finished already and learns it from its first read.
    let p = pair(server: s)
    p.run()
    XCTAssertEqual(p.s.failure, ECERT, p.s.lastError)
    XCTAssertTrue(p.s.lastError.contains("client certificate required"), p.s.lastError)
    XCTAssertEqual(p.c.failure, ECERT, p.c.lastError)

    // With one from the trusted CA: accepted.
    var c = Opts.client()
    c.certFile = pki.path("client.crt")
    c.keyFile = pki.path("client.key")
    let q = pair(client: c, server: s)
    q.run()
    XCTAssertTrue(q.bothEstablished, "client: \(q.c.lastError) server: \(q.s.lastError)")
    q.c.write(Array("hello".utf8))
    q.run()
    XCTAssertEqual(q.s.received, Array("hello".utf8))

    // With one from another CA: refused by the server's check.
    c.certFile = pki.path("otherclient.crt")
    c.keyFile = pki.path("otherclient.key")
    let r = pair(client: c, server: s)
    r.run()
    XCTAssertEqual(r.s.failure, ECERT, r.s.lastError)
    XCTAssertTrue(r.s.lastError.contains("certificate verify failed"), r.s.lastError)
    XCTAssertEqual(r.c.failure, ECERT, r.c.lastError)

    // TLS 1.2 reports the refusal inside the handshake.
    c.maxVersion = Int32(KP_TLS_VERSION_1_2)
    c.certFile = nil
    c.keyFile = nil
    let u = pair(client: c, server: s)
    u.run()
    XCTAssertEqual(u.s.failure, ECERT, u.s.lastError)
    XCTAssertNotEqual(u.c.failure, 0)
  }

  // MARK: resumption

  func testClientResumesItsLastSession() {
    var mutual = Opts.server()
    mutual.caPEM = pki.pem("ca.crt")
    mutual.requireClientCert = true
    var withCert = Opts.client()
    withCert.certPEM = pki.pem("client.crt")
    withCert.keyPEM = pki.pem("client.key")
    var tls12 = Opts.client()
    tls12.maxVersion = Int32(KP_TLS_VERSION_1_2)
    let cases: [(String, Opts, Opts)] = [
      ("TLS 1.3", .client(), .server()),
      ("TLS 1.2", tls12, .server()),
      ("mutual TLS", withCert, mutual),
    ]
    for (label, c, s) in cases {
      let cc = c.make(), sc = s.make()
      defer { kp_tls_ctx_free(cc); kp_tls_ctx_free(sc) }
      let first = Pair(client: cc, server: sc)
      first.run()  // the client reads the ticket after the handshake
      XCTAssertTrue(first.bothEstablished, "\(label): \(first.c.lastError) \(first.s.lastError)")
      XCTAssertEqual(kp_tls_resumed(first.c.t), 0, label)
      let second = Pair(client: cc, server: sc)
      second.run()
      XCTAssertTrue(second.bothEstablished, label)
      XCTAssertEqual(kp_tls_resumed(second.c.t), 1, label)
      XCTAssertEqual(kp_tls_resumed(second.s.t), 1, label)
      second.c.write(Array("resumed".utf8))
      second.run()
      XCTAssertEqual(second.s.received, Array("resumed".utf8), label)
      // A session is proof for the name it was verified for only.
      let other = Pair(client: cc, server: sc, name: "127.0.0.1")
      other.run()
      XCTAssertTrue(other.bothEstablished, label)
      XCTAssertEqual(kp_tls_resumed(other.c.t), 0, label)
    }
  }

  func testNewServerContextStartsFreshSessions() {
    // A reloaded certificate means a new server context with new ticket
    // keys: old tickets fall back to a full handshake, not a failure.
    let cc = Opts.client().make()
    let sc1 = Opts.server().make(), sc2 = Opts.server().make()
    defer { kp_tls_ctx_free(cc); kp_tls_ctx_free(sc1); kp_tls_ctx_free(sc2) }
    let first = Pair(client: cc, server: sc1)
    first.run()
    let second = Pair(client: cc, server: sc2)
    second.run()
    XCTAssertTrue(second.bothEstablished)
    XCTAssertEqual(kp_tls_resumed(second.c.t), 0)
  }

  // MARK: loading

  func testPEMFromFilesAndFromMemory() {
    var s = Opts()
    s.isServer = true
    s.certFile = pki.path("server-chain.crt")
    s.keyFile = pki.path("server.key")
    var c = Opts()
    c.caFile = pki.path("ca.crt")
    let p = pair(client: c, server: s)
    p.run()
    XCTAssertTrue(p.bothEstablished, "client: \(p.c.lastError) server: \(p.s.lastError)")
    // The memory path is what Opts.server()/client() use everywhere else;
    // a PEM given with an explicit length (not NUL-terminated) works too.
    var ms = Opts.server(), mc = Opts.client()
    ms.explicitPEMLengths = true
    mc.explicitPEMLengths = true
    let q = pair(client: mc, server: ms)
    q.run()
    XCTAssertTrue(q.bothEstablished, "client: \(q.c.lastError) server: \(q.s.lastError)")
  }

  func testBadConfigurationIsReported() {
    var o = Opts.server()
    o.certFile = pki.path("server.crt")
    XCTAssertEqual(o.tryMake().1, EINVAL, "file and PEM both given")

    o = Opts.server()
    o.keyPEM = pki.pem("client.key")  // not the certificate's key
    var (ctx, rc, err) = o.tryMake()
    XCTAssertNil(ctx)
    XCTAssertEqual(rc, ETLS)
    XCTAssertTrue(err.hasPrefix("private key"), err)

    o = Opts.server()
    o.certPEM = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    (ctx, rc, err) = o.tryMake()
    XCTAssertEqual(rc, ETLS)
    XCTAssertTrue(err.hasPrefix("certificate"), err)

    var c = Opts()
    c.caFile = pki.path("does-not-exist.pem")
    (ctx, rc, err) = c.tryMake()
    XCTAssertEqual(rc, ETLS)
    XCTAssertTrue(err.hasPrefix("CA certificates"), err)

    o = Opts.server()
    o.requireClientCert = true
    XCTAssertEqual(o.tryMake().1, EINVAL, "mutual TLS without a CA")

    o = Opts()
    o.isServer = true
    XCTAssertEqual(o.tryMake().1, EINVAL, "server without a certificate")

    o = Opts.server()
    o.alpn = [String(repeating: "x", count: 256)]
    XCTAssertEqual(o.tryMake().1, EINVAL, "ALPN name over 255 bytes")
  }

  // MARK: closing and garbage

  func testCloseNotifyIsCleanEOF() {
    let p = pair()
    p.run()
    p.c.write(Array("last words".utf8))
    XCTAssertEqual(kp_tls_shutdown(p.c.t), 0)
    p.run()
    XCTAssertEqual(p.s.received, Array("last words".utf8))
    XCTAssertEqual(p.s.readErr, ECLOSED)
    XCTAssertEqual(kp_tls_write(p.c.t, nil, 0), Int64(ECLOSED))
    // The server may answer with its own close_notify.
    XCTAssertEqual(kp_tls_shutdown(p.s.t), 0)
    p.run()
    XCTAssertEqual(p.c.readErr, ECLOSED)
  }

  func testGarbageCiphertextFailsCleanly() {
    // Before the handshake: not a ClientHello.
    let p = pair()
    let junk = randomBytes(4096)
    XCTAssertEqual(kp_tls_feed(p.s.t, junk, junk.count, nil), 0)
    p.s.step()
    XCTAssertEqual(p.s.failure, ETLS)
    XCTAssertFalse(p.s.lastError.isEmpty)
    XCTAssertEqual(kp_tls_handshake(p.s.t), ETLS, "errors are sticky")

    // After it: a record that does not decrypt.
    let q = pair()
    q.run()
    XCTAssertTrue(q.bothEstablished)
    var rec: [UInt8] = [23, 3, 3, 0, 64]  // application_data, 64 bytes
    rec += randomBytes(64)
    XCTAssertEqual(kp_tls_feed(q.s.t, rec, rec.count, nil), 0)
    q.s.step()
    XCTAssertEqual(q.s.readErr, ETLS, q.s.lastError)
    q.run()  // the alert reaches the client
    XCTAssertNotEqual(q.c.readErr, 0)
  }

  // MARK: memory

  func testIdleEnginesHoldNothing() {
    var ends: [Pair] = []
    let cc = Opts.client().make(), sc = Opts.server().make()
    defer { kp_tls_ctx_free(cc); kp_tls_ctx_free(sc) }
    let warm = Pair(client: cc, server: sc)
    warm.run()
    let before = kp_chunk_live_count()
    for _ in 0..<200 {
      let p = Pair(client: cc, server: sc)
      p.run()
      p.c.write(Array("ping".utf8))
      p.run()
      p.s.write(Array("pong".utf8))
      p.run()
      XCTAssertTrue(p.bothEstablished)
      ends.append(p)
    }
    for p in ends {
      XCTAssertEqual(kp_tls_out_pending(p.c.t), 0)
      XCTAssertEqual(kp_tls_out_pending(p.s.t), 0)
      XCTAssertEqual(kp_tls_chunks_held(p.c.t), 0)
      XCTAssertEqual(kp_tls_chunks_held(p.s.t), 0)
    }
    // 400 idle engines pin no chunk: what is live beyond the baseline is
    // at most this thread's pool of idle chunks.
    XCTAssertLessThanOrEqual(kp_chunk_live_count(), before + Int(KP_CHUNK_POOL_MAX))
  }

  func testContextOutlivesItsCreatorsReference() {
    // pair() frees both contexts right after making the engines, as a
    // certificate reload would; the engines keep working.
    let p = pair()
    p.run()
    XCTAssertTrue(p.bothEstablished)
    p.c.write(Array("still here".utf8))
    p.run()
    XCTAssertEqual(p.s.received, Array("still here".utf8))
  }

  // MARK: threads

  func testEnginesOnTwoThreads() {
    // One shared pair of contexts, one connection per thread: the
    // contexts are shared read-only, the engines are not shared.
    // The contexts are read-only; each thread writes only its own slot of ok.
    nonisolated(unsafe) let cc = Opts.client().make(), sc = Opts.server().make()
    defer { kp_tls_ctx_free(cc); kp_tls_ctx_free(sc) }
    nonisolated(unsafe) let ok = UnsafeMutablePointer<Int>.allocate(capacity: 2)
    ok.initialize(repeating: 0, count: 2)
    defer { ok.deallocate() }
    DispatchQueue.concurrentPerform(iterations: 2) { i in
      for _ in 0..<3 {
        let p = Pair(client: cc, server: sc)
        p.run()
        let data = randomBytes(256 * 1024)
        p.c.write(data)
        p.s.write(data)
        p.run()
        if p.bothEstablished && p.s.received == data && p.c.received == data { ok[i] += 1 }
      }
    }
    XCTAssertEqual(ok[0], 3)
    XCTAssertEqual(ok[1], 3)
  }
}

/// A malloc'd copy of some bytes (freed by the caller).
private func strdup_bytes(_ b: UnsafeBufferPointer<UInt8>) -> UnsafeMutablePointer<UInt8> {
  let p = malloc(max(b.count, 1))!.assumingMemoryBound(to: UInt8.self)
  if let base = b.baseAddress { p.update(from: base, count: b.count) }
  return p
}
