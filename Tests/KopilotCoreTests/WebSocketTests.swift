// Tests for the WebSocket codec (CSources/KopilotCore/ws.c, RFC 6455).
// Vectors come from Tests/Vectors/websocket.txt (format documented there);
// every vector is fed whole, one byte at a time and split at every offset.
import Foundation
import KopilotCore
import KopilotTestSupport
import XCTest

// MARK: - Vector file

/// A whole event as the vectors state it: data pieces concatenated.
struct WSEvent: Equatable, CustomStringConvertible {
  var kind: String  // text, binary, ping, pong, close
  var code: Int = 0  // close only
  var payload: [UInt8] = []
  var description: String { "\(kind) \(code) \(payload.count) bytes" }
}

struct WSVector {
  var name: String
  var isServer = true
  var maxMessage: UInt64 = 0
  var wire: [UInt8] = []
  var expect: [WSEvent] = []
  var error: Int32 = 0  // expected close code after the events; 0: none
}

struct WSVectorFile {
  var vectors: [WSVector] = []
  var accepts: [(key: String, accept: String)] = []

  static let url = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Vectors/websocket.txt")

  /// Payload tokens: 2-digit hex, "quoted" ASCII, `pattern N`, `fill N XX`.
  static func bytes(_ toks: ArraySlice<Substring>) throws -> [UInt8] {
    var out: [UInt8] = []
    var i = toks.startIndex
    while i < toks.endIndex {
      let t = toks[i]
      if t.hasPrefix("\"") && t.hasSuffix("\"") && t.count >= 2 {
        out += Array(t.dropFirst().dropLast().utf8)
      } else if t == "pattern", i + 1 < toks.endIndex, let n = Int(toks[i + 1]) {
        out += (0..<n).map { UInt8($0 % 251) }
        i += 1
      } else if t == "fill", i + 2 < toks.endIndex, let n = Int(toks[i + 1]),
        let b = UInt8(toks[i + 2], radix: 16)
      {
        out += [UInt8](repeating: b, count: n)
        i += 2
      } else if t.count == 2, let b = UInt8(t, radix: 16) {
        out.append(b)
      } else {
        throw NSError(domain: "websocket.txt", code: 1, userInfo: [NSLocalizedDescriptionKey: "bad token \(t)"])
      }
      i += 1
    }
    return out
  }

  static func load() throws -> WSVectorFile {
    let text = try String(contentsOf: url, encoding: .utf8)
    var f = WSVectorFile()
    var cur: WSVector?
    for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
      let line = raw.trimmingCharacters(in: .whitespaces)
      if line.isEmpty || line.hasPrefix("#") { continue }
      let toks = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
      let rest = toks.dropFirst()
      func bad() -> Error {
        NSError(domain: "websocket.txt", code: n + 1, userInfo: [NSLocalizedDescriptionKey: "line \(n + 1): \(line)"])
      }
      switch toks[0] {
      case "accept":
        guard toks.count == 3 else { throw bad() }
        f.accepts.append((String(toks[1]), String(toks[2])))
      case "vector":
        cur = WSVector(name: rest.joined(separator: " "))
      case "role":
        cur?.isServer = toks.count > 1 && toks[1] == "server"
      case "max":
        guard toks.count == 2, let m = UInt64(toks[1]) else { throw bad() }
        cur?.maxMessage = m
      case "hex":
        cur?.wire += try bytes(rest)
      case "pattern", "fill":
        cur?.wire += try bytes(toks[...])
      case "expect":
        guard toks.count >= 2 else { throw bad() }
        var ev = WSEvent(kind: String(toks[1]))
        var p = toks.dropFirst(2)
        if ev.kind == "close" {
          guard let c = p.first.flatMap({ Int($0) }) else { throw bad() }
          ev.code = c
          p = p.dropFirst()
        }
        ev.payload = try bytes(p)
        cur?.expect.append(ev)
      case "error":
        guard toks.count == 2, let c = Int32(toks[1]) else { throw bad() }
        cur?.error = c
      case "end":
        guard let v = cur else { throw bad() }
        f.vectors.append(v)
        cur = nil
      default:
        throw bad()
      }
    }
    return f
  }
}

