import Foundation
import KopilotCore
import KopilotTestSupport
import XCTest

// Tests for CSources/KopilotCore/http.c: the vectors in Tests/Vectors/http.txt
// (fed whole, one byte at a time and split at every offset), a malformed-input
// table parsed at the end of a guard page, and the head size limits.

private let EAGAIN = Int32(KP_EAGAIN.rawValue)
private let EBADMSG = Int32(KP_EBADMSG.rawValue)
private let EHEADTOOBIG = Int32(KP_EHEADTOOBIG.rawValue)

private func errName(_ r: Int32) -> String { String(cString: kp_err_name(r)) }

// MARK: - The vector file

private struct Expect {
  var fields: [String: String] = [:]
  var headers: [String] = []
  var payload: [UInt8]? = nil
}

private struct Vector {
  var name: String
  var isRequest = true
  var input: [UInt8] = []
  var rest: [UInt8] = []
  var messages: [Expect] = []
}

/// Decodes the file's escapes: \r \n \t \\ \0 \xHH.
private func unescape(_ s: String) -> [UInt8] {
  var out: [UInt8] = []
  let b = Array(s.utf8)
  var i = 0
  while i < b.count {
    if b[i] == UInt8(ascii: "\\"), i + 1 < b.count {
      switch b[i + 1] {
      case UInt8(ascii: "r"): out.append(13); i += 2
      case UInt8(ascii: "n"): out.append(10); i += 2
      case UInt8(ascii: "t"): out.append(9); i += 2
      case UInt8(ascii: "0"): out.append(0); i += 2
      case UInt8(ascii: "\\"): out.append(92); i += 2
      case UInt8(ascii: "x"):
        let hex = String(decoding: b[(i + 2)..<(i + 4)], as: UTF8.self)
        out.append(UInt8(hex, radix: 16)!)
        i += 4
      default: out.append(b[i]); i += 1
      }
    } else {
      out.append(b[i]); i += 1
    }
  }
  return out
}

private func loadVectors() throws -> [Vector] {
  let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("Vectors/http.txt")
  let text = try String(contentsOf: url, encoding: .utf8)
  var vectors: [Vector] = []
  for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
    let l = String(line)
    if l.isEmpty || l.hasPrefix("#") { continue }
    if l.hasPrefix("== ") {
      vectors.append(Vector(name: String(l.dropFirst(3))))
      continue
    }
    guard !vectors.isEmpty else { throw NSError(domain: "vectors: key before a block: \(l)", code: 1) }
    let key: String, value: String
    if let r = l.range(of: ": ") {
      key = String(l[..<r.lowerBound]); value = String(l[r.upperBound...])
    } else if l.hasSuffix(":") {
      key = String(l.dropLast()); value = ""
    } else {
      throw NSError(domain: "vectors: bad line: \(l)", code: 1)
    }
    var v = vectors.removeLast()
    switch key {
    case "kind": v.isRequest = value == "request"
    case "input": v.input += unescape(value)
    case "rest": v.rest += unescape(value)
    case "message": v.messages.append(Expect())
    default:
      guard !v.messages.isEmpty else { throw NSError(domain: "vectors: \(key) before message:", code: 1) }
      switch key {
      case "header": v.messages[v.messages.count - 1].headers.append(String(decoding: unescape(value), as: UTF8.self))
      case "payload": v.messages[v.messages.count - 1].payload = (v.messages[v.messages.count - 1].payload ?? []) + unescape(value)
      default: v.messages[v.messages.count - 1].fields[key] = String(decoding: unescape(value), as: UTF8.self)
      }
    }
    vectors.append(v)
  }
  return vectors
}

// MARK: - Driving the C API

/// What one parsed message looked like, copied out of the C structs while the
/// buffer they point into was alive.
private struct Message {
  var method = "", target = "", reason = ""
  var status = 0, version = 0
  var headers: [String] = []
  var contentLength: Int64 = -1
  var flags: UInt32 = 0
  var body = ""
  var payload: [UInt8] = []
  var consumed = 0  // head + body bytes
}

private func str(_ p: UnsafePointer<CChar>?, _ n: Int) -> String {
  guard let p else { return "" }
  return String(decoding: UnsafeRawBufferPointer(start: p, count: n), as: UTF8.self)
}

private func flagWords(_ f: UInt32) -> String {
  let names: [(Int, String)] = [
    (Int(KP_HTTP_F_CHUNKED), "chunked"), (Int(KP_HTTP_F_CONTENT_LENGTH), "content-length"),
    (Int(KP_HTTP_F_KEEP_ALIVE), "keep-alive"), (Int(KP_HTTP_F_UPGRADE), "upgrade"),
    (Int(KP_HTTP_F_EXPECT_CONTINUE), "expect-continue"),
  ]
  let words = names.filter { Int(f) & $0.0 != 0 }.map { $0.1 }
  return words.isEmpty ? "-" : words.joined(separator: " ")
}

