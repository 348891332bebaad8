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

  /// The CPUs this process may use: its affinity mask, capped by its cgroup
  /// CPU quota (so a pod with `limits.cpu: 4` gets 4). The default number of
  /// loops for the hub and the agent.
  public static var availableCPUs: Int { Int(kp_cpus_available()) }
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
/// token check does not leak how many leading bytes matched. The length
/// difference is folded in whole: folding it into a byte, as this once did,
/// made a token followed by 256 NUL bytes compare equal to the token.
public func constantTimeEquals(_ a: String, _ b: String) -> Bool {
  let x = Array(a.utf8), y = Array(b.utf8)
  // Every byte of the longer input is read, the missing ones of the shorter
  // read as 0; a difference in length is then carried by `lengths`.
  var diff: UInt8 = 0
  let n = max(x.count, y.count)
  for i in 0..<n {
    let p = i < x.count ? x[i] : 0
    let q = i < y.count ? y[i] : 0
    diff |= p ^ q
  }
  let lengths = UInt(bitPattern: x.count) ^ UInt(bitPattern: y.count)
  return diff == 0 && lengths == 0
}
