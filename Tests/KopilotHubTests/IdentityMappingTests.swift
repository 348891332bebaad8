import Foundation
import KopilotCore
import KopilotHub
import XCTest

// The caller identity a member sees (CallerIdentity.swift): each mode's
// mapping, what never passes (system: groups and users), the header lines
// and their escaping, and that every line the mapping makes is one the C
// core accepts (kp_http_check_hub_fields).
final class IdentityMappingTests: XCTestCase {
  let alice = UserInfo(name: "alice", uid: "u-1", groups: ["dev", "system:masters", "system:authenticated", "ops"],
                       extra: ["scopes": ["view", "edit"], "authentication.kubernetes.io/pod-name": ["p-1"]])

  func testImpersonatePrefixesEveryNameAndDropsSystemGroups() throws {
    let m = try XCTUnwrap(IdentityMapping().member(for: alice, mode: nil))
    XCTAssertEqual(m.user, "kopilot:alice")
    XCTAssertEqual(m.groups, ["kopilot:callers", "kopilot:dev", "kopilot:ops"])
    XCTAssertEqual(m.uid, "u-1")
    XCTAssertEqual(m.extra, alice.extra)
  }

  func testAHostSystemUserIsPrefixedUnderImpersonate() throws {
    let sa = UserInfo(name: "system:serviceaccount:ci:deployer", groups: ["system:serviceaccounts"])
    let m = try XCTUnwrap(IdentityMapping().member(for: sa, mode: .impersonate))
    XCTAssertEqual(m.user, "kopilot:system:serviceaccount:ci:deployer")
    XCTAssertEqual(m.groups, ["kopilot:callers"])
  }

  func testPassthroughKeepsNamesButNotSystemOnes() throws {
    var mapping = IdentityMapping()
    let m = try XCTUnwrap(mapping.member(for: alice, mode: .passthrough))
    XCTAssertEqual(m.user, "alice")
    XCTAssertEqual(m.groups, ["kopilot:callers", "dev", "ops"])
    mapping.passthroughSystemGroups = ["system:masters"]
    XCTAssertEqual(try mapping.member(for: alice, mode: .passthrough)?.groups, ["kopilot:callers", "dev", "system:masters", "ops"])
    XCTAssertThrowsError(try mapping.member(for: UserInfo(name: "system:admin"), mode: .passthrough)) { e in
      XCTAssertTrue("\(e)".contains("system identity"), "\(e)")
    }
  }

  func testAgentModeSendsNoIdentity() throws {
    XCTAssertNil(try IdentityMapping().member(for: alice, mode: .agent))
    var m = IdentityMapping()
    m.defaultMode = .agent
    XCTAssertNil(try m.member(for: alice, mode: nil), "a cluster without a mode takes the default")
    XCTAssertNotNil(try m.member(for: alice, mode: .impersonate), "a cluster's own mode wins")
  }

  func testPrefixAndCallersGroupAreSettings() throws {
    var mapping = IdentityMapping()
    mapping.prefix = "hub-eu:"
    mapping.callersGroup = "hub-eu:tunnel"
    let m = try XCTUnwrap(mapping.member(for: UserInfo(name: "bob", groups: ["dev", "dev"]), mode: nil))
    XCTAssertEqual(m.user, "hub-eu:bob")
    XCTAssertEqual(m.groups, ["hub-eu:tunnel", "hub-eu:dev"], "a group once, however often the host lists it")
  }

  func testFieldsAreTheImpersonationHeaders() throws {
    let m = try XCTUnwrap(IdentityMapping().member(for: alice, mode: nil))
    XCTAssertEqual(m.fields, """
      Impersonate-User: kopilot:alice\r
      Impersonate-Group: kopilot:callers\r
      Impersonate-Group: kopilot:dev\r
      Impersonate-Group: kopilot:ops\r
      Impersonate-Uid: u-1\r
      Impersonate-Extra-authentication.kubernetes.io%2Fpod-name: p-1\r
      Impersonate-Extra-scopes: view\r
      Impersonate-Extra-scopes: edit\r

      """)
    XCTAssertEqual(check(m.fields), 0)
  }

  func testExtraKeysAreEscapedAsClientGoEscapesThem() {
    XCTAssertEqual(MemberIdentity.extraKey("scopes"), "scopes")
    XCTAssertEqual(MemberIdentity.extraKey("example.org/a b"), "example.org%2Fa%20b")
    XCTAssertEqual(MemberIdentity.extraKey("100%"), "100%25", "'%' itself is escaped, so decoding gives the key back")
    XCTAssertEqual(MemberIdentity.extraKey("x:y\u{e9}"), "x%3Ay%C3%A9")
    // Every escaped key is a token: a header name the C core takes.
    for key in ["a/b", "c d", "é", "%%", ":", "\r\nHost: x"] {
      let line = "Impersonate-Extra-\(MemberIdentity.extraKey(key)): v\r\n"
      XCTAssertEqual(check("Impersonate-User: u\r\n" + line), 0, key)
    }
  }

  func testValuesAHeaderCannotCarryAreRefusedNotSent() {
    for bad in ["a\r\nHost: evil", "a\nb", "a\u{0}", " lead", "trail ", "tab\t"] {
      for user in [UserInfo(name: bad), UserInfo(name: "u", uid: bad), UserInfo(name: "u", groups: [bad]),
                   UserInfo(name: "u", extra: ["k": [bad]])] {
        // passthrough: names as given, so every one of these is refused.
        XCTAssertThrowsError(try IdentityMapping().member(for: user, mode: .passthrough), "\(user) \(bad.debugDescription)")
      }
      // impersonate prefixes names (so " lead" becomes "kopilot: lead",
      // which a header carries unchanged); the rest is still refused.
      if bad != " lead" {
        XCTAssertThrowsError(try IdentityMapping().member(for: UserInfo(name: bad), mode: .impersonate), bad.debugDescription)
      }
      XCTAssertThrowsError(try IdentityMapping().member(for: UserInfo(name: "u", uid: bad), mode: .impersonate), bad.debugDescription)
    }
  }

  func testModesParseAndExplainTheirField() {
    XCTAssertEqual(IdentityMode(parsing: "passthrough"), .passthrough)
    XCTAssertNil(IdentityMode(parsing: "Impersonate"))
    XCTAssertNil(IdentityMode.problem(nil))
    XCTAssertNil(IdentityMode.problem("agent"))
    XCTAssertEqual(IdentityMode.problem("admin"), "identity must be one of impersonate, passthrough, agent, not \"admin\"")
  }

  private func check(_ fields: String) -> Int32 {
    var f = fields
    return f.withUTF8 { b in b.withMemoryRebound(to: CChar.self) { kp_http_check_hub_fields($0.baseAddress, $0.count) } }
  }
}
