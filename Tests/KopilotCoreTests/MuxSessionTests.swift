import KopilotCore
import KopilotTestSupport
import XCTest

// MARK: - Test harness shared by the Mux* tests

/// Owns one kp_mux_t and turns its C callbacks into closures. Every frame the
/// session sends is gathered into a fresh chunk (kp_chunk_new) and handed to
/// `onSend`, which takes the reference.
final class MuxPeer {
  private(set) var m: OpaquePointer!
  var onSend: ((OpaquePointer, Int) -> Void)?
  var onStream: ((OpaquePointer) -> Void)?
  var onData: ((OpaquePointer, UnsafeRawBufferPointer) -> Void)?
  var onEof: ((OpaquePointer) -> Void)?
  var onWritable: ((OpaquePointer) -> Void)?
  var onStreamClose: ((OpaquePointer, Int32) -> Void)?
  var onGoaway: ((UInt32) -> Void)?
  var onClose: ((Int32) -> Void)?
  var closeStatus: Int32?
  var logs: [String] = []
  /// Every frame sent, as bytes, when `capture` is on.
  var capture = false
  var sent: [[UInt8]] = []
  /// Set when a callback freed the session (kp_mux_free from on_close).
  var freed = false
  /// The chunk that owned the last on_data payload.
  var lastDataChunk: OpaquePointer?

  init(server: Bool, configure: (inout kp_mux_config_t) -> Void = { _ in }) {
    var cfg = kp_mux_config_t()
    kp_mux_config_default(&cfg, server ? 1 : 0)
    cfg.keepalive_ms = 0
    configure(&cfg)
    var cbs = kp_mux_callbacks_t()
    cbs.send = { _, bufs, lens, n, ud in
      let p = MuxPeer.from(ud)
      var total = 0
      for i in 0..<n { total += lens![i] }
      let c = kp_chunk_new(total)!
      var at = kp_chunk_data(c)!
      for i in 0..<n {
        if lens![i] > 0 { at.update(from: bufs![i]!, count: lens![i]) }
        at += lens![i]
      }
      if p.capture { p.sent.append(Array(UnsafeBufferPointer(start: kp_chunk_data(c), count: total))) }
      if let h = p.onSend { h(c, total) } else { kp_chunk_unref(c) }
    }
    cbs.on_stream = { _, s, ud in MuxPeer.from(ud).onStream?(s!) }
    cbs.on_data = { s, data, len, chunk, ud in
      let p = MuxPeer.from(ud)
      p.lastDataChunk = chunk
      p.onData?(s!, UnsafeRawBufferPointer(start: data, count: len))
    }
    cbs.on_eof = { s, ud in MuxPeer.from(ud).onEof?(s!) }
    cbs.on_writable = { s, ud in MuxPeer.from(ud).onWritable?(s!) }
    cbs.on_stream_close = { s, st, ud in MuxPeer.from(ud).onStreamClose?(s!, st) }
    cbs.on_goaway = { _, code, ud in MuxPeer.from(ud).onGoaway?(code) }
    cbs.on_close = { _, st, ud in
      let p = MuxPeer.from(ud)
      p.closeStatus = st
      p.onClose?(st)
    }
    cbs.log = { _, msg, ud in MuxPeer.from(ud).logs.append(String(cString: msg!)) }
    var mp: OpaquePointer?
    let rc = kp_mux_new(&mp, &cfg, &cbs, Unmanaged.passUnretained(self).toOpaque())
    precondition(rc == 0, "kp_mux_new: \(rc)")
    m = mp
  }

  deinit { if !freed { kp_mux_free(m) } }

  static func from(_ ud: UnsafeMutableRawPointer?) -> MuxPeer {
    Unmanaged<MuxPeer>.fromOpaque(ud!).takeUnretainedValue()
  }

  @discardableResult
  func feed(_ bytes: [UInt8]) -> Int32 {
    bytes.withUnsafeBufferPointer { kp_mux_feed(m, $0.baseAddress, $0.count, nil) }
  }

  func open() -> OpaquePointer {
    var s: OpaquePointer?
    let rc = kp_mux_open(m, &s)
    precondition(rc == 0, "kp_mux_open: \(rc)")
    return s!
  }

  @discardableResult
  func write(_ s: OpaquePointer, _ bytes: [UInt8]) -> Int64 {
    bytes.withUnsafeBufferPointer { kp_mux_stream_write(s, $0.baseAddress, $0.count) }
  }

