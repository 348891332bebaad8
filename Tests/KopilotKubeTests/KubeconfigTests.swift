import Foundation
import KopilotKubeConfig
import KopilotKube
import XCTest

final class KubeconfigTests: XCTestCase {
  var dir: URL!

  override func setUpWithError() throws {
    dir = FileManager.default.temporaryDirectory.appendingPathComponent("kp-kubeconfig-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
  }

  override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

  func write(_ name: String, _ text: String) throws -> String {
    let p = dir.appendingPathComponent(name).path
    try text.write(toFile: p, atomically: true, encoding: .utf8)
    return p
  }

  let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

  func testCurrentContextWithTokenAndCAData() throws {
    let b64 = Data(pem.utf8).base64EncodedString()
    let p = try write("config", """
      apiVersion: v1
      kind: Config
      current-context: member
      clusters:
      - name: other
        cluster: {server: "https://10.0.0.9:6443"}
      - name: m
        cluster:
          server: https://10.0.0.1:6443
          certificate-authority-data: \(b64)
      users:
      - name: u
        user: {token: abc.def}
      contexts:
      - name: member
        context: {cluster: m, user: u}
      """)
    let t = try Kubeconfig.load(path: p)
    XCTAssertEqual(t.server.absoluteString, "https://10.0.0.1:6443")
    XCTAssertEqual(t.caPEM, pem)
    XCTAssertEqual(t.token, "abc.def")
    XCTAssertNil(t.tokenFile)
    XCTAssertNil(t.clientCertPEM)
  }

  /// Relative paths are relative to the kubeconfig's folder, as kubectl
  /// resolves them; a tokenFile is remembered so a rotated token is re-read.
  func testRelativeFilesAndTokenFile() throws {
    _ = try write("ca.crt", pem)
    _ = try write("token", "from-file\n")
    let p = try write("config", """
      current-context: c
      clusters: [{name: k, cluster: {server: "https://h:443", certificate-authority: ca.crt}}]
      users: [{name: u, user: {tokenFile: token}}]
      contexts: [{name: c, context: {cluster: k, user: u}}]
      """)
    let t = try Kubeconfig.load(path: p)
    XCTAssertEqual(t.caPEM, pem)
    XCTAssertEqual(t.token, "from-file")
    XCTAssertEqual(t.tokenFile, dir.appendingPathComponent("token").path)
  }

  func testClientCertificateDataAndAChosenContext() throws {
    let cert = Data("CERT".utf8).base64EncodedString(), key = Data("KEY".utf8).base64EncodedString()
    let p = try write("config", """
      current-context: a
      clusters: [{name: k, cluster: {server: "https://h:6443", insecure-skip-tls-verify: true}}]
      users: [{name: u, user: {client-certificate-data: \(cert), client-key-data: \(key)}}]
      contexts: [{name: a, context: {cluster: missing}}, {name: b, context: {cluster: k, user: u}}]
      """)
    let t = try Kubeconfig.load(path: p, context: "b")
    XCTAssertTrue(t.insecureSkipTLSVerify)
    XCTAssertEqual(t.clientCertPEM, "CERT")
    XCTAssertEqual(t.clientKeyPEM, "KEY")
  }

  func testClearErrors() throws {
    let exec = try write("exec", """
      current-context: c
      clusters: [{name: k, cluster: {server: "https://h:443"}}]
      users: [{name: u, user: {exec: {command: aws}}}]
      contexts: [{name: c, context: {cluster: k, user: u}}]
      """)
    XCTAssertThrowsError(try Kubeconfig.load(path: exec)) { e in
      XCTAssertTrue("\(e)".contains("exec or auth-provider"), "\(e)")
    }
    let noCtx = try write("noctx", "clusters: []\n")
    XCTAssertThrowsError(try Kubeconfig.load(path: noCtx)) { e in XCTAssertTrue("\(e)".contains("current-context")) }
    let plain = try write("http", """
      current-context: c
      clusters: [{name: k, cluster: {server: "http://h:8080"}}]
      contexts: [{name: c, context: {cluster: k}}]
      """)
    XCTAssertThrowsError(try Kubeconfig.load(path: plain)) { e in XCTAssertTrue("\(e)".contains("https"), "\(e)") }
    let half = try write("half", """
      current-context: c
      clusters: [{name: k, cluster: {server: "https://h:443"}}]
      users: [{name: u, user: {client-certificate-data: Q0VSVA==}}]
      contexts: [{name: c, context: {cluster: k, user: u}}]
      """)
    XCTAssertThrowsError(try Kubeconfig.load(path: half)) { e in XCTAssertTrue("\(e)".contains("without its key"), "\(e)") }
  }
}
