import Foundation
import KopilotBase
import KopilotKube
import Logging

/// The Cluster's `status`, which every replica keeps its own entry of:
/// `hubs` lists the replicas holding agent sessions of the cluster (and
/// since when), `sessions` sums them and `connected` says whether any does.
/// `kubectl get clusters` shows the last two; peers route by `hubs`.
public enum ClusterStatusEdit {
  /// The status with this replica's entry set to `entry` (nil: removed) and
  /// the entries of replicas not in `liveReplicas` dropped (nil: keep all,
  /// the replica list is not known yet). Returns nil when nothing changes.
  public static func apply(status old: [String: Any]?, replica: String, address: String,
                           entry: LocalSessions.Entry?, liveReplicas: Set<String>?) -> [String: Any]? {
    let oldHubs = old?["hubs"] as? [[String: Any]] ?? []
    var hubs = oldHubs.filter { h in
      guard let name = h["name"] as? String, name != replica else { return false }
      return liveReplicas.map { $0.contains(name) } ?? true
    }
    if let entry {
      hubs.append(["name": replica, "address": address, "sessions": entry.count, "since": timestamp(entry.since)])
    }
    hubs.sort { ($0["name"] as? String ?? "") < ($1["name"] as? String ?? "") }
    let total = hubs.reduce(0) { $0 + (($1["sessions"] as? Int) ?? 0) }
    var new = old ?? [:]
    new["hubs"] = hubs
    new["sessions"] = total
    new["connected"] = total > 0
    let before = (old ?? [:]).filter { ["hubs", "sessions", "connected"].contains($0.key) }
    let after = new.filter { ["hubs", "sessions", "connected"].contains($0.key) }
    return canonical(before) == canonical(after) ? nil : new
  }

  static func canonical(_ obj: [String: Any]) -> Data? {
    try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
  }

  /// RFC 3339 in UTC with seconds, as Kubernetes writes times.
  public static func timestamp(_ d: Date) -> String {
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime]
    return f.string(from: d)
  }

  /// The replica names with sessions in a decoded status.
  public static func holders(_ status: [String: Any]?) -> [String] {
    (status?["hubs"] as? [[String: Any]] ?? []).compactMap { h in
      ((h["sessions"] as? Int) ?? 0) > 0 ? h["name"] as? String : nil
    }
  }
}

/// Writes this replica's entry in each Cluster's status when its sessions
/// change: coalesced (a storm of reconnects is one write per cluster), with
/// optimistic concurrency (PUT /status with the resourceVersion read; a 409
/// from another replica's write reads again), and retried with backoff when
/// the host API fails.
public final class ClusterStatusWriter: Sendable {
  let client: KubeClient
  let replica: String
  let address: String
  let local: LocalSessions
  let peers: PeerTable
  let logger: Logger
  private struct State {
    var dirty: Set<String> = []
    var worker: Task<Void, Never>?
    var stopped = false
  }
  private let state = Mutex(State())

  public init(client: KubeClient, replica: String, address: String, local: LocalSessions, peers: PeerTable,
              logger: Logger = Logger(label: "kopilot.hub.status")) {
    self.client = client
    self.replica = replica
    self.address = address
    self.local = local
    self.peers = peers
    self.logger = logger
  }

  /// The cluster's entry needs writing (any thread, cheap).
  public func touch(_ clusterID: String) {
    state.withLock { s in
      guard !s.stopped else { return }
      s.dirty.insert(clusterID)
      if s.worker == nil {
        s.worker = Task { [weak self] in await self?.drain() }
      }
    }
  }

  private func drain() async {
    while true {
      // Coalesce: a burst of session changes becomes one write per cluster.
      try? await Task.sleep(nanoseconds: 250_000_000)
      guard let batch = takeBatch() else { return }
      for id in batch.sorted() where !(await write(id)) {
        // Not written (host API trouble): try again on a later round.
        try? await Task.sleep(nanoseconds: 2_000_000_000)
        markDirty(id)
      }
    }
  }

  /// The clusters to write now; nil ends the worker (nothing left, or stopped).
  private func takeBatch() -> Set<String>? {
    state.withLock { s in
      let batch = s.dirty
      s.dirty.removeAll()
      if batch.isEmpty || s.stopped {
        s.worker = nil
        return nil
      }
      return batch
    }
  }

  private func markDirty(_ id: String) {
    state.withLock { _ = $0.dirty.insert(id) }
  }

  static func path(_ clusterID: String) -> String? {
    guard let i = clusterID.firstIndex(of: "_") else { return nil }
    let ns = clusterID[..<i], name = clusterID[clusterID.index(after: i)...]
    guard !ns.isEmpty, !name.isEmpty else { return nil }
    return "/apis/kopilot.smartx.com/v1alpha1/namespaces/\(ns)/clusters/\(name)"
  }

  /// One cluster's entry, read-modify-write; true when done (or nothing to
  /// do), false to retry later.
  @discardableResult
  public func write(_ clusterID: String, entry override: LocalSessions.Entry?? = nil) async -> Bool {
    guard let path = Self.path(clusterID) else { return true }
    for _ in 0..<5 {
      do {
        let data = try await client.send(method: "GET", path: path)
        guard var obj = try JSONSerialization.jsonObject(with: data) as? [String: Any] else { return true }
        let entry = override ?? local.entry(clusterID)
        guard let status = ClusterStatusEdit.apply(status: obj["status"] as? [String: Any], replica: replica,
                                                   address: address, entry: entry, liveReplicas: peers.knownNames())
        else { return true }
        obj["status"] = status
        _ = try await client.send(method: "PUT", path: path + "/status", body: try JSONSerialization.data(withJSONObject: obj))
        return true
      } catch let e as KubeAPIError where e.code == 409 {
        continue  // another replica wrote first: read again
      } catch let e as KubeAPIError where e.code == 404 {
        return true  // the cluster is gone
      } catch {
        logger.warning("cluster \(clusterID.replacingOccurrences(of: "_", with: "/")): status not written: \(error)")
        return false
      }
    }
    return false
  }

  /// At shutdown: this replica's entries removed, within `deadline` seconds.
  public func withdraw(clusters: [String], deadline: TimeInterval = 3) {
    state.withLock { s in
      s.stopped = true
      s.worker?.cancel()
    }
    let done = DispatchSemaphore(value: 0)
    Task {
      await withTaskGroup(of: Void.self) { g in
        for id in clusters { g.addTask { await self.write(id, entry: .some(nil)) } }
      }
      done.signal()
    }
    _ = done.wait(timeout: .now() + deadline)
  }
}