// MARK: - Feeding and checking

/// Checks decoder events against the expected whole events as they come,
/// comparing data pieces in place (no copies, so the 64 KiB vector can be
/// split at every offset quickly).
final class WSChecker {
  let expect: [WSEvent]
  let allowPartial: Bool  // a message cut short by the expected error
  var idx = 0  // next event to complete
  var dataFrom = 0  // data messages before this index are done
  var off = 0  // bytes of the open data message seen
  var failure: String?

  init(_ expect: [WSEvent], allowPartial: Bool) {
    self.expect = expect
    self.allowPartial = allowPartial
  }

  func fail(_ s: String) { if failure == nil { failure = s } }

  func event(_ ev: kp_ws_event_t) {
    if failure != nil { return }
    if ev.len > 0 && ev.data == nil { return fail("event without data pointer") }
    let kind: String
    switch ev.type {
    case KP_WS_EV_DATA:
      kind = ev.opcode == Int32(KP_WS_OP_TEXT) ? "text" : ev.opcode == Int32(KP_WS_OP_BINARY) ? "binary" : "?"
    case KP_WS_EV_PING: kind = "ping"
    case KP_WS_EV_PONG: kind = "pong"
    case KP_WS_EV_CLOSE: kind = "close"
    default: return fail("unknown event type \(ev.type)")
    }
    if ev.type == KP_WS_EV_DATA {
      // Pieces belong to the next data message in `expect`; it completes in
      // order with the control frames that may come between its fragments.
      guard let t = expect[dataFrom...].firstIndex(where: { $0.kind == "text" || $0.kind == "binary" }) else {
        return allowPartial ? () : fail("unexpected data")
      }
      let want = expect[t]
      if want.kind != kind { return fail("event #\(t): got \(kind), want \(want.kind)") }
      guard off + ev.len <= want.payload.count else { return fail("event #\(t): data too long") }
      let same = want.payload.withUnsafeBufferPointer { w in
        ev.len == 0 || memcmp(w.baseAddress! + off, ev.data!, ev.len) == 0
      }
      if !same { return fail("event #\(t): data differs near \(off)") }
      off += ev.len
      if ev.message_end != 0 {
        if off != want.payload.count { return fail("event #\(t): message ended at \(off)") }
        if t != idx { return fail("event #\(t): message ended before event #\(idx)") }
        idx += 1
        dataFrom = t + 1
        off = 0
      }
    } else {
      guard idx < expect.count, expect[idx].kind == kind else {
        return fail("event #\(idx): got \(kind), want \(idx < expect.count ? expect[idx].description : "none")")
      }
      let want = expect[idx]
      let got = ev.len == 0 ? [] : Array(UnsafeBufferPointer(start: ev.data!, count: ev.len))
      if got != want.payload { return fail("event #\(idx): \(kind) payload \(got)") }
      if ev.type == KP_WS_EV_CLOSE && Int(ev.close_code) != want.code {
        return fail("event #\(idx): close code \(ev.close_code), want \(want.code)")
      }
      idx += 1
    }
  }
}

/// Feeds p[0..<n] until it is all consumed; returns 0 or the decoder's error.
@discardableResult
func wsFeed(_ d: UnsafeMutablePointer<kp_ws_decoder_t>, _ p: UnsafeMutablePointer<UInt8>, _ n: Int,
            _ onEvent: (kp_ws_event_t) -> Void) -> Int32 {
  var off = 0
  var ev = kp_ws_event_t()
  while true {
    let rc = kp_ws_decode(d, p + off, n - off, &ev)
    if rc < 0 { return rc }
    precondition(Int(rc) <= n - off, "consumed more than given")
    off += Int(rc)
    if ev.type == KP_WS_EV_NONE {
      precondition(off == n, "no event, yet input left over")
      return 0
    }
    onEvent(ev)
  }
}

