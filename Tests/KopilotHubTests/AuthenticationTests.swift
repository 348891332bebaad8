import XCTest
@testable import KopilotHub

final class AuthenticationTests: XCTestCase {
  func testTokenFile() throws {
    let csv = """
      # callers
      abcdefgh12345678,alice,1001,"devs,ops"

        # indented comment
      tok-en.with_all~chars+/=,bob,1002
      zzzzzzzzzzzzzzzz,carol,,"single"\r
      yyyyyyyyyyyyyyyy,"dave, jr",1004,"  spaced , ,devs,devs"
      """
    let entries = try TokenFile.parse(csv)
    XCTAssertEqual(entries.map(\.user.name), ["alice", "bob", "carol", "dave, jr"])
    XCTAssertEqual(entries.map(\.line), [2, 5, 6, 7])
    XCTAssertEqual(entries[0].user.groups, ["devs", "ops"])
    XCTAssertEqual(entries[0].user.uid, "1001")
    XCTAssertEqual(entries[1].user.groups, [])
    XCTAssertEqual(entries[2].user.groups, ["single"])
    XCTAssertEqual(entries[3].user.groups, ["spaced", "devs"])

    let table = TokenTable(entries)
    let alice = table.user(for: "abcdefgh12345678")
    XCTAssertEqual(alice?.name, "alice")
    XCTAssertEqual(alice?.groups, ["devs", "ops", "system:authenticated"])
    XCTAssertEqual(table.user(for: "tok-en.with_all~chars+/=")?.groups, ["system:authenticated"])
    XCTAssertNil(table.user(for: "abcdefgh1234567"))
    XCTAssertNil(table.user(for: ""))
  }

  func testTokenFileMalformed() {
    let rows: [(note: String, csv: String, line: Int, code: HubError.Code, expect: String)] = [
      ("two columns", "# c\ntok,alice\n", 2, .invalid, "found 2 columns"),
      ("one column", "tok\n", 1, .invalid, "found 1 column"),
      ("five columns", "tok,a,1,g,extra\n", 1, .invalid, "at most 4 columns"),
      ("unquoted groups", "tok,a,1,g1,g2\n", 1, .invalid, "quote the groups column"),
      ("empty token", "\n,alice,1\n", 2, .invalid, "token column is empty"),
      ("empty user", "tok,,1\n", 1, .invalid, "user column is empty"),
      ("space in token", "to k,a,1\n", 1, .invalid, "may hold only"),
      ("open quote", "tok,a,1,\"g1,g2\n", 1, .syntax, "not closed"),
      ("text after quote", "tok,\"a\"b,1\n", 1, .syntax, "after a closing quote"),
      ("bare quote", "tok,a\"b,1\n", 1, .syntax, "bare quote"),
      ("duplicate token", "tok,a,1\n\n# x\ntok,b,2\n", 4, .duplicate, "already on line 1"),
    ]
    for r in rows {
      XCTAssertThrowsError(try TokenFile.parse(r.csv, file: "t.csv"), r.note) { e in
        guard let e = e as? HubError else { return XCTFail("\(r.note): \(e)") }
        XCTAssertEqual(e.code, r.code, r.note)
        XCTAssertEqual(e.line, r.line, r.note)
        XCTAssertTrue(e.description.hasPrefix("t.csv:\(r.line): "), "\(r.note): \(e)")
        XCTAssertTrue(e.description.contains(r.expect), "\(r.note): \"\(e)\" lacks \"\(r.expect)\"")
      }
    }
  }

  func testBearerHeader() {
    let good: [(String, String)] = [
      ("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER a.b-c_d~e+f/g==", "a.b-c_d~e+f/g=="),
      ("Bearer eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJrIn0.c2ln", "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJrIn0.c2ln"),
    ]
    for (h, t) in good { XCTAssertEqual(try? BearerToken.parse(authorization: h).get(), t, h) }
    let bad: [(String?, AuthenticationError.Code, String)] = [
      (nil, .missingCredentials, "no credentials"),
      ("", .missingCredentials, "no credentials"),
      ("Basic YWxpY2U6cHc=", .malformedHeader, "Bearer scheme (got \"Basic\")"),
      ("Token abc", .malformedHeader, "Bearer scheme"),
      ("abc", .malformedHeader, "Bearer scheme"),
      ("Bearerabc", .malformedHeader, "Bearer scheme"),
      ("Bearer", .malformedHeader, "empty bearer token"),
      ("Bearer ", .malformedHeader, "empty bearer token"),
      ("Bearer  abc", .malformedHeader, "one space"),
      ("Bearer\tabc", .malformedHeader, "one space"),
      ("Bearer abc def", .malformedHeader, "contains a space"),
      ("Bearer abc,Basic x", .malformedHeader, "cannot hold"),
      ("Bearer a=b", .malformedHeader, "cannot hold"),
      ("Bearer =abc", .malformedHeader, "cannot hold"),
    ]
    for (h, code, msg) in bad {
      switch BearerToken.parse(authorization: h) {
      case .success(let t): XCTFail("\(String(describing: h)) gave \(t)")
      case .failure(let e):
        XCTAssertEqual(e.code, code, String(describing: h))
        XCTAssertTrue(e.message.contains(msg), "\(String(describing: h)): \(e.message)")
      }
    }
  }

  func testAuthenticatorProtocol() async throws {
    let dir = try makeTempDir()
    let path = dir + "/tokens.csv"
    try write("s3cr3ts3cr3ts3cr3t,alice,1,\"devs\"\n", to: path)
    let a: Authenticator = try TokenFileAuthenticator(path: path, pollInterval: nil)
    let u = try await a.authenticate(bearerToken: "s3cr3ts3cr3ts3cr3t")
    XCTAssertEqual(u, UserInfo(name: "alice", uid: "1", groups: ["devs", "system:authenticated"]))
    do {
      _ = try await a.authenticate(bearerToken: "nope")
      XCTFail("accepted a wrong token")
    } catch let e as AuthenticationError {
      XCTAssertEqual(e.code, .invalidToken)
    }
  }
}