private func modeName(_ m: kp_http_body_mode_t) -> String {
  switch m {
  case KP_HTTP_BODY_NONE: return "none"
  case KP_HTTP_BODY_LENGTH: return "length"
  case KP_HTTP_BODY_CHUNKED: return "chunked"
  default: return "close"
  }
}

/// Runs `body` on a copy of `bytes` that ends at a guard page.
private func guarded<R>(_ bytes: [UInt8], _ body: (UnsafePointer<UInt8>, Int) -> R) -> R {
  let p = bytes.withUnsafeBytes { kpt_guarded_copy($0.baseAddress, $0.count) }!
  defer { kpt_guarded_free(p, bytes.count) }
  return body(UnsafePointer(p), bytes.count)
}

/// Parses a head from a guarded copy; returns the result and the message.
private func parseHead(_ bytes: [UInt8], request: Bool, maxHead: Int = 0,
                       head out: UnsafeMutablePointer<kp_http_head_t>? = nil) -> (Int32, Message) {
  var head = kp_http_head_t()
  var m = Message()
  let r = guarded(bytes) { p, n -> Int32 in
    let r = request ? kp_http_parse_request(p, n, maxHead, &head) : kp_http_parse_response(p, n, maxHead, &head)
    guard r >= 0 else { return r }
    m.method = str(head.method, head.method_len)
    m.target = str(head.target, head.target_len)
    m.reason = str(head.reason, head.reason_len)
    m.status = Int(head.status)
    m.version = Int(head.minor_version)
    m.contentLength = head.content_length
    m.flags = UInt32(head.flags)
    let count = head.num_headers
    m.headers = withUnsafePointer(to: &head.headers) {
      $0.withMemoryRebound(to: kp_http_header_t.self, capacity: Int(KP_HTTP_MAX_HEADERS)) { h in
        (0..<count).map { str(h[$0].name, h[$0].name_len) + ": " + str(h[$0].value, h[$0].value_len) }
      }
    }
    return r
  }
  out?.pointee = head
  return (r, m)
}

/// Scans body bytes from a guarded copy; checks that the payload range lies
/// inside the consumed bytes.
private func scanBody(_ body: inout kp_http_body_t, _ bytes: [UInt8], wantData: Bool,
                      file: StaticString = #filePath, line: UInt = #line) -> (Int32, [UInt8]) {
  guarded(bytes) { p, n -> (Int32, [UInt8]) in
    var data: UnsafePointer<UInt8>? = nil
    var dataLen = 0
    let r = wantData ? kp_http_body_scan(&body, p, n, &data, &dataLen) : kp_http_body_scan(&body, p, n, nil, nil)
    guard r >= 0 else { return (r, []) }
    XCTAssertLessThanOrEqual(Int(r), n, "consumed more than given", file: file, line: line)
    guard let d = data, dataLen > 0 else { return (r, []) }
    XCTAssertTrue(d >= p && d + dataLen <= p + Int(r), "payload range outside the consumed bytes", file: file, line: line)
    return (r, Array(UnsafeBufferPointer(start: d, count: dataLen)))
  }
}

private struct DriveError: Error, CustomStringConvertible {
  var description: String
}

/// Feeds `pieces` in order the way a connection would: buffer, parse a head
/// (re-scanning the buffered prefix), then scan its body; repeat until the
/// expected number of messages has been seen. Returns the messages and the
/// bytes left over.
private func drive(_ v: Vector, pieces: [[UInt8]], wantData: Bool = true) throws -> ([Message], [UInt8]) {
  var pending: [UInt8] = []
  var msgs: [Message] = []
  var cur: Message? = nil
  var body = kp_http_body_t()

  func finish() {
    cur!.body = modeName(body.mode)
    msgs.append(cur!)
    cur = nil
  }
  func drain() throws {
    while msgs.count < v.messages.count {
      if cur == nil {
        var head = kp_http_head_t()
        let (r, m) = parseHead(pending, request: v.isRequest, head: &head)
        if r == EAGAIN { return }
        if r < 0 { throw DriveError(description: "head \(msgs.count): \(errName(r))") }
        cur = m
        cur!.consumed = Int(r)
        pending.removeFirst(Int(r))
        let isHead = v.messages[msgs.count].fields["request-method"] == "HEAD"
        kp_http_body_init(&body, &head, v.isRequest ? 1 : 0, isHead ? 1 : 0)
      }
      if body.done != 0 { finish(); continue }
      if pending.isEmpty { return }
      let (r, data) = scanBody(&body, pending, wantData: wantData)
      if r < 0 { throw DriveError(description: "body \(msgs.count): \(errName(r))") }
      if r == 0 && body.done == 0 { throw DriveError(description: "body scan made no progress") }
      cur!.payload += data
      cur!.consumed += Int(r)
      pending.removeFirst(Int(r))
    }
  }
  for piece in pieces {
    pending += piece
    try drain()
  }
  // End of input: a body that runs until close ends here.
  if cur != nil && body.mode == KP_HTTP_BODY_UNTIL_CLOSE { finish() }
  return (msgs, pending)
}

