import Foundation
import KopilotCore
import XCTest

// Tests for the head rebuild a proxy hop does (kp_http_build_request,
// kp_http_connection_names_protected, kp_http_is_identity_header): the
// oracle for each is the next hop's own parse of the rebuilt head, so what
// the next hop frames and sees is checked, not how the bytes look.

private func headers(_ h: kp_http_head_t) -> [(String, String)] {
  withUnsafeBytes(of: h.headers) { raw in
    let hs = raw.bindMemory(to: kp_http_header_t.self)
    return (0..<h.num_headers).map { i in
      let x = hs[i]
      let n = String(decoding: UnsafeRawBufferPointer(start: x.name, count: x.name_len), as: UTF8.self)
      let v = String(decoding: UnsafeRawBufferPointer(start: x.value, count: x.value_len), as: UTF8.self)
      return (n, v)
    }
  }
}

/// What the next hop parsed from a rebuilt head, copied out while the
/// bytes the parser pointed into are alive.
private struct NextHop {
  var flags: UInt32
  var content_length: Int64
  var fields: [(String, String)]
}

/// Rebuilds `request` as the hub does (drop list and an extra line), then
/// parses the result as the next hop would.
private func rebuild(_ request: String, drop: [String] = ["authorization", KP_HTTP_DROP_IDENTITY],
                     extra: String = "X-Forwarded-Proto: https\r\n") -> (text: String, head: NextHop)? {
  let raw = Array(request.utf8)
  var head = kp_http_head_t()
  // The head points into `raw`, which stays alive through the rebuild.
  return raw.withUnsafeBufferPointer { buf -> (String, NextHop)? in
    guard kp_http_parse_request(buf.baseAddress, buf.count, 0, &head) > 0 else { return nil }
    let cDrop = drop.map { strdup($0) } + [nil]
    defer { cDrop.forEach { free($0) } }
    var outLen = 0
    let out: UnsafeMutablePointer<UInt8>? = cDrop.map { UnsafePointer($0) }.withUnsafeBufferPointer { d in
      extra.withCString { e in
        kp_http_build_request(&head, head.target, head.target_len, d.baseAddress, e, strlen(e), &outLen)
      }
    }
    guard let out else { return nil }
    defer { free(out) }
    // The parse points into `out`, alive until the deferred free.
    var next = kp_http_head_t()
    guard Int(kp_http_parse_request(out, outLen, 0, &next)) == outLen else { return nil }
    let hop = NextHop(flags: next.flags, content_length: next.content_length, fields: headers(next))
    return (String(decoding: UnsafeBufferPointer(start: out, count: outLen), as: UTF8.self), hop)
  }
}

final class HeadRebuildTests: XCTestCase {
  /// The smuggling shape of the security review: Content-Length named in
  /// Connection. Whatever a hop does with the request, the rebuilt head
  /// must frame the body with the length this hop parsed.
  func testFramingIsWrittenFromWhatWasParsed() throws {
    let cases: [(String, Int64?, Bool)] = [
      ("POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 76\r\n\r\n", 76, false),
      ("POST /a HTTP/1.1\r\nHost: h\r\ncontent-length: 5, 5\r\n\r\n", 5, false),
      ("POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", nil, true),
      ("POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", nil, true),
      ("GET /a HTTP/1.1\r\nHost: h\r\n\r\n", nil, false),
      ("GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", 0, false),
    ]
    for (request, length, chunked) in cases {
      guard let (text, next) = rebuild(request) else { return XCTFail("no rebuild: \(request.debugDescription)") }
      XCTAssertEqual(next.flags & UInt32(KP_HTTP_F_CHUNKED) != 0, chunked, text)
      XCTAssertEqual(next.content_length, length ?? -1, text)
      let framing = next.fields.filter { ["content-length", "transfer-encoding"].contains($0.0.lowercased()) }
      XCTAssertLessThanOrEqual(framing.count, 1, "one framing field, written by the hop: \(text)")
      if chunked { XCTAssertEqual(framing.first?.1, "chunked", "gzip was a coding the hop does not relay as such") }
    }
  }

