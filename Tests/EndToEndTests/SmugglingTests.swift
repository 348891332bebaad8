import Foundation
import XCTest

// The adversarial request-smuggling corpus, end to end: raw bytes from a
// caller over TLS -> the real kopilot-hub -> a real kopilot-agent -> a member
// API server (recorder.py) that parses every request on its own, strictly,
// and records it. The oracle cannot be argued with: the member sees exactly
// the requests the caller's authorized heads describe (same method, target
// after the hub strips /proxy/NS_NAME, body bytes), never one more; every
// answer the caller reads belongs to one of its own requests; cluster b,
// which the caller may not use at all, sees nothing.
//
// The caller ("smuggler") may only `get` /proxy/default_sample/version.
// Each row of the corpus is one TLS connection; a failing row prints what
// the caller got and what each member saw.

/// The callers of the smuggling worlds: tokens as they go on the wire.
struct SmugglingCallers {
  /// May only `get` /proxy/default_sample/version.
  var smuggler: String
  /// May `get` and `create` /proxy/default_sample/version (upgrades need
  /// `create`, as kube-apiserver asks for pods/exec).
  var upgrader: String
}

/// One request as the caller's head describes it, and what RBAC says of it.
struct DescribedRequest {
  var method: String
  /// The target as the caller wrote it.
  var target: String
  var body: [UInt8] = []
  /// true: the caller may make it; false: it may not, and the member must
  /// never see it; nil: either answer is right (the row says why).
  var allowed: Bool?
  /// The target the member must see when it is forwarded.
  var upstreamTarget: String
}

/// A corpus row: bytes written in steps, the responses read after each
/// step, the requests they describe, and the answer expected of the fixed
/// hub.
struct SmugglingRow {
  struct Step {
    var bytes: [UInt8]
    /// One entry per response to read: the request's method (HEAD reads no
    /// body), or "RAW:n" for n bytes of a tunnel.
    var expect: [String]
  }

  var name: String
  var steps: [Step]
  var described: [DescribedRequest]
  /// The status the first head must be refused with (0: any 4xx); nil: the
  /// row is not a refusal.
  var refuse: Int?
  /// Bytes the member must echo through an upgraded tunnel (the RAW reads).
  var tunnelEcho: [UInt8]? = nil
  /// Words the refusal's body must hold, where it matters which hop refused.
  var refusalSays: String? = nil
}

/// A recorder.py process: a member API server that logs what it parses.
struct RecordingUpstream {
  var name: String
  var port: Int
  var file: URL
  var url: String { "https://127.0.0.1:\(port)" }

  static func start(_ world: E2EWorld, name: String) throws -> RecordingUpstream {
    let file = world.dir.appendingPathComponent("\(name).jsonl")
    _ = FileManager.default.createFile(atPath: file.path, contents: nil)
    let script = Paths.root.appendingPathComponent("Tests/EndToEndTests/recorder.py").path
    let p = try world.start(name, world.python, [script, "--cert", world.certs.cert, "--key", world.certs.key,
                                                 "--record", file.path])
    let port = Int(try p.waitFor("PORT ").split(separator: " ").last ?? "") ?? 0
    guard port > 0 else { throw E2EError("\(name) printed no port") }
    return RecordingUpstream(name: name, port: port, file: file)
  }

  /// Everything recorded so far, in order.
  func entries() -> [[String: Any]] {
    let data = (try? Data(contentsOf: file)) ?? Data()
    return data.split(separator: UInt8(ascii: "\n")).compactMap {
      (try? JSONSerialization.jsonObject(with: Data($0))) as? [String: Any]
    }
  }
}

/// One response as the caller read it.
struct CallerResponse {
  var status: Int
  var headers: [(String, String)]
  var body: [UInt8]
  var interim: [Int]

  func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name }?.1 }
  /// The target the member says it answered; nil for the hub's own answers.
  var memberTarget: String? { header("x-recorder-target") }
  /// The bytes a member wrote after a bodiless response, read as a response.
  var isFake: Bool { memberTarget == "FAKE" }

  /// A Kubernetes Status whose code is the HTTP status.
  var isStatus: Bool {
    guard let o = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] else { return false }
    return o["kind"] as? String == "Status" && o["code"] as? Int == status
  }

  var summary: String {
    let b = String(decoding: body.prefix(160), as: UTF8.self)
    let i = interim.isEmpty ? "" : " after \(interim)"
    return "\(status)\(i) [\(memberTarget.map { "member: \($0)" } ?? "hub")] \(b)"
  }
}

/// What the caller got on its connection.
struct CallerResult {
  var responses: [CallerResponse] = []
  var raw: [[UInt8]] = []
  var extra: [UInt8] = []
  var closed = false
  var error: String?
}

func latin1Bytes(_ s: String) -> [UInt8] { s.unicodeScalars.map { UInt8(truncatingIfNeeded: $0.value) } }

func shown(_ b: [UInt8], limit: Int = 200) -> String {
  var s = ""
  for c in b.prefix(limit) {
    switch c {
    case 0x0D: s += "\\r"
    case 0x0A: s += "\\n"
    case 0x20..<0x7F: s += String(UnicodeScalar(c))
    default: s += String(format: "\\x%02x", c)
    }
  }
  return b.count > limit ? s + "...(\(b.count) bytes)" : s
}

/// Runs rows against a hub and judges them. Used by both worlds: one hub,
/// and two replicas with the agents on the other one.
final class SmugglingHarness {
  let world: E2EWorld
  let hubPort: Int
  let memberA: RecordingUpstream
  let memberB: RecordingUpstream
  /// What the agent puts in Authorization: the only credential a member
  /// may ever see.
  let agentAuthorization = "Bearer \(Tokens.apiserver)"
  /// What the hub's default mapping (impersonate) sends for the corpus's
  /// callers (tokens.csv of the smuggling worlds: no groups), lower-cased
  /// names in wire order.
  /// The audit ID the corpus's callers try to impose.
  static let callersAuditID = "00000000-0000-4000-8000-00000000abcd"
  static let corpusIdentities: [[String]] = ["smuggler", "upgrader"].map {
    ["impersonate-user: kopilot:\($0)", "impersonate-group: kopilot:callers", "impersonate-uid: \($0)-uid"]
  }
  /// The identities this world's corpus callers map to (the Kubernetes
  /// mode's world has other callers).
  var identities = SmugglingHarness.corpusIdentities
  private var serial = 0

  init(world: E2EWorld, hubPort: Int, memberA: RecordingUpstream, memberB: RecordingUpstream) {
    self.world = world
    self.hubPort = hubPort
    self.memberA = memberA
    self.memberB = memberB
  }