  /// Headers of the captured frames.
  var sentHeaders: [kp_mux_header_t] {
    var out: [kp_mux_header_t] = []
    for f in sent {
      var h = kp_mux_header_t()
      f.withUnsafeBufferPointer { _ = kp_mux_header_decode($0.baseAddress, $0.count, &h) }
      out.append(h)
    }
    return out
  }
}

/// Two sessions back to back in memory: what one sends is queued (as the
/// chunk the harness made) for the other, and pump() feeds the queues until
/// both are empty.
final class MuxPair {
  let a: MuxPeer  // client (odd ids)
  let b: MuxPeer  // server (even ids)
  private var toA: [(OpaquePointer, Int)] = []
  private var toB: [(OpaquePointer, Int)] = []
  /// When set, what A sends is lost (a peer that stopped answering).
  var dropToB = false
  var lastFeedA: Int32 = 0
  var lastFeedB: Int32 = 0

  init(client: (inout kp_mux_config_t) -> Void = { _ in },
       server: (inout kp_mux_config_t) -> Void = { _ in }) {
    a = MuxPeer(server: false, configure: client)
    b = MuxPeer(server: true, configure: server)
    a.onSend = { [unowned self] c, n in
      if self.dropToB { kp_chunk_unref(c) } else { self.toB.append((c, n)) }
    }
    b.onSend = { [unowned self] c, n in self.toA.append((c, n)) }
  }

  deinit {
    for (c, _) in toA { kp_chunk_unref(c) }
    for (c, _) in toB { kp_chunk_unref(c) }
  }

  /// Delivers queued bytes both ways until nothing moves.
  func pump() {
    while !toA.isEmpty || !toB.isEmpty {
      if !toB.isEmpty {
        let q = toB
        toB = []
        for (i, (c, n)) in q.enumerated() {
          if kp_mux_is_closed(b.m) == 0 {
            lastFeedB = kp_mux_feed(b.m, kp_chunk_data(c), n, c)
          }
          kp_chunk_unref(c)
          _ = i
        }
      }
      if !toA.isEmpty {
        let q = toA
        toA = []
        for (c, n) in q {
          if kp_mux_is_closed(a.m) == 0 {
            lastFeedA = kp_mux_feed(a.m, kp_chunk_data(c), n, c)
          }
          kp_chunk_unref(c)
        }
      }
    }
  }
}

func muxErr(_ e: kp_errno_t) -> Int32 { Int32(e.rawValue) }

/// Per-stream bookkeeping for the payload tests.
final class MuxFlow {
  let id: UInt32
  var payload: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0)
  var sentBytes = 0
  var finSent = false
  var rx: OpaquePointer? = kpt_sha256_new()
  var rxBytes = 0
  var rxDigest: [UInt8]?
  var closeStatus: Int32?
  init(id: UInt32) { self.id = id }
  deinit { if let rx { var d = [UInt8](repeating: 0, count: 32); kpt_sha256_final(rx, &d) } }
}

// MARK: - Tests

final class MuxSessionTests: XCTestCase {
  func testOpenAcceptAndHalfCloseBothWays() {
    let p = MuxPair()
    var bStream: OpaquePointer?
    var bGot: [UInt8] = [], aGot: [UInt8] = []
    var bEof = false, aEof = false
    var aClosed: Int32?, bClosed: Int32?
    p.b.onStream = { s in bStream = s; XCTAssertEqual(kp_mux_stream_accept(s), 0) }
    p.b.onData = { s, d in bGot += d; kp_mux_stream_consume(s, d.count) }
    p.b.onEof = { _ in bEof = true }
    p.b.onStreamClose = { _, st in bClosed = st }
    p.a.onData = { s, d in aGot += d; kp_mux_stream_consume(s, d.count) }
    p.a.onEof = { _ in aEof = true }
    p.a.onStreamClose = { _, st in aClosed = st }

    let s = p.a.open()
    XCTAssertEqual(kp_mux_stream_id(s), 1, "client ids are odd from 1")
    XCTAssertEqual(p.a.write(s, Array("hello".utf8)), 5)
    XCTAssertEqual(kp_mux_stream_close(s), 0)
    p.pump()
    XCTAssertNotNil(bStream)
    XCTAssertEqual(kp_mux_stream_id(bStream!), 1)
    XCTAssertEqual(String(decoding: bGot, as: UTF8.self), "hello")
    XCTAssertTrue(bEof)
    XCTAssertNil(bClosed, "half-closed: B may still write")
    XCTAssertEqual(kp_mux_num_streams(p.b.m), 1)
    // A can still read after its own FIN; its writes are refused.
    XCTAssertEqual(p.a.write(s, [1]), Int64(muxErr(KP_ECLOSED)))
    XCTAssertEqual(p.b.write(bStream!, Array("world".utf8)), 5)
    XCTAssertEqual(kp_mux_stream_close(bStream!), 0)
    p.pump()
    XCTAssertEqual(String(decoding: aGot, as: UTF8.self), "world")
    XCTAssertTrue(aEof)
    XCTAssertEqual(aClosed, 0)
    XCTAssertEqual(bClosed, 0)
    XCTAssertEqual(kp_mux_num_streams(p.a.m), 0)
    XCTAssertEqual(kp_mux_num_streams(p.b.m), 0)
    // The server's own streams are even from 2.
    XCTAssertEqual(kp_mux_stream_id(p.b.open()), 2)
  }

