#if KOPILOT_TSAN
import Glibc

/// In ThreadSanitizer builds only (KOPILOT_TSAN=1, Tests/run.sh), this
/// `Mutex` shadows Synchronization's for every module that imports
/// KopilotBase. On Linux, Synchronization's Mutex hands a lock that stayed
/// contended past its spin to the waiter inside the kernel (a
/// priority-inheritance futex), where TSan cannot see it, so two accesses
/// made under the same lock could be reported as a race. This one is a
/// pthread mutex, which TSan intercepts. Same calls (`init`, `withLock`),
/// so the code under test is the code that ships, with only the lock
/// swapped. Other builds use Synchronization's Mutex.
public final class Mutex<Value>: @unchecked Sendable {
  // Safe: `value` is only touched between pthread_mutex_lock and _unlock.
  private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
  private var value: Value

  public init(_ initialValue: Value) {
    value = initialValue
    pthread_mutex_init(lock, nil)
  }

  deinit {
    pthread_mutex_destroy(lock)
    lock.deallocate()
  }

  public func withLock<Result, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result {
    pthread_mutex_lock(lock)
    defer { pthread_mutex_unlock(lock) }
    return try body(&value)
  }
}
#else
@_exported import Synchronization
#endif