  /// Plays steps over one TLS connection with recorder.py's client.
  func play(_ steps: [SmugglingRow.Step], quietMs: Int = 200) throws -> CallerResult {
    serial += 1
    let script: [String: Any] = [
      "steps": steps.map { ["send": Data($0.bytes).base64EncodedString(), "expect": $0.expect] },
      "quiet_ms": quietMs, "timeout_s": 10,
    ]
    let file = world.dir.appendingPathComponent("caller-\(serial).json")
    try JSONSerialization.data(withJSONObject: script).write(to: file)
    let recorder = Paths.root.appendingPathComponent("Tests/EndToEndTests/recorder.py").path
    let r = try runCommand(world.python, [recorder, "--client", "\(hubPort)", world.certs.ca, file.path], timeout: 120)
    guard r.status == 0, let o = (try? JSONSerialization.jsonObject(with: r.stdout)) as? [String: Any] else {
      throw E2EError("the caller failed (\(r.status)): \(r.stderr) \(r.text)")
    }
    var out = CallerResult()
    for resp in o["responses"] as? [[String: Any]] ?? [] {
      let body = latin1Bytes(resp["body"] as? String ?? "")
      if resp["reason"] as? String == "raw" && resp["status"] as? Int == 0 {
        out.raw.append(body)
        continue
      }
      let headers = (resp["headers"] as? [[String]] ?? []).map { ($0[0], $0.count > 1 ? $0[1] : "") }
      let interim = (resp["interim"] as? [[String: Any]] ?? []).compactMap { $0["status"] as? Int }
      out.responses.append(CallerResponse(status: resp["status"] as? Int ?? 0, headers: headers, body: body,
                                          interim: interim))
    }
    out.extra = latin1Bytes(o["extra"] as? String ?? "")
    out.closed = o["closed"] as? Bool ?? false
    out.error = o["error"] as? String
    return out
  }

  /// A row's verdict: `oracle` lists smuggling (the member saw or answered
  /// what the caller may not do, the caller read what it did not ask for);
  /// `behaviour` lists answers other than the ones the fixed hub gives.
  struct Verdict {
    var row: String
    var oracle: [String] = []
    var behaviour: [String] = []
    var evidence = ""
  }

  func judge(_ row: SmugglingRow) throws -> Verdict {
    let beforeA = memberA.entries().count, beforeB = memberB.entries().count
    let got = try play(row.steps)
    // A smuggled request travels behind the one that carried it: give it
    // time to arrive before the members' records are read.
    usleep(150_000)
    let seenA = Array(memberA.entries().dropFirst(beforeA)), seenB = Array(memberB.entries().dropFirst(beforeB))
    var v = Verdict(row: row.name)
    let requestsA = seenA.filter { $0["kind"] as? String == "request" }

    func describe(_ e: [String: Any]) -> String {
      switch e["kind"] as? String {
      case "request":
        let body = latin1Bytes(e["body"] as? String ?? "")
        let hs = (e["headers"] as? [[String]] ?? []).map { "\($0[0]): \($0[1])" }.joined(separator: " | ")
        return "\(e["method"] ?? "") \(e["target"] ?? "") body=\"\(shown(body, limit: 120))\" headers: \(hs)"
      case let k:
        return "\(k ?? "?"): \(e["error"] ?? "") \"\(shown(latin1Bytes(e["data"] as? String ?? ""), limit: 120))\""
      }
    }

    if !seenB.isEmpty {
      v.oracle.append("cluster b's member, which the caller may not use, saw: "
                      + seenB.map(describe).joined(separator: "; "))
    }
    for e in seenA where e["kind"] as? String == "error" {
      v.oracle.append("the member read bytes that are no request (the hops disagree on framing): \(describe(e))")
    }
    if row.tunnelEcho == nil {
      for e in seenA where e["kind"] as? String == "tunnel" { v.oracle.append("tunnel bytes at the member: \(describe(e))") }
    }
    // No credential or identity of the caller's ever reaches a member.
    for e in requestsA {
      let hs = (e["headers"] as? [[String]] ?? []).map { ($0[0].lowercased(), $0[1]) }
      let auth = hs.filter { $0.0 == "authorization" }.map(\.1)
      if auth != [agentAuthorization] {
        v.oracle.append("the member saw Authorization \(auth), not only the agent's, in \(e["method"] ?? "") \(e["target"] ?? "")")
      }
      // The only identity a member sees is the one the hub set for a
      // caller of the corpus (the admin's never: it only sets up), line for
      // line; and each request carries one audit ID of the hub's.
      let identity = hs.filter { $0.0.hasPrefix("impersonate-") || $0.0.hasPrefix("x-remote-") }.map { "\($0.0): \($0.1)" }
      if !identities.contains(identity) {
        v.oracle.append("identity headers at the member are not one the hub sets for a corpus caller: \(identity)")
      }
      let audit = hs.filter { $0.0 == "audit-id" }.map(\.1)
      if audit.count != 1 || UUID(uuidString: audit[0]) == nil || audit[0] == Self.callersAuditID {
        v.oracle.append("the member saw Audit-ID \(audit), not one hub-made UUID")
      }
    }

    // Each answer belongs to the request at its position.
    let d = row.described
    for (i, r) in got.responses.enumerated() {
      guard i < d.count else {
        v.oracle.append("answer \(i + 1) belongs to no request the caller sent: \(r.summary)")
        continue
      }
      if r.isFake {
        v.oracle.append("answer \(i + 1) (to \(d[i].method) \(d[i].target)) is the bytes a member sent after a bodiless response: \(r.summary)")
      } else if let t = r.memberTarget {
        if d[i].allowed == false {
          v.oracle.append("the member answered \(d[i].method) \(d[i].target), which the caller may not do: \(r.summary)")
        } else if t != d[i].upstreamTarget {
          v.oracle.append("answer \(i + 1) is the member's answer to \(t), not to \(d[i].upstreamTarget)")
        }
      } else {
        if !(400...599).contains(r.status) {
          v.behaviour.append("answer \(i + 1) is a \(r.status) from neither the member nor a refusal: \(r.summary)")
        } else if d[i].method != "HEAD" && !r.isStatus {
          v.behaviour.append("answer \(i + 1) is not a Kubernetes Status with code \(r.status): \(r.summary)")
        }
        if d[i].allowed == true && row.refuse == nil {
          v.behaviour.append("\(d[i].method) \(d[i].target) is allowed but was refused: \(r.summary)")
        }
      }
    }
    if !got.extra.isEmpty {
      v.oracle.append("the caller read bytes no request of its asked for: \"\(shown(got.extra))\"")
    }

    // The member's requests, in order, are the allowed described ones the
    // member answered (or whose answer never came back), byte for byte.
    let candidates = d.indices.filter { i in
      d[i].allowed != false && (i >= got.responses.count || got.responses[i].memberTarget != nil)
    }
    var next = 0
    for e in requestsA {
      let method = e["method"] as? String ?? "", target = e["target"] as? String ?? ""
      let body = latin1Bytes(e["body"] as? String ?? "")
      var k = next
      var matched = false
      while k < candidates.count {
        let c = d[candidates[k]]
        if c.method == method && c.upstreamTarget == target && c.body == body {
          matched = true
          break
        }
        // Only a request whose answer never came may be skipped.
        if candidates[k] < got.responses.count { break }
        k += 1
      }
      if matched {
        next = k + 1
      } else {
        v.oracle.append("the member saw a request no authorized head of the caller describes: \(describe(e))")
      }
    }
    for i in candidates.dropFirst(next) where i < got.responses.count {
      v.oracle.append("the member's answer to \(d[i].target) came without the member having seen it")
    }

    if let echo = row.tunnelEcho {
      let through = got.raw.flatMap { $0 }
      if through != echo { v.behaviour.append("the tunnel echoed \"\(shown(through))\", not \"\(shown(echo))\"") }
    }

    // What the fixed hub answers.
    if let code = row.refuse {
      if let first = got.responses.first {
        if first.memberTarget != nil || (code == 0 ? !(400...499).contains(first.status) : first.status != code) {
          v.behaviour.append("refused with \(code == 0 ? "a 4xx" : "\(code)") expected, got \(first.summary)")
        } else if let words = row.refusalSays, !String(decoding: first.body, as: UTF8.self).contains(words) {
          v.behaviour.append("the refusal does not say \"\(words)\": \(first.summary)")
        }
      } else {
        v.behaviour.append("refused with \(code == 0 ? "a 4xx" : "\(code)") expected, got no answer (closed: \(got.closed), \(got.error ?? "no error"))")
      }
    } else {
      // Every allowed request is served, every other refused; after a
      // refusal the hub may close the connection, and answers then stop.
      let refusedAt = got.responses.firstIndex { $0.memberTarget == nil }
      for (i, req) in d.enumerated() where i >= got.responses.count {
        if refusedAt == nil || !got.closed {
          v.behaviour.append("no answer to \(req.method) \(req.target) (closed: \(got.closed), \(got.error ?? "no error"))")
          break
        }
      }
      for (i, req) in d.enumerated() where i < got.responses.count && req.allowed == false {
        if got.responses[i].memberTarget == nil && !(400...499).contains(got.responses[i].status) {
          v.behaviour.append("\(req.method) \(req.target) should be refused with a 4xx: \(got.responses[i].summary)")
        }
      }
    }
    if let e = got.error, row.refuse == nil || got.responses.isEmpty { v.behaviour.append("caller: \(e)") }

    v.evidence = "caller got: " + (got.responses.isEmpty ? "nothing" : got.responses.enumerated()
      .map { "\n    \($0.offset + 1). \($0.element.summary)" }.joined())
      + (got.raw.isEmpty ? "" : "\n    tunnel: \"\(shown(got.raw.flatMap { $0 }))\"")
      + (got.extra.isEmpty ? "" : "\n    then unasked-for bytes: \"\(shown(got.extra))\"")
      + "\n    connection \(got.closed ? "closed by the hub" : "open")"
      + "\n  member a saw: " + (seenA.isEmpty ? "nothing" : seenA.map { "\n    " + describe($0) }.joined())
      + "\n  member b saw: " + (seenB.isEmpty ? "nothing" : seenB.map { "\n    " + describe($0) }.joined())
    return v
  }