private func check(_ v: Vector, _ got: [Message], _ rest: [UInt8], how: String, payload: Bool = true,
                   file: StaticString = #filePath, line: UInt = #line) {
  let ctx = "\(v.name) [\(how)]"
  XCTAssertEqual(got.count, v.messages.count, "\(ctx): messages", file: file, line: line)
  XCTAssertEqual(rest, v.rest, "\(ctx): rest", file: file, line: line)
  for (m, e) in zip(got, v.messages) {
    let actual: [String: String] = [
      "method": m.method, "target": m.target, "status": String(m.status), "reason": m.reason,
      "version": String(m.version), "content-length": String(m.contentLength),
      "flags": flagWords(m.flags), "body": m.body, "request-method": e.fields["request-method"] ?? "",
    ]
    for (k, want) in e.fields {
      guard let have = actual[k] else { XCTFail("\(ctx): unknown key \(k)", file: file, line: line); continue }
      XCTAssertEqual(have, want, "\(ctx): \(k)", file: file, line: line)
    }
    if !e.headers.isEmpty { XCTAssertEqual(m.headers, e.headers, "\(ctx): headers", file: file, line: line) }
    if payload, let p = e.payload { XCTAssertEqual(m.payload, p, "\(ctx): payload", file: file, line: line) }
  }
}

// MARK: - Malformed inputs

private enum Kind { case request, response }

/// One bad input per row, with why it is bad. The error may come from the
/// head parser or, for rows with a valid head, from the body scanner.
private struct Bad {
  var note: String
  var kind: Kind
  var input: [UInt8]
  var error: Int32
  var maxHead = 0
  init(_ note: String, _ kind: Kind, _ input: String, _ error: Int32, maxHead: Int = 0) {
    self.note = note; self.kind = kind; self.input = unescape(input); self.error = error; self.maxHead = maxHead
  }
  init(_ note: String, _ kind: Kind, bytes: [UInt8], _ error: Int32) {
    self.note = note; self.kind = kind; self.input = bytes; self.error = error
  }
}

private let reqHead = "GET / HTTP/1.1\\r\\nHost: h\\r\\n"
private let chunkedReq = "POST / HTTP/1.1\\r\\nHost: h\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"

