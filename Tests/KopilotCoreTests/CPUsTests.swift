import Foundation
import KopilotCore
import XCTest

/// The default loop count: the cgroup quota files as the kernel writes them
/// (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`).
final class CPUsTests: XCTestCase {
  private var dir: URL!

  override func setUpWithError() throws {
    dir = FileManager.default.temporaryDirectory.appendingPathComponent("cpus-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
  }

  override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

  private func write(_ name: String, _ text: String) throws {
    try text.write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8)
  }

  private var quota: Int32 { kp_cgroup_cpu_quota(dir.path) }

  func testNoFilesMeansNoQuota() { XCTAssertEqual(quota, 0) }

  func testCgroupV2() throws {
    try write("cpu.max", "max 100000\n")
    XCTAssertEqual(quota, 0, "no limit")
    try write("cpu.max", "400000 100000\n")
    XCTAssertEqual(quota, 4, "limits.cpu: 4")
    try write("cpu.max", "150000 100000\n")
    XCTAssertEqual(quota, 2, "1500m rounds up")
    try write("cpu.max", "10000 100000\n")
    XCTAssertEqual(quota, 1, "100m is still one loop")
    try write("cpu.max", "garbage\n")
    XCTAssertEqual(quota, 0, "unreadable: no quota")
  }

  func testCgroupV1() throws {
    try write("cpu.cfs_quota_us", "-1\n")
    try write("cpu.cfs_period_us", "100000\n")
    XCTAssertEqual(quota, 0, "-1: no limit")
    try write("cpu.cfs_quota_us", "300000\n")
    XCTAssertEqual(quota, 3)
    try write("cpu.cfs_period_us", "0\n")
    XCTAssertEqual(quota, 0, "a zero period is no quota, not a division by zero")
  }

  func testAvailableIsAtLeastOneAndAtMostTheAffinityMask() {
    let n = kp_cpus_available()
    XCTAssertGreaterThanOrEqual(n, 1)
    XCTAssertLessThanOrEqual(Int(n), ProcessInfo.processInfo.activeProcessorCount)
  }
}
