import Foundation
import KopilotBase
import KopilotKube
import Logging

/// A ConfigMap, its data only.
public struct ConfigMapObject: KubeObject, Equatable {
  public var metadata: ObjectMeta
  public var data: [String: String]?
}

/// `public_addr` of ConfigMap `kopilot-hub`, as the seed's install flow has
/// the user create it after the hub: read live, so no restart is needed.
public final class PublicAddress: Sendable {
  public static let configMapName = "kopilot-hub"
  public static let key = "public_addr"
  private let current = Mutex<String?>(nil)

  public init() {}

  public var value: String? { current.withLock { $0 } }

  public func apply(_ event: Informer<ConfigMapObject>.Event, log: Logger) {
    var next: String?? = .none
    switch event {
    case .synced(let all): next = .some(all.first { $0.metadata.name == Self.configMapName }?.data?[Self.key])
    case .added(let cm), .modified(let cm):
      if cm.metadata.name == Self.configMapName { next = .some(cm.data?[Self.key]) }
    case .deleted(let cm):
      if cm.metadata.name == Self.configMapName { next = .some(nil) }
    }
    guard case .some(let raw) = next else { return }
    let v = raw?.trimmingCharacters(in: .whitespacesAndNewlines)
    let value = v?.isEmpty == false ? v : nil
    let changed = current.withLock { current in
      defer { current = value }
      return value != current
    }
    if changed {
      if let value {
        log.notice("public address: \(value) (ConfigMap \(Self.configMapName), key \(Self.key))")
      } else {
        log.warning("no public address: agent manifests answer 503 until ConfigMap \(Self.configMapName) has \(Self.key)")
      }
    }
  }
}