private let malformed: [Bad] = [
  // Request line (RFC 9112 3)
  Bad("HTTP/2.0 version", .request, "GET / HTTP/2.0\\r\\nHost: h\\r\\n\\r\\n", EBADMSG),
  Bad("HTTP/1.2 version", .request, "GET / HTTP/1.2\\r\\nHost: h\\r\\n\\r\\n", EBADMSG),
  Bad("lower-case version (case-sensitive, 2.3)", .request, "GET / http/1.1\\r\\nHost: h\\r\\n\\r\\n", EBADMSG),
  Bad("two spaces after method", .request, "GET  / HTTP/1.1\\r\\nHost: h\\r\\n\\r\\n", EBADMSG),
  Bad("space inside target", .request, "GET /a b HTTP/1.1\\r\\nHost: h\\r\\n\\r\\n", EBADMSG),
  Bad("CTL inside target", .request, "GET /a\\x01b HTTP/1.1\\r\\nHost: h\\r\\n\\r\\n", EBADMSG),
  Bad("missing target", .request, "GET HTTP/1.1\\r\\nHost: h\\r\\n\\r\\n", EBADMSG),
  Bad("non-token byte in method", .request, "GE(T / HTTP/1.1\\r\\nHost: h\\r\\n\\r\\n", EBADMSG),
  Bad("trailing space after version", .request, "GET / HTTP/1.1 \\r\\nHost: h\\r\\n\\r\\n", EBADMSG),
  Bad("TLS ClientHello on the plain port (rejected before a line end)", .request, "\\x16\\x03\\x01\\x02\\x00\\x01\\x00", EBADMSG),
  // Line ends (2.2): CRLF only
  Bad("bare LF line ends", .request, "GET / HTTP/1.1\\nHost: h\\n\\n", EBADMSG),
  Bad("bare LF after one header", .request, "GET / HTTP/1.1\\r\\nHost: h\\nX: y\\r\\n\\r\\n", EBADMSG),
  Bad("bare CR inside a value", .request, "GET / HTTP/1.1\\r\\nHost: h\\rX: y\\r\\n\\r\\n", EBADMSG),
  Bad("bare LF ending the head", .request, reqHead + "\\n", EBADMSG),
  // Field lines (5)
  Bad("NUL in header name", .request, "GET / HTTP/1.1\\r\\nHo\\0st: h\\r\\n\\r\\n", EBADMSG),
  Bad("space before colon (5.1 MUST reject)", .request, "GET / HTTP/1.1\\r\\nHost : h\\r\\n\\r\\n", EBADMSG),
  Bad("tab before colon", .request, "GET / HTTP/1.1\\r\\nHost\\t: h\\r\\n\\r\\n", EBADMSG),
  Bad("obs-fold (5.2)", .request, reqHead + "X-A: a\\r\\n  b\\r\\n\\r\\n", EBADMSG),
  Bad("whitespace before the first header (2.2)", .request, "GET / HTTP/1.1\\r\\n Host: h\\r\\n\\r\\n", EBADMSG),
  Bad("empty header name", .request, reqHead + ": v\\r\\n\\r\\n", EBADMSG),
  Bad("line without a colon", .request, reqHead + "NoColon\\r\\n\\r\\n", EBADMSG),
  Bad("DEL in header name", .request, reqHead + "X\\x7fA: v\\r\\n\\r\\n", EBADMSG),
  Bad("NUL in header value", .request, reqHead + "X-A: a\\0b\\r\\n\\r\\n", EBADMSG),
  Bad("CTL 0x01 in header value", .request, reqHead + "X-A: a\\x01b\\r\\n\\r\\n", EBADMSG),
  Bad("DEL in header value", .request, reqHead + "X-A: a\\x7f\\r\\n\\r\\n", EBADMSG),
  // Host (3.2)
  Bad("HTTP/1.1 request without Host", .request, "GET / HTTP/1.1\\r\\nAccept: */*\\r\\n\\r\\n", EBADMSG),
  Bad("two Host lines", .request, reqHead + "Host: evil\\r\\n\\r\\n", EBADMSG),
  // Framing (6.1, 6.3): the smuggling shapes
  Bad("CL and TE both in a request", .request, reqHead + "Content-Length: 5\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n", EBADMSG),
  Bad("two different Content-Length lines", .request, reqHead + "Content-Length: 5\\r\\nContent-Length: 6\\r\\n\\r\\n", EBADMSG),
  Bad("Content-Length list with differing values", .request, reqHead + "Content-Length: 5, 6\\r\\n\\r\\n", EBADMSG),
  Bad("Content-Length list with an empty element", .request, reqHead + "Content-Length: 5,,5\\r\\n\\r\\n", EBADMSG),
  Bad("negative CL", .request, reqHead + "Content-Length: -1\\r\\n\\r\\n", EBADMSG),
  Bad("CL with a plus sign", .request, reqHead + "Content-Length: +5\\r\\n\\r\\n", EBADMSG),
  Bad("CL overflow (2^63)", .request, reqHead + "Content-Length: 9223372036854775808\\r\\n\\r\\n", EBADMSG),
  Bad("CL overflow (20 digits)", .request, reqHead + "Content-Length: 99999999999999999999\\r\\n\\r\\n", EBADMSG),
  Bad("empty CL", .request, reqHead + "Content-Length:\\r\\n\\r\\n", EBADMSG),
  Bad("CL with an inner space", .request, reqHead + "Content-Length: 1 2\\r\\n\\r\\n", EBADMSG),
  Bad("hex CL", .request, reqHead + "Content-Length: 0x10\\r\\n\\r\\n", EBADMSG),
  Bad("chunked not last in a request (6.3 item 4)", .request, reqHead + "Transfer-Encoding: chunked, gzip\\r\\n\\r\\n", EBADMSG),
  Bad("chunked applied twice (6.1)", .request, reqHead + "Transfer-Encoding: chunked\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n", EBADMSG),
  Bad("TE without chunked in a request", .request, reqHead + "Transfer-Encoding: gzip\\r\\n\\r\\n", EBADMSG),
  Bad("empty TE in a request", .request, reqHead + "Transfer-Encoding:\\r\\n\\r\\n", EBADMSG),
  Bad("TE on an HTTP/1.0 request (6.1)", .request, "POST / HTTP/1.0\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n", EBADMSG),
  Bad("TE value with a non-token coding", .request, reqHead + "Transfer-Encoding: \\\"chunked\\\"\\r\\n\\r\\n", EBADMSG),
  // Limits
  Bad("head over limit -> EHEADTOOBIG", .request, reqHead + "X-Pad: " + String(repeating: "a", count: 70_000) + "\\r\\n\\r\\n", EHEADTOOBIG),
  Bad("head over a custom max_head of 64", .request, reqHead + "X-Pad: " + String(repeating: "a", count: 64) + "\\r\\n\\r\\n", EHEADTOOBIG, maxHead: 64),
  Bad("too many headers (129)", .request, reqHead + String(repeating: "X-A: b\\r\\n", count: 128) + "\\r\\n", EHEADTOOBIG),
  // Status line (4)
  Bad("two-digit status", .response, "HTTP/1.1 20 OK\\r\\n\\r\\n", EBADMSG),
  Bad("status 099", .response, "HTTP/1.1 099 Low\\r\\n\\r\\n", EBADMSG),
  Bad("four-digit status", .response, "HTTP/1.1 2000 OK\\r\\n\\r\\n", EBADMSG),
  Bad("HTTP/2.0 response", .response, "HTTP/2.0 200 OK\\r\\n\\r\\n", EBADMSG),
  Bad("no SP after the version", .response, "HTTP/1.1200 OK\\r\\n\\r\\n", EBADMSG),
  Bad("CTL in the reason", .response, "HTTP/1.1 200 O\\x01K\\r\\n\\r\\n", EBADMSG),
  Bad("bare LF in a status line", .response, "HTTP/1.1 200 OK\\n\\r\\n", EBADMSG),
  Bad("two different Content-Length in a response", .response, "HTTP/1.1 200 OK\\r\\nContent-Length: 1\\r\\nContent-Length: 2\\r\\n\\r\\n", EBADMSG),
  Bad("obs-fold in a response", .response, "HTTP/1.1 200 OK\\r\\nX: a\\r\\n\\tb\\r\\n\\r\\n", EBADMSG),
  // Chunked bodies (7.1)
  Bad("chunk size overflow (17 hex digits)", .request, chunkedReq + "10000000000000000\\r\\n", EBADMSG),
  Bad("chunk size overflow (17 digits, leading zeros)", .request, chunkedReq + "00000000000000001\\r\\nx\\r\\n0\\r\\n\\r\\n", EBADMSG),
  Bad("non-hex chunk size", .request, chunkedReq + "g\\r\\n", EBADMSG),
  Bad("missing chunk size", .request, chunkedReq + "\\r\\n", EBADMSG),
  Bad("signed chunk size", .request, chunkedReq + "-1\\r\\n", EBADMSG),
  Bad("no CRLF after chunk data", .request, chunkedReq + "3\\r\\nabcX\\r\\n0\\r\\n\\r\\n", EBADMSG),
  Bad("bare LF after chunk size", .request, chunkedReq + "3\\nabc\\r\\n0\\r\\n\\r\\n", EBADMSG),
  Bad("bare LF after chunk data", .request, chunkedReq + "3\\r\\nabc\\n0\\r\\n\\r\\n", EBADMSG),
  Bad("whitespace after size without an extension", .request, chunkedReq + "3 \\r\\nabc\\r\\n0\\r\\n\\r\\n", EBADMSG),
  Bad("NUL in a chunk extension", .request, chunkedReq + "3;a=\\0\\r\\nabc\\r\\n0\\r\\n\\r\\n", EBADMSG),
  Bad("chunk extension over 4 KiB", .request, chunkedReq + "3;" + String(repeating: "e", count: 5000) + "\\r\\nabc\\r\\n0\\r\\n\\r\\n", EBADMSG),
  Bad("obs-fold in a trailer", .request, chunkedReq + "0\\r\\nX: a\\r\\n b\\r\\n\\r\\n", EBADMSG),
  Bad("trailer without a colon", .request, chunkedReq + "0\\r\\nX\\r\\n\\r\\n", EBADMSG),
  Bad("NUL in a trailer value", .request, chunkedReq + "0\\r\\nX: \\0\\r\\n\\r\\n", EBADMSG),
  Bad("trailers over 64 KiB", .request, chunkedReq + "0\\r\\nX: " + String(repeating: "t", count: 70_000) + "\\r\\n\\r\\n", EBADMSG),
  Bad("bare LF ending the trailers", .request, chunkedReq + "0\\r\\n\\n", EBADMSG),
  Bad("chunk size overflow in a response", .response, "HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\nFFFFFFFFFFFFFFFFF\\r\\n", EBADMSG),
]