  func testConnectionMayNotNameProtectedFields() {
    let named = ["content-length", "Content-Length", "TRANSFER-ENCODING", "host", "Authorization",
                 "impersonate-user", "Impersonate-Group", "impersonate-extra-scopes", "x-remote-user",
                 "X-Remote-Extra-Foo", "x-forwarded-user"]
    for name in named {
      for value in ["\(name)", "\(name), close", "keep-alive, \(name)", "keep-alive,\t\(name) ,upgrade", " ,\(name),"] {
        let req = "GET /a HTTP/1.1\r\nHost: h\r\nConnection: \(value)\r\n\r\n"
        XCTAssertEqual(protected(req), name.lowercased(), req.debugDescription)
      }
      // On a second Connection line too.
      let twoLines = "GET /a HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nconnection: \(name)\r\n\r\n"
      XCTAssertEqual(protected(twoLines), name.lowercased())
    }
    for fine in ["close", "keep-alive", "Upgrade", "x-custom", "content-lengthy", "hostname", "te"] {
      let req = "GET /a HTTP/1.1\r\nHost: h\r\nConnection: \(fine)\r\n\r\n"
      XCTAssertNil(protected(req), req.debugDescription)
    }
  }

  private func protected(_ request: String) -> String? {
    let raw = Array(request.utf8)
    return raw.withUnsafeBufferPointer { buf -> String? in
      var head = kp_http_head_t()
      guard kp_http_parse_request(buf.baseAddress, buf.count, 0, &head) > 0 else { return "unparsed" }
      var name: UnsafePointer<CChar>?
      var len = 0
      guard kp_http_connection_names_protected(&head, &name, &len) == 1, let name else { return nil }
      return String(decoding: UnsafeRawBufferPointer(start: name, count: len), as: UTF8.self).lowercased()
    }
  }

  /// Identity fields from a caller never survive the hub's rebuild, in any
  /// spelling; other fields do.
  func testIdentityFieldsAreDropped() throws {
    let identity = ["Impersonate-User: admin", "impersonate-group: system:masters", "IMPERSONATE-UID: 1",
                    "Impersonate-Extra-Scopes: all", "X-Remote-User: admin", "x-remote-group: system:masters",
                    "X-Remote-Extra-Reason: x", "X-Forwarded-User: admin", "X-Forwarded-Groups: g",
                    "X-Forwarded-Email: a@b", "Authorization: Bearer caller"]
    let request = "GET /api HTTP/1.1\r\nHost: h\r\n" + identity.map { $0 + "\r\n" }.joined()
      + "Accept: application/json\r\nX-Remotely: kept\r\n\r\n"
    guard let (text, next) = rebuild(request) else { return XCTFail("no rebuild") }
    let names = Set(next.fields.map { $0.0.lowercased() })
    for line in identity {
      let name = String(line.prefix { $0 != ":" }).lowercased()
      XCTAssertFalse(names.contains(name), "\(name) survived: \(text)")
    }
    XCTAssertTrue(names.contains("accept"))
    XCTAssertTrue(names.contains("x-remotely"), "a prefix of an identity field name is not one")
    XCTAssertTrue(names.contains("x-forwarded-proto"), "the extra line is added")
  }

  func testIdentityPredicate() {
    for n in ["impersonate-user", "Impersonate-Extra-", "x-remote-user", "X-REMOTE-GROUP", "x-forwarded-groups"] {
      XCTAssertEqual(kp_http_is_identity_header(n, n.utf8.count), 1, n)
    }
    for n in ["impersonate", "x-remote", "x-forwarded-for", "authorization-x", "accept"] {
      XCTAssertEqual(kp_http_is_identity_header(n, n.utf8.count), 0, n)
    }
  }

  /// Hop-by-hop fields go, and an upgrade keeps Upgrade with a fresh
  /// Connection: Upgrade; fields Connection names go too.
  func testHopByHopAndUpgrade() throws {
    let request = "GET /exec HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, X-Private\r\nUpgrade: websocket\r\n"
      + "X-Private: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nSec-WebSocket-Key: k\r\n\r\n"
    guard let (text, next) = rebuild(request) else { return XCTFail("no rebuild") }
    let hs = next.fields
    XCTAssertEqual(hs.filter { $0.0.lowercased() == "connection" }.map(\.1), ["Upgrade"], text)
    XCTAssertEqual(hs.filter { $0.0.lowercased() == "upgrade" }.map(\.1), ["websocket"])
    for gone in ["x-private", "keep-alive", "te"] {
      XCTAssertFalse(hs.contains { $0.0.lowercased() == gone }, "\(gone): \(text)")
    }
    XCTAssertNotEqual(next.flags & UInt32(KP_HTTP_F_UPGRADE), 0)
  }
}