  /// Judges every row; fails the test once per failing row, with the
  /// evidence, and prints a one-line summary per row for the record.
  func run(_ rows: [SmugglingRow], group: String, file: StaticString = #filePath, line: UInt = #line) throws {
    var summary: [String] = []
    for row in rows {
      let v = try judge(row)
      let mark = !v.oracle.isEmpty ? "SMUGGLED" : !v.behaviour.isEmpty ? "WRONG-ANSWER" : "ok"
      summary.append("  [\(mark)] \(row.name)")
      if ProcessInfo.processInfo.environment["KP_SMUGGLING_VERBOSE"] != nil {
        summary.append("    " + v.evidence.replacingOccurrences(of: "\n", with: "\n    "))
      }
      if v.oracle.isEmpty && v.behaviour.isEmpty { continue }
      var text = "[\(group)] row \"\(row.name)\":"
      for o in v.oracle { text += "\n  ORACLE: \(o)" }
      for b in v.behaviour { text += "\n  ANSWER: \(b)" }
      XCTFail(text + "\n  " + v.evidence, file: file, line: line)
    }
    print("smuggling corpus \(group):\n" + summary.joined(separator: "\n"))
  }
}

/// The corpus: rows built for a pair of callers. Every target carries the
/// row's tag, so a record names the row it came from.
enum SmugglingCorpus {
  static let version = "/proxy/default_sample/version"

  /// A request head (and body) as bytes; `headers` are raw field lines.
  static func request(_ method: String = "GET", target: String, token: String?, headers: [String] = [],
                      body: [UInt8] = [], host: Bool = true, version: String = "HTTP/1.1") -> [UInt8] {
    var head = "\(method) \(target) \(version)\r\n"
    if host { head += "Host: kopilot-hub\r\n" }
    if let token { head += "Authorization: Bearer \(token)\r\n" }
    for h in headers { head += h + "\r\n" }
    return Array((head + "\r\n").utf8) + body
  }

  static func chunked(_ body: [UInt8]) -> [UInt8] {
    Array(String(body.count, radix: 16).utf8) + Array("\r\n".utf8) + body + Array("\r\n0\r\n\r\n".utf8)
  }