/// Parses a bad row: head, then (if the head is fine) body, all from guarded
/// copies. Returns the first error, or 0 when everything passed.
private func runBad(_ b: Bad) -> Int32 {
  var head = kp_http_head_t()
  let (r, _) = parseHead(b.input, request: b.kind == .request, maxHead: b.maxHead, head: &head)
  if r < 0 { return r }
  var body = kp_http_body_t()
  kp_http_body_init(&body, &head, b.kind == .request ? 1 : 0, 0)
  var rest = Array(b.input[Int(r)...])
  while !rest.isEmpty && body.done == 0 {
    let (n, _) = scanBody(&body, rest, wantData: true)
    if n < 0 { return n }
    rest.removeFirst(Int(n))
  }
  return 0
}

// MARK: - Tests

final class HTTPTests: XCTestCase {
  private func vectors() throws -> [Vector] {
    let v = try loadVectors()
    XCTAssertGreaterThanOrEqual(v.count, 25)
    return v
  }

  func testVectorsWhole() throws {
    for v in try vectors() {
      let (msgs, rest) = try drive(v, pieces: [v.input])
      check(v, msgs, rest, how: "whole")
      // Without payload ranges the scanner runs through in one call; the
      // framing must come out the same.
      let (msgs2, rest2) = try drive(v, pieces: [v.input], wantData: false)
      check(v, msgs2, rest2, how: "whole, no data", payload: false)
      XCTAssertEqual(msgs.map(\.consumed), msgs2.map(\.consumed), v.name)
    }
  }

