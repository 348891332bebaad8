import KopilotCore

/// A libuv loop on its own thread (the C core's `kp_loop_t`).
public final class Loop: @unchecked Sendable {
  // Safe: the handle never changes, and the C loop takes work from other
  // threads only through kp_loop_post, which is thread-safe.
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

  /// The NUL-terminated message a C call wrote into `buffer`.
  public static func message(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }

  public var description: String {
    let name = String(cString: kp_err_name(code))
    let msg = String(cString: kp_strerror(code))
    return detail.isEmpty ? "\(context): \(msg) (\(name))" : "\(context): \(detail)"
  }
}
