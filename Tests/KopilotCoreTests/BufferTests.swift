import KopilotCore
import XCTest

final class BufferTests: XCTestCase {
  func testChunkIsPooledAndReused() {
    let a = kp_chunk_new(0)!
    XCTAssertEqual(kp_chunk_capacity(a), Int(KP_CHUNK_SIZE))
    let p = kp_chunk_data(a)!
    kp_chunk_ref(a)
    kp_chunk_unref(a)
    p[0] = 42  // still ours: one reference left
    kp_chunk_unref(a)
    // Same thread, standard size: the pooled chunk comes back.
    let b = kp_chunk_new(100)!
    XCTAssertEqual(kp_chunk_data(b), p)
    kp_chunk_unref(b)
  }

  func testLargeChunksAreNotPooled() {
    let before = kp_chunk_live_count()
    let c = kp_chunk_new(Int(KP_CHUNK_SIZE) * 4)!
    XCTAssertGreaterThanOrEqual(kp_chunk_capacity(c), Int(KP_CHUNK_SIZE) * 4)
    XCTAssertEqual(kp_chunk_live_count(), before + 1)
    kp_chunk_unref(c)
    XCTAssertEqual(kp_chunk_live_count(), before)
  }

  func testErrorNamesCoverEveryCode() {
    XCTAssertEqual(String(cString: kp_err_name(Int32(KP_EPROTO.rawValue))), "KP_EPROTO")
    XCTAssertEqual(String(cString: kp_strerror(Int32(KP_EAGAIN.rawValue))), "need more input or would block")
    XCTAssertEqual(String(cString: kp_strerror(0)), "success")
    // Not ours: libuv's table answers.
    XCTAssertEqual(String(cString: kp_err_name(-104)), "ECONNRESET")
  }
}