  func testVectorsByteAtATime() throws {
    // The buffered prefix grows one byte at a time, so every head is parsed
    // at every length: KP_EAGAIN until it is complete, never an error.
    for v in try vectors() {
      let (msgs, rest) = try drive(v, pieces: v.input.map { [$0] })
      check(v, msgs, rest, how: "byte at a time")
    }
  }

  func testVectorsSplitAtEveryOffset() throws {
    for v in try vectors() {
      for k in 0...v.input.count {
        let pieces = [Array(v.input[..<k]), Array(v.input[k...])]
        do {
          let (msgs, rest) = try drive(v, pieces: pieces)
          check(v, msgs, rest, how: "split at \(k)")
        } catch {
          XCTFail("\(v.name) [split at \(k)]: \(error)")
        }
      }
    }
  }

  func testMalformedTable() {
    XCTAssertGreaterThanOrEqual(malformed.count, 25)
    for b in malformed {
      let r = runBad(b)
      XCTAssertEqual(errName(r), errName(b.error), b.note)
    }
  }

  /// kp_http_check_hub_fields: the only fields the policy layer may add to
  /// a member's head. Each row is read at the end of a guard page, so a
  /// check that reads past the list crashes.
  func testHubFieldsAreOnlyIdentityAndAuditLines() {
    let good: [(String, String)] = [
      ("", "no fields"),
      ("Impersonate-User: kopilot:alice\r\n", "a user"),
      ("impersonate-user: a\r\nImpersonate-Group: kopilot:callers\r\nImpersonate-Group: g\r\n", "groups, any case"),
      ("Impersonate-Uid: 42\r\nImpersonate-Extra-authentication.kubernetes.io%2Fpod-name: p\r\n", "uid and escaped extra"),
      ("Impersonate-Extra-scopes: \r\n", "an empty value"),
      ("Audit-ID: 5b2c7a1e-0d4f-4c1a-9a57-1f1e2d3c4b5a\r\n", "an audit ID"),
      ("Impersonate-User: caf\u{e9} \u{1F600}\r\n", "UTF-8 in a value (obs-text)"),
    ]
    let bad: [(String, String)] = [
      ("Content-Length: 0\r\n", "framing field"),
      ("Transfer-Encoding: chunked\r\n", "framing field"),
      ("Host: evil\r\n", "routing field"),
      ("Authorization: Bearer x\r\n", "credentials"),
      ("X-Remote-User: admin\r\n", "another identity scheme"),
      ("Impersonate-Extra-: x\r\n", "extra without a key"),
      ("Impersonate-Userx: a\r\n", "a longer name"),
      ("Impersonate-User: a\r\nContent-Length: 5\r\n", "a good line, then a framing one"),
      ("Impersonate-User: a\r\nX: b\r\n", "a good line, then another"),
      ("Impersonate-User: a\nHost: b\r\n", "bare LF inside a value"),
      ("Impersonate-User: a\rHost: b\r\n", "bare CR inside a value"),
      ("Impersonate-User: a\u{0}b\r\n", "NUL in a value"),
      ("Impersonate-User: a\u{7f}\r\n", "DEL in a value"),
      ("Impersonate-User: a\r\n\r\n", "a blank line (the end of the head)"),
      ("Impersonate-User: a", "no CRLF"),
      ("Impersonate-User: a\r", "CR without LF"),
      ("Impersonate-User:a\r\n", "no space after the colon"),
      ("Impersonate-User:  a\r\n", "two spaces: leading whitespace in the value"),
      ("Impersonate-User: a \r\n", "trailing whitespace"),
      ("Impersonate-User : a\r\n", "space before the colon"),
      (" Impersonate-User: a\r\n", "obs-fold style leading space"),
      ("Impersonate-User: a\r\n Impersonate-Group: b\r\n", "a continuation line"),
      ("Imperson\u{e9}te-User: a\r\n", "non-token byte in the name"),
    ]
    for (text, note) in good {
      let b = Array(text.utf8)
      let r = guarded(b) { p, n in p.withMemoryRebound(to: CChar.self, capacity: n) { kp_http_check_hub_fields($0, n) } }
      XCTAssertEqual(r, 0, note)
    }
    for (text, note) in bad {
      let b = Array(text.utf8)
      let r = guarded(b) { p, n in p.withMemoryRebound(to: CChar.self, capacity: n) { kp_http_check_hub_fields($0, n) } }
      XCTAssertEqual(r, Int32(KP_EINVAL.rawValue), note)
    }
    XCTAssertEqual(kp_http_check_hub_fields(nil, 0), 0)
    XCTAssertEqual(kp_http_check_hub_fields(nil, 1), Int32(KP_EINVAL.rawValue))
  }

