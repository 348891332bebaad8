import Foundation
import XCTest

/// A serving certificate renewed in place (as cert-manager renews the
/// Secret a hub mounts) is picked up for new connections without a restart;
/// a broken pair is refused and the last good one keeps serving.
final class CertReloadTests: E2ETestCase {
  func serial(_ port: Int) throws -> String {
    let r = try runCommand("/bin/sh", ["-c", "openssl s_client -connect 127.0.0.1:\(port) -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial"])
    return r.text.trimmingCharacters(in: .whitespacesAndNewlines)
  }

  /// A new key and certificate for localhost/127.0.0.1 from the test CA.
  func issue(_ name: String, serial: Int) throws -> (cert: String, key: String) {
    let dir = world.certs.dir
    let out = world.dir.appendingPathComponent(name).path
    for step in [
      ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "\(out).key",
       "-out", "\(out).csr", "-subj", "/CN=localhost"],
      ["x509", "-req", "-in", "\(out).csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "\(serial)",
       "-out", "\(out).crt", "-days", "2", "-extfile", "ext.cnf"],
    ] {
      let r = try runCommand(Paths.tool("openssl") ?? "openssl", step, timeout: 30, in: dir)
      guard r.status == 0 else { throw E2EError("openssl: \(r.stderr)") }
    }
    return ("\(out).crt", "\(out).key")
  }

  func testRenewedCertificateIsServedWithoutRestart() throws {
    try startWorld { w in
      let cert = w.dir.appendingPathComponent("hub.crt").path, key = w.dir.appendingPathComponent("hub.key").path
      try FileManager.default.copyItem(atPath: w.certs.cert, toPath: cert)
      try FileManager.default.copyItem(atPath: w.certs.key, toPath: key)
      try w.startHub(extraArgs: ["--tls-reload-interval", "0.2"], cert: cert, key: key)
    }
    let cert = world.dir.appendingPathComponent("hub.crt").path, key = world.dir.appendingPathComponent("hub.key").path
    let before = try serial(world.hubPort)
    XCTAssertTrue(before.hasPrefix("serial="), before)
    let renewed = try issue("renewed", serial: 0x4242)
    // The kubelet swaps both files at once; a renewal by hand may not.
    try Data(contentsOf: URL(fileURLWithPath: renewed.key)).write(to: URL(fileURLWithPath: key), options: .atomic)
    try Data(contentsOf: URL(fileURLWithPath: renewed.cert)).write(to: URL(fileURLWithPath: cert), options: .atomic)
    try world.hub.waitFor("certificates reloaded")
    XCTAssertEqual(try serial(world.hubPort), "serial=4242")
    XCTAssertEqual(try world.curl(["-o", "/dev/null", "-w", "%{http_code}", world.hubURL + "/healthz"]).text, "200")

    // A certificate whose key is not the one beside it: refused, the
    // renewed pair keeps serving.
    let other = try issue("other", serial: 0x4343)
    try Data(contentsOf: URL(fileURLWithPath: other.cert)).write(to: URL(fileURLWithPath: cert), options: .atomic)
    try world.hub.waitFor("certificates changed but were not loaded")
    XCTAssertEqual(try serial(world.hubPort), "serial=4242")
  }
}
