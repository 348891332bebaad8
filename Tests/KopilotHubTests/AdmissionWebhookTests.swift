import Foundation
import XCTest
@testable import KopilotHub

final class AdmissionWebhookTests: XCTestCase {
  let good = "good-token-0123456789abc"

  /// An AdmissionReview request as kube-apiserver sends it.
  func review(_ op: String = "CREATE", uid: String = "705ab4f5-6393-11e8-b7cc-42010a800002",
              object: [String: Any]? = nil, oldObject: [String: Any]? = nil, subResource: String? = nil,
              kind: String = "Cluster", apiVersion: String = "admission.k8s.io/v1") -> Data {
    var request: [String: Any] = [
      "uid": uid,
      "kind": ["group": "kopilot.smartx.com", "version": "v1alpha1", "kind": kind],
      "resource": ["group": "kopilot.smartx.com", "version": "v1alpha1", "resource": "clusters"],
      "name": (object?["metadata"] as? [String: Any])?["name"] ?? "sample",
      "namespace": "default",
      "operation": op,
      "userInfo": ["username": "admin", "groups": ["system:masters"]],
      "dryRun": false,
    ]
    if let object { request["object"] = object }
    if let oldObject { request["oldObject"] = oldObject }
    if let subResource { request["subResource"] = subResource }
    return try! JSONSerialization.data(withJSONObject: ["apiVersion": apiVersion, "kind": "AdmissionReview", "request": request])
  }

  func cluster(name: String = "sample", namespace: String = "default", token: Any?? = .none) -> [String: Any] {
    var o: [String: Any] = [
      "apiVersion": "kopilot.smartx.com/v1alpha1", "kind": "Cluster",
      "metadata": ["name": name, "namespace": namespace],
    ]
    if case .some(let t) = token { o["token"] = t ?? NSNull() }
    return o
  }

  struct Answer {
    var apiVersion: String
    var uid: String
    var allowed: Bool
    var patch: [[String: Any]]?
    var code: Int?
    var message: String?
  }

