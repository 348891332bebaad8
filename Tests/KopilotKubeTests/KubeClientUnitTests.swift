import Foundation
import KopilotKubeConfig
import Logging
import XCTest

@testable import KopilotKube

/// The client's parts that need no server: line splitting, event and Status
/// decoding, configuration loading, the token file, the backoff.
final class KubeClientUnitTests: XCTestCase {
  var dir: URL!

  override func setUpWithError() throws {
    dir = FileManager.default.temporaryDirectory.appendingPathComponent("kp-kubeclient-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
  }

  override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

  func write(_ name: String, _ text: String) throws -> String {
    let p = dir.appendingPathComponent(name).path
    try text.write(toFile: p, atomically: true, encoding: .utf8)
    return p
  }

  // MARK: Lines

  let stream = Array("""
    {"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"1"}}}
    \r
    {"type":"MODIFIED","object":{"metadata":{"name":"a\\n}","resourceVersion":"2"}}}\r
    {"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"3"}}}
    {"type":"DELETED","object":{"metadata":{"name":"a","resourceVersion":"4"}}}
    """.utf8) + [0x0A]

  func expectedLines() -> [String] {
    [
      #"{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"1"}}}"#,
      #"{"type":"MODIFIED","object":{"metadata":{"name":"a\n}","resourceVersion":"2"}}}"#,
      #"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"3"}}}"#,
      #"{"type":"DELETED","object":{"metadata":{"name":"a","resourceVersion":"4"}}}"#,
    ]
  }

  func testLinesWhole() throws {
    var s = LineSplitter(limit: 1 << 20)
    let lines = try s.feed(stream).map { String(decoding: $0, as: UTF8.self) }
    XCTAssertEqual(lines, expectedLines())
    XCTAssertNil(s.finish())
  }

  func testLinesOneByteAtATime() throws {
    var s = LineSplitter(limit: 1 << 20)
    var lines: [String] = []
    for b in stream { lines += try s.feed([b]).map { String(decoding: $0, as: UTF8.self) } }
    XCTAssertEqual(lines, expectedLines())
  }

  func testLinesSplitAtEveryOffset() throws {
    for cut in 0...stream.count {
      var s = LineSplitter(limit: 1 << 20)
      var lines = try s.feed(stream[0..<cut])
      lines += try s.feed(stream[cut...])
      XCTAssertEqual(lines.map { String(decoding: $0, as: UTF8.self) }, expectedLines(), "cut at \(cut)")
      XCTAssertNil(s.finish())
    }
  }

  func testLastLineWithoutNewline() throws {
    var s = LineSplitter(limit: 1 << 20)
    XCTAssertEqual(try s.feed(Array("{\"a\":1}\n{\"b\"".utf8)).count, 1)
    XCTAssertEqual(try s.feed(Array(":2}".utf8)).count, 0)
    XCTAssertEqual(s.finish().map { String(decoding: $0, as: UTF8.self) }, "{\"b\":2}")
  }

  func testLineLongerThanTheLimit() throws {
    var s = LineSplitter(limit: 16)
    XCTAssertNoThrow(try s.feed(Array(repeating: UInt8(ascii: "x"), count: 16)))
    XCTAssertThrowsError(try s.feed([UInt8(ascii: "x")]))
    var t = LineSplitter(limit: 16)
    XCTAssertThrowsError(try t.feed(Array(repeating: UInt8(ascii: "x"), count: 20) + [0x0A]))
  }

  // MARK: Events

  func testEventKeepsTheObjectBytes() throws {
    let object = #"{ "metadata" : {"name":"x","resourceVersion":"7"}, "spec": {"list":[1, 2.5e3, {"q":"}]\"{"}], "t":true, "n":null} }"#
    let line = Data(#"  {"object": \#(object) , "type" : "MODIFIED"}  "#.utf8)
    let e = try XCTUnwrap(WatchEventDecoder.decode(line))
    XCTAssertEqual(e.type, "MODIFIED")
    XCTAssertEqual(String(decoding: e.object, as: UTF8.self), object)
  }

  func testEventTypeWithEscapes() throws {
    let e = try XCTUnwrap(WatchEventDecoder.decode(Data(#"{"type":"ADD\u0045D","object":{}}"#.utf8)))
    XCTAssertEqual(e.type, "ADDED")
  }

  func testMalformedEvents() {
    let bad = [
      "", "[]", "null", #"{"type":"ADDED"}"#, #"{"object":{}}"#, #"{"type":"ADDED","object":{}"#,
      #"{"type":"ADDED","object":{}} x"#, #"{"type":1,"object":{}}"#, #"{"type":"ADDED","object":"s"}"#,
      #"{"type":"ADDED","object":{"a":"unterminated}}"#, #"{"type":"ADDED" "object":{}}"#, #"{"type":"ADDED","object":{},}"#,
    ]
    for b in bad { XCTAssertNil(WatchEventDecoder.decode(Data(b.utf8)), b) }
  }

  // MARK: Status

  func testStatusBody() throws {
    let body = Data(#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"clusters.kopilot.smartx.com \"x\" not found","reason":"NotFound","details":{"name":"x"},"code":404}"#.utf8)
    let e = KubeAPIError.fromResponse(status: 404, reasonPhrase: "Not Found", body: body)
    XCTAssertEqual(e, KubeAPIError(code: 404, reason: "NotFound", message: #"clusters.kopilot.smartx.com "x" not found"#))
    XCTAssertEqual(e.description, #"404 NotFound: clusters.kopilot.smartx.com "x" not found"#)
  }

  func testExpiredStatusFromAWatchErrorEvent() throws {
    let obj = Data(#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 5 (10)","reason":"Expired","code":410}"#.utf8)
    let e = try XCTUnwrap(KubeAPIError.fromStatus(obj))
    XCTAssertTrue(e.isGone)
    XCTAssertEqual(e.code, 410)
    XCTAssertEqual(e.reason, "Expired")
    XCTAssertNil(KubeAPIError.fromStatus(Data(#"{"kind":"Cluster"}"#.utf8)))
  }

  func testStatusWithoutReasonOrCode() {
    let e = KubeAPIError.fromResponse(status: 409, reasonPhrase: "Conflict", body: Data(#"{"kind":"Status","message":"m"}"#.utf8))
    XCTAssertEqual(e, KubeAPIError(code: 409, reason: "Conflict", message: "m"))
  }

  func testNonStatusBody() {
    let e = KubeAPIError.fromResponse(status: 502, reasonPhrase: "Bad Gateway", body: Data("upstream\nbroke\n".utf8))
    XCTAssertEqual(e.code, 502)
    XCTAssertEqual(e.reason, "BadGateway")
    XCTAssertEqual(e.message, "HTTP 502 Bad Gateway: upstream broke")
    let g = KubeAPIError.fromResponse(status: 410, reasonPhrase: "Gone", body: Data())
    XCTAssertTrue(g.isGone)
    XCTAssertEqual(g.message, "HTTP 410 Gone")
    let long = KubeAPIError.fromResponse(status: 500, reasonPhrase: "Internal Server Error", body: Data(repeating: 0x41, count: 5000))
    XCTAssertEqual(long.reason, "InternalError")
    XCTAssertLessThan(long.message.count, 400)
  }

  func testRedaction() throws {
    let c = try KubeClient(config: config(token: "sekrit-bearer-token"), requestTimeout: 1, logger: Logger(label: "t"),
                           tokenMaxAge: 60)
    defer { c.shutdown() }
    let e = c.redact(KubeAPIError(code: 400, reason: "BadRequest", message: "saw sekrit-bearer-token and other-one"),
                     ["other-one"]) as? KubeAPIError
    XCTAssertEqual(e?.message, "saw [redacted] and [redacted]")
  }

  func testQueryEscaping() {
    XCTAssertEqual(KubeClient.escape("app=x,tier!=y z&/"), "app%3Dx%2Ctier%21%3Dy%20z%26%2F")
    XCTAssertEqual(KubeClient.escape("a-b_c.d~9"), "a-b_c.d~9")
  }

  // MARK: Configuration

  func config(token: String? = nil) -> KubeClientConfig {
    var c = KubeClientConfig(server: URL(string: "https://127.0.0.1:1")!)
    c.bearerToken = token
    return c
  }

  func serviceAccount(token: String? = "tok\n", ca: String? = "CA PEM", namespace: String? = "kopilot-system\n") throws -> String {
    let sa = dir.appendingPathComponent("sa").path
    try FileManager.default.createDirectory(atPath: sa, withIntermediateDirectories: true)
    if let token { _ = try write("sa/token", token) }
    if let ca { _ = try write("sa/ca.crt", ca) }
    if let namespace { _ = try write("sa/namespace", namespace) }
    return sa
  }

  func testInCluster() throws {
    let sa = try serviceAccount()
    let c = try KubeClientConfig.inCluster(
      environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"], directory: sa)
    XCTAssertEqual(c.server.absoluteString, "https://10.96.0.1:443")
    XCTAssertEqual(c.tokenFile, sa + "/token")
    XCTAssertNil(c.bearerToken)
    XCTAssertEqual(c.caPEM, "CA PEM")
    XCTAssertEqual(c.namespace, "kopilot-system")
  }

  func testInClusterIPv6() throws {
    let sa = try serviceAccount(namespace: nil)
    let c = try KubeClientConfig.inCluster(
      environment: ["KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "6443"], directory: sa + "/")
    XCTAssertEqual(c.server.absoluteString, "https://[fd00:10:96::1]:6443")
    XCTAssertNil(c.namespace)
  }

  func testInClusterErrorsNameWhatIsMissing() throws {
    let sa = try serviceAccount()
    let env = ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"]
    func message(_ env: [String: String], _ dir: String) -> String {
      do {
        _ = try KubeClientConfig.inCluster(environment: env, directory: dir)
        return "no error"
      } catch { return "\(error)" }
    }
    XCTAssertTrue(message([:], sa).contains("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT not set"))
    XCTAssertTrue(message(["KUBERNETES_SERVICE_HOST": "h"], sa).contains("KUBERNETES_SERVICE_PORT not set"))
    XCTAssertTrue(message(["KUBERNETES_SERVICE_HOST": "h", "KUBERNETES_SERVICE_PORT": "https"], sa).contains("not a port"))
    XCTAssertTrue(message(env, dir.appendingPathComponent("nowhere").path).contains("nowhere/token"))
    try FileManager.default.removeItem(atPath: sa + "/ca.crt")
    XCTAssertTrue(message(env, sa).contains(sa + "/ca.crt"))
    _ = try write("sa/token", "\n")
    XCTAssertTrue(message(env, sa).contains("empty"))
  }

  func testKubeconfigWithNamespace() throws {
    _ = try write("tok", "file-token\n")
    let p = try write("config", """
      apiVersion: v1
      kind: Config
      current-context: host
      clusters:
      - name: c
        cluster: {server: "https://127.0.0.1:6443/prefix/", insecure-skip-tls-verify: true}
      users:
      - name: u
        user: {tokenFile: tok}
      contexts:
      - name: host
        context: {cluster: c, user: u, namespace: kopilot}
      - name: bare
        context: {cluster: c}
      """)
    let c = try KubeClientConfig.kubeconfig(path: p)
    XCTAssertEqual(c.server.absoluteString, "https://127.0.0.1:6443/prefix/")
    XCTAssertTrue(c.insecureSkipTLSVerify)
    XCTAssertEqual(c.bearerToken, "file-token")
    XCTAssertEqual(c.tokenFile, dir.appendingPathComponent("tok").path)
    XCTAssertEqual(c.namespace, "kopilot")
    let bare = try KubeClientConfig.kubeconfig(path: p, context: "bare")
    XCTAssertNil(bare.namespace)
    XCTAssertNil(bare.bearerToken)
    XCTAssertThrowsError(try KubeClientConfig.kubeconfig(path: p, context: "nope"))
  }

  func testBadTLSMaterialFailsAtInit() {
    var c = config()
    c.caPEM = "not a certificate"
    XCTAssertThrowsError(try KubeClient(config: c))
    c.caPEM = nil
    c.clientCertPEM = "x"
    XCTAssertThrowsError(try KubeClient(config: c)) { XCTAssertTrue("\($0)".contains("needs its key")) }
  }

  // MARK: Token file

  func testTokenFileIsReadAgainWhenOld() throws {
    let f = try write("token", "first\n")
    let fresh = Credentials(token: nil, file: f, maxAge: 0, logger: Logger(label: "t"))
    XCTAssertEqual(try fresh.token(), "first")
    _ = try write("token", "second")
    XCTAssertEqual(try fresh.token(), "second")
    // Unreadable mid-rotation: the last one read stays in use.
    try FileManager.default.removeItem(atPath: f)
    XCTAssertEqual(try fresh.token(), "second")

    _ = try write("token", "third")
    let slow = Credentials(token: nil, file: f, maxAge: 3600, logger: Logger(label: "t"))
    XCTAssertEqual(try slow.token(), "third")
    _ = try write("token", "fourth")
    XCTAssertEqual(try slow.token(), "third", "read again before it aged")

    let missing = Credentials(token: nil, file: dir.appendingPathComponent("none").path, maxAge: 60, logger: Logger(label: "t"))
    XCTAssertThrowsError(try missing.token()) { XCTAssertTrue("\($0)".contains("cannot read the token file")) }
    XCTAssertEqual(try Credentials(token: "fixed", file: nil, maxAge: 0, logger: Logger(label: "t")).token(), "fixed")
    XCTAssertNil(try Credentials(token: nil, file: nil, maxAge: 0, logger: Logger(label: "t")).token())
  }
}
