import Foundation
import KopilotCore
import KopilotTestSupport
import XCTest

/// One line of Tests/Vectors/mux.txt (its header documents the format).
struct MuxVector {
  let name: String
  let header: [UInt8]
  let fields: [UInt64]  // version type flags stream_id length
  let payload: [UInt8]
  let inSession: Bool

  var bytes: [UInt8] { header + payload }

  static func hex(_ s: Substring) -> [UInt8] {
    let digits = Array(s.filter { !$0.isWhitespace })
    precondition(digits.count % 2 == 0, "odd hex: \(s)")
    return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
  }

  static func load() throws -> [MuxVector] {
    let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .appendingPathComponent("Vectors/mux.txt")
    let text = try String(contentsOf: url, encoding: .utf8)
    var out: [MuxVector] = []
    for line in text.split(separator: "\n") {
      let t = line.trimmingCharacters(in: .whitespaces)
      if t.isEmpty || t.hasPrefix("#") { continue }
      let f = t.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
      precondition(f.count == 5, "bad vector line: \(t)")
      out.append(MuxVector(
        name: f[0], header: hex(Substring(f[1])),
        fields: f[2].split(separator: " ").map { UInt64($0)! },
        payload: f[3] == "-" ? [] : hex(Substring(f[3])),
        inSession: f[4] == "session"))
    }
    return out
  }
}

final class MuxCodecTests: XCTestCase {
  /// Pins every wire constant (as yamux's const_test.go does).
  func testWireConstants() {
    XCTAssertEqual(KP_MUX_HEADER_SIZE, 12)
    XCTAssertEqual(KP_MUX_VERSION, 0)
    XCTAssertEqual(KP_MUX_INITIAL_WINDOW, 256 * 1024)
    XCTAssertEqual(KP_MUX_TYPE_DATA, 0)
    XCTAssertEqual(KP_MUX_TYPE_WINDOW_UPDATE, 1)
    XCTAssertEqual(KP_MUX_TYPE_PING, 2)
    XCTAssertEqual(KP_MUX_TYPE_GO_AWAY, 3)
    XCTAssertEqual(KP_MUX_FLAG_SYN, 1)
    XCTAssertEqual(KP_MUX_FLAG_ACK, 2)
    XCTAssertEqual(KP_MUX_FLAG_FIN, 4)
    XCTAssertEqual(KP_MUX_FLAG_RST, 8)
    XCTAssertEqual(KP_MUX_GOAWAY_NORMAL, 0)
    XCTAssertEqual(KP_MUX_GOAWAY_PROTOCOL, 1)
    XCTAssertEqual(KP_MUX_GOAWAY_INTERNAL, 2)
    XCTAssertEqual(MemoryLayout<kp_mux_header_t>.size, 12)
    var cfg = kp_mux_config_t()
    kp_mux_config_default(&cfg, 0)
    XCTAssertEqual(cfg.window, 256 * 1024)
    XCTAssertEqual(cfg.accept_backlog, 256)
    XCTAssertEqual(cfg.keepalive_ms, 30_000)
    XCTAssertEqual(cfg.keepalive_timeout_ms, 30_000)
  }

  func testVectorsDecodeAndEncodeByteExact() throws {
    let vectors = try MuxVector.load()
    XCTAssertGreaterThanOrEqual(vectors.count, 20)
    for v in vectors {
      XCTAssertEqual(v.header.count, 12, v.name)
      // At the end of a guard page, so a read past the 12 bytes crashes.
      let g = kpt_guarded_copy(v.header, 12)!
      var h = kp_mux_header_t()
      XCTAssertEqual(kp_mux_header_decode(g, 12, &h), 12, v.name)
      kpt_guarded_free(g, 12)
      XCTAssertEqual([UInt64(h.version), UInt64(h.type), UInt64(h.flags), UInt64(h.stream_id), UInt64(h.length)],
                     v.fields, v.name)
      var out = [UInt8](repeating: 0, count: 12)
      kp_mux_header_encode(&out, &h)
      XCTAssertEqual(out, v.header, v.name)
      if h.type == UInt8(KP_MUX_TYPE_DATA) { XCTAssertEqual(Int(h.length), v.payload.count, v.name) }
      // Every shorter prefix needs more input.
      for n in 0..<12 {
        let p = kpt_guarded_copy(v.header, n)
        XCTAssertEqual(kp_mux_header_decode(p, n, &h), muxErr(KP_EAGAIN), "\(v.name) prefix \(n)")
        kpt_guarded_free(p, n)
      }
    }
  }

