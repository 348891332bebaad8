import KopilotCore
import XCTest

// Receive-window auto-tuning and the memory budget (mux_session.c,
// kp_mux_config_t.window_start, kp_memory_budget_set): a stream starts at
// yamux's 256 KiB, doubles while its reader consumes half a window within
// the allowance twice in a row without being held back, and never grows
// past the budget. The oracle is what the
// sender is allowed to send: kp_mux_stream_send_window on the other side.

private let kib: UInt32 = 1024
private let mib: UInt32 = 1024 * 1024

final class MuxWindowTuningTests: XCTestCase {
  override func tearDown() {
    kp_memory_budget_set(0)
    super.tearDown()
  }

  /// A pair where B (the receiver) tunes from 256 KiB to `max`.
  private func rig(max: UInt32 = 4 * mib) -> (MuxPair, OpaquePointer, () -> OpaquePointer?) {
    let p = MuxPair(server: { $0.window = max; $0.window_start = 256 * kib })
    var receiver: OpaquePointer?
    p.b.onStream = { s in receiver = s; XCTAssertEqual(kp_mux_stream_accept(s), 0) }
    let s = p.a.open()
    p.pump()
    return (p, s, { receiver })
  }

  /// Sends `total` bytes from A, delivering and consuming at B at once,
  /// with B's clock advanced by stepMs / 4 per 64 KiB written and by stepMs
  /// whenever A waits for the window.
  private func transfer(_ p: MuxPair, _ s: OpaquePointer, total: Int, clock: inout UInt64, stepMs: UInt64,
                        held: Bool = false) {
    let block = [UInt8](repeating: 7, count: 64 * 1024)
    var sent = 0
    p.b.onData = { st, d in
      if held { kp_mux_stream_reader_held(st) }
      kp_mux_stream_consume(st, d.count)
    }
    while sent < total {
      let n = p.a.write(s, Array(block.prefix(min(block.count, total - sent))))
      if n <= 0 {
        clock += stepMs
        kp_mux_set_now(p.b.m, clock)
        p.pump()
        if kp_mux_stream_send_window(s) == 0 { return XCTFail("stalled at \(sent) bytes") }
        continue
      }
      sent += Int(n)
      clock += stepMs / 4
      kp_mux_set_now(p.b.m, clock)
      p.pump()
    }
  }

  func testStartsAtTheInitialWindowWithoutAnAnnouncement() {
    let (p, s, receiver) = rig()
    XCTAssertEqual(kp_mux_stream_send_window(s), 256 * kib, "no extra window in the ACK")
    XCTAssertEqual(kp_mux_stream_recv_target(receiver()), 256 * kib)
    _ = p
  }

  func testAReaderThatKeepsUpEarnsTheFullWindow() {
    let (p, s, receiver) = rig()
    var clock: UInt64 = 1000
    transfer(p, s, total: 24 * Int(mib), clock: &clock, stepMs: 0)
    XCTAssertEqual(kp_mux_stream_recv_target(receiver()), 4 * mib, "doubled up to the maximum")
    XCTAssertGreaterThan(kp_mux_stream_send_window(s), 256 * kib)
  }

  func testASlowReaderStaysSmall() {
    let (p, s, receiver) = rig()
    var clock: UInt64 = 1000
    // Half a window takes far longer than the allowance to be read.
    transfer(p, s, total: 4 * Int(mib), clock: &clock, stepMs: 200)
    XCTAssertEqual(kp_mux_stream_recv_target(receiver()), 256 * kib)
    XCTAssertLessThanOrEqual(kp_mux_stream_send_window(s), 256 * kib,
                             "the sender may never have more than the small window outstanding")
  }

  /// The reader consumes at once but says it could not pass the bytes on
  /// (a caller's socket full): the reader, not the window, sets the pace.
  func testAReaderHeldBackStaysSmall() {
    let (p, s, receiver) = rig()
    var clock: UInt64 = 1000
    transfer(p, s, total: 4 * Int(mib), clock: &clock, stepMs: 0, held: true)
    XCTAssertEqual(kp_mux_stream_recv_target(receiver()), 256 * kib)
    XCTAssertLessThanOrEqual(kp_mux_stream_send_window(s), 256 * kib)
  }

  /// One fast half window is what any socket buffer swallows at the start:
  /// it earns nothing; the second one in a row doubles the window.
  func testGrowthNeedsTwoFastHalfWindowsInARow() {
    let (p, s, receiver) = rig()
    // The rig opened the stream at B's time 0; measure from 1000 on.
    var clock: UInt64 = 1000
    transfer(p, s, total: 128 * Int(kib), clock: &clock, stepMs: 0)
    XCTAssertEqual(kp_mux_stream_recv_target(receiver()), 256 * kib, "a half window since time 0 was slow")
    transfer(p, s, total: 128 * Int(kib), clock: &clock, stepMs: 0)
    XCTAssertEqual(kp_mux_stream_recv_target(receiver()), 256 * kib, "after one fast half window")
    transfer(p, s, total: 128 * Int(kib), clock: &clock, stepMs: 0)
    XCTAssertEqual(kp_mux_stream_recv_target(receiver()), 512 * kib, "after two")
  }

  func testTheBudgetCapsGrowthAndComesBackWhenTheStreamEnds() {
    kp_memory_budget_set(UInt64(768 * kib))
    let (p, s, receiver) = rig()
    var clock: UInt64 = 1000
    transfer(p, s, total: 16 * Int(mib), clock: &clock, stepMs: 0)
    // 256 KiB -> 512 KiB (256 drawn) -> 1 MiB (512 more: 768 in all); the
    // next doubling (1 MiB) does not fit.
    XCTAssertEqual(kp_mux_stream_recv_target(receiver()), 1 * mib)
    var limit: UInt64 = 0, used: UInt64 = 0
    kp_memory_budget_get(&limit, &used)
    XCTAssertEqual(used, UInt64(768 * kib))
    XCTAssertEqual(kp_mux_stream_reset(s), 0)
    p.pump()
    kp_memory_budget_get(&limit, &used)
    XCTAssertEqual(used, 0, "a finished stream gives back what it drew")
  }

  func testWindowStartOutsideItsRangeIsRefused() {
    var cfg = kp_mux_config_t()
    kp_mux_config_default(&cfg, 1)
    var cbs = kp_mux_callbacks_t()
    cbs.send = { _, _, _, _, _ in }
    var m: OpaquePointer?
    cfg.window = 1 * mib
    cfg.window_start = 2 * mib
    XCTAssertEqual(kp_mux_new(&m, &cfg, &cbs, nil), Int32(KP_EINVAL.rawValue))
    cfg.window_start = 128 * kib
    XCTAssertEqual(kp_mux_new(&m, &cfg, &cbs, nil), Int32(KP_EINVAL.rawValue))
  }
}