  func testResetClosesBothSidesAtOnce() {
    let p = MuxPair()
    var bStream: OpaquePointer?
    var aClosed: Int32?, bClosed: Int32?
    p.b.onStream = { s in bStream = s; kp_mux_stream_accept(s) }
    p.a.onStreamClose = { _, st in aClosed = st }
    p.b.onStreamClose = { _, st in bClosed = st }
    let s = p.a.open()
    p.a.write(s, [1, 2, 3])
    p.pump()
    XCTAssertEqual(kp_mux_stream_reset(bStream!), 0)
    XCTAssertEqual(bClosed, muxErr(KP_ECLOSED), "our own reset")
    p.pump()
    XCTAssertEqual(aClosed, muxErr(KP_ERESET))
    XCTAssertEqual(kp_mux_num_streams(p.a.m), 0)
    XCTAssertNil(p.a.closeStatus, "an RST closes the stream, not the session")
  }

  func testWriterStopsAtTheWindowAndResumesOnTheUpdate() {
    let p = MuxPair()
    p.a.capture = true
    var bStream: OpaquePointer?
    var bUnconsumed = 0
    var writable = 0
    p.b.onStream = { s in bStream = s; kp_mux_stream_accept(s) }
    p.b.onData = { _, d in bUnconsumed += d.count }  // consumes nothing yet
    p.a.onWritable = { _ in writable += 1 }
    let s = p.a.open()
    let big = [UInt8](repeating: 7, count: 300 * 1024)
    XCTAssertEqual(p.a.write(s, big), Int64(KP_MUX_INITIAL_WINDOW), "exactly the window")
    XCTAssertEqual(kp_mux_stream_send_window(s), 0)
    XCTAssertEqual(p.a.write(s, [1]), 0)
    p.pump()
    XCTAssertEqual(bUnconsumed, Int(KP_MUX_INITIAL_WINDOW))
    XCTAssertEqual(writable, 0)
    // Less than half the window owed: no update yet (yamux's threshold).
    kp_mux_stream_consume(bStream!, 128 * 1024 - 1)
    p.pump()
    XCTAssertEqual(writable, 0)
    XCTAssertEqual(kp_mux_stream_send_window(s), 0)
    kp_mux_stream_consume(bStream!, 1)
    p.pump()
    XCTAssertEqual(writable, 1)
    XCTAssertEqual(kp_mux_stream_send_window(s), 128 * 1024, "the update is sized to what was consumed")
    XCTAssertEqual(p.a.write(s, big), 128 * 1024)
    p.pump()
    XCTAssertEqual(bUnconsumed, Int(KP_MUX_INITIAL_WINDOW) + 128 * 1024)
  }