  func testMalformedHeadPrefixesNeverSucceed() {
    // A growing prefix of a bad head may say "need more" but must never
    // parse, nor fail with a different error.
    for b in malformed where b.input.count < 4096 {
      var head = kp_http_head_t()
      let (full, _) = parseHead(b.input, request: b.kind == .request, maxHead: b.maxHead, head: &head)
      guard full < 0 else { continue }  // a body row
      for n in 0..<b.input.count {
        let (r, _) = parseHead(Array(b.input[..<n]), request: b.kind == .request, maxHead: b.maxHead)
        if r != EAGAIN && r != b.error {
          XCTFail("\(b.note): prefix \(n) gave \(errName(r))")
          break
        }
      }
    }
  }

  /// A head of `total` bytes: a request line, Host and one padding field.
  private func head(ofLength total: Int) -> [UInt8] {
    let start = Array("GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ".utf8)
    let end = Array("\r\n\r\n".utf8)
    return start + [UInt8](repeating: UInt8(ascii: "p"), count: total - start.count - end.count) + end
  }

  func testHeadSizeLimit() {
    let limit = Int(KP_HTTP_DEFAULT_MAX_HEAD)
    XCTAssertEqual(limit, 64 * 1024)
    // Exactly at the limit and just under it: parses.
    for total in [limit, limit - 1] {
      let h = head(ofLength: total)
      XCTAssertEqual(parseHead(h, request: true).0, Int32(total))
      // One byte short of complete: need more.
      XCTAssertEqual(parseHead(Array(h.dropLast()), request: true).0, EAGAIN)
      // Followed by pipelined bytes past the limit: still parses.
      XCTAssertEqual(parseHead(h + Array("GET /next".utf8), request: true).0, Int32(total))
    }
    // One byte over: too big, both whole and as soon as max_head bytes are here.
    let over = head(ofLength: limit + 1)
    XCTAssertEqual(parseHead(over, request: true).0, EHEADTOOBIG)
    XCTAssertEqual(parseHead(Array(over[..<limit]), request: true).0, EHEADTOOBIG)
    XCTAssertEqual(parseHead(Array(over[..<(limit - 1)]), request: true).0, EAGAIN)
    // 64 KiB+ with no end at all.
    XCTAssertEqual(parseHead(head(ofLength: 100_000), request: true).0, EHEADTOOBIG)
    // A custom, larger limit lets it through.
    XCTAssertEqual(parseHead(over, request: true, maxHead: limit + 1).0, Int32(limit + 1))
    // Responses obey the same limit.
    var resp = Array("HTTP/1.1 200 OK\r\nX-Pad: ".utf8)
    resp += [UInt8](repeating: UInt8(ascii: "p"), count: limit) + Array("\r\n\r\n".utf8)
    XCTAssertEqual(parseHead(resp, request: false).0, EHEADTOOBIG)
  }

  func testHeaderCountLimit() {
    // KP_HTTP_MAX_HEADERS field lines fit (Host is one of them).
    let max = Int(KP_HTTP_MAX_HEADERS)
    let ok = "GET / HTTP/1.1\r\nHost: h\r\n" + String(repeating: "X: y\r\n", count: max - 1) + "\r\n"
    let (r, m) = parseHead(Array(ok.utf8), request: true)
    XCTAssertEqual(r, Int32(ok.utf8.count))
    XCTAssertEqual(m.headers.count, max)
  }

  func testConstants() {
    // Pin the public numbers other layers depend on.
    XCTAssertEqual(KP_HTTP_MAX_HEADERS, 128)
    XCTAssertEqual(KP_HTTP_DEFAULT_MAX_HEAD, 65536)
    XCTAssertEqual(
      [KP_HTTP_F_CHUNKED, KP_HTTP_F_CONTENT_LENGTH, KP_HTTP_F_KEEP_ALIVE, KP_HTTP_F_UPGRADE,
       KP_HTTP_F_EXPECT_CONTINUE].map { Int($0) }, [1, 2, 4, 8, 16])
    XCTAssertEqual(
      [KP_HTTP_BODY_NONE, KP_HTTP_BODY_LENGTH, KP_HTTP_BODY_CHUNKED, KP_HTTP_BODY_UNTIL_CLOSE].map(\.rawValue),
      [0, 1, 2, 3])
  }