  func testDecoderRejectsBadVersionAndType() {
    var h = kp_mux_header_t()
    for (bytes, note) in [
      ([1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0] as [UInt8], "version 1"),
      ([0xff, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], "version 255"),
      ([0, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], "type 4"),
      ([0, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], "type 255"),
    ] {
      XCTAssertEqual(kp_mux_header_decode(bytes, 12, &h), muxErr(KP_EPROTO), note)
    }
  }

  /// What a server session does with the conversation in mux.txt, as a
  /// trace of events (consecutive data for one stream merged, so the trace
  /// does not depend on how the input was split).
  private func runConversation(_ bytes: [UInt8], splits: [Int]) -> (trace: [String], sent: [[UInt8]], window2: UInt32) {
    let p = MuxPeer(server: true)
    let s2 = p.open()
    p.capture = true
    var trace: [String] = []
    func add(_ e: String) {
      if e.hasPrefix("data "), let last = trace.last, last.hasPrefix("data "),
         last.split(separator: " ")[1] == e.split(separator: " ")[1] {
        trace[trace.count - 1] = last + e.split(separator: " ")[2]
      } else {
        trace.append(e)
      }
    }
    p.onStream = { s in add("stream \(kp_mux_stream_id(s))"); kp_mux_stream_accept(s) }
    p.onData = { s, d in
      add("data \(kp_mux_stream_id(s)) " + d.map { String(format: "%02x", $0) }.joined())
      kp_mux_stream_consume(s, d.count)
    }
    p.onEof = { s in add("eof \(kp_mux_stream_id(s))") }
    p.onStreamClose = { s, st in add("close \(kp_mux_stream_id(s)) \(String(cString: kp_err_name(st)))") }
    p.onGoaway = { add("goaway \($0)") }
    var at = 0
    for end in splits + [bytes.count] where end >= at {
      let g = kpt_guarded_copy(Array(bytes[at..<end]), end - at)
      XCTAssertEqual(kp_mux_feed(p.m, g, end - at, nil), 0)
      kpt_guarded_free(g, end - at)
      at = end
    }
    XCTAssertNil(p.closeStatus)
    XCTAssertTrue(p.logs.contains { $0.contains("unknown stream 3") }, "\(p.logs)")
    return (trace, p.sent, kp_mux_stream_send_window(s2))
  }

  func testConversationFedWholeByteByByteAndSplitAtEveryOffset() throws {
    let script = try MuxVector.load().filter(\.inSession).flatMap(\.bytes)
    let whole = runConversation(script, splits: [])
    XCTAssertEqual(whole.trace, [
      "stream 1", "data 1 68656c6c6f", "eof 1", "stream 3", "data 3 010203",
      "close 3 KP_ERESET", "goaway 0",
    ])
    XCTAssertEqual(whole.sent, [
      frame(.windowUpdate, flags: 2, id: 1, length: 0),  // accept
      frame(.ping, flags: 2, id: 0, length: 0),  // ping answer echoes the id
      frame(.windowUpdate, flags: 2, id: 3, length: 0),
    ])
    XCTAssertEqual(whole.window2, 256 * 1024 + 128 * 1024)
    let bytewise = runConversation(script, splits: Array(1..<script.count))
    XCTAssertEqual(bytewise.trace, whole.trace)
    XCTAssertEqual(bytewise.sent, whole.sent)
    for cut in 1..<script.count {
      let r = runConversation(script, splits: [cut])
      XCTAssertEqual(r.trace, whole.trace, "split at \(cut)")
      XCTAssertEqual(r.sent, whole.sent, "split at \(cut)")
      XCTAssertEqual(r.window2, whole.window2, "split at \(cut)")
    }
  }

