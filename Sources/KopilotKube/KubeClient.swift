import Foundation
import Logging

// API SKELETON (lead, issue 5): the signatures the hub codes against. The
// kube-client branch replaces the bodies; keep the signatures (or tell the
// lead) so the other branches merge.

extension KubeClientConfig {
  /// A pod's own configuration: KUBERNETES_SERVICE_HOST/PORT, the
  /// service-account token file (re-read as it rotates), ca.crt and namespace
  /// from `directory`. Throws naming what is missing.
  public static func inCluster(environment: [String: String] = ProcessInfo.processInfo.environment,
                               directory: String = serviceAccountDirectory) throws -> KubeClientConfig {
    throw KubeAPIError(code: 0, reason: "NotImplemented", message: "in-cluster configuration")
  }

  /// The current (or named) context of a kubeconfig; its namespace too.
  public static func kubeconfig(path: String, context: String? = nil) throws -> KubeClientConfig {
    throw KubeAPIError(code: 0, reason: "NotImplemented", message: "kubeconfig")
  }
}

/// A client of one API server: JSON requests, watches, and the reviews.
/// Safe from any thread; requests run concurrently.
public final class KubeClient: ReviewClient, @unchecked Sendable {
  public let config: KubeClientConfig

  /// - requestTimeout: the default bound on one request (not on watches).
  public init(config: KubeClientConfig, requestTimeout: TimeInterval = 10,
              logger: Logger = Logger(label: "kopilot.kube")) throws {
    self.config = config
  }

  /// One request. 2xx: the body. Otherwise throws `KubeAPIError` from the
  /// `Status` body (or one made up from the status line), code 0 when no
  /// answer came in time or at all.
  public func send(method: String, path: String, query: [(String, String)] = [], body: Data? = nil,
                   contentType: String = "application/json", timeout: TimeInterval? = nil) async throws -> Data {
    throw KubeAPIError(code: 0, reason: "NotImplemented", message: "send")
  }

  /// A watch (`watch=1` is added): events as they arrive. Finishes when the
  /// server ends the stream (timeoutSeconds); throws on a non-2xx answer or
  /// a broken connection. Cancelling the consuming task closes it.
  public func watch(path: String, query: [(String, String)] = []) -> AsyncThrowingStream<WatchEvent, Error> {
    AsyncThrowingStream { $0.finish(throwing: KubeAPIError(code: 0, reason: "NotImplemented", message: "watch")) }
  }

  public func tokenReview(token: String, audiences: [String]) async throws -> TokenReviewResult {
    throw KubeAPIError(code: 0, reason: "NotImplemented", message: "tokenReview")
  }

  public func subjectAccessReview(_ request: AccessReviewRequest) async throws -> AccessReviewResult {
    throw KubeAPIError(code: 0, reason: "NotImplemented", message: "subjectAccessReview")
  }

  /// Closes connections; no request may follow.
  public func shutdown() {}
}

/// Keeps a local copy of a collection: list, then watch from the list's
/// resourceVersion with bookmarks; a 410 (HTTP or ERROR event) lists again;
/// other errors retry with jittered exponential backoff (0.5 s doubling to
/// 30 s); a watch that ends is resumed from the last resourceVersion seen.
/// The handler gets events one at a time, in order, on the informer's own
/// task: `.synced` with the whole collection after every (re)list, then
/// single changes.
public final class Informer<Object: KubeObject>: @unchecked Sendable {
  public enum Event: Sendable {
    case synced([Object])
    case added(Object)
    case modified(Object)
    case deleted(Object)
  }

  /// - path: the collection, e.g. `/apis/kopilot.smartx.com/v1alpha1/clusters`.
  /// - query: selectors (`labelSelector`, `fieldSelector`) for list and watch.
  /// - what: a name for logs ("clusters").
  public init(client: KubeClient, path: String, query: [(String, String)] = [], what: String,
              logger: Logger, handler: @escaping @Sendable (Event) -> Void) {}

  public func start() {}
  public func stop() {}
  /// Whether a first list has completed.
  public var hasSynced: Bool { false }
  /// Blocks until the first list completes or the time is up.
  public func waitForSync(timeout: TimeInterval) -> Bool { false }
  /// The cache now.
  public var objects: [Object] { [] }
}