  func testContentLengthBounds() {
    // INT64_MAX is the largest length; leading zeros are digits like others.
    var head = kp_http_head_t()
    let max = Array("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0009223372036854775807\r\n\r\n".utf8)
    XCTAssertEqual(parseHead(max, request: true, head: &head).0, Int32(max.count))
    XCTAssertEqual(head.content_length, Int64.max)
    var body = kp_http_body_t()
    kp_http_body_init(&body, &head, 1, 0)
    XCTAssertEqual(body.remaining, UInt64(Int64.max))
    XCTAssertEqual(scanBody(&body, Array("abc".utf8), wantData: false).0, 3)
    XCTAssertEqual(body.remaining, UInt64(Int64.max) - 3)
    XCTAssertEqual(body.done, 0)
  }

  func testFindHeader() {
    let text = Array("GET / HTTP/1.1\r\nHost: h\r\nX-Stream-Protocol-Version: v4\r\nx-stream-protocol-version: v3\r\n\r\n".utf8)
    guarded(text) { p, n in
      var head = kp_http_head_t()
      XCTAssertEqual(kp_http_parse_request(p, n, 0, &head), Int32(n))
      let h = kp_http_find_header(&head, "X-STREAM-protocol-version")
      XCTAssertNotNil(h)
      if let h { XCTAssertEqual(str(h.pointee.value, h.pointee.value_len), "v4") }
      XCTAssertNil(kp_http_find_header(&head, "X-Stream"))
      XCTAssertNil(kp_http_find_header(&head, "X-Stream-Protocol-Version-2"))
      XCTAssertNotNil(kp_http_find_header(&head, "host"))
    }
  }

  func testBodyScannerEdges() {
    // LENGTH stops at the length; the rest is the next message's.
    var head = kp_http_head_t()
    let text = Array("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n".utf8)
    XCTAssertEqual(parseHead(text, request: true, head: &head).0, Int32(text.count))
    var body = kp_http_body_t()
    kp_http_body_init(&body, &head, 1, 0)
    XCTAssertEqual(body.mode, KP_HTTP_BODY_LENGTH)
    let (r, d) = scanBody(&body, Array("abcGET".utf8), wantData: true)
    XCTAssertEqual(r, 3)
    XCTAssertEqual(d, Array("abc".utf8))
    XCTAssertEqual(body.done, 1)
    XCTAssertEqual(scanBody(&body, Array("GET".utf8), wantData: true).0, 0)

    // A chunked error is sticky.
    let ch = Array("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
    XCTAssertEqual(parseHead(ch, request: true, head: &head).0, Int32(ch.count))
    kp_http_body_init(&body, &head, 1, 0)
    XCTAssertEqual(scanBody(&body, Array("zz".utf8), wantData: false).0, EBADMSG)
    XCTAssertEqual(scanBody(&body, Array("0\r\n\r\n".utf8), wantData: false).0, EBADMSG)

    // A 16-digit chunk size is the largest: it parses (the data never comes).
    kp_http_body_init(&body, &head, 1, 0)
    XCTAssertEqual(scanBody(&body, Array("FFFFFFFFFFFFFFFF\r\nab".utf8), wantData: false).0, 20)
    XCTAssertEqual(body.remaining, UInt64.max - 2)

    // A request's chunked body may carry no trailer field (a proxy would
    // pass fields on after it checked the head): refused, sticky.
    kp_http_body_init(&body, &head, 1, 0)
    XCTAssertEqual(scanBody(&body, Array("0\r\nImpersonate-User: admin\r\n\r\n".utf8), wantData: false).0, EBADMSG)
    kp_http_body_init(&body, &head, 1, 0)
    XCTAssertEqual(scanBody(&body, Array("1\r\na\r\n0\r\n\r\n".utf8), wantData: false).0, 11, "no trailers: fine")
    XCTAssertEqual(body.done, 1)

    // A response's trailers just under 64 KiB in total are fine.
    let resp = Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
    XCTAssertEqual(parseHead(resp, request: false, head: &head).0, Int32(resp.count))
    kp_http_body_init(&body, &head, 0, 0)
    let trailer = "0\r\nX: " + String(repeating: "t", count: 64 * 1024 - 9) + "\r\n\r\n"
    let tb = Array(trailer.utf8)
    XCTAssertEqual(scanBody(&body, tb, wantData: false).0, Int32(tb.count))
    XCTAssertEqual(body.done, 1)

    // Empty input: nothing consumed, no payload.
    kp_http_body_init(&body, &head, 1, 0)
    XCTAssertEqual(kp_http_body_scan(&body, nil, 0, nil, nil), 0)
  }
}
