import Foundation
import KopilotBase
import KopilotIO

/// Keeps one session to the hub up: reconnects with backoff and full jitter,
/// and logs each change of state once rather than every retry.
final class SessionSupervisor: Sendable {
  let session: AgentSession
  private let label: String
  private struct State {
    var backoff = Backoff()
    var up = false
    var reportedDown = false
    var stopping = false
  }
  private let state = Mutex(State())
  private let stopped = DispatchSemaphore(value: 0)

  init(index: Int, of total: Int, session: AgentSession) {
    self.session = session
    self.label = total > 1 ? "session \(index)/\(total): " : ""
    session.onState = { [unowned self] up, status in self.changed(up: up, status: status) }
  }

  func start() { session.connect() }

  private func changed(up isUp: Bool, status: Int32) {
    // What to do, decided under the lock; logged and scheduled after it.
    enum Then { case nothing, stopped, connected, lost(Double), unreachable(Double), retry(Double) }
    let then: Then = state.withLock { s in
      if s.stopping { return isUp ? .nothing : .stopped }
      if isUp {
        s.backoff.reset()
        defer {
          s.up = true
          s.reportedDown = false
        }
        return s.up ? .nothing : .connected
      }
      let delay = s.backoff.next()
      defer {
        s.up = false
        s.reportedDown = true
      }
      if s.up { return .lost(delay) }
      return s.reportedDown ? .retry(delay) : .unreachable(delay)
    }
    let delay: Double
    switch then {
    case .nothing: return
    case .stopped:
      stopped.signal()
      return
    case .connected:
      logLine("\(label)connected to the hub")
      return
    case .lost(let d):
      logLine("\(label)session to the hub ended (\(CoreError(code: status, context: "session"))); reconnecting")
      delay = d
    case .unreachable(let d):
      logLine("\(label)cannot reach the hub (\(CoreError(code: status, context: "connect"))); retrying with backoff")
      delay = d
    case .retry(let d): delay = d
    }
    DispatchQueue.global().asyncAfter(deadline: .now() + delay) { [session] in session.connect() }
  }

  func stop(graceMs: UInt64) {
    state.withLock { $0.stopping = true }
    session.shutdown(graceMs: graceMs)
  }

  func waitStopped(timeout: Double) { _ = stopped.wait(timeout: .now() + timeout) }
}
