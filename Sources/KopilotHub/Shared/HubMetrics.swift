import Foundation
import KopilotBase
import KopilotIO
import Prometheus

/// The hub's metrics, served at /metrics in the Prometheus text format.
/// Everything is counted from events the hub already has (sessions coming
/// and going, answers given, proxied requests ending), so a scrape costs no
/// round trip to the loop.
///
/// A `cluster` label is a registered cluster's ID or `unknown`, never what
/// a caller wrote: a label value lives as long as the process, and a caller
/// must not be able to make one per request. And a request is counted out
/// of `requests_in_flight` on the label it was counted in on, even when the
/// registry changed in between (see `proxyStarted`).
public final class HubMetrics: Sendable {
  public let registry = PrometheusCollectorRegistry()
  /// Whether an ID names a registered cluster (the registry's).
  private let isCluster: @Sendable (String) -> Bool
  /// The metrics made so far, by label, and the requests in flight.
  private struct State {
    var sessions: [String: Gauge] = [:]
    var inFlight: [String: Gauge] = [:]
    /// Requests in flight by the key the core will report when they end,
    /// with the label they were counted under.
    var pending: [String: (label: String, count: Int)] = [:]
    var bytes: [String: (up: Counter, down: Counter)] = [:]
    var codes: [Int: Counter] = [:]
    var reviewGauges: [String: Gauge] = [:]
    var beforeRender: (@Sendable (HubMetrics) -> Void)?
    var auditDropped: (@Sendable () -> UInt64)?
    var auditGauge: Gauge?
  }
  private let state = Mutex(State())
  private let decisions: (allowed: Counter, denied: Counter, unauthenticated: Counter)
  private let latency: DurationHistogram

  /// The label for anything that is not a registered cluster's ID.
  public static let unknownCluster = "unknown"

