import Crypto
import Foundation
@testable import KopilotHub
import KopilotIO
@testable import KopilotPKI
import X509
import XCTest

final class StateDirectoryTests: XCTestCase {
  func mode(_ path: String) -> Int {
    ((try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? NSNumber)?.intValue ?? -1
  }

  func testFirstStartMakesAWorkingSetup() async throws {
    let dir = try makeTempDir() + "/kopilot-state"
    let state = StateDirectory(paths: StatePaths(directory: dir), hosts: ["hub.example.com:8443", "[fd00::7]:443", "10.1.2.3"])
    let report = try state.prepare()
    let p = state.paths
    XCTAssertEqual(Set(report.created), Set([p.caCert, p.caKey, p.hubCert, p.hubKey, p.clusters, p.tokens, p.rbac]))
    XCTAssertEqual(report.notices, [])
    XCTAssertEqual(mode(dir), 0o700)
    XCTAssertEqual(mode(p.caKey), 0o600)
    XCTAssertEqual(mode(p.hubKey), 0o600)
    XCTAssertEqual(mode(p.tokens), 0o600)
    XCTAssertEqual(mode(p.clusters), 0o600, "agent tokens")
    XCTAssertEqual(mode(p.caCert), 0o644)
    XCTAssertEqual(report.notices, [], "no warning on a fresh folder")

    // The admin token works end to end through the files just made.
    let token = try XCTUnwrap(report.adminToken)
    XCTAssertGreaterThanOrEqual(token.count, 22)  // >= 128 bits in base64
    let authn = try TokenFileAuthenticator(path: p.tokens, pollInterval: nil)
    let authz = try RBACAuthorizer(path: p.rbac, pollInterval: nil)
    let reg = try EmbeddedClusterRegistry(path: p.clusters, pollInterval: nil)
    XCTAssertEqual(reg.clusters(), [])
    let user = try await authn.authenticate(bearerToken: token)
    XCTAssertEqual(user.name, "kopilot-admin")
    XCTAssertEqual(user.groups, ["kopilot:admins", "system:authenticated"])
    let d = try await authz.authorize(AuthorizationRequest(user: user, method: "POST", target: parseProxyTarget("/proxy/default_sample/api/v1/pods")!))
    XCTAssertTrue(d.allowed, d.reason)

    // A second start changes nothing.
    let before = try p.allFiles.map { try Data(contentsOf: URL(fileURLWithPath: $0)) }
    let again = try state.prepare()
    XCTAssertEqual(again.created, [])
    XCTAssertNil(again.adminToken)
    XCTAssertEqual(try p.allFiles.map { try Data(contentsOf: URL(fileURLWithPath: $0)) }, before)
  }

  func testChainVerifiesWithSwiftCertificates() async throws {
    let dir = try makeTempDir()
    let state = StateDirectory(paths: StatePaths(directory: dir), hosts: ["hub.example.com:8443", "10.1.2.3"])
    try state.prepare()
    let ca = try Certificate(pemEncoded: String(contentsOfFile: state.paths.caCert, encoding: .utf8))
    let hub = try Certificate(pemEncoded: String(contentsOfFile: state.paths.hubCert, encoding: .utf8))
    // Keys load and match.
    _ = try HubPKI.load(certificatePEM: String(contentsOfFile: state.paths.caCert, encoding: .utf8),
                        keyPEM: String(contentsOfFile: state.paths.caKey, encoding: .utf8))
    _ = try HubPKI.load(certificatePEM: String(contentsOfFile: state.paths.hubCert, encoding: .utf8),
                        keyPEM: String(contentsOfFile: state.paths.hubKey, encoding: .utf8))
    XCTAssertEqual(try ca.extensions.basicConstraints, .isCertificateAuthority(maxPathLength: 0))
    XCTAssertGreaterThan(ca.notValidAfter.timeIntervalSinceNow, 9.9 * 365 * 86_400)

    for (host, ip) in [("localhost", nil), ("hub.example.com", nil), (nil, "127.0.0.1"), (nil, "::1"), (nil, "10.1.2.3")] as [(String?, String?)] {
      var verifier = Verifier(rootCertificates: CertificateStore([ca])) {
        RFC5280Policy()
        ServerIdentityPolicy(serverHostname: host, serverIP: ip)
      }
      let result = await verifier.validate(leaf: hub, intermediates: CertificateStore())
      guard case .validCertificate(let chain) = result else { return XCTFail("\(host ?? ip!): \(result)") }
      XCTAssertEqual(chain.count, 2)
    }
    var wrong = Verifier(rootCertificates: CertificateStore([ca])) {
      RFC5280Policy()
      ServerIdentityPolicy(serverHostname: "evil.example.com", serverIP: nil)
    }
    guard case .couldNotValidate = await wrong.validate(leaf: hub, intermediates: CertificateStore()) else {
      return XCTFail("a name outside the SANs verified")
    }
    // Another CA does not vouch for it.
    let other = try HubPKI.makeCA()
    var foreign = Verifier(rootCertificates: CertificateStore([other.certificate])) { RFC5280Policy() }
    guard case .couldNotValidate = await foreign.validate(leaf: hub, intermediates: CertificateStore()) else {
      return XCTFail("verified under a foreign CA")
    }
  }

  /// The OpenSSL the C core uses must accept the chain and the keys too.
  func testChainVerifiesWithOpenSSL() throws {
    guard let openssl = ["/usr/bin/openssl", "/usr/local/bin/openssl"].first(where: FileManager.default.isExecutableFile) else {
      throw XCTSkip("no openssl CLI on this machine")
    }
    let dir = try makeTempDir()
    let state = StateDirectory(paths: StatePaths(directory: dir), hosts: ["hub.example.com"])
    try state.prepare()
    func run(_ args: [String]) throws -> (Int32, String) {
      let p = Process()
      p.executableURL = URL(fileURLWithPath: openssl)
      p.arguments = args
      let out = Pipe()
      p.standardOutput = out
      p.standardError = out
      try p.run()
      let data = out.fileHandleForReading.readDataToEndOfFile()
      p.waitUntilExit()
      return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
    let (rc, out) = try run(["verify", "-CAfile", state.paths.caCert, "-purpose", "sslserver",
                             "-verify_hostname", "hub.example.com", state.paths.hubCert])
    XCTAssertEqual(rc, 0, out)
    XCTAssertTrue(out.contains("OK"), out)
    let (rc2, out2) = try run(["pkey", "-in", state.paths.hubKey, "-noout"])
    XCTAssertEqual(rc2, 0, out2)
  }

  func testExistingFilesAreKeptAndHalfPairsRefused() throws {
    let dir = try makeTempDir()
    var paths = StatePaths(directory: dir)
    paths.tokens = dir + "/elsewhere/my-tokens.csv"
    try FileManager.default.createDirectory(atPath: dir + "/elsewhere", withIntermediateDirectories: true)
    try write("mine-mine-mine-01,me,1\n", to: paths.tokens)
    XCTAssertEqual(chmod(paths.tokens, 0o600), 0)
    let r = try StateDirectory(paths: paths).prepare()
    XCTAssertFalse(r.created.contains(paths.tokens))
    XCTAssertNil(r.adminToken)
    XCTAssertEqual(try String(contentsOfFile: paths.tokens, encoding: .utf8), "mine-mine-mine-01,me,1\n")

    // A certificate that does not name a newly asked-for host: a notice.
    let later = try StateDirectory(paths: paths, hosts: ["new.example.com:443"]).prepare()
    XCTAssertEqual(later.notices.count, 1)
    XCTAssertTrue(later.notices[0].contains("does not cover new.example.com"), later.notices[0])

    try FileManager.default.removeItem(atPath: paths.hubKey)
    XCTAssertThrowsError(try StateDirectory(paths: paths).prepare()) { e in
      XCTAssertEqual((e as? HubError)?.code, .certificate)
    }
    // Without the hub pair, a new one is signed by the existing CA.
    try FileManager.default.removeItem(atPath: paths.hubCert)
    let caBefore = try String(contentsOfFile: paths.caCert, encoding: .utf8)
    let again = try StateDirectory(paths: paths).prepare()
    XCTAssertEqual(Set(again.created), Set([paths.hubCert, paths.hubKey]))
    XCTAssertEqual(try String(contentsOfFile: paths.caCert, encoding: .utf8), caBefore)
  }

  /// Whoever can write the folder can swap tokens.csv or rbac.yaml: the
  /// hub refuses to start there, naming the folder and the fix.
  func testAFolderOthersCanWriteIsRefused() throws {
    for bad: mode_t in [0o777, 0o770, 0o702, 0o1777] {
      let dir = try makeTempDir()
      XCTAssertEqual(chmod(dir, bad), 0)
      XCTAssertThrowsError(try StateDirectory(paths: StatePaths(directory: dir)).prepare(), String(bad, radix: 8)) { e in
        let h = e as? HubError
        XCTAssertEqual(h?.code, .insecure)
        XCTAssertEqual(h?.file, dir)
        XCTAssertTrue("\(e)".contains("chmod go-w \(dir)"), "\(e)")
        XCTAssertTrue("\(e)".contains("writable by"), "\(e)")
      }
      XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/tokens.csv"), "nothing written there")
    }
    // Others may read and enter (the secrets are 0600 inside): it starts.
    let dir = try makeTempDir()
    XCTAssertEqual(chmod(dir, 0o755), 0)
    XCTAssertNoThrow(try StateDirectory(paths: StatePaths(directory: dir)).prepare())
  }

  /// Secret files others can read are reported loudly, each with its fix;
  /// public files (certificates, rbac.yaml) are not.
  func testSecretsOthersCanReadAreReported() throws {
    let dir = try makeTempDir()
    let state = StateDirectory(paths: StatePaths(directory: dir))
    try state.prepare()
    let p = state.paths
    XCTAssertEqual(chmod(p.clusters, 0o644), 0)
    XCTAssertEqual(chmod(p.caKey, 0o640), 0)
    XCTAssertEqual(chmod(p.tokens, 0o606), 0)
    XCTAssertEqual(chmod(p.rbac, 0o644), 0)
    let notices = try state.prepare().notices
    XCTAssertEqual(notices.count, 3, "\(notices)")
    for (f, m) in [(p.clusters, "644"), (p.caKey, "640"), (p.tokens, "606")] {
      let n = notices.first { $0.contains(f) }
      XCTAssertNotNil(n, f)
      XCTAssertTrue(n?.hasPrefix("SECURITY: ") == true, n ?? "")
      XCTAssertTrue(n?.contains("mode is \(m)") == true, n ?? "")
      XCTAssertTrue(n?.contains("chmod 600 \(f)") == true, n ?? "")
    }
    XCTAssertEqual(StatePaths(directory: dir).secretFiles, [p.caKey, p.hubKey, p.clusters, p.tokens])
  }

  func testHostHelpers() {
    XCTAssertEqual(HubPKI.host(ofAddress: "hub.example.com:8443"), "hub.example.com")
    XCTAssertEqual(HubPKI.host(ofAddress: "[fd00::1]:443"), "fd00::1")
    XCTAssertEqual(HubPKI.host(ofAddress: "fd00::1"), "fd00::1")
    XCTAssertEqual(HubPKI.host(ofAddress: "10.0.0.1"), "10.0.0.1")
    XCTAssertEqual(HubPKI.normalizeHost("Hub.Example.COM."), "hub.example.com")
    XCTAssertEqual(HubPKI.ipBytes("::1")?.count, 16)
    XCTAssertNil(HubPKI.ipBytes("example.com"))
  }

  func testRandomToken() {
    let a = RandomToken.make(), b = RandomToken.make()
    XCTAssertNotEqual(a, b)
    XCTAssertEqual(a.count, 43)  // 32 bytes, base64 without padding
    XCTAssertTrue(a.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }, a)
  }
}

extension StatePaths {
  var allFiles: [String] { [caCert, caKey, hubCert, hubKey, clusters, tokens, rbac] }
}