  func testKeepaliveTimesOutWhenThePeerStopsAnswering() {
    let p = MuxPair(client: { $0.keepalive_ms = 1000; $0.keepalive_timeout_ms = 500 })
    var streamStatus: Int32?
    p.a.onStreamClose = { _, st in streamStatus = st }
    _ = p.a.open()
    p.pump()
    XCTAssertEqual(kp_mux_tick(p.a.m, 10_000), 1000, "the first tick starts the clock")
    XCTAssertEqual(kp_mux_tick(p.a.m, 10_999), 1)
    XCTAssertEqual(kp_mux_tick(p.a.m, 11_000), 500, "ping sent; now waiting for its answer")
    p.pump()  // B answers
    XCTAssertEqual(kp_mux_tick(p.a.m, 11_600), 400)
    XCTAssertNil(p.a.closeStatus)
    p.dropToB = true
    XCTAssertEqual(kp_mux_tick(p.a.m, 12_000), 500)
    p.pump()
    XCTAssertEqual(kp_mux_tick(p.a.m, 12_499), 1)
    XCTAssertNil(p.a.closeStatus)
    XCTAssertEqual(kp_mux_tick(p.a.m, 12_500), UInt64.max)
    XCTAssertEqual(p.a.closeStatus, muxErr(KP_ETIMEDOUT))
    XCTAssertEqual(streamStatus, muxErr(KP_ETIMEDOUT), "streams close before the session")
    XCTAssertEqual(kp_mux_num_streams(p.a.m), 0)
  }

  func testGoAwayStopsNewStreamsAndLetsExistingFinish() {
    let p = MuxPair()
    var bStream: OpaquePointer?
    var bGoaway: UInt32?
    var aClosed: Int32?, bClosed: Int32?
    var bGot: [UInt8] = []
    p.b.onStream = { s in bStream = s; kp_mux_stream_accept(s) }
    p.b.onGoaway = { bGoaway = $0 }
    p.b.onData = { s, d in bGot += d; kp_mux_stream_consume(s, d.count) }
    p.a.onStreamClose = { _, st in aClosed = st }
    p.b.onStreamClose = { _, st in bClosed = st }
    let s = p.a.open()
    p.pump()
    XCTAssertEqual(kp_mux_goaway(p.a.m, UInt32(KP_MUX_GOAWAY_NORMAL)), 0)
    p.pump()
    XCTAssertEqual(bGoaway, 0)
    var x: OpaquePointer?
    XCTAssertEqual(kp_mux_open(p.a.m, &x), muxErr(KP_EGOAWAY))
    XCTAssertEqual(kp_mux_open(p.b.m, &x), muxErr(KP_EGOAWAY))
    // The existing stream still works both ways and finishes cleanly.
    XCTAssertEqual(p.a.write(s, [9, 9]), 2)
    kp_mux_stream_close(s)
    kp_mux_stream_close(bStream!)
    p.pump()
    XCTAssertEqual(bGot, [9, 9])
    XCTAssertEqual(aClosed, 0)
    XCTAssertEqual(bClosed, 0)
    XCTAssertNil(p.a.closeStatus)
    XCTAssertNil(p.b.closeStatus)
    // A raw SYN arriving after our GoAway is refused with RST.
    p.a.capture = true
    var newStream = false
    p.a.onStream = { _ in newStream = true }
    XCTAssertEqual(p.a.feed(frame(.windowUpdate, flags: 1, id: 2, length: 0)), 0)
    XCTAssertFalse(newStream)
    XCTAssertEqual(p.a.sent.last, frame(.windowUpdate, flags: 8, id: 2, length: 0))
  }

  func testBacklogFullRefusesWithRST() {
    let p = MuxPair(server: { $0.accept_backlog = 2 })
    var accepted: [OpaquePointer] = []
    p.b.onStream = { accepted.append($0) }  // never accepts
    var status: [UInt32: Int32] = [:]
    p.a.onStreamClose = { s, st in status[kp_mux_stream_id(s)] = st }
    let s1 = p.a.open(), s2 = p.a.open(), s3 = p.a.open()
    XCTAssertEqual([kp_mux_stream_id(s1), kp_mux_stream_id(s2), kp_mux_stream_id(s3)], [1, 3, 5])
    p.pump()
    // s3's handle is gone after its on_stream_close: only its id is used.
    XCTAssertEqual(accepted.count, 2)
    XCTAssertEqual(kp_mux_num_streams(p.b.m), 2)
    XCTAssertEqual(kp_mux_num_streams(p.a.m), 2)
    XCTAssertEqual(status, [5: muxErr(KP_EREFUSED)])
    XCTAssertTrue(p.b.logs.contains { $0.contains("backlog") })
    // Accepting one frees a backlog slot.
    kp_mux_stream_accept(accepted[0])
    _ = p.a.open()
    p.pump()
    XCTAssertEqual(accepted.count, 3)
  }

