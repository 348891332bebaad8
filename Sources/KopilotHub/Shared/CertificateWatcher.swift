import Foundation
import Logging

/// Polls a set of files (certificates and keys mounted from Secrets, which
/// the kubelet swaps when cert-manager renews them) and calls `onChange`
/// when their contents change. Contents, not modification times: a Secret
/// volume changes by swapping a symlink, which leaves the old files' times
/// alone.
public final class CertificateWatcher: @unchecked Sendable {
  // Safe: `last` is used by the timer's serial queue only (check()); the
  // rest never changes after init.
  private let files: [String]
  private let onChange: @Sendable () -> Void
  private let timer: DispatchSourceTimer
  private var last: [Data?]

  public init(files: [String], interval: TimeInterval = 30, onChange: @escaping @Sendable () -> Void) {
    self.files = files
    self.onChange = onChange
    last = files.map { FileManager.default.contents(atPath: $0) }
    timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "kopilot.cert-watcher"))
    timer.schedule(deadline: .now() + interval, repeating: interval)
    timer.setEventHandler { [weak self] in self?.check() }
    timer.resume()
  }

  /// Runs on the timer's queue only.
  func check() {
    let now = files.map { FileManager.default.contents(atPath: $0) }
    // A renewal writes certificate and key one after the other: act once
    // both read, never on a half-written pair (a missing file waits).
    guard now != last, !now.contains(where: { $0 == nil }) else { return }
    last = now
    onChange()
  }

  public func stop() { timer.cancel() }
}
