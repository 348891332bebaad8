import Foundation
import KopilotCore
import XCTest

/// The loop thread: posted work runs there, in order, whoever posts it; one-
/// shot timers fire once, after their delay, unless cancelled.
final class LoopTests: XCTestCase {
  final class Recorder: @unchecked Sendable {
    let lock = NSLock()
    var items: [Int] = []
    var onLoopThread = true
    var loop: OpaquePointer?
    func add(_ v: Int) {
      lock.lock()
      items.append(v)
      lock.unlock()
    }
  }

  func testPostsRunOnTheLoopThreadInOrderPerPoster() throws {
    var l: OpaquePointer?
    XCTAssertEqual(kp_loop_new(&l), 0)
    // kp_loop_post may be called from any thread.
    nonisolated(unsafe) let loop = try XCTUnwrap(l)
    let rec = Recorder()
    rec.loop = loop
    let perThread = 2000
    DispatchQueue.concurrentPerform(iterations: 4) { t in
      for i in 0..<perThread {
        let box = Unmanaged.passRetained(Item(rec: rec, value: t * 1_000_000 + i)).toOpaque()
        XCTAssertEqual(kp_loop_post(loop, { arg in
          let item = Unmanaged<Item>.fromOpaque(arg!).takeRetainedValue()
          if kp_loop_is_current(item.rec.loop!) == 0 { item.rec.onLoopThread = false }
          item.rec.add(item.value)
        }, box), 0)
      }
    }
    kp_loop_free(loop)  // runs what was posted before returning
    XCTAssertEqual(rec.items.count, 4 * perThread)
    XCTAssertTrue(rec.onLoopThread)
    for t in 0..<4 {
      let mine = rec.items.filter { $0 / 1_000_000 == t }
      XCTAssertEqual(mine, (0..<perThread).map { t * 1_000_000 + $0 }, "thread \(t)'s posts out of order")
    }
  }

  final class Item {
    let rec: Recorder
    let value: Int
    init(rec: Recorder, value: Int) {
      self.rec = rec
      self.value = value
    }
  }

  func testTimersFireAfterTheirDelayAndCancelStopsThem() throws {
    var l: OpaquePointer?
    XCTAssertEqual(kp_loop_new(&l), 0)
    let loop = try XCTUnwrap(l)
    let rec = Recorder()
    let fired = DispatchSemaphore(value: 0)
    final class Ctx {
      let rec: Recorder
      let sem: DispatchSemaphore
      let value: Int
      init(_ r: Recorder, _ s: DispatchSemaphore, _ v: Int) {
        rec = r
        sem = s
        value = v
      }
    }
    // 60 ms and 20 ms: the shorter fires first whatever the start order.
    for (ms, v) in [(60, 2), (20, 1)] {
      let ctx = Unmanaged.passRetained(Ctx(rec, fired, v)).toOpaque()
      XCTAssertEqual(kp_timer_start(loop, UInt64(ms), { arg in
        let c = Unmanaged<Ctx>.fromOpaque(arg!).takeRetainedValue()
        c.rec.add(c.value)
        c.sem.signal()
      }, ctx, nil), 0)
    }
    // A third one, far in the future, is cancelled from the loop thread.
    final class CancelBox { var timer: OpaquePointer? }
    let cancelled = CancelBox()
    let ctx3 = Unmanaged.passRetained(Ctx(rec, fired, 3)).toOpaque()
    XCTAssertEqual(kp_timer_start(loop, 10_000, { arg in
      let c = Unmanaged<Ctx>.fromOpaque(arg!).takeRetainedValue()
      c.rec.add(c.value)
    }, ctx3, &cancelled.timer), 0)
    // Cancel on the loop thread, as the API asks.
    final class CancelCall {
      let t: OpaquePointer
      let sem = DispatchSemaphore(value: 0)
      var rc: Int32 = -1
      init(_ t: OpaquePointer) { self.t = t }
    }
    let call = CancelCall(try XCTUnwrap(cancelled.timer))
    XCTAssertEqual(kp_loop_post(loop, { arg in
      let c = Unmanaged<CancelCall>.fromOpaque(arg!).takeUnretainedValue()
      c.rc = kp_timer_cancel(c.t)
      c.sem.signal()
    }, Unmanaged.passUnretained(call).toOpaque()), 0)
    call.sem.wait()
    XCTAssertEqual(call.rc, 0)
    XCTAssertEqual(fired.wait(timeout: .now() + 5), .success)
    XCTAssertEqual(fired.wait(timeout: .now() + 5), .success)
    kp_loop_free(loop)
    Unmanaged<Ctx>.fromOpaque(ctx3).release()  // never ran: release its box
    XCTAssertEqual(rec.items, [1, 2])
  }
}