  /// One row per bad input. Each is fed to a fresh server session (whose
  /// peer is a client: odd ids) whole, at the end of a guard page, and one
  /// byte at a time; each must close the session with KP_EPROTO after
  /// sending GoAway(protocol error).
  func testMalformedInputClosesWithGoAwayProtocol() {
    let syn1 = frame(.windowUpdate, flags: 1, id: 1, length: 0)
    let fin1 = frame(.windowUpdate, flags: 4, id: 1, length: 0)
    let window = Int(KP_MUX_INITIAL_WINDOW)
    let table: [([UInt8], String)] = [
      (frame(.data, flags: 0, id: 1, length: 0, version: 1), "bad version 1"),
      (frame(.ping, flags: 1, id: 0, length: 0, version: 0xff), "bad version 255"),
      ([0, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], "unknown type 4"),
      ([0, 0xff, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0], "unknown type 255"),
      (frame(.data, flags: 0, id: 0, length: 1) + [0xaa], "data on stream 0"),
      (frame(.windowUpdate, flags: 0, id: 0, length: 1), "window update on stream 0"),
      (frame(.windowUpdate, flags: 1, id: 0, length: 0), "SYN on stream 0"),
      (frame(.windowUpdate, flags: 1, id: 2, length: 0), "SYN with the server's parity from a client"),
      (frame(.data, flags: 1, id: 4, length: 0), "Data+SYN with the wrong parity"),
      (syn1 + syn1, "SYN for an id already in use"),
      (syn1 + frame(.data, flags: 0, id: 1, length: UInt32(window + 1)), "data beyond the window in one frame"),
      (syn1 + frame(.data, flags: 0, id: 1, length: UInt32(window)) + [UInt8](repeating: 0, count: window)
         + frame(.data, flags: 0, id: 1, length: 1) + [0], "data beyond the window across frames (nothing consumed)"),
      (frame(.data, flags: 1, id: 1, length: UInt32(window + 1)), "Data+SYN larger than the initial window"),
      (syn1 + fin1 + fin1, "second FIN (yamux: unexpected FIN flag)"),
      (syn1 + fin1 + frame(.data, flags: 0, id: 1, length: 1) + [7], "data after FIN"),
      (syn1 + frame(.windowUpdate, flags: 0, id: 1, length: 0xffff_ffff), "send window overflow"),
      (frame(.ping, flags: 1, id: 0, length: 9) + Array("GET / HTTP/1.1\r\n\r\n".utf8), "HTTP spoken to a mux after a ping"),
    ]
    XCTAssertGreaterThanOrEqual(table.count, 12)
    let goawayProto = frame(.goAway, flags: 0, id: 0, length: UInt32(KP_MUX_GOAWAY_PROTOCOL))
    for (bytes, note) in table {
      for bytewise in [false, true] {
        let p = MuxPeer(server: true)
        p.capture = true
        p.onStream = { kp_mux_stream_accept($0) }
        var rcs: [Int32] = []
        if bytewise {
          for b in bytes where kp_mux_is_closed(p.m) == 0 { rcs.append(p.feed([b])) }
        } else {
          let g = kpt_guarded_copy(bytes, bytes.count)
          rcs.append(kp_mux_feed(p.m, g, bytes.count, nil))
          kpt_guarded_free(g, bytes.count)
        }
        let how = bytewise ? "\(note), byte by byte" : note
        XCTAssertEqual(rcs.last, muxErr(KP_EPROTO), how)
        XCTAssertEqual(p.closeStatus, muxErr(KP_EPROTO), how)
        XCTAssertEqual(p.sent.last, goawayProto, how)
        XCTAssertEqual(kp_mux_num_streams(p.m), 0, how)
        XCTAssertEqual(p.feed([0]), muxErr(KP_ECLOSED), how)
        XCTAssertTrue(p.logs.contains { $0.contains("protocol error") }, how)
      }
    }
  }
}
