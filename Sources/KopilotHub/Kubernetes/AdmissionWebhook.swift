import Foundation
import KopilotIO

/// The admission webhook for Cluster objects, which the hub serves to the
/// host cluster's API server (AdmissionReview `admission.k8s.io/v1`;
/// `v1beta1`, the same shape, is answered in kind).
///
/// - mutate: a CREATE or UPDATE whose top-level `token` is missing, null or
///   empty gets one: on an UPDATE the old object's token when it was valid
///   (a `kubectl replace` of a file without the token must not rotate it
///   and cut the agents off), otherwise 32 random bytes, URL-safe base64
///   (256 bits, 43 characters). A JSONPatch `add` or `replace` of `/token`;
///   nothing else is ever touched.
/// - validate: refuses a CREATE or UPDATE whose token is missing, empty,
///   not a string, shorter than `Cluster.minimumTokenLength` or not
///   printable ASCII without spaces, or whose name or namespace holds '_'.
///   DELETE, CONNECT and subresources (`status`) pass untouched.
///
/// Both are pure: bytes of the request in, bytes of the answer out. A body
/// that is not an AdmissionReview but has a readable `request.uid` is
/// answered with `allowed: false` and why; one without a uid throws
/// `AdmissionWebhook.Malformed` (the router answers 400).
public enum AdmissionWebhook {
  public struct Malformed: Error, Hashable, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
  }

  public static let apiVersion = "admission.k8s.io/v1"
  static let apiVersions: Set<String> = ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]

  public static func mutate(body: Data) throws -> Data {
    try answer(body) { r in
      guard r.checksTheObject else { return .allow }
      guard let object = r.object else { return .refuse("request.object is missing") }
      let present = object.keys.contains("token")
      let token = object["token"]
      let empty = !present || token is NSNull || (token as? String)?.isEmpty == true
      // A token of the wrong type is validate's to refuse, not ours to mend.
      guard empty else { return .allow }
      var fill = RandomToken.make()
      if r.operation == "UPDATE", let old = r.oldObject?["token"] as? String, ClusterRules.tokenProblem(old) == nil {
        fill = old
      }
      let patch: [[String: Any]] = [["op": present ? "replace" : "add", "path": "/token", "value": fill]]
      return .patch(try JSONSerialization.data(withJSONObject: patch, options: [.sortedKeys, .withoutEscapingSlashes]))
    }
  }

  public static func validate(body: Data) throws -> Data {
    try answer(body) { r in
      guard r.checksTheObject else { return .allow }
      guard let object = r.object else { return .refuse("request.object is missing") }
      let meta = object["metadata"] as? [String: Any] ?? [:]
      let name = meta["name"] as? String ?? r.name ?? ""
      let generateName = meta["generateName"] as? String ?? ""
      let namespace = meta["namespace"] as? String ?? r.namespace ?? ""
      var problems: [String] = []
      if name.contains("_") || generateName.contains("_") {
        problems.append("metadata.name must not contain '_': the cluster id namespace_name must stay unambiguous")
      }
      if namespace.contains("_") {
        problems.append("metadata.namespace must not contain '_': the cluster id namespace_name must stay unambiguous")
      }
      let token = object["token"]
      if let token, !(token is NSNull), !(token is String) {
        problems.append("token must be a string")
      } else if let p = ClusterRules.tokenProblem(token as? String) {
        problems.append(p)
      }
      guard problems.isEmpty else {
        let who = name.isEmpty ? "Cluster" : "Cluster \(namespace.isEmpty ? "" : namespace + "/")\(name)"
        return .refuse("\(who): \(problems.joined(separator: "; "))")
      }
      return .allow
    }
  }

  /// What a webhook decided about one request.
  enum Verdict {
    case allow
    /// Allowed with this JSONPatch (its JSON text).
    case patch(Data)
    /// Refused, with the message the API server shows the user.
    case refuse(String)
  }

  /// The parts of `request` the two webhooks read.
  struct Request {
    var uid: String
    var apiVersion: String
    var kind: String?
    var operation: String
    var subResource: String?
    var name: String?
    var namespace: String?
    var object: [String: Any]?
    var oldObject: [String: Any]?

    /// CREATE or UPDATE of a Cluster itself: what the rules are about. A
    /// DELETE, a CONNECT or a status update passes untouched, and so does a
    /// kind the webhook was not meant to see.
    var checksTheObject: Bool {
      (operation == "CREATE" || operation == "UPDATE")
        && (subResource ?? "").isEmpty
        && (kind == nil || kind == Cluster.kind)
    }
  }

  static func answer(_ body: Data, _ decide: (Request) throws -> Verdict) throws -> Data {
    let top: Any
    do {
      top = try JSONSerialization.jsonObject(with: body, options: [.fragmentsAllowed])
    } catch {
      throw Malformed(message: "the body is not JSON: expected an AdmissionReview (\(apiVersion))")
    }
    guard let review = top as? [String: Any] else {
      throw Malformed(message: "the body is not a JSON object: expected an AdmissionReview (\(apiVersion))")
    }
    guard let request = review["request"] as? [String: Any], let uid = request["uid"] as? String, !uid.isEmpty else {
      throw Malformed(message: "the AdmissionReview has no request.uid")
    }
    // From here on every answer names the uid, so the API server can use it.
    let version = review["apiVersion"] as? String ?? ""
    guard review["kind"] as? String == "AdmissionReview", apiVersions.contains(version) else {
      return try encode(version: apiVersion, uid: uid,
                        .refuse("expected kind AdmissionReview, apiVersion \(apiVersion) (or v1beta1)"))
    }
    guard let operation = request["operation"] as? String, !operation.isEmpty else {
      return try encode(version: version, uid: uid, .refuse("the AdmissionReview has no request.operation"))
    }
    let r = Request(
      uid: uid, apiVersion: version, kind: (request["kind"] as? [String: Any])?["kind"] as? String,
      operation: operation, subResource: request["subResource"] as? String,
      name: request["name"] as? String, namespace: request["namespace"] as? String,
      object: request["object"] as? [String: Any], oldObject: request["oldObject"] as? [String: Any])
    return try encode(version: version, uid: uid, decide(r))
  }

  private struct Review: Encodable {
    var apiVersion: String
    var kind = "AdmissionReview"
    var response: Response
  }

  private struct Response: Encodable {
    var uid: String
    var allowed: Bool
    var patchType: String?
    /// Base64 of the JSONPatch text (a `[]byte` in Go's JSON).
    var patch: String?
    var status: Status?
  }

  /// `metav1.Status`, as much of it as a refusal needs.
  private struct Status: Encodable {
    var status = "Failure"
    var message: String
    var reason = "BadRequest"
    var code = 400
  }

  static func encode(version: String, uid: String, _ verdict: Verdict) throws -> Data {
    var response = Response(uid: uid, allowed: true)
    switch verdict {
    case .allow: break
    case .patch(let p):
      response.patchType = "JSONPatch"
      response.patch = p.base64EncodedString()
    case .refuse(let message):
      response.allowed = false
      response.status = Status(message: message)
    }
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return try encoder.encode(Review(apiVersion: version, response: response))
  }
}