  func testLargerWindowIsAnnouncedInSynAndAck() {
    let p = MuxPair(client: { $0.window = 512 * 1024 }, server: { $0.window = 1024 * 1024 })
    p.a.capture = true
    p.b.capture = true
    var bStream: OpaquePointer?
    p.b.onStream = { s in bStream = s; kp_mux_stream_accept(s) }
    let s = p.a.open()
    p.pump()
    let syn = p.a.sentHeaders[0]
    XCTAssertEqual(syn.type, UInt8(KP_MUX_TYPE_WINDOW_UPDATE))
    XCTAssertEqual(syn.flags, UInt16(KP_MUX_FLAG_SYN))
    XCTAssertEqual(syn.length, 256 * 1024, "delta = window - 256 KiB")
    let ack = p.b.sentHeaders[0]
    XCTAssertEqual(ack.flags, UInt16(KP_MUX_FLAG_ACK))
    XCTAssertEqual(ack.stream_id, 1)
    XCTAssertEqual(ack.length, 768 * 1024)
    XCTAssertEqual(kp_mux_stream_send_window(s), 1024 * 1024)
    XCTAssertEqual(kp_mux_stream_send_window(bStream!), 512 * 1024)
    // The peer may really use it: 1 MiB in flight is not a protocol error.
    let big = [UInt8](repeating: 1, count: 1024 * 1024)
    XCTAssertEqual(p.a.write(s, big), Int64(big.count))
    p.pump()
    XCTAssertNil(p.b.closeStatus)
  }

  func testUnknownStreamDataIsDrainedAndLogged() {
    let p = MuxPeer(server: true)
    p.capture = true
    var data = frame(.data, flags: 0, id: 99, length: 5) + Array("abcde".utf8)
    data += frame(.ping, flags: 1, id: 0, length: 77)
    XCTAssertEqual(p.feed(data), 0)
    XCTAssertNil(p.closeStatus)
    XCTAssertTrue(p.logs.contains { $0.contains("unknown stream 99") }, "\(p.logs)")
    XCTAssertEqual(p.sent, [frame(.ping, flags: 2, id: 0, length: 77)], "the ping after it is answered")
  }

  func testCallbacksMayWriteCloseAndResetStreams() {
    // B echoes from inside on_data, half-closes from on_eof; A resets a
    // second stream from inside on_data; A frees its session from on_close.
    let p = MuxPair()
    p.b.onStream = { s in kp_mux_stream_accept(s) }
    p.b.onData = { s, d in
      let n = kp_mux_stream_write(s, d.baseAddress!.assumingMemoryBound(to: UInt8.self), d.count)
      XCTAssertEqual(n, Int64(d.count))
      kp_mux_stream_consume(s, d.count)
    }
    p.b.onEof = { s in XCTAssertEqual(kp_mux_stream_close(s), 0) }
    var echoed: [UInt8] = []
    var status: [UInt32: Int32] = [:]
    p.a.onData = { s, d in
      if kp_mux_stream_id(s) == 3 {
        XCTAssertEqual(kp_mux_stream_reset(s), 0)
        XCTAssertEqual(kp_mux_stream_reset(s), muxErr(KP_ECLOSED))
        XCTAssertEqual(kp_mux_stream_write(s, nil, 0), Int64(muxErr(KP_ECLOSED)))
      } else {
        echoed += d
      }
    }
    p.a.onStreamClose = { s, st in status[kp_mux_stream_id(s)] = st }
    let s1 = p.a.open(), s2 = p.a.open()
    p.a.write(s1, [1, 2, 3])
    kp_mux_stream_close(s1)
    p.a.write(s2, [4, 5, 6, 7])
    p.pump()
    XCTAssertEqual(echoed, [1, 2, 3])
    XCTAssertEqual(status[1], 0)
    XCTAssertEqual(status[3], muxErr(KP_ECLOSED))
    XCTAssertEqual(kp_mux_num_streams(p.b.m), 0, "B saw the RST")
    p.a.onClose = { [unowned a = p.a] _ in a.freed = true; kp_mux_free(a.m) }
    kp_mux_close(p.a.m, 0)
    XCTAssertTrue(p.a.freed)
    XCTAssertEqual(p.a.closeStatus, 0)
  }