/// Feeds `wire` in pieces ending at `cuts` (increasing offsets) from a fresh
/// copy; the last piece ends at a guard page. Returns (result, close_code).
func wsRun(_ wire: [UInt8], isServer: Bool, max: UInt64, cuts: [Int],
           _ onEvent: (kp_ws_event_t) -> Void) -> (Int32, Int32) {
  let buf = kpt_guarded_copy(wire, wire.count)!
  defer { kpt_guarded_free(buf, wire.count) }
  var d = kp_ws_decoder_t()
  kp_ws_decoder_init(&d, isServer ? 1 : 0, max)
  var start = 0
  var rc: Int32 = 0
  for end in cuts + [wire.count] where rc == 0 {
    rc = wsFeed(&d, buf + start, end - start, onEvent)
    start = end
  }
  return (rc, d.close_code)
}

func hexBytes(_ s: String) -> [UInt8] {
  s.split(separator: " ").map { UInt8($0, radix: 16)! }
}

// MARK: - Tests

final class WebSocketTests: XCTestCase {
  // Pin the wire (RFC 6455 5.2, 7.4.1, 1.3).
  func testWireConstants() {
    XCTAssertEqual(KP_WS_GUID, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
    XCTAssertEqual([KP_WS_OP_CONT, KP_WS_OP_TEXT, KP_WS_OP_BINARY], [0, 1, 2])
    XCTAssertEqual([KP_WS_OP_CLOSE, KP_WS_OP_PING, KP_WS_OP_PONG], [8, 9, 10])
    XCTAssertEqual([KP_WS_CLOSE_NORMAL, KP_WS_CLOSE_PROTOCOL, KP_WS_CLOSE_NO_STATUS, KP_WS_CLOSE_INVALID_DATA,
                    KP_WS_CLOSE_TOO_BIG], [1000, 1002, 1005, 1007, 1009])
    let valid = (0..<6000).filter { kp_ws_close_code_valid(Int32($0)) != 0 }
    XCTAssertEqual(valid, Array(1000...1003) + Array(1007...1014) + Array(3000...4999))
  }

  func testAcceptKeyVectors() throws {
    let f = try WSVectorFile.load()
    XCTAssertFalse(f.accepts.isEmpty)
    for (key, accept) in f.accepts {
      var out = [CChar](repeating: 0, count: 29)
      XCTAssertEqual(kp_ws_accept_key(key, key.utf8.count, &out), 0)
      XCTAssertEqual(String(cString: out), accept, key)
    }
  }

  func testClientKeyIsFresh16ByteBase64() {
    var a = [CChar](repeating: 0, count: 25), b = a
    XCTAssertEqual(kp_ws_client_key(&a), 0)
    XCTAssertEqual(kp_ws_client_key(&b), 0)
    let sa = String(cString: a), sb = String(cString: b)
    XCTAssertEqual(sa.count, 24)
    XCTAssertEqual(Data(base64Encoded: sa)?.count, 16)
    XCTAssertNotEqual(sa, sb)
  }

  /// Builds kp_http_header_t pairs whose strings live until `body` returns.
  func withHeaders<R>(_ pairs: [(String, String)], _ body: (UnsafePointer<kp_http_header_t>, Int) -> R) -> R {
    let strs = pairs.flatMap { [strdup($0.0)!, strdup($0.1)!] }
    defer { strs.forEach { free($0) } }
    var hs = [kp_http_header_t]()
    for (i, p) in pairs.enumerated() {
      hs.append(kp_http_header_t(name: strs[2 * i], name_len: p.0.utf8.count,
                                 value: strs[2 * i + 1], value_len: p.1.utf8.count))
    }
    return hs.withUnsafeBufferPointer { body($0.baseAddress!, hs.count) }
  }

  func testCheckRequest() {
    let key = "dGhlIHNhbXBsZSBub25jZQ=="
    let good = [("Host", "server.example.com"), ("Upgrade", "websocket"), ("Connection", "keep-alive, Upgrade"),
                ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]
    withHeaders(good) { h, n in
      var k: UnsafePointer<CChar>?
      var kl = 0
      XCTAssertEqual(kp_ws_check_request(h, n, &k, &kl), 0)
      XCTAssertEqual(kl, 24)
      XCTAssertEqual(String(decoding: UnsafeRawBufferPointer(start: k, count: kl), as: UTF8.self), key)
    }
    func replaced(_ name: String, _ value: String?) -> [(String, String)] {
      var h = good.filter { $0.0 != name }
      if let v = value { h.append((name, v)) }
      return h
    }
    let cases: [([(String, String)], Int32, String)] = [
      (replaced("Upgrade", nil), KP_EBADMSG.rawValue, "no Upgrade"),
      (replaced("Upgrade", "h2c"), KP_EBADMSG.rawValue, "Upgrade without websocket"),
      (replaced("Upgrade", "WebSocket"), 0, "token is case-insensitive"),
      (replaced("Connection", "keep-alive"), KP_EBADMSG.rawValue, "Connection without Upgrade"),
      (replaced("Connection", "upgrade"), 0, "Connection token case-insensitive"),
      (good + [("Connection", "Upgrade")], 0, "Connection on two lines"),
      (replaced("Sec-WebSocket-Key", nil), KP_EBADMSG.rawValue, "no key"),
      (replaced("Sec-WebSocket-Key", "c2hvcnQ="), KP_EBADMSG.rawValue, "key of 4 bytes"),
      (replaced("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25j*Q=="), KP_EBADMSG.rawValue, "key not base64"),
      (good + [("sec-websocket-key", key)], KP_EBADMSG.rawValue, "key twice (11.3.1)"),
      (replaced("Sec-WebSocket-Version", "8"), KP_EUNSUPPORTED.rawValue, "version 8 -> 426"),
      (replaced("Sec-WebSocket-Version", nil), KP_EBADMSG.rawValue, "no version"),
    ]
    for (hs, want, note) in cases {
      withHeaders(hs) { h, n in XCTAssertEqual(kp_ws_check_request(h, n, nil, nil), want, note) }
    }
  }

  func testCheckResponse() {
    let key = "dGhlIHNhbXBsZSBub25jZQ=="
    let good = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")]
    withHeaders(good) { h, n in XCTAssertEqual(kp_ws_check_response(h, n, key), 0) }
    withHeaders(Array(good.dropLast()) + [("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOO=")]) { h, n in
      XCTAssertEqual(kp_ws_check_response(h, n, key), KP_EBADMSG.rawValue, "accept differs in case")
    }
    withHeaders(Array(good.dropFirst())) { h, n in
      XCTAssertEqual(kp_ws_check_response(h, n, key), KP_EBADMSG.rawValue, "no Upgrade")
    }
  }

  func check(_ v: WSVector, cuts: [Int], mode: String) {
    let c = WSChecker(v.expect, allowPartial: v.error != 0)
    let (rc, code) = wsRun(v.wire, isServer: v.isServer, max: v.maxMessage, cuts: cuts, c.event)
    if let f = c.failure { XCTFail("\(v.name) [\(mode)]: \(f)"); return }
    if v.error == 0 {
      XCTAssertEqual(rc, 0, "\(v.name) [\(mode)]: \(String(cString: kp_err_name(rc)))")
      XCTAssertEqual(c.idx, v.expect.count, "\(v.name) [\(mode)]: events missing")
      XCTAssertEqual(c.off, 0, "\(v.name) [\(mode)]: message left open")
    } else {
      XCTAssertEqual(rc, KP_EPROTO.rawValue, "\(v.name) [\(mode)]")
      XCTAssertEqual(code, v.error, "\(v.name) [\(mode)]")
      XCTAssertEqual(c.idx, v.expect.count, "\(v.name) [\(mode)]: events missing")
    }
  }

  func testVectorsWhole() throws {
    let f = try WSVectorFile.load()
    XCTAssertGreaterThanOrEqual(f.vectors.count, 20)
    for v in f.vectors { check(v, cuts: [], mode: "whole") }
  }

  func testVectorsOneByteAtATime() throws {
    for v in try WSVectorFile.load().vectors {
      check(v, cuts: v.wire.isEmpty ? [] : Array(1..<v.wire.count), mode: "1 byte")
    }
  }

  func testVectorsSplitAtEveryOffset() throws {
    for v in try WSVectorFile.load().vectors {
      for cut in 0...v.wire.count {
        check(v, cuts: [cut], mode: "split at \(cut)")
      }
    }
  }

  // Malformed inputs (and one valid neighbour): each must fail with
  // KP_EPROTO and this close code, however the bytes are split. "M" is a
  // zero masking key, so the payload bytes read as plain text.
  static let M = "00 00 00 00"
  static let malformed: [(note: String, server: Bool, max: UInt64, wire: [UInt8], code: Int32)] = [
    ("unmasked frame from client", true, 0, hexBytes("81 05 48 65 6c 6c 6f"), 1002),
    ("masked frame from server", false, 0, hexBytes("81 85 37 fa 21 3d 7f 9f 4d 51 58"), 1002),
    ("RSV1 set", true, 0, hexBytes("c1 80 \(M)"), 1002),
    ("RSV2 set", true, 0, hexBytes("a2 80 \(M)"), 1002),
    ("RSV3 set on a ping", true, 0, hexBytes("99 80 \(M)"), 1002),
    ("reserved opcode 0x3", true, 0, hexBytes("83 80 \(M)"), 1002),
    ("reserved control opcode 0xB", false, 0, hexBytes("8b 00"), 1002),
    ("control frame 126 bytes", true, 0, hexBytes("89 fe 00 7e \(M)") + [UInt8](repeating: 0x61, count: 126), 1002),
    ("fragmented ping", true, 0, hexBytes("09 80 \(M)"), 1002),
    ("fragmented close", true, 0, hexBytes("08 82 \(M) 03 e8"), 1002),
    ("continuation without start", true, 0, hexBytes("80 81 \(M) 61"), 1002),
    ("new text message while a fragmented one is open", true, 0,
     hexBytes("01 81 \(M) 61 81 81 \(M) 62"), 1002),
    ("close with 1-byte payload", true, 0, hexBytes("88 81 \(M) 03"), 1002),
    ("close code 1005 on the wire", true, 0, hexBytes("88 82 \(M) 03 ed"), 1002),
    ("close code 1006 on the wire", false, 0, hexBytes("88 02 03 ee"), 1002),
    ("close code 1004 (reserved)", true, 0, hexBytes("88 82 \(M) 03 ec"), 1002),
    ("close code 1015 (TLS failure, never sent)", true, 0, hexBytes("88 82 \(M) 03 f7"), 1002),
    ("close code 999 (below 1000)", true, 0, hexBytes("88 82 \(M) 03 e7"), 1002),
    ("close code 0", false, 0, hexBytes("88 02 00 00"), 1002),
    ("close code 2999 (unassigned)", true, 0, hexBytes("88 82 \(M) 0b b7"), 1002),
    ("close code 5000 (above 4999)", true, 0, hexBytes("88 82 \(M) 13 88"), 1002),
    ("close reason not UTF-8", true, 0, hexBytes("88 84 \(M) 03 e8 ff fe"), 1007),
    ("invalid UTF-8 in text", true, 0, hexBytes("81 82 \(M) c3 28"), 1007),
    ("overlong NUL C0 80 in text", true, 0, hexBytes("81 82 \(M) c0 80"), 1007),
    ("UTF-16 surrogate ED A0 80 in text", true, 0, hexBytes("81 83 \(M) ed a0 80"), 1007),
    ("code point above U+10FFFF (F4 90 80 80)", true, 0, hexBytes("81 84 \(M) f4 90 80 80"), 1007),
    ("text message ends mid-character", true, 0, hexBytes("81 82 \(M) e2 82"), 1007),
    ("bad continuation in the next fragment", true, 0, hexBytes("01 81 \(M) e2 80 81 \(M) 41"), 1007),
    ("invalid UTF-8 after an interleaved ping", false, 0, hexBytes("01 01 61 89 00 80 01 ff"), 1007),
    ("UTF-8 split across fragments is fine", true, 0,
     hexBytes("01 81 \(M) e2 00 81 \(M) 82 80 81 \(M) ac"), 0),
    ("non-minimal 16-bit length", true, 0, hexBytes("82 fe 00 05 \(M) 01 02 03 04 05"), 1002),
    ("non-minimal 64-bit length", false, 0, hexBytes("82 7f 00 00 00 00 00 00 ff ff"), 1002),
    ("64-bit length with MSB set", true, 0, hexBytes("82 ff 80 00 00 00 00 00 00 00 \(M)"), 1002),
    ("message over max_message -> 1009", true, 4, hexBytes("82 85 \(M) 01 02 03 04 05"), 1009),
    ("fragments summing over max_message -> 1009", true, 4, hexBytes("02 83 \(M) 01 02 03 80 82 \(M) 04 05"), 1009),
    ("control frames do not count toward max_message", true, 1,
     hexBytes("89 85 \(M) 01 02 03 04 05 82 81 \(M) 07"), 0),
  ]

  func testMalformedTable() {
    XCTAssertGreaterThanOrEqual(Self.malformed.count, 20)
    for row in Self.malformed {
      let n = row.wire.count
      let splits: [(String, [Int])] =
        [("whole", []), ("1 byte", Array(1..<n))] + (0...n).map { ("split at \($0)", [$0]) }
      for (mode, cuts) in splits {
        var events = 0
        let (rc, code) = wsRun(row.wire, isServer: row.server, max: row.max, cuts: cuts) { _ in events += 1 }
        if row.code == 0 {
          XCTAssertEqual(rc, 0, "\(row.note) [\(mode)]")
          XCTAssertGreaterThan(events, 0, "\(row.note) [\(mode)]")
        } else {
          XCTAssertEqual(rc, KP_EPROTO.rawValue, "\(row.note) [\(mode)]")
          XCTAssertEqual(code, row.code, "\(row.note) [\(mode)]")
        }
      }
    }
  }

  func testErrorIsStickyAndCloseEndsInput() {
    var d = kp_ws_decoder_t()
    var ev = kp_ws_event_t()
    kp_ws_decoder_init(&d, 0, 0)
    var bad: [UInt8] = [0x83, 0x00, 0x81, 0x00]
    XCTAssertEqual(kp_ws_decode(&d, &bad, bad.count, &ev), KP_EPROTO.rawValue)
    XCTAssertEqual(kp_ws_decode(&d, &bad[2], 2, &ev), KP_EPROTO.rawValue)
    XCTAssertEqual(d.close_code, 1002)

    kp_ws_decoder_init(&d, 0, 0)
    var close: [UInt8] = [0x88, 0x02, 0x03, 0xe8, 0x81, 0x00]
    XCTAssertEqual(kp_ws_decode(&d, &close, close.count, &ev), 4)
    XCTAssertEqual(ev.type, KP_WS_EV_CLOSE)
    XCTAssertEqual(ev.close_code, 1000)
    XCTAssertEqual(kp_ws_decode(&d, &close[4], 2, &ev), KP_ECLOSED.rawValue, "5.5.1: nothing after Close")
    XCTAssertEqual(kp_ws_decode(&d, &close[4], 0, &ev), 0)
  }

  func testFrameHeadDecodeEdges() {
    var h = kp_ws_frame_head_t()
    // Every proper prefix of a 14-byte head is incomplete.
    let full = hexBytes("82 ff 00 00 00 00 00 01 00 00 01 02 03 04")
    for n in 0..<full.count {
      XCTAssertEqual(kp_ws_frame_head_decode(full, n, &h), KP_EAGAIN.rawValue, "prefix \(n)")
    }
    XCTAssertEqual(kp_ws_frame_head_decode(full, full.count, &h), 14)
    XCTAssertEqual(h.payload_len, 65536)
    XCTAssertEqual(h.masked, 1)
    XCTAssertEqual([h.mask.0, h.mask.1, h.mask.2, h.mask.3], [1, 2, 3, 4])
    XCTAssertEqual(h.rsv, 0)
    XCTAssertEqual(kp_ws_frame_head_decode(hexBytes("f2 00"), 2, &h), 2)
    XCTAssertEqual(h.rsv, 7)
    XCTAssertEqual(h.fin, 1)
    // 5.2: minimal lengths; 64-bit MSB clear.
    XCTAssertEqual(kp_ws_frame_head_decode(hexBytes("82 7e 00 7d"), 4, &h), KP_EPROTO.rawValue)
    XCTAssertEqual(kp_ws_frame_head_decode(hexBytes("82 7e 00 7e"), 4, &h), 4)
    XCTAssertEqual(kp_ws_frame_head_decode(hexBytes("82 7f 00 00 00 00 00 00 ff ff"), 10, &h), KP_EPROTO.rawValue)
    XCTAssertEqual(kp_ws_frame_head_decode(hexBytes("82 7f 80 00 00 00 00 00 00 00"), 10, &h), KP_EPROTO.rawValue)
    XCTAssertEqual(kp_ws_frame_head_decode(hexBytes("82 7f 7f ff ff ff ff ff ff ff"), 10, &h), 10)
    XCTAssertEqual(h.payload_len, UInt64(Int64.max))
    var out = [UInt8](repeating: 0, count: 14)
    XCTAssertEqual(kp_ws_frame_head_encode(&out, 1, 2, nil, UInt64(1) << 63), 0)
    XCTAssertEqual(kp_ws_frame_head_encode(&out, 1, 16, nil, 0), 0)
  }

  func testRoundTrips() {
    let mask: [UInt8] = [0xde, 0xad, 0xbe, 0xef]
    for len in [0, 1, 125, 126, 65535, 65536] {
      for server in [true, false] {
        for op in [KP_WS_OP_BINARY, KP_WS_OP_TEXT] {
          let payload = (0..<len).map { UInt8(truncatingIfNeeded: $0 % 95 + 32) }  // ASCII: valid text too
          var head = [UInt8](repeating: 0, count: 14)
          let hl = server ? kp_ws_frame_head_encode(&head, 1, Int32(op), mask, UInt64(len))
                          : kp_ws_frame_head_encode(&head, 1, Int32(op), nil, UInt64(len))
          XCTAssertEqual(hl, (len < 126 ? 2 : len <= 65535 ? 4 : 10) + (server ? 4 : 0), "len \(len)")
          var body = payload
          if server { kp_ws_mask(&body, body.count, mask, 0) }
          var wire = Array(head[0..<hl]) + body
          var h = kp_ws_frame_head_t()
          XCTAssertEqual(Int(kp_ws_frame_head_decode(wire, wire.count, &h)), hl)
          XCTAssertEqual(h.payload_len, UInt64(len))
          XCTAssertEqual(Int(h.opcode), op)
          XCTAssertEqual(h.fin, 1)
          XCTAssertEqual(h.masked, server ? 1 : 0)
          var d = kp_ws_decoder_t()
          kp_ws_decoder_init(&d, server ? 1 : 0, UInt64(len == 0 ? 0 : len))
          var got: [UInt8] = []
          var ended = false
          let rc = wire.withUnsafeMutableBufferPointer { b in
            wsFeed(&d, b.baseAddress!, b.count) { ev in
              XCTAssertEqual(ev.type, KP_WS_EV_DATA)
              XCTAssertEqual(Int(ev.opcode), op)
              if ev.len > 0 { got += UnsafeBufferPointer(start: ev.data, count: ev.len) }
              ended = ev.message_end != 0
            }
          }
          XCTAssertEqual(rc, 0, "len \(len)")
          XCTAssertTrue(ended, "len \(len)")
          XCTAssertEqual(got, payload, "len \(len) server \(server)")
        }
      }
    }
  }

  func testClosePayloadEncode() {
    var out = [UInt8](repeating: 0, count: 125)
    let bye = Array("bye".utf8)
    XCTAssertEqual(kp_ws_close_payload_encode(&out, 1001, bye, 3), 5)
    XCTAssertEqual(Array(out[0..<5]), [0x03, 0xe9] + bye)
    XCTAssertEqual(kp_ws_close_payload_encode(&out, 1005, nil, 0), 0)
    XCTAssertEqual(kp_ws_close_payload_encode(&out, 1005, bye, 3), KP_EINVAL.rawValue)
    XCTAssertEqual(kp_ws_close_payload_encode(&out, 1006, nil, 0), KP_EINVAL.rawValue)
    XCTAssertEqual(kp_ws_close_payload_encode(&out, 1000, [0xff], 1), KP_EINVAL.rawValue)
    let long = [UInt8](repeating: 0x61, count: 124)
    XCTAssertEqual(kp_ws_close_payload_encode(&out, 1000, long, 124), KP_EINVAL.rawValue)
    XCTAssertEqual(kp_ws_close_payload_encode(&out, 1000, long, 123), 125)
    // What we encode, our decoder accepts.
    var frame = [UInt8](repeating: 0, count: 14)
    let hl = kp_ws_frame_head_encode(&frame, 1, Int32(KP_WS_OP_CLOSE), nil, 125)
    var wire = Array(frame[0..<hl]) + out
    let c = WSChecker([WSEvent(kind: "close", code: 1000, payload: long.dropLast())], allowPartial: false)
    let rc = wire.withUnsafeMutableBufferPointer { b in
      var d = kp_ws_decoder_t()
      kp_ws_decoder_init(&d, 0, 0)
      return wsFeed(&d, b.baseAddress!, b.count, c.event)
    }
    XCTAssertEqual(rc, 0)
    XCTAssertNil(c.failure)
  }

  /// xorshift64*: seeded, so a failing case can be reproduced.
  struct SeededRNG: RandomNumberGenerator {
    var s: UInt64
    mutating func next() -> UInt64 {
      s ^= s >> 12; s ^= s << 25; s ^= s >> 27
      return s &* 2_685_821_657_736_338_717
    }
  }

  func testMaskEqualsBytewiseXor() {
    var rng = SeededRNG(s: 0x6455_6455)
    for _ in 0..<2000 {
      let len = Int.random(in: 0...300, using: &rng)
      let offset = UInt64.random(in: 0...1_000_000, using: &rng)
      let mask = (0..<4).map { _ in UInt8.random(in: 0...255, using: &rng) }
      let data = (0..<len).map { _ in UInt8.random(in: 0...255, using: &rng) }
      // Start at an odd address too: the fast path must not assume alignment.
      let skew = Int.random(in: 0...7, using: &rng)
      var buf = [UInt8](repeating: 0, count: skew) + data
      buf.withUnsafeMutableBufferPointer { b in kp_ws_mask(b.baseAddress! + skew, len, mask, offset) }
      let want = data.enumerated().map { $0.element ^ mask[Int((UInt64($0.offset) + offset) % 4)] }
      XCTAssertEqual(Array(buf[skew...]), want, "len \(len) offset \(offset)")
      XCTAssertEqual(Array(buf[0..<skew]), [UInt8](repeating: 0, count: skew))
    }
  }
}
