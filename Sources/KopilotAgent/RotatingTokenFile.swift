import Foundation
import KopilotBase

/// The API server token's file (a projected service-account token, which
/// the kubelet rotates), read again now and then.
final class RotatingTokenFile: Sendable {
  let path: String
  private let last = Mutex<String?>(nil)

  init(path: String) { self.path = path }

  /// The token when it differs from the one read last time, else nil.
  func readIfChanged() -> String? {
    guard let s = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
    let t = s.trimmingCharacters(in: .whitespacesAndNewlines)
    return last.withLock { last in
      if t == last { return nil }
      last = t
      return t
    }
  }
}
