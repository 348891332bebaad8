import Foundation
import KopilotCore
import KopilotTestSupport
import XCTest

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// Our mux against the real hashicorp/yamux (Tests/Interop/yamuxpeer), which
/// speaks yamux over its stdin/stdout. Both sides open streams with random
/// payloads that the other side echoes; the Go peer checks its echoes by
/// SHA-256 and exits 0, we check ours the same way.
final class MuxInteropTests: XCTestCase {
  // XCTest runs this class's tests one at a time, on one thread.
  nonisolated(unsafe) private static var peerPath: String?
  nonisolated(unsafe) private static var buildError: String?
  private static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()

  private static func findGo() -> String? {
    var dirs = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
    dirs += ["/usr/lib/go/bin", "/usr/local/go/bin"]
    for d in dirs where FileManager.default.isExecutableFile(atPath: d + "/go") { return d + "/go" }
    return nil
  }

  /// Builds the Go peer once, offline, in GOPATH mode against the Debian
  /// package golang-github-hashicorp-yamux-dev.
  private func peer() throws -> String {
    if let p = Self.peerPath { return p }
    if let e = Self.buildError { throw XCTSkip(e) }
    guard let go = Self.findGo() else {
      Self.buildError = "go is not installed: the yamux interop tests need golang-go and "
        + "golang-github-hashicorp-yamux-dev (Tests/setup-debian.sh installs them)"
      throw XCTSkip(Self.buildError!)
    }
    let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("kopilot-yamuxpeer-\(getpid())")
    try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    let out = tmp.appendingPathComponent("yamuxpeer").path
    let p = Process()
    p.executableURL = URL(fileURLWithPath: go)
    p.arguments = ["build", "-o", out, "./Tests/Interop/yamuxpeer"]
    p.currentDirectoryURL = Self.root
    var env = ProcessInfo.processInfo.environment
    env["GO111MODULE"] = "off"
    env["GOPATH"] = "/usr/share/gocode:" + tmp.path
    env["GOFLAGS"] = ""
    env["GOCACHE"] = tmp.appendingPathComponent("cache").path
    env["GOPROXY"] = "off"
    p.environment = env
    let errPipe = Pipe()
    p.standardError = errPipe
    try p.run()
    let msg = String(decoding: errPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    guard p.terminationStatus == 0 else {
      XCTFail("building the Go yamux peer failed: \(msg)")
      throw XCTSkip("Go yamux peer did not build")
    }
    Self.peerPath = out
    return out
  }

  /// Bytes read from the peer's stdout on a reader thread, handed to the
  /// test thread under a lock.
  final class Inbox: @unchecked Sendable {
    let cond = NSCondition()
    var chunks: [(OpaquePointer, Int)] = []
    var eof = false
  }

  final class EchoFlow {
    var pending: [UInt8] = []
    var eof = false
    var finSent = false
  }

  private func run(server: Bool, weOpen: Int, theyOpen: Int, goWindow: Int = 256 * 1024,
                   ourWindow: UInt32 = 256 * 1024, firstFrame: [UInt8]? = nil) throws {
    let path = try peer()
    signal(SIGPIPE, SIG_IGN)
    let proc = Process()
    proc.executableURL = URL(fileURLWithPath: path)
    proc.arguments = ["-role", server ? "client" : "server", "-open", "\(theyOpen)", "-expect", "\(weOpen)",
                      "-seed", "\(Int.random(in: 1...1_000_000))", "-window", "\(goWindow)"]
    let inPipe = Pipe(), outPipe = Pipe()
    let errURL = FileManager.default.temporaryDirectory.appendingPathComponent("yamuxpeer-\(getpid())-\(UUID()).log")
    _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
    let errFile = try FileHandle(forWritingTo: errURL)
    defer { try? FileManager.default.removeItem(at: errURL) }
    proc.standardInput = inPipe
    proc.standardOutput = outPipe
    proc.standardError = errFile
    try proc.run()
    let stdinFD = inPipe.fileHandleForWriting.fileDescriptor
    let stdoutFD = outPipe.fileHandleForReading.fileDescriptor

    let inbox = Inbox()
    let reader = Thread {
      while true {
        let c = kp_chunk_new(0)!
        let n = read(stdoutFD, kp_chunk_data(c), kp_chunk_capacity(c))
        if n <= 0 {
          kp_chunk_unref(c)
          if n < 0 && errno == EINTR { continue }
          inbox.cond.lock(); inbox.eof = true; inbox.cond.signal(); inbox.cond.unlock()
          return
        }
        inbox.cond.lock(); inbox.chunks.append((c, n)); inbox.cond.signal(); inbox.cond.unlock()
      }
    }
    reader.start()

    let us = MuxPeer(server: server) { cfg in
      cfg.window = ourWindow
      cfg.keepalive_ms = 300
      cfg.keepalive_timeout_ms = 10_000
    }
    var writeFailed = false
    us.onSend = { c, n in
      let base = kp_chunk_data(c)!
      var off = 0
      while off < n && !writeFailed {
        let r = write(stdinFD, base + off, n - off)
        if r < 0 { if errno == EINTR { continue }; writeFailed = true; break }
        off += r
      }
      kp_chunk_unref(c)
    }

    // Random payloads are slices of one random pool.
    let poolSize = 640 * 1024
    let pool = UnsafeMutableRawBufferPointer.allocate(byteCount: poolSize, alignment: 16)
    defer { pool.deallocate() }
    var rng = SystemRandomNumberGenerator()
    for i in stride(from: 0, to: poolSize, by: 8) { pool.storeBytes(of: rng.next() as UInt64, toByteOffset: i, as: UInt64.self) }

    var echo: [UInt32: EchoFlow] = [:]  // streams the Go side opened
    var ours: [UInt32: MuxFlow] = [:]  // streams we opened
    var handles: [UInt32: OpaquePointer] = [:]
    var inboundDone = 0
    var statuses: [UInt32: Int32] = [:]

    func flushEcho(_ s: OpaquePointer, _ f: EchoFlow) {
      while !f.pending.isEmpty {
        let n = f.pending.withUnsafeBufferPointer { kp_mux_stream_write(s, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        f.pending.removeFirst(Int(n))
        // Only echoed bytes are consumed: the Go writer waits for us.
        kp_mux_stream_consume(s, Int(n))
      }
      if f.pending.isEmpty && f.eof && !f.finSent {
        f.finSent = true
        XCTAssertEqual(kp_mux_stream_close(s), 0)
      }
    }
    func pushOurs(_ s: OpaquePointer, _ f: MuxFlow) {
      while !f.finSent {
        let left = f.payload.count - f.sentBytes
        if left > 0 {
          let base = f.payload.baseAddress!.assumingMemoryBound(to: UInt8.self)
          let n = kp_mux_stream_write(s, base + f.sentBytes, min(left, 100 * 1024))
          if n <= 0 { return }
          f.sentBytes += Int(n)
        } else {
          f.finSent = true
          XCTAssertEqual(kp_mux_stream_close(s), 0)
        }
      }
    }
    us.onStream = { s in
      let id = kp_mux_stream_id(s)
      XCTAssertEqual(kp_mux_stream_accept(s), 0)
      echo[id] = EchoFlow()
      handles[id] = s
    }
    us.onData = { s, d in
      let id = kp_mux_stream_id(s)
      if let f = echo[id] {
        f.pending += d
        flushEcho(s, f)
      } else if let f = ours[id] {
        kpt_sha256_update(f.rx, d.baseAddress, d.count)
        f.rxBytes += d.count
        kp_mux_stream_consume(s, d.count)
      }
    }
    us.onEof = { s in
      let id = kp_mux_stream_id(s)
      if let f = echo[id] {
        f.eof = true
        flushEcho(s, f)
      } else if let f = ours[id] {
        var dg = [UInt8](repeating: 0, count: 32)
        kpt_sha256_final(f.rx, &dg)
        f.rx = nil
        f.rxDigest = dg
      }
    }
    us.onWritable = { s in
      let id = kp_mux_stream_id(s)
      if let f = echo[id] { flushEcho(s, f) } else if let f = ours[id] { pushOurs(s, f) }
    }
    us.onStreamClose = { s, st in
      let id = kp_mux_stream_id(s)
      statuses[id] = st
      handles[id] = nil
      if echo[id] != nil { inboundDone += 1 }
    }

    func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds / 1_000_000 }
    _ = kp_mux_tick(us.m, now())
    for _ in 0..<weOpen {
      let s = us.open()
      let f = MuxFlow(id: kp_mux_stream_id(s))
      let len = Int.random(in: 0...(300 * 1024))
      let off = Int.random(in: 0...(poolSize - len))
      f.payload = UnsafeRawBufferPointer(rebasing: pool[off..<(off + len)])
      ours[f.id] = f
      handles[f.id] = s
      pushOurs(s, f)
    }

    let deadline = Date().addingTimeInterval(60)
    var sawEOF = false
    var firstBytes: [UInt8] = []
    while Date() < deadline {
      inbox.cond.lock()
      while inbox.chunks.isEmpty && !inbox.eof {
        if !inbox.cond.wait(until: Date().addingTimeInterval(0.1)) { break }
      }
      let batch = inbox.chunks
      inbox.chunks = []
      sawEOF = inbox.eof
      inbox.cond.unlock()
      for (c, n) in batch {
        if firstBytes.count < 12 {
          firstBytes += UnsafeBufferPointer(start: kp_chunk_data(c), count: min(n, 12 - firstBytes.count))
        }
        if kp_mux_is_closed(us.m) == 0 {
          let rc = kp_mux_feed(us.m, kp_chunk_data(c), n, c)
          XCTAssertEqual(rc, 0, "kp_mux_feed: \(String(cString: kp_err_name(rc)))")
        }
        kp_chunk_unref(c)
      }
      _ = kp_mux_tick(us.m, now())
      if sawEOF && batch.isEmpty { break }
    }
    XCTAssertTrue(sawEOF, "timed out waiting for the Go peer")
    XCTAssertFalse(writeFailed)
    // The peer closed its side (stdout); closing ours (its stdin) lets its
    // session's reader finish, and then it exits.
    try? inPipe.fileHandleForWriting.close()
    let exitBy = Date().addingTimeInterval(10)
    while proc.isRunning && Date() < exitBy { usleep(10_000) }
    if proc.isRunning { proc.terminate() }
    proc.waitUntilExit()
    reader.cancel()
    try? errFile.close()
    let log = (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
    XCTAssertEqual(proc.terminationStatus, 0, "Go peer failed:\n\(log)")
    XCTAssertTrue(log.contains("yamuxpeer: ok"), log)
    XCTAssertNil(us.closeStatus, "our session closed: \(us.logs)")
    if let firstFrame {
      // Go opens its streams from several goroutines, so which SYN reaches
      // the wire first is up to its scheduler: the stream id may be any odd
      // (client) id; everything else is byte for byte the vector.
      let got = Array(firstBytes), want = Array(firstFrame)
      XCTAssertEqual(got.count, 12, "the first frame Go sent")
      if got.count == 12 && want.count == 12 {
        XCTAssertEqual(Array(got[0..<4]) + Array(got[8..<12]), Array(want[0..<4]) + Array(want[8..<12]),
                       "the first frame Go sent: \(got)")
        let id = got[4..<8].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        XCTAssertEqual(id % 2, 1, "a client's stream id is odd: \(id)")
      }
    }
    XCTAssertEqual(inboundDone, theyOpen)
    XCTAssertEqual(echo.count, theyOpen)
    for (id, f) in ours {
      XCTAssertEqual(statuses[id], 0, "stream \(id)")
      var want = [UInt8](repeating: 0, count: 32)
      kpt_sha256(f.payload.baseAddress, f.payload.count, &want)
      XCTAssertEqual(f.rxBytes, f.payload.count, "stream \(id)")
      XCTAssertEqual(f.rxDigest, want, "stream \(id)")
    }
    XCTAssertEqual(kp_mux_num_streams(us.m), 0)
    XCTAssertFalse(us.logs.contains { $0.contains("protocol error") }, "\(us.logs)")
  }

  /// The vector for the frame the Go client sends first.
  private func vector(_ name: String) throws -> [UInt8] {
    try XCTUnwrap(MuxVector.load().first { $0.name == name }).header
  }

  func testOursAsServerWithGoClient() throws {
    try run(server: true, weOpen: 40, theyOpen: 40, firstFrame: vector("syn-window-update"))
  }

  func testOursAsClientWithGoServer() throws {
    try run(server: false, weOpen: 40, theyOpen: 40)
  }

  func testLargerWindowsBothWays() throws {
    // Go's first SYN announces its 1 MiB window: as the vector, on stream 1.
    var syn = try vector("syn-window-1mib")
    syn[7] = 1
    try run(server: true, weOpen: 20, theyOpen: 20, goWindow: 1024 * 1024, ourWindow: 512 * 1024, firstFrame: syn)
  }
}