  func testDataIsDeliveredZeroCopyFromTheFedChunk() {
    let p = MuxPeer(server: true)
    p.onStream = { kp_mux_stream_accept($0) }
    var seen: [(UnsafeRawPointer, Int)] = []
    p.onData = { _, d in seen.append((d.baseAddress!, d.count)) }
    let bytes = frame(.windowUpdate, flags: 1, id: 1, length: 0) + frame(.data, flags: 0, id: 1, length: 4) + [1, 2, 3, 4]
    let c = kp_chunk_new(bytes.count)!
    let base = kp_chunk_data(c)!
    base.update(from: bytes, count: bytes.count)
    XCTAssertEqual(kp_mux_feed(p.m, base, bytes.count, c), 0)
    XCTAssertEqual(seen.count, 1)
    XCTAssertEqual(seen.first?.0, UnsafeRawPointer(base + 24), "points into the fed bytes")
    XCTAssertEqual(seen.first?.1, 4)
    XCTAssertEqual(p.lastDataChunk, c, "with the chunk that owns them")
    kp_chunk_unref(c)
  }

  func testFeedAndTickAreRefusedInsideCallbacks() {
    let p = MuxPeer(server: true)
    var inner: (Int32, UInt64)?
    p.onStream = { [unowned p] _ in
      inner = (p.feed([0]), kp_mux_tick(p.m, 1))
    }
    XCTAssertEqual(p.feed(frame(.windowUpdate, flags: 1, id: 1, length: 0)), 0)
    XCTAssertEqual(inner?.0, muxErr(KP_EINVAL))
    XCTAssertEqual(inner?.1, UInt64.max)
    XCTAssertNil(p.closeStatus)
  }

  func testSendBlockedStopsWritesAndUnblockFiresWritable() {
    let p = MuxPair()
    p.b.onStream = { s in kp_mux_stream_accept(s) }
    var writable = 0
    p.a.onWritable = { _ in writable += 1 }
    let s = p.a.open()
    kp_mux_set_send_blocked(p.a.m, 1)
    XCTAssertEqual(p.a.write(s, [1, 2]), 0)
    XCTAssertEqual(writable, 0)
    kp_mux_set_send_blocked(p.a.m, 0)
    XCTAssertEqual(writable, 1)
    XCTAssertEqual(p.a.write(s, [1, 2]), 2)
  }

  func testTenThousandStreamsPerSession() {
    // The stream table must stay O(1) per frame at this size (the pump
    // below is 10,000 SYNs, 10,000 ACKs and 40,000 data/FIN frames).
    let p = MuxPair(server: { $0.accept_backlog = 10_000 })
    var inbound: [UInt32: OpaquePointer] = [:]
    var closed = 0
    p.b.onStream = { s in inbound[kp_mux_stream_id(s)] = s; kp_mux_stream_accept(s) }
    p.b.onData = { s, d in kp_mux_stream_consume(s, d.count) }
    p.a.onStreamClose = { _, st in XCTAssertEqual(st, 0); closed += 1 }
    var ours: [OpaquePointer] = []
    for _ in 0..<10_000 { ours.append(p.a.open()) }
    p.pump()
    XCTAssertEqual(inbound.count, 10_000)
    XCTAssertEqual(kp_mux_num_streams(p.b.m), 10_000)
    for s in ours.reversed() {
      XCTAssertEqual(p.a.write(s, [1, 2, 3, 4]), 4)
      kp_mux_stream_close(s)
    }
    for (_, s) in inbound { kp_mux_stream_close(s) }
    p.pump()
    XCTAssertEqual(closed, 10_000)
    XCTAssertEqual(kp_mux_num_streams(p.a.m), 0)
    XCTAssertEqual(kp_mux_num_streams(p.b.m), 0)
  }