  /// The member's own API, which the agent's token may use: what an attacker
  /// wants to reach.
  static func deletePayload(_ tag: String) -> [UInt8] {
    Array("DELETE /api/v1/namespaces/kube-system/pods/etcd-node-1?smuggled=\(tag) HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
  }

  /// Another cluster through the hub's path: what a peer listener would route.
  static func clusterBPayload(_ tag: String) -> [UInt8] {
    Array("GET /proxy/default_b/version?smuggled=\(tag) HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
  }

  static func allowed(_ tag: String, method: String = "GET", body: [UInt8] = [], query: String = "") -> DescribedRequest {
    DescribedRequest(method: method, target: "\(version)?row=\(tag)\(query)", body: body, allowed: true,
                     upstreamTarget: "/version?row=\(tag)\(query)")
  }

  static func row(_ name: String, _ tag: String, _ bytes: [UInt8], _ described: [DescribedRequest],
                  refuse: Int? = nil) -> SmugglingRow {
    SmugglingRow(name: name, steps: [.init(bytes: bytes, expect: described.map(\.method))], described: described,
                 refuse: refuse)
  }

  // ---- Connection naming headers ----

  static func spellings(_ name: String) -> [String] {
    let alternating = String(name.enumerated().map { $0.offset % 2 == 0 ? Character($0.element.lowercased()) : Character($0.element.uppercased()) })
    return [name.lowercased(), name, name.uppercased(), alternating]
  }

  /// Where the name goes in Connection: alone, first, last, in the middle
  /// with spaces, on a second Connection line, between empty elements.
  static let positions: [(String, @Sendable (String) -> [String])] = [
    ("alone", { ["Connection: \($0)"] }),
    ("first, then close", { ["Connection: \($0), close"] }),
    ("after keep-alive", { ["Connection: keep-alive, \($0)"] }),
    ("in the middle, with spaces", { ["Connection: keep-alive ,  \($0) , close"] }),
    ("on a second Connection line", { ["Connection: keep-alive", "Connection: \($0)"] }),
    ("between empty elements", { ["Connection: ,, \($0) ,"] }),
  ]

  static func connectionRows(_ c: SmugglingCallers) -> [SmugglingRow] {
    var rows: [SmugglingRow] = []
    let names = ["Content-Length", "Transfer-Encoding", "Host", "Authorization", "Impersonate-User", "X-Remote-User"]
    for name in names {
      let spelled = spellings(name)
      for (p, (where_, lines)) in positions.enumerated() {
        // Content-Length gets every spelling in every position; the others
        // one spelling per position, in turn.
        let cases = name == "Content-Length" ? Array(spelled.indices) : [p % spelled.count]
        for s in cases {
          let tag = "conn-\(name.lowercased())-\(p)-\(s)"
          let connection = lines(spelled[s])
          var headers: [String] = []
          var body: [UInt8] = []
          var payloadNote = ""
          switch name {
          case "Content-Length":
            body = (p + s) % 2 == 0 ? deletePayload(tag) : clusterBPayload(tag)
            payloadNote = (p + s) % 2 == 0 ? ", body a DELETE of kube-system/etcd" : ", body a GET of /proxy/default_b"
            headers = ["Content-Length: \(body.count)"] + connection
          case "Transfer-Encoding":
            let payload = (p % 2 == 0) ? deletePayload(tag) : clusterBPayload(tag)
            payloadNote = ", chunked body " + ((p % 2 == 0) ? "a DELETE" : "a GET of /proxy/default_b")
            headers = ["Transfer-Encoding: chunked"] + connection
            let wire = chunked(payload)
            let req = request(target: "\(version)?row=\(tag)", token: c.smuggler, headers: headers, body: wire)
            rows.append(SmugglingRow(
              name: "\(connection.joined(separator: " + "))\(payloadNote) (\(where_))",
              steps: [.init(bytes: req, expect: ["GET"])],
              described: [allowed(tag, body: payload)], refuse: 400))
            continue
          case "Host":
            headers = connection
          case "Authorization":
            headers = connection
          default:
            headers = ["\(name): system:admin"] + connection
          }
          let req = request(target: "\(version)?row=\(tag)", token: c.smuggler, headers: headers, body: body)
          rows.append(SmugglingRow(
            name: "\(connection.joined(separator: " + "))\(payloadNote) (\(where_))",
            steps: [.init(bytes: req, expect: ["GET"])],
            described: [allowed(tag, body: body)], refuse: 400))
        }
      }
    }
    return rows
  }

  // ---- Identity headers ----

  static func identityRows(_ c: SmugglingCallers) -> [SmugglingRow] {
    let sets: [(String, [String])] = [
      ("Impersonate-User", ["Impersonate-User: system:admin"]),
      ("impersonate-group twice", ["impersonate-group: system:masters", "impersonate-group: system:nodes"]),
      ("IMPERSONATE-UID", ["IMPERSONATE-UID: 0"]),
      ("Impersonate-Extra-*", ["Impersonate-Extra-Scopes: cluster-admin", "Impersonate-Extra-acme.com%2fproject: x"]),
      ("X-Remote-User", ["X-Remote-User: system:admin"]),
      ("x-remote-group", ["x-remote-group: system:masters"]),
      ("X-REMOTE-EXTRA-*", ["X-REMOTE-EXTRA-Scopes: cluster-admin"]),
      ("Audit-ID", ["Audit-ID: \(SmugglingHarness.callersAuditID)"]),
      ("audit-id twice", ["audit-id: \(SmugglingHarness.callersAuditID)", "AUDIT-ID: x"]),
      ("all of them in mixed case", ["iMpErSoNaTe-UsEr: system:admin", "Impersonate-Group: system:masters",
                                     "Impersonate-Uid: 0", "Impersonate-Extra-X: y", "x-ReMoTe-UsEr: system:admin",
                                     "X-Remote-Group: system:masters", "X-Remote-Extra-X: y"]),
    ]
    return sets.enumerated().map { i, s in
      let tag = "identity-\(i)"
      return row("\(s.0) from the caller is dropped, the request served", tag,
                 request(target: "\(version)?row=\(tag)", token: c.smuggler, headers: s.1), [allowed(tag)])
    }
  }

  // ---- Content-Length and Transfer-Encoding ----

  static func framingRows(_ c: SmugglingCallers) -> [SmugglingRow] {
    var rows: [SmugglingRow] = []
    func add(_ name: String, headers: [String], body: [UInt8], described: [UInt8], refuse: Int?,
             version v: String = "HTTP/1.1") {
      let tag = "framing-\(rows.count)"
      let d = allowed(tag, body: described)
      rows.append(SmugglingRow(
        name: name,
        steps: [.init(bytes: request(target: d.target, token: c.smuggler, headers: headers, body: body, version: v),
                      expect: ["GET"])],
        described: [refuse == nil ? d : DescribedRequest(method: d.method, target: d.target, body: d.body,
                                                         allowed: nil, upstreamTarget: d.upstreamTarget)],
        refuse: refuse))
    }
    let hello = Array("hello".utf8)
    let smuggle = deletePayload("framing")
    add("CL + TE: Content-Length: 5 then Transfer-Encoding: chunked", headers: ["Content-Length: 5", "Transfer-Encoding: chunked"],
        body: chunked(smuggle), described: smuggle, refuse: 400)
    add("TE + CL: Transfer-Encoding: chunked then Content-Length: 5", headers: ["Transfer-Encoding: chunked", "Content-Length: 5"],
        body: chunked(smuggle), described: smuggle, refuse: 400)
    // Identical duplicates are allowed by RFC 9110 8.6; refusing is fine too.
    add("duplicate Content-Length: 5 on two lines (refused or served with the 5 bytes)",
        headers: ["Content-Length: 5", "Content-Length: 5"], body: hello, described: hello, refuse: nil)
    add("Content-Length: 5, 5 (refused or served with the 5 bytes)", headers: ["Content-Length: 5, 5"], body: hello,
        described: hello, refuse: nil)
    add("conflicting Content-Length: 5 and Content-Length: \(5 + smuggle.count)",
        headers: ["Content-Length: 5", "Content-Length: \(5 + smuggle.count)"], body: hello + smuggle, described: hello,
        refuse: 400)
    add("Content-Length: 5, \(5 + smuggle.count)", headers: ["Content-Length: 5, \(5 + smuggle.count)"],
        body: hello + smuggle, described: hello, refuse: 400)
    add("Content-Length: +5", headers: ["Content-Length: +5"], body: hello, described: hello, refuse: 400)
    add("Content-Length: 0x5", headers: ["Content-Length: 0x5"], body: hello, described: hello, refuse: 400)
    add("Content-Length: 5 5", headers: ["Content-Length: 5 5"], body: hello, described: hello, refuse: 400)
    add("Content-Length : 5 (space before the colon)", headers: ["Content-Length : 5"], body: hello, described: hello,
        refuse: 400)
    add("Content-Length: 99999999999999999999 (past 64 bits)", headers: ["Content-Length: 99999999999999999999"],
        body: hello, described: hello, refuse: 400)
    add("Transfer-Encoding: chunked, identity", headers: ["Transfer-Encoding: chunked, identity"],
        body: chunked(smuggle), described: smuggle, refuse: 400)
    add("Transfer-Encoding : chunked (space before the colon)", headers: ["Transfer-Encoding : chunked"],
        body: chunked(smuggle), described: smuggle, refuse: 400)
    add("Transfer-Encoding:<TAB>chunked (legal OWS: refused or served with the body)",
        headers: ["Transfer-Encoding:\tchunked"], body: chunked(hello), described: hello, refuse: nil)
    add("Transfer-Encoding: chunked<TAB> (legal OWS: refused or served with the body)",
        headers: ["Transfer-Encoding: chunked\t"], body: chunked(hello), described: hello, refuse: nil)
    add("Transfer-Encoding: \\x0bchunked (vertical tab)", headers: ["Transfer-Encoding: \u{0B}chunked"],
        body: chunked(smuggle), described: smuggle, refuse: 400)
    add("Transfer-Encoding: chunked\\x0b (vertical tab)", headers: ["Transfer-Encoding: chunked\u{0B}"],
        body: chunked(smuggle), described: smuggle, refuse: 400)
    add("Transfer-Encoding: xchunked", headers: ["Transfer-Encoding: xchunked"], body: chunked(smuggle),
        described: smuggle, refuse: 400)
    add("Transfer-Encoding: chunked on two lines", headers: ["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
        body: chunked(chunked(smuggle)), described: smuggle, refuse: 400)
    add("Transfer-Encoding: chunked in an HTTP/1.0 request", headers: ["Transfer-Encoding: chunked"],
        body: chunked(smuggle), described: smuggle, refuse: 400, version: "HTTP/1.0")
    add("empty Transfer-Encoding with Content-Length: 5", headers: ["Transfer-Encoding: ", "Content-Length: 5"],
        body: hello, described: hello, refuse: 400)
    add("Transfer-Encoding: CHUNKED (codings are case-insensitive: served with the body)",
        headers: ["Transfer-Encoding: CHUNKED"], body: chunked(hello), described: hello, refuse: nil)
    // Controls: ordinary bodies on an allowed GET reach the member intact.
    add("control: GET with Content-Length: 5", headers: ["Content-Length: 5"], body: hello, described: hello, refuse: nil)
    add("control: GET with a chunked body", headers: ["Transfer-Encoding: chunked"], body: chunked(hello),
        described: hello, refuse: nil)
    add("control: GET whose Content-Length body is a whole request (a body, never a request)",
        headers: ["Content-Length: \(smuggle.count)"], body: smuggle, described: smuggle, refuse: nil)
    return rows
  }

  // ---- Chunked bodies ----

  static func chunkRows(_ c: SmugglingCallers) -> [SmugglingRow] {
    var rows: [SmugglingRow] = []
    let smuggle = String(decoding: deletePayload("chunk"), as: UTF8.self)
    // A wire that ends in `smuggle` after a complete body: to the hub those
    // bytes are the caller's next request (a DELETE it may not make, so a
    // 4xx); to a hop that reads the body differently they are body or a
    // request of their own.
    func add(_ name: String, wire: String, described: String, refuse: Int?) {
      let tag = "chunk-\(rows.count)"
      var d = allowed(tag, body: Array(described.utf8))
      if refuse != nil { d.allowed = nil }
      var all = [d]
      if wire.hasSuffix("\r\n\r\n\(smuggle)") {
        all.append(DescribedRequest(method: "DELETE", target: String(smuggle.split(separator: " ")[1]), allowed: false,
                                    upstreamTarget: "-"))
      }
      rows.append(row(name, tag, request(target: d.target, token: c.smuggler, headers: ["Transfer-Encoding: chunked"],
                                         body: Array(wire.utf8)), all, refuse: refuse))
    }
    add("chunk size of 17 hex digits (overflows 64 bits to 5)", wire: "10000000000000005\r\nhello\r\n0\r\n\r\n\(smuggle)",
        described: "hello", refuse: 400)
    // More than 16 hex digits is refused whatever their value, as Go's
    // net/http (the member's API server) refuses it: "chunk length too large".
    add("chunk size of 20 digits, leading zeros (refused, as Go refuses it)",
        wire: "00000000000000000005\r\nhello\r\n0\r\n\r\n", described: "hello", refuse: 400)
    add("chunk size -5", wire: "-5\r\nhello\r\n0\r\n\r\n", described: "hello", refuse: 400)
    add("chunk size 0x5", wire: "0x5\r\nhello\r\n0\r\n\r\n", described: "hello", refuse: 400)
    add("chunk size with a bare LF", wire: "5\nhello\r\n0\r\n\r\n", described: "hello", refuse: 400)
    add("chunk data longer than its size", wire: "5\r\nhelloXX\r\n0\r\n\r\n", described: "hello", refuse: 400)
    add("a request line inside the trailer section", wire: "5\r\nhello\r\n0\r\n\(smuggle)", described: "hello", refuse: 400)
    add("chunk extension 5;name=value (served)", wire: "5;name=value\r\nhello\r\n0\r\n\r\n", described: "hello", refuse: nil)
    add("quoted chunk extension 5;a=\"b;c\" (served)", wire: "5;a=\"b;c\"\r\nhello\r\n0\r\n\r\n", described: "hello",
        refuse: nil)
    add("chunk extension after whitespace 5 ;a=b (refused or served)", wire: "5 ;a=b\r\nhello\r\n0\r\n\r\n",
        described: "hello", refuse: nil)
    add("chunk extension holding a bare CR", wire: "5;a=\rb\r\nhello\r\n0\r\n\r\n", described: "hello", refuse: 400)
    // The hub takes no trailer fields in a request (it would have to pass
    // them on after checking the head): refused, never framing.
    add("a trailer field (request trailers are refused)", wire: "5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
        described: "hello", refuse: 400)
    add("a Content-Length trailer (refused; trailers never frame)",
        wire: "5\r\nhello\r\n0\r\nContent-Length: \(smuggle.utf8.count)\r\n\r\n\(smuggle)", described: "hello",
        refuse: 400)
    return rows
  }

  // ---- Malformed heads ----

  static func headRows(_ c: SmugglingCallers) -> [SmugglingRow] {
    var rows: [SmugglingRow] = []
    func add(_ name: String, _ raw: String) {
      let tag = "head-\(rows.count)"
      var d = allowed(tag)
      d.allowed = nil
      rows.append(row(name, tag, Array(raw.replacingOccurrences(of: "ROW", with: tag).utf8), [d], refuse: 400))
    }
    let t = "\(version)?row=ROW", auth = "Authorization: Bearer \(c.smuggler)"
    let smuggle = String(decoding: deletePayload("head"), as: UTF8.self)
    add("bare LF line ends", "GET \(t) HTTP/1.1\nHost: x\n\(auth)\n\n")
    add("a bare LF inside the head, then Content-Length", "GET \(t) HTTP/1.1\r\nHost: x\r\n\(auth)\r\nX-A: b\nContent-Length: \(smuggle.utf8.count)\r\n\r\n\(smuggle)")
    add("a bare CR in a value", "GET \(t) HTTP/1.1\r\nHost: x\r\n\(auth)\r\nX-A: b\rContent-Length: 5\r\n\r\nhello")
    add("NUL in a value", "GET \(t) HTTP/1.1\r\nHost: x\r\n\(auth)\r\nX-A: b\u{0}c\r\n\r\n")
    add("NUL in a name", "GET \(t) HTTP/1.1\r\nHost: x\r\n\(auth)\r\nX-\u{0}A: b\r\n\r\n")
    add("DEL in a value", "GET \(t) HTTP/1.1\r\nHost: x\r\n\(auth)\r\nX-A: b\u{7F}\r\n\r\n")
    add("obs-fold", "GET \(t) HTTP/1.1\r\nHost: x\r\n\(auth)\r\nX-A: b\r\n c\r\n\r\n")
    add("obs-fold continuing Connection with content-length",
        "GET \(t) HTTP/1.1\r\nHost: x\r\n\(auth)\r\nContent-Length: \(smuggle.utf8.count)\r\nConnection: keep-alive,\r\n content-length\r\n\r\n\(smuggle)")
    add("whitespace before the first field", "GET \(t) HTTP/1.1\r\n Host: x\r\n\(auth)\r\n\r\n")
    add("space before a colon", "GET \(t) HTTP/1.1\r\nHost : x\r\n\(auth)\r\n\r\n")
    add("two spaces in the request line", "GET  \(t) HTTP/1.1\r\nHost: x\r\n\(auth)\r\n\r\n")
    add("a tab in the request line", "GET\t\(t) HTTP/1.1\r\nHost: x\r\n\(auth)\r\n\r\n")
    add("HTTP/1.2", "GET \(t) HTTP/1.2\r\nHost: x\r\n\(auth)\r\n\r\n")
    add("http/1.1 in lower case", "GET \(t) http/1.1\r\nHost: x\r\n\(auth)\r\n\r\n")
    add("no Host in HTTP/1.1", "GET \(t) HTTP/1.1\r\n\(auth)\r\n\r\n")
    add("two Host fields", "GET \(t) HTTP/1.1\r\nHost: x\r\nHost: y\r\n\(auth)\r\n\r\n")
    add("a head that ends in CR LF LF", "GET \(t) HTTP/1.1\r\nHost: x\r\n\(auth)\r\n\n\(smuggle)")
    // The fields the hub adds (X-Forwarded-For, -Proto) must not push a head
    // that it could read past what the next hop reads (128 fields): that
    // is a 431 here, never a head the agent refuses or misreads.
    func fill(_ n: Int) -> [String] { (0..<n).map { "X-Fill-\($0): v" } }
    // With the hub's own (X-Forwarded-For, -Proto, Impersonate-User,
    // -Group, -Uid, Audit-ID) and the peer's Kopilot-Forwarded-By, 119
    // fillers take the head to 128 fields.
    for (fillers, served) in [(126, false), (119, true)] {
      let tag = "head-\(rows.count)"
      var d = allowed(tag)
      if !served {
        d.allowed = false
        d.upstreamTarget = "-"
      }
      var r = row("\(fillers + 2) fields, \(served ? "served" : "past 128 with the hub's own: 431 by the hub")",
                  tag, request(target: d.target, token: c.smuggler, headers: fill(fillers)), [d],
                  refuse: served ? nil : 431)
      // The hub's words: the agent, had it been sent the head, would have
      // refused it too, and that would hide a hub that sends it.
      if !served { r.refusalSays = "the fields the hub adds" }
      rows.append(r)
    }
    return rows
  }

  // ---- Targets ----

  static func targetRows(_ c: SmugglingCallers) -> [SmugglingRow] {
    var rows: [SmugglingRow] = []
    func add(_ name: String, method: String = "GET", _ target: String, upstream: String, allowed: Bool?, refuse: Int?) {
      let tag = "target-\(rows.count)"
      let t = target.replacingOccurrences(of: "ROW", with: tag)
      let d = DescribedRequest(method: method, target: t, allowed: allowed,
                               upstreamTarget: upstream.replacingOccurrences(of: "ROW", with: tag))
      rows.append(row(name, tag, request(method, target: t, token: c.smuggler), [d], refuse: refuse))
    }
    add("absolute form for another cluster", "https://evil/proxy/default_b/version?row=ROW", upstream: "-",
        allowed: false, refuse: 0)
    add("absolute form for the allowed path (refused or served)", "https://evil/proxy/default_sample/version?row=ROW",
        upstream: "/version?row=ROW", allowed: nil, refuse: nil)
    add("absolute form http://127.0.0.1 (refused or served)", "http://127.0.0.1/proxy/default_sample/version?row=ROW",
        upstream: "/version?row=ROW", allowed: nil, refuse: nil)
    add("network-path //evil/proxy/default_b", "//evil/proxy/default_b/version?row=ROW", upstream: "-", allowed: false,
        refuse: 0)
    add("authority form", method: "CONNECT", "default_b:443", upstream: "-", allowed: false, refuse: 0)
    add("asterisk form", method: "OPTIONS", "*", upstream: "-", allowed: false, refuse: 0)
    add("dot segments out of the allowed path", "\(version)/../../default_b/version?row=ROW", upstream: "-",
        allowed: false, refuse: 0)
    add("dot segments to another cluster", "/proxy/default_sample/../default_b/version?row=ROW", upstream: "-",
        allowed: false, refuse: 0)
    add("encoded dot segments", "/proxy/default_sample/%2e%2e/default_b/version?row=ROW", upstream: "-",
        allowed: false, refuse: 0)
    add("dot segments in the query only (served)", "\(version)?row=ROW&x=/../../default_b",
        upstream: "/version?row=ROW&x=/../../default_b", allowed: true, refuse: nil)
    add("a method in lower case (refused or served as itself)", method: "get", "\(version)?row=ROW",
        upstream: "/version?row=ROW", allowed: nil, refuse: nil)
    add("control: DELETE of the allowed path", method: "DELETE", "\(version)?row=ROW", upstream: "-", allowed: false,
        refuse: 403)
    add("control: GET of another cluster", "/proxy/default_b/version?row=ROW", upstream: "-", allowed: false, refuse: 403)
    add("control: GET of another path", "/proxy/default_sample/api?row=ROW", upstream: "-", allowed: false, refuse: 403)
    add("control: GET of the allowed path", "\(version)?row=ROW", upstream: "/version?row=ROW", allowed: true, refuse: nil)
    return rows
  }

  // ---- Upgrades ----

  static func upgradeRows(_ c: SmugglingCallers) -> [SmugglingRow] {
    var rows: [SmugglingRow] = []
    func pipeline(_ name: String, token: String, upgradeHeaders: [String], upgradeAllowed: Bool?, shape: String = "") {
      let tag = "upgrade-\(rows.count)"
      var up = allowed(tag, query: shape)
      up.allowed = upgradeAllowed
      let after: [DescribedRequest] = [
        DescribedRequest(method: "DELETE", target: "\(version)?row=\(tag)&i=2", allowed: false, upstreamTarget: "-"),
        DescribedRequest(method: "GET", target: "/proxy/default_b/version?row=\(tag)&i=3", allowed: false,
                         upstreamTarget: "-"),
        allowed(tag, query: "&i=4"),
      ]
      let bytes = request(target: up.target, token: token, headers: upgradeHeaders)
        + after.flatMap { request($0.method, target: $0.target, token: token) }
      rows.append(SmugglingRow(name: name, steps: [.init(bytes: bytes, expect: ([up] + after).map(\.method))],
                               described: [up] + after, refuse: nil))
    }
    pipeline("a WebSocket upgrade by a get-only caller, then DELETE, another cluster, GET pipelined",
             token: c.smuggler, upgradeHeaders: ["Connection: Upgrade", "Upgrade: websocket"], upgradeAllowed: false)
    pipeline("an upgrade the member declines (200), then DELETE, another cluster, GET pipelined",
             token: c.upgrader, upgradeHeaders: ["Connection: Upgrade", "Upgrade: websocket"], upgradeAllowed: true)
    pipeline("an SPDY upgrade the member declines, then the same pipeline", token: c.upgrader,
             upgradeHeaders: ["Connection: upgrade", "Upgrade: SPDY/3.1"], upgradeAllowed: true)
    pipeline("Upgrade without Connection: upgrade (not an upgrade; refused or served), then the pipeline",
             token: c.smuggler, upgradeHeaders: ["Upgrade: websocket"], upgradeAllowed: nil)
    pipeline("Connection: upgrade without Upgrade (refused or served), then the pipeline", token: c.smuggler,
             upgradeHeaders: ["Connection: upgrade"], upgradeAllowed: nil)
    // A real switch: what follows the 101 is the tunnel's, and the member
    // reads it as tunnel data, never as a request.
    let tag = "upgrade-\(rows.count)"
    let up = allowed(tag, query: "&shape=upgrade")
    let inner = deletePayload(tag)
    rows.append(SmugglingRow(
      name: "an upgrade the member accepts (101), then a request's bytes, which are tunnel data",
      steps: [.init(bytes: request(target: up.target, token: c.upgrader, headers: ["Connection: Upgrade", "Upgrade: kp-echo"]),
                    expect: ["GET"]),
              .init(bytes: inner, expect: ["RAW:\(inner.count)"])],
      described: [up], refuse: nil, tunnelEcho: inner))
    return rows
  }

  // ---- Pipelining ----

  static func pipelineRows(_ c: SmugglingCallers) -> [SmugglingRow] {
    var rows: [SmugglingRow] = []
    do {
      let tag = "pipe-0"
      let d = (0..<100).map { allowed(tag, query: "&i=\($0)") }
      rows.append(row("100 GETs pipelined in one write", tag,
                      d.flatMap { request(target: $0.target, token: c.smuggler) }, d))
    }
    do {
      let tag = "pipe-1"
      var d: [DescribedRequest] = []
      var bytes: [UInt8] = []
      for i in 0..<12 {
        let body = Array("body-\(i)".utf8)
        let items: [(DescribedRequest, [UInt8])] = [
          (allowed(tag, query: "&i=\(i)a"), request(target: "\(version)?row=\(tag)&i=\(i)a", token: c.smuggler)),
          (DescribedRequest(method: "DELETE", target: "\(version)?row=\(tag)&i=\(i)b", allowed: false, upstreamTarget: "-"),
           request("DELETE", target: "\(version)?row=\(tag)&i=\(i)b", token: c.smuggler)),
          (DescribedRequest(method: "GET", target: "/proxy/default_b/version?row=\(tag)&i=\(i)c", allowed: false,
                            upstreamTarget: "-"),
           request(target: "/proxy/default_b/version?row=\(tag)&i=\(i)c", token: c.smuggler)),
          (allowed(tag, body: body, query: "&i=\(i)d"),
           request(target: "\(version)?row=\(tag)&i=\(i)d", token: c.smuggler, headers: ["Content-Length: \(body.count)"],
                   body: body)),
          (allowed(tag, method: "HEAD", query: "&i=\(i)e"), request("HEAD", target: "\(version)?row=\(tag)&i=\(i)e", token: c.smuggler)),
        ]
        for (x, b) in items {
          d.append(x)
          bytes += b
        }
      }
      rows.append(row("60 mixed requests pipelined: allowed GET, DELETE, another cluster, GET with a body, HEAD", tag,
                      bytes, d))
    }
    for (n, payload) in [("pipe-2", clusterBPayload), ("pipe-4", deletePayload)] {
      let tag = n
      let smuggled = payload(tag)
      var d = [allowed(tag, query: "&i=0"), allowed(tag, query: "&i=1")]
      var carrier = allowed(tag, body: smuggled, query: "&i=2")
      carrier.allowed = nil
      d.append(carrier)
      d.append(allowed(tag, query: "&i=3"))
      let bytes = request(target: d[0].target, token: c.smuggler) + request(target: d[1].target, token: c.smuggler)
        + request(target: d[2].target, token: c.smuggler,
                  headers: ["Content-Length: \(smuggled.count)", "Connection: content-length"], body: smuggled)
        + request(target: d[3].target, token: c.smuggler)
      let what = n == "pipe-2" ? "a GET of /proxy/default_b" : "a DELETE of kube-system/etcd"
      rows.append(SmugglingRow(name: "pipelined: 2 GETs, a Connection: content-length smuggle of \(what), a GET",
                               steps: [.init(bytes: bytes, expect: d.map(\.method))], described: d, refuse: nil))
    }
    do {
      let tag = "pipe-3"
      let body = Array("split".utf8)
      let d = [allowed(tag, query: "&i=0"), allowed(tag, body: body, query: "&i=1"), allowed(tag, query: "&i=2")]
      let bytes = request(target: d[0].target, token: c.smuggler)
        + request(target: d[1].target, token: c.smuggler, headers: ["Transfer-Encoding: chunked"], body: chunked(body))
        + request(target: d[2].target, token: c.smuggler)
      // One byte per write: every split point of every head and chunk.
      var steps = bytes.map { SmugglingRow.Step(bytes: [$0], expect: []) }
      steps[steps.count - 1].expect = d.map(\.method)
      rows.append(SmugglingRow(name: "3 requests (one chunked) written one byte at a time", steps: steps, described: d,
                               refuse: nil))
    }
    return rows
  }

  // ---- Responses without bodies ----

  static func responseRows(_ c: SmugglingCallers) -> [SmugglingRow] {
    var rows: [SmugglingRow] = []
    let shapes: [(String, String, String)] = [
      ("1xx", "GET", "100 Continue and 103 Early Hints before the 200"),
      ("1xx-cl", "GET", "102 Processing carrying Content-Length: 40"),
      ("204-body", "GET", "204 with Content-Length and a body that is a whole response"),
      ("204-chunked", "GET", "204 with a chunked body that is a whole response"),
      ("304-body", "GET", "304 with Content-Length and a body that is a whole response"),
      ("head-body", "HEAD", "a HEAD answered with a body that is a whole response"),
    ]
    for (shape, method, note) in shapes {
      let tag = "resp-\(rows.count)"
      let first = allowed(tag, method: method, query: "&i=0&shape=\(shape)")
      let next = [allowed(tag, query: "&i=1"), allowed(tag, query: "&i=2")]
      rows.append(SmugglingRow(
        name: "\(note), then two GETs on the same connection",
        steps: [.init(bytes: request(method, target: first.target, token: c.smuggler), expect: [method])]
          + next.map { .init(bytes: request(target: $0.target, token: c.smuggler), expect: ["GET"]) },
        described: [first] + next, refuse: nil))
      // The agent may keep the member connection for the next caller.
      let tag2 = "resp-\(rows.count)"
      let fresh = (0..<3).map { allowed(tag2, query: "&i=\($0)") }
      rows.append(SmugglingRow(
        name: "after the \(shape) row: three GETs on a new connection",
        steps: fresh.map { .init(bytes: request(target: $0.target, token: c.smuggler), expect: ["GET"]) },
        described: fresh, refuse: nil))
      let tag3 = "resp-\(rows.count)"
      let piped = [allowed(tag3, method: method, query: "&i=0&shape=\(shape)"), allowed(tag3, query: "&i=1")]
      rows.append(SmugglingRow(
        name: "\(note), with a GET pipelined behind it",
        steps: [.init(bytes: piped.flatMap { request($0.method, target: $0.target, token: c.smuggler) }, expect: piped.map(\.method))],
        described: piped, refuse: nil))
    }
    return rows
  }
}

/// The corpus against one hub in the embedded mode (a state folder), with
/// two member clusters, each with its own agent and recording member.
final class SmugglingTests: E2ETestCase {
  static let smuggler = "e2e-smuggler-may-only-get-version-0123"
  static let upgrader = "e2e-upgrader-may-get-and-create-version"
  static let admin = "e2e-smuggling-admin-may-do-anything-01"
  static let clusterB = "e2e-cluster-b-agent-token-0123456789ab"

  var harness: SmugglingHarness!
  var callers: SmugglingCallers { SmugglingCallers(smuggler: Self.smuggler, upgrader: Self.upgrader) }

  override func setUpWithError() throws {
    try super.setUpWithError()
    try startWorld { w in
      let a = try RecordingUpstream.start(w, name: "member-a")
      let b = try RecordingUpstream.start(w, name: "member-b")
      let (hub, hubPort) = try Self.startHub(w)
      try Self.startAgent(w, name: "agent-a", token: Tokens.sample, member: a, cluster: "default_sample", hub: hub,
                          port: hubPort)
      try Self.startAgent(w, name: "agent-b", token: Self.clusterB, member: b, cluster: "default_b", hub: hub,
                          port: hubPort)
      harness = SmugglingHarness(world: w, hubPort: hubPort, memberA: a, memberB: b)
      try Self.checkBothClustersServe(w, hubPort: hubPort, a: a, b: b, admin: Self.admin)
    }
  }

  /// The hub's state folder: two clusters, three callers, and rules that
  /// let the smuggler `get` one path only.
  static func startHub(_ w: E2EWorld) throws -> (ManagedProcess, Int) {
    let state = w.dir.appendingPathComponent("state")
    try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
    try """
      apiVersion: kopilot.smartx.com/v1alpha1
      kind: Cluster
      metadata: {namespace: default, name: sample}
      token: \(Tokens.sample)
      ---
      apiVersion: kopilot.smartx.com/v1alpha1
      kind: Cluster
      metadata: {namespace: default, name: b}
      token: \(clusterB)

      """.write(to: state.appendingPathComponent("clusters.yaml"), atomically: true, encoding: .utf8)
    try """
      \(smuggler),smuggler,smuggler-uid,
      \(upgrader),upgrader,upgrader-uid,
      \(admin),admin,admin-uid,"smuggling:admins"

      """.write(to: state.appendingPathComponent("tokens.csv"), atomically: true, encoding: .utf8)
    try """
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRole
      metadata: {name: version-get}
      rules:
        - nonResourceURLs: ["/proxy/default_sample/version"]
          verbs: ["get"]
      ---
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRoleBinding
      metadata: {name: smuggler}
      roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: version-get}
      subjects:
        - {kind: User, name: smuggler, apiGroup: rbac.authorization.k8s.io}
      ---
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRole
      metadata: {name: version-get-create}
      rules:
        - nonResourceURLs: ["/proxy/default_sample/version"]
          verbs: ["get", "create"]
      ---
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRoleBinding
      metadata: {name: upgrader}
      roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: version-get-create}
      subjects:
        - {kind: User, name: upgrader, apiGroup: rbac.authorization.k8s.io}
      ---
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRole
      metadata: {name: everything}
      rules:
        - nonResourceURLs: ["/proxy/*"]
          verbs: ["*"]
      ---
      apiVersion: rbac.authorization.k8s.io/v1
      kind: ClusterRoleBinding
      metadata: {name: admins}
      roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: everything}
      subjects:
        - {kind: Group, name: "smuggling:admins", apiGroup: rbac.authorization.k8s.io}

      """.write(to: state.appendingPathComponent("rbac.yaml"), atomically: true, encoding: .utf8)
    let hub = try w.start("hub", try Paths.binary("kopilot-hub"), [
      "--state-dir", state.path, "--bind", "127.0.0.1:0", "--tls-cert", w.certs.cert, "--tls-key", w.certs.key,
      "--access-log",
    ])
    let line = try hub.waitFor("kopilot-hub listening on 127.0.0.1:")
    let port = Int((line.components(separatedBy: "listening on 127.0.0.1:").last ?? "").prefix { $0.isNumber }) ?? 0
    guard port > 0 else { throw E2EError("no hub port in: \(line)") }
    return (hub, port)
  }

  /// An agent of `cluster` dialing the hub at `port`, its member the
  /// recorder; returns once `hub` logs the session.
  static func startAgent(_ w: E2EWorld, name: String, token: String, member: RecordingUpstream, cluster: String,
                         hub: ManagedProcess, port: Int) throws {
    let agent = try w.start(name, try Paths.binary("kopilot-agent"), [
      "--connect", "wss://127.0.0.1:\(port)/connect?token=\(token)", "--hub-ca", w.certs.ca,
      "--apiserver", member.url, "--token-file", w.tokenFile.path, "--ca-file", w.certs.ca,
    ])
    try agent.waitFor("connected to the hub", timeout: 30)
    try hub.waitFor("agent session up: cluster=\(cluster)", timeout: 20)
  }

  /// Proves the setup can see what it must: the admin reaches both members
  /// (so "b saw nothing" means something), and the smuggler its one path.
  static func checkBothClustersServe(_ w: E2EWorld, hubPort: Int, a: RecordingUpstream, b: RecordingUpstream,
                                     admin: String) throws {
    for (cluster, member) in [("default_sample", a), ("default_b", b)] {
      let r = try w.curl(["-H", "Authorization: Bearer \(admin)", "-o", "/dev/null", "-w", "%{http_code}",
                          "https://127.0.0.1:\(hubPort)/proxy/\(cluster)/version?setup=1"], timeout: 20)
      guard r.text == "200", member.entries().contains(where: { $0["target"] as? String == "/version?setup=1" }) else {
        throw E2EError("the admin could not reach \(cluster): \(r.text) \(r.stderr)")
      }
    }
  }

  func testHeadersNamedInConnectionAreRefused() throws {
    try harness.run(SmugglingCorpus.connectionRows(callers), group: "Connection names a header")
  }

  func testIdentityHeadersNeverReachTheMember() throws {
    try harness.run(SmugglingCorpus.identityRows(callers), group: "identity headers")
  }

  func testContentLengthAndTransferEncoding() throws {
    try harness.run(SmugglingCorpus.framingRows(callers), group: "Content-Length and Transfer-Encoding")
  }

  func testChunkedBodies() throws {
    try harness.run(SmugglingCorpus.chunkRows(callers), group: "chunked bodies")
  }

  func testMalformedHeads() throws {
    try harness.run(SmugglingCorpus.headRows(callers), group: "malformed heads")
  }

  func testTargets() throws {
    try harness.run(SmugglingCorpus.targetRows(callers), group: "targets")
  }

  func testRequestsPipelinedAfterAnUpgrade() throws {
    try harness.run(SmugglingCorpus.upgradeRows(callers), group: "upgrades")
  }

  func testPipelinedRequests() throws {
    try harness.run(SmugglingCorpus.pipelineRows(callers), group: "pipelining")
  }

  func testBodilessResponsesDoNotDesynchronize() throws {
    try harness.run(SmugglingCorpus.responseRows(callers), group: "1xx, HEAD, 204 and 304 answers")
  }
}