  /// - isCluster: whether an ID is a registered cluster's
  ///   (`registry.cluster(id:) != nil`); anything else is labelled
  ///   `unknown`.
  public init(isCluster: @escaping @Sendable (String) -> Bool) {
    self.isCluster = isCluster
    decisions = (
      registry.makeCounter(descriptor: metric("kopilot_hub_authorization_decisions_total", "Caller requests by authentication and authorization outcome."), labels: [("decision", "allowed")]),
      registry.makeCounter(descriptor: metric("kopilot_hub_authorization_decisions_total", "Caller requests by authentication and authorization outcome."), labels: [("decision", "denied")]),
      registry.makeCounter(descriptor: metric("kopilot_hub_authorization_decisions_total", "Caller requests by authentication and authorization outcome."), labels: [("decision", "unauthenticated")]))
    latency = registry.makeDurationHistogram(
      descriptor: metric("kopilot_hub_request_duration_seconds",
                         "Time from a proxied request's head to the end of its response."),
      buckets: [.milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
                .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5), .seconds(30)])
  }

  /// `cluster` is the ID the router accepted the agent for (a registered
  /// cluster's, looked up by its token), as the core reports it: used as is,
  /// so a session's down meets its up on one label even after the cluster
  /// was removed.
  public func sessionChanged(cluster: String, up: Bool) {
    gauge(\.sessions, cluster, "kopilot_hub_agent_sessions", "Live agent sessions per cluster.")
      .increment(by: up ? 1 : -1)
  }

  /// A request the core will proxy or forward, and report through
  /// `Hub.onProxied` with `key` as its `cluster`: the cluster ID of a
  /// `.proxy` or `.forward` answer. Counted in flight
  /// under `key` when it is a registered cluster, else `unknown`; the label
  /// stays with the key until its last request in flight ends, so a cluster
  /// registered or removed meanwhile moves nothing between labels.
  public func proxyStarted(cluster key: String) {
    let label = state.withLock { s in
      if let p = s.pending[key] {
        s.pending[key] = (p.label, p.count + 1)
        return p.label
      }
      let label = self.label(key)
      s.pending[key] = (label, 1)
      return label
    }
    gauge(\.inFlight, label, "kopilot_hub_requests_in_flight", "Proxied requests (open tunnel streams) per cluster.")
      .increment()
  }

  /// A request the core reports ended (`Hub.onProxied`).
  public func proxyEnded(_ r: Hub.ProxiedRequest) {
    proxyEnded(cluster: r.cluster, status: r.status, bytesUp: r.bytesUp, bytesDown: r.bytesDown,
               durationMicros: r.durationMicros)
  }

  /// The same, field by field; `cluster` is the key it was started under.
  public func proxyEnded(cluster key: String, status: Int, bytesUp: UInt64, bytesDown: UInt64, durationMicros: UInt64) {
    let (label, counted) = state.withLock { s in
      if let p = s.pending[key] {
        s.pending[key] = p.count > 1 ? (p.label, p.count - 1) : nil
        return (p.label, true)
      }
      // Never counted in (a core event without a start): nothing to take
      // out of the gauge.
      return (self.label(key), false)
    }
    if counted {
      gauge(\.inFlight, label, "kopilot_hub_requests_in_flight", "Proxied requests (open tunnel streams) per cluster.")
        .decrement()
    }
    let b = byteCounters(label)
    b.up.increment(by: Int64(bytesUp))
    b.down.increment(by: Int64(bytesDown))
    answered(status: status)
    latency.recordNanoseconds(Int64(durationMicros) * 1000)
  }

  /// Any answer to a caller, proxied or local; status 0 is a tunnel that
  /// broke before the response began.
  public func answered(status: Int) {
    let c = state.withLock { s in
      if let c = s.codes[status] { return c }
      let made = registry.makeCounter(descriptor: metric("kopilot_hub_requests_total", "Caller requests by response status (0: the tunnel broke first)."), labels: [("code", String(status))])
      s.codes[status] = made
      return made
    }
    c.increment()
  }

  public func decided(allowed: Bool) { (allowed ? decisions.allowed : decisions.denied).increment() }
  public func unauthenticated() { decisions.unauthenticated.increment() }

  /// Called before each scrape: values read from elsewhere (the review
  /// caches' counters) are copied in.
  public var beforeRender: (@Sendable (HubMetrics) -> Void)? {
    get { state.withLock { $0.beforeRender } }
    set { state.withLock { $0.beforeRender = newValue } }
  }

  /// Read at each scrape: the audit log's dropped events.
  public var auditDropped: (@Sendable () -> UInt64)? {
    get { state.withLock { $0.auditDropped } }
    set {
      state.withLock { s in
        s.auditDropped = newValue
        if s.auditGauge == nil, newValue != nil {
          s.auditGauge = registry.makeGauge(descriptor: metric(
            "kopilot_hub_audit_events_dropped", "Audit events dropped since start: the audit log could not keep up."))
        }
      }
    }
  }

  public func render() -> String {
    beforeRender?(self)
    let (read, gauge) = state.withLock { ($0.auditDropped, $0.auditGauge) }
    if let read, let gauge { gauge.set(Double(read())) }
    return registry.emitToString()
  }

  /// The host-cluster review caches of the Kubernetes mode: `kind` is
  /// "token" or "access"; the values are running totals and a size.
  public func reviews(kind: String, _ s: ReviewStats) {
    let values: [(String, Int)] = [("hits", s.hits), ("misses", s.misses), ("coalesced", s.coalesced),
                                   ("reviews", s.reviews), ("errors", s.errors), ("timeouts", s.timeouts),
                                   ("overloaded", s.overloaded)]
    func gauge(_ name: String, _ help: String, _ labels: [(String, String)]) -> Gauge {
      let key = name + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
      return state.withLock { s in
        if let g = s.reviewGauges[key] { return g }
        let g = registry.makeGauge(descriptor: metric(name, help), labels: labels)
        s.reviewGauges[key] = g
        return g
      }
    }
    for (outcome, v) in values {
      gauge("kopilot_hub_reviews", "Host-cluster reviews by kind and outcome since start (hits and misses are cache lookups).",
            [("kind", kind), ("outcome", outcome)]).set(Double(v))
    }
    gauge("kopilot_hub_review_cache_entries", "Entries in a review cache.", [("kind", kind)]).set(Double(s.cacheEntries))
    gauge("kopilot_hub_review_cache_bytes", "Bytes a review cache holds, keys and answers.", [("kind", kind)])
      .set(Double(s.cacheBytes))
  }

  /// The label for a cluster ID.
  private func label(_ id: String) -> String { isCluster(id) ? id : Self.unknownCluster }

  /// The longest cluster ID: a DNS-1123 label (63), '_', a DNS-1123
  /// subdomain (253). hub.c sizes its field to hold it.
  public static let maxClusterIDBytes = 63 + 1 + 253

  private func gauge(_ table: WritableKeyPath<State, [String: Gauge]>, _ cluster: String, _ name: String,
                     _ help: String) -> Gauge {
    state.withLock { s in
      if let g = s[keyPath: table][cluster] { return g }
      let g = registry.makeGauge(descriptor: metric(name, help), labels: [("cluster", cluster)])
      s[keyPath: table][cluster] = g
      return g
    }
  }

  private func byteCounters(_ cluster: String) -> (up: Counter, down: Counter) {
    state.withLock { s in
      if let b = s.bytes[cluster] { return b }
      let help = "Bytes relayed through the tunnel, heads included: up to the member, down to callers."
      let b = (registry.makeCounter(descriptor: metric("kopilot_hub_bytes_total", help), labels: [("cluster", cluster), ("direction", "up")]),
               registry.makeCounter(descriptor: metric("kopilot_hub_bytes_total", help), labels: [("cluster", cluster), ("direction", "down")]))
      s.bytes[cluster] = b
      return b
    }
  }
}

/// A metric's name and help text; the name already carries its unit.
private func metric(_ name: String, _ help: String) -> MetricNameDescriptor {
  MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
}
