import KopilotCore

/// A libuv loop on its own thread (the C core's `kp_loop_t`).
public final class Loop: @unchecked Sendable {
  public let handle: OpaquePointer

  public init() throws {
    var l: OpaquePointer?
    let rc = kp_loop_new(&l)
    guard rc == 0, let l else { throw CoreError(code: rc, context: "starting the event loop") }
    handle = l
  }

  deinit { kp_loop_free(handle) }
}

/// An error code from the C core, with what was being done.
public struct CoreError: Error, CustomStringConvertible {
  public let code: Int32
  public let context: String
  public var detail: String = ""

  public init(code: Int32, context: String, detail: String = "") {
    self.code = code
    self.context = context
    self.detail = detail
  }

  public var description: String {
    let name = String(cString: kp_err_name(code))
    let msg = String(cString: kp_strerror(code))
    return detail.isEmpty ? "\(context): \(msg) (\(name))" : "\(context): \(detail)"
  }
}

/// Compares two strings in time that depends only on their lengths, so a
/// token check does not leak how many leading bytes matched.
public func constantTimeEquals(_ a: String, _ b: String) -> Bool {
  let x = Array(a.utf8), y = Array(b.utf8)
  var diff = UInt8(truncatingIfNeeded: x.count ^ y.count)
  let n = max(x.count, y.count)
  for i in 0..<n {
    let p = i < x.count ? x[i] : 0
    let q = i < y.count ? y[i] : 0
    diff |= p ^ q
  }
  return diff == 0
}