  func testThousandConcurrentStreamsWithRandomPayloads() {
    let p = MuxPair()
    // Payloads are random slices of one random pool, so no byte loops run
    // in Swift; sizes are random up to 300 KiB.
    let poolSize = 640 * 1024
    let pool = UnsafeMutableRawBufferPointer.allocate(byteCount: poolSize, alignment: 16)
    defer { pool.deallocate() }
    var rng = SystemRandomNumberGenerator()
    for i in stride(from: 0, to: poolSize, by: 8) { pool.storeBytes(of: rng.next() as UInt64, toByteOffset: i, as: UInt64.self) }
    func randomPayload() -> UnsafeRawBufferPointer {
      let len = Int.random(in: 0...(300 * 1024))
      let off = Int.random(in: 0...(poolSize - len))
      return UnsafeRawBufferPointer(rebasing: pool[off..<(off + len)])
    }
    // Side 0 is A, side 1 is B; closures capture indexes, not the peers,
    // so nothing forms a retain cycle.
    let peers = [p.a, p.b]
    var flows: [[UInt32: MuxFlow]] = [[:], [:]]
    var handles: [[UInt32: OpaquePointer]] = [[:], [:]]
    for side in 0..<2 {
      peers[side].onStream = { s in
        XCTAssertEqual(kp_mux_stream_accept(s), 0)
        let f = MuxFlow(id: kp_mux_stream_id(s))
        f.payload = randomPayload()
        flows[side][f.id] = f
        handles[side][f.id] = s
      }
      peers[side].onData = { s, d in
        let f = flows[side][kp_mux_stream_id(s)]!
        kpt_sha256_update(f.rx, d.baseAddress, d.count)
        f.rxBytes += d.count
        kp_mux_stream_consume(s, d.count)
      }
      peers[side].onEof = { s in
        let f = flows[side][kp_mux_stream_id(s)]!
        var dg = [UInt8](repeating: 0, count: 32)
        kpt_sha256_final(f.rx, &dg)
        f.rx = nil
        f.rxDigest = dg
      }
      peers[side].onStreamClose = { s, st in
        let id = kp_mux_stream_id(s)
        flows[side][id]!.closeStatus = st
        handles[side][id] = nil
      }
    }
    for i in 0..<1000 {
      let side = i % 2
      let s = peers[side].open()
      let f = MuxFlow(id: kp_mux_stream_id(s))
      f.payload = randomPayload()
      flows[side][f.id] = f
      handles[side][f.id] = s
    }
    p.pump()
    XCTAssertEqual(kp_mux_num_streams(p.a.m), 1000)
    XCTAssertEqual(kp_mux_num_streams(p.b.m), 1000)
    // Write in rounds of up to 64 KiB per stream, pumping in between, so the
    // in-memory queues stay small; a short write just waits for a later round.
    var rounds = 0
    var active = true
    while active && rounds < 10_000 {
      active = false
      rounds += 1
      for side in 0..<2 {
        for (id, f) in flows[side] where !f.finSent {
          guard let s = handles[side][id] else { continue }
          let want = min(64 * 1024, f.payload.count - f.sentBytes)
          if want > 0 {
            let base = f.payload.baseAddress!.assumingMemoryBound(to: UInt8.self)
            let n = kp_mux_stream_write(s, base + f.sentBytes, want)
            XCTAssertGreaterThanOrEqual(n, 0)
            f.sentBytes += Int(max(n, 0))
          }
          if f.sentBytes == f.payload.count {
            XCTAssertEqual(kp_mux_stream_close(s), 0)
            f.finSent = true
          }
          active = true
        }
      }
      p.pump()
    }
    XCTAssertLessThan(rounds, 10_000)
    for side in 0..<2 {
      XCTAssertEqual(kp_mux_num_streams(peers[side].m), 0)
      for (id, f) in flows[side] {
        XCTAssertEqual(f.closeStatus, 0, "stream \(id)")
        let theirs = flows[1 - side][id]!
        var want = [UInt8](repeating: 0, count: 32)
        kpt_sha256(theirs.payload.baseAddress, theirs.payload.count, &want)
        XCTAssertEqual(f.rxBytes, theirs.payload.count, "stream \(id)")
        XCTAssertEqual(f.rxDigest, want, "stream \(id)")
      }
    }
    XCTAssertNil(p.a.closeStatus)
    XCTAssertNil(p.b.closeStatus)
  }
}

enum MuxType: UInt8 { case data = 0, windowUpdate = 1, ping = 2, goAway = 3 }

/// One 12-byte yamux header, built by hand (not by our encoder).
func frame(_ t: MuxType, flags: UInt16, id: UInt32, length: UInt32, version: UInt8 = 0) -> [UInt8] {
  [version, t.rawValue, UInt8(flags >> 8), UInt8(flags & 0xff),
   UInt8(id >> 24), UInt8((id >> 16) & 0xff), UInt8((id >> 8) & 0xff), UInt8(id & 0xff),
   UInt8(length >> 24), UInt8((length >> 16) & 0xff), UInt8((length >> 8) & 0xff), UInt8(length & 0xff)]
}
