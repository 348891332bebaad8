// swift-tools-version:6.0
import PackageDescription

// The C core is built with every warning on; -Werror is left to CI's
// dedicated warnings pass so a new compiler's new warning does not break
// users' builds.
let cWarnings: [CSetting] = [.unsafeFlags(["-Wall", "-Wextra", "-Wno-unused-parameter"])]

// KOPILOT_UBSAN=1 compiles the C targets with UndefinedBehaviorSanitizer.
// This Swift rejects `swift test --sanitize=undefined` on Linux, so CI sets
// this together with `--sanitize=address` (Tests/run.sh): the ASan runtime
// that swiftc links already carries the UBSan handlers, so no extra runtime
// is linked. Every finding aborts (no recovery), so a report fails the run.
let ubsan: [CSetting] = Context.environment["KOPILOT_UBSAN"] == "1"
  ? [.unsafeFlags(["-fsanitize=undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"])]
  : []

// Tests/run.sh sets this for its ThreadSanitizer pass: KopilotBase then
// declares a pthread-backed `Mutex` that TSan can see (KopilotBase/TSanMutex.swift).
let tsan: [SwiftSetting] = Context.environment["KOPILOT_TSAN"] == "1" ? [.define("KOPILOT_TSAN")] : []

let package = Package(
  name: "Kopilot",
  platforms: [.macOS(.v15)],
  products: [
    .library(name: "KopilotCore", targets: ["KopilotCore"]),
    .executable(name: "kopilot-hub", targets: ["kopilot-hub"]),
    .executable(name: "kopilot-agent", targets: ["kopilot-agent"]),
    .executable(name: "kopilot-perf", targets: ["kopilot-perf"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    // KopilotHub: YAML for Cluster/RBAC objects and manifests, P-256 certificates, logging.
    .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
    .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
    .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    // The Kubernetes mode's control plane: the host API client, and the
    // admission webhook's HTTPS server.
    .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
    // Start-up and graceful shutdown of the hub's and the agent's parts.
    .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
  ],
  targets: [
    .target(
      name: "KopilotCore",
      path: "CSources/KopilotCore",
      cSettings: cWarnings + ubsan + [.define("_GNU_SOURCE")],
      // A module map's link lines apply only when Swift imports the module,
      // so the C target names its libraries itself.
      linkerSettings: [.linkedLibrary("uv"), .linkedLibrary("ssl"), .linkedLibrary("crypto"), .linkedLibrary("pthread")]
    ),
    .target(name: "KopilotIO", dependencies: ["KopilotCore", "KopilotBase"], path: "Sources/KopilotIO"),
    // The hub's control plane in embedded mode: state folder and certificates,
    // cluster registry, caller authentication and RBAC, agent manifests.
    .target(
      name: "KopilotHub",
      dependencies: [
        "KopilotBase", "KopilotIO", "KopilotKube", "KopilotKubeConfig", "KopilotPKI",
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "Yams", package: "Yams"),
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
        .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
      ],
      path: "Sources/KopilotHub",
      exclude: ["README.md"]
    ),
    .executableTarget(
      name: "kopilot-hub",
      dependencies: [
        "KopilotHub", "KopilotKubeConfig",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ],
      path: "Sources/kopilot-hub"
    ),
    // The one backoff (agents to their hub, informers to their API server);
    // Foundation only.
    .target(name: "KopilotBase", path: "Sources/KopilotBase", swiftSettings: tsan),
    // Where an API server is and how to trust it: kubeconfig and in-cluster
    // configuration, with Yams and Foundation only, so the agent links
    // neither NIO nor AsyncHTTPClient.
    .target(
      name: "KopilotKubeConfig",
      dependencies: [.product(name: "Yams", package: "Yams")],
      path: "Sources/KopilotKubeConfig"
    ),
    // The embedded mode's CA and serving certificates, also what
    // kopilot-perf's hubs serve with.
    .target(
      name: "KopilotPKI",
      dependencies: [
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
      ],
      path: "Sources/KopilotPKI"
    ),
    // The Kubernetes mode's host API client: requests, watches, informers, reviews.
    .target(
      name: "KopilotKube",
      dependencies: [
        "KopilotBase", "KopilotKubeConfig",
        .product(name: "Yams", package: "Yams"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "AsyncHTTPClient", package: "async-http-client"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
      ],
      path: "Sources/KopilotKube"
    ),
    .testTarget(name: "KopilotKubeTests", dependencies: ["KopilotKube", "KopilotKubeConfig", "KopilotBase"], path: "Tests/KopilotKubeTests"),
    .testTarget(name: "KopilotBaseTests", dependencies: ["KopilotBase"], path: "Tests/KopilotBaseTests"),
    .executableTarget(
      name: "kopilot-agent",
      dependencies: [
        "KopilotAgent", "KopilotIO", "KopilotKubeConfig",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ],
      path: "Sources/kopilot-agent"
    ),
    // The agent's sessions and their lifecycle: no NIO, no HTTP client.
    .target(
      name: "KopilotAgent",
      dependencies: [
        "KopilotBase", "KopilotIO",
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ],
      path: "Sources/KopilotAgent"
    ),
    .executableTarget(
      name: "kopilot-perf",
      dependencies: ["KopilotPKI", .product(name: "ArgumentParser", package: "swift-argument-parser")],
      path: "Sources/kopilot-perf"
    ),
    .target(
      name: "KopilotTestSupport",
      path: "Tests/KopilotTestSupport",
      cSettings: ubsan,
      linkerSettings: [.linkedLibrary("crypto")]
    ),
    .testTarget(
      name: "KopilotCoreTests",
      dependencies: ["KopilotCore", "KopilotIO", "KopilotTestSupport"],
      path: "Tests/KopilotCoreTests"
    ),
    .testTarget(
      name: "KopilotIOTests",
      dependencies: ["KopilotIO"],
      path: "Tests/KopilotIOTests"
    ),
    .testTarget(
      name: "KopilotHubTests",
      dependencies: [
        "KopilotHub", "KopilotPKI", "KopilotCore",
        .product(name: "Yams", package: "Yams"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "Crypto", package: "swift-crypto"),
      ],
      path: "Tests/KopilotHubTests"
    ),
    .testTarget(
      name: "EndToEndTests",
      dependencies: [
        "KopilotIO", "KopilotHub", "KopilotAgent",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ],
      path: "Tests/EndToEndTests",
      exclude: ["upstream.py", "badpeer.py", "memhog.py", "recorder.py"]
    ),
  ],
  swiftLanguageModes: [.v6]
)