  func decode(_ data: Data, file: StaticString = #filePath, line: UInt = #line) throws -> Answer {
    let top = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any], file: file, line: line)
    XCTAssertEqual(top["kind"] as? String, "AdmissionReview", file: file, line: line)
    let r = try XCTUnwrap(top["response"] as? [String: Any], file: file, line: line)
    var a = Answer(apiVersion: top["apiVersion"] as? String ?? "", uid: r["uid"] as? String ?? "",
                   allowed: r["allowed"] as? Bool ?? false)
    if let p = r["patch"] as? String {
      XCTAssertEqual(r["patchType"] as? String, "JSONPatch", file: file, line: line)
      let raw = try XCTUnwrap(Data(base64Encoded: p), "patch is not base64", file: file, line: line)
      a.patch = try XCTUnwrap(try JSONSerialization.jsonObject(with: raw) as? [[String: Any]], file: file, line: line)
    } else {
      XCTAssertNil(r["patchType"], file: file, line: line)
    }
    if let s = r["status"] as? [String: Any] {
      a.code = s["code"] as? Int
      a.message = s["message"] as? String
    }
    return a
  }

  /// RFC 6902 add/replace on a top-level member: all the webhook may send.
  func applyPatch(_ patch: [[String: Any]], to object: [String: Any]) throws -> [String: Any] {
    var o = object
    for op in patch {
      let path = try XCTUnwrap(op["path"] as? String)
      XCTAssertEqual(path.filter { $0 == "/" }.count, 1, "only top-level paths")
      let key = String(path.dropFirst())
      switch op["op"] as? String {
      case "add": o[key] = op["value"]
      case "replace":
        XCTAssertNotNil(o[key], "replace of a missing member fails in the API server")
        o[key] = op["value"]
      default: XCTFail("unexpected op \(op)")
      }
    }
    return o
  }

  func testMutateFillsAMissingToken() throws {
    for (note, object, op) in [
      ("missing", cluster(), "add"),
      ("empty", cluster(token: ""), "replace"),
      ("null", cluster(token: .some(nil)), "replace"),
    ] {
      let a = try decode(try AdmissionWebhook.mutate(body: review(object: object)))
      XCTAssertEqual(a.uid, "705ab4f5-6393-11e8-b7cc-42010a800002", note)
      XCTAssertEqual(a.apiVersion, "admission.k8s.io/v1", note)
      XCTAssertTrue(a.allowed, note)
      let patch = try XCTUnwrap(a.patch, note)
      XCTAssertEqual(patch.count, 1, note)
      XCTAssertEqual(patch[0]["op"] as? String, op, note)
      XCTAssertEqual(patch[0]["path"] as? String, "/token", note)
      let patched = try applyPatch(patch, to: object)
      let token = try XCTUnwrap(patched["token"] as? String, note)
      XCTAssertEqual(token.count, 43, note)
      XCTAssertTrue(token.utf8.allSatisfy { c in
        (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c == 0x2d || c == 0x5f
      }, "\(note): not URL-safe base64: \(token)")
      // Nothing else changed.
      var rest = patched
      rest["token"] = nil
      var before = object
      before["token"] = nil
      XCTAssertEqual(NSDictionary(dictionary: rest), NSDictionary(dictionary: before), note)
      // And the result passes validation.
      let v = try decode(try AdmissionWebhook.validate(body: review(object: patched)))
      XCTAssertTrue(v.allowed, "\(note): \(v.message ?? "")")
    }
    // Two fills are two different tokens.
    let t1 = try decode(try AdmissionWebhook.mutate(body: review(object: cluster()))).patch?.first?["value"] as? String
    let t2 = try decode(try AdmissionWebhook.mutate(body: review(object: cluster()))).patch?.first?["value"] as? String
    XCTAssertNotEqual(t1, t2)
  }

  func testMutateChangesNothingElse() throws {
    let rows: [(String, Data)] = [
      ("token set", review(object: cluster(token: good))),
      ("token set, even a bad one", review(object: cluster(token: "short"))),
      ("token not a string", review(object: cluster(token: 42))),
      ("delete", review("DELETE", oldObject: cluster(token: good))),
      ("status update", review("UPDATE", object: cluster(), oldObject: cluster(token: good), subResource: "status")),
      ("connect", review("CONNECT")),
      ("another kind", review(object: ["metadata": ["name": "x"]], kind: "ConfigMap")),
    ]
    for (note, body) in rows {
      let a = try decode(try AdmissionWebhook.mutate(body: body))
      XCTAssertTrue(a.allowed, note)
      XCTAssertNil(a.patch, note)
      XCTAssertNil(a.code, note)
    }
  }

  func testMutateOnUpdateKeepsTheOldToken() throws {
    let old = cluster(token: good)
    let a = try decode(try AdmissionWebhook.mutate(body: review("UPDATE", object: cluster(), oldObject: old)))
    XCTAssertEqual(a.patch?.first?["op"] as? String, "add")
    XCTAssertEqual(a.patch?.first?["value"] as? String, good)
    // An old token that was not valid is not kept.
    let b = try decode(try AdmissionWebhook.mutate(body: review("UPDATE", object: cluster(token: ""), oldObject: cluster(token: "short"))))
    let fresh = try XCTUnwrap(b.patch?.first?["value"] as? String)
    XCTAssertEqual(fresh.count, 43)
  }

  func testValidateRefusals() throws {
    let rows: [(note: String, object: [String: Any], expect: String)] = [
      ("missing", cluster(), "token is missing"),
      ("empty", cluster(token: ""), "token is missing"),
      ("null", cluster(token: .some(nil)), "token is missing"),
      ("not a string", cluster(token: 12345678901234567), "token must be a string"),
      ("short", cluster(token: "abc123"), "at least 16 characters"),
      ("space", cluster(token: "abcdefgh ijklmnopq"), "printable ASCII without spaces"),
      ("tab", cluster(token: "abcdefgh\tijklmnopq"), "printable ASCII without spaces"),
      ("control", cluster(token: "abcdefgh\u{1}ijklmnopq"), "printable ASCII without spaces"),
      ("non-ASCII", cluster(token: "abcdefghéijklmnopq"), "printable ASCII without spaces"),
      ("underscore in name", cluster(name: "a_b", token: good), "metadata.name must not contain '_'"),
      ("underscore in namespace", cluster(namespace: "x_y", token: good), "metadata.namespace must not contain '_'"),
    ]
    for r in rows {
      for op in ["CREATE", "UPDATE"] {
        let a = try decode(try AdmissionWebhook.validate(body: review(op, object: r.object, oldObject: cluster(token: good))))
        XCTAssertFalse(a.allowed, "\(r.note) \(op)")
        XCTAssertEqual(a.code, 400, r.note)
        XCTAssertEqual(a.uid, "705ab4f5-6393-11e8-b7cc-42010a800002", r.note)
        let m = a.message ?? ""
        XCTAssertTrue(m.contains(r.expect), "\(r.note): \"\(m)\" lacks \"\(r.expect)\"")
        XCTAssertTrue(m.hasPrefix("Cluster "), "\(r.note): \(m)")
        if let t = r.object["token"] as? String, !t.isEmpty { XCTAssertFalse(m.contains(t), "\(r.note): token in message") }
      }
    }
    // Several problems are named together.
    let both = try decode(try AdmissionWebhook.validate(body: review(object: cluster(name: "a_b", token: "x"))))
    XCTAssertTrue(both.message?.contains("'_'") == true && both.message?.contains("at least 16") == true, both.message ?? "")
  }

  func testValidateAllows() throws {
    let rows: [(String, Data)] = [
      ("good create", review(object: cluster(token: good))),
      ("good update", review("UPDATE", object: cluster(token: good), oldObject: cluster(token: "x"))),
      ("delete", review("DELETE", oldObject: cluster(token: "x"))),
      ("status update of a bad object", review("UPDATE", object: cluster(token: "x"), oldObject: cluster(token: "x"), subResource: "status")),
      ("v1beta1", review(object: cluster(token: good), apiVersion: "admission.k8s.io/v1beta1")),
    ]
    for (note, body) in rows {
      let a = try decode(try AdmissionWebhook.validate(body: body))
      XCTAssertTrue(a.allowed, "\(note): \(a.message ?? "")")
      XCTAssertNil(a.patch, note)
    }
    let beta = try decode(try AdmissionWebhook.validate(body: review(object: cluster(token: good), apiVersion: "admission.k8s.io/v1beta1")))
    XCTAssertEqual(beta.apiVersion, "admission.k8s.io/v1beta1", "answered in the request's version")
  }

  func testMalformed() throws {
    // No uid to answer to: a throw (the router's 400).
    let unanswerable: [(String, String)] = [
      ("not JSON", "{nope"),
      ("empty", ""),
      ("an array", "[1,2]"),
      ("no request", #"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
      ("no uid", #"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"operation":"CREATE"}}"#),
      ("uid not a string", #"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#),
    ]
    for (note, body) in unanswerable {
      for f in [AdmissionWebhook.mutate, AdmissionWebhook.validate] {
        XCTAssertThrowsError(try f(Data(body.utf8)), note) { e in
          XCTAssertTrue(e is AdmissionWebhook.Malformed, "\(note): \(e)")
        }
      }
    }
    // A uid but not a proper review: refused, naming why.
    let refused: [(String, String, String)] = [
      ("wrong kind", #"{"apiVersion":"admission.k8s.io/v1","kind":"Pod","request":{"uid":"u1","operation":"CREATE"}}"#, "AdmissionReview"),
      ("wrong version", #"{"apiVersion":"v1","kind":"AdmissionReview","request":{"uid":"u1","operation":"CREATE"}}"#, "admission.k8s.io/v1"),
      ("no operation", #"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1"}}"#, "operation"),
      ("no object", #"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","operation":"CREATE"}}"#, "request.object"),
    ]
    for (note, body, expect) in refused {
      for f in [AdmissionWebhook.mutate, AdmissionWebhook.validate] {
        let a = try decode(try f(Data(body.utf8)))
        XCTAssertEqual(a.uid, "u1", note)
        XCTAssertFalse(a.allowed, note)
        XCTAssertEqual(a.code, 400, note)
        XCTAssertTrue(a.message?.contains(expect) == true, "\(note): \(a.message ?? "")")
      }
    }
  }
}
