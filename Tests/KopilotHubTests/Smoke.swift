import XCTest
@testable import KopilotHub
final class SmokeTests: XCTestCase { func testNothing() {} }
