import Foundation
import XCTest

/// A fresh folder per test, removed afterwards.
func makeTempDir(_ file: StaticString = #file, _ line: UInt = #line) throws -> String {
  let dir = NSTemporaryDirectory() + "kopilothub-" + UUID().uuidString
  try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  return dir
}

func write(_ text: String, to path: String) throws {
  try text.write(toFile: path, atomically: true, encoding: .utf8)
}

/// Polls `condition` until it holds or `timeout` passes: reload tests wait
/// for the watcher without sleeping a fixed time.
func waitUntil(timeout: TimeInterval = 5, _ condition: () -> Bool) -> Bool {
  let end = Date() + timeout
  while Date() < end {
    if condition() { return true }
    usleep(10_000)
  }
  return condition()
}

final class Box<T>: @unchecked Sendable {
  private let lock = NSLock()
  private var v: T
  init(_ v: T) { self.v = v }
  var value: T {
    get { lock.lock(); defer { lock.unlock() }; return v }
    set { lock.lock(); v = newValue; lock.unlock() }
  }
}
