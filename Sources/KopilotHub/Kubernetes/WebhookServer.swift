import Foundation
import KopilotBase
import KopilotIO
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// The HTTPS listener the host cluster's API server calls for admission of
/// Cluster objects: `POST /webhooks/mutate-cluster` (fills an empty token)
/// and `POST /webhooks/validate-cluster`. Its own port (9443 by default, as
/// webhook servers usually have), because an AdmissionReview is a request
/// body and the tunnel's listener hands Swift request heads only.
///
/// The certificate files are read again when they change (cert-manager
/// renews them in place), for the next connection.
public final class WebhookServer: Sendable {
  public static let mutatePath = "/webhooks/mutate-cluster"
  public static let validatePath = "/webhooks/validate-cluster"
  /// An AdmissionReview of a Cluster is a few KiB; the API server's own
  /// limit on objects is 3 MiB.
  static let maxBody = 3 << 20

  private let group: MultiThreadedEventLoopGroup
  private let channel: Channel
  private let tls: ReloadingTLS
  public let port: Int

  public init(host: String, port: Int, certFile: String, keyFile: String,
              logger: Logger = Logger(label: "kopilot.hub.webhook")) throws {
    tls = try ReloadingTLS(certFile: certFile, keyFile: keyFile, logger: logger)
    group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let tls = self.tls
    do {
      channel = try ServerBootstrap(group: group)
        .serverChannelOption(ChannelOptions.backlog, value: 256)
        .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
        .childChannelInitializer { ch in
          ch.eventLoop.makeCompletedFuture {
            try ch.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.current()))
            try ch.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: .seconds(30)))
            try ch.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
            try ch.pipeline.syncOperations.addHandler(AdmissionHandler(logger: logger))
          }
        }
        .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
        .bind(host: host, port: port).wait()
    } catch {
      try? group.syncShutdownGracefully()
      throw HubError(.invalid, "the webhook listener cannot start on \(host):\(port): \(error)")
    }
    self.port = channel.localAddress?.port ?? port
  }

  public func stop() {
    try? channel.close().wait()
    try? group.syncShutdownGracefully()
  }
}

/// A server TLS context rebuilt when the certificate or key file changes.
final class ReloadingTLS: Sendable {
  let certFile: String
  let keyFile: String
  let logger: Logger
  private struct State {
    var context: NIOSSLContext
    var stamp: [Date?]
  }
  private let state: Mutex<State>

  init(certFile: String, keyFile: String, logger: Logger) throws {
    self.certFile = certFile
    self.keyFile = keyFile
    self.logger = logger
    state = Mutex(State(context: try ReloadingTLS.make(certFile, keyFile), stamp: ReloadingTLS.stamps(certFile, keyFile)))
  }

  static func stamps(_ files: String...) -> [Date?] {
    files.map { (try? FileManager.default.attributesOfItem(atPath: $0)[.modificationDate]) as? Date }
  }

  static func make(_ cert: String, _ key: String) throws -> NIOSSLContext {
    var c = TLSConfiguration.makeServerConfiguration(
      certificateChain: try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) },
      privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
    c.minimumTLSVersion = .tlsv12
    return try NIOSSLContext(configuration: c)
  }

  /// The context for a new connection; a changed pair is loaded first (a
  /// broken pair keeps the last good one, logged).
  func current() -> NIOSSLContext {
    let now = ReloadingTLS.stamps(certFile, keyFile)
    return state.withLock { s in
      if now != s.stamp {
        s.stamp = now
        do {
          s.context = try ReloadingTLS.make(certFile, keyFile)
          logger.notice("webhook certificate reloaded from \(certFile)")
        } catch {
          logger.error("webhook certificate not reloaded (keeping the last good one): \(error)")
        }
      }
      return s.context
    }
  }
}

/// One AdmissionReview per request: the body gathered (bounded), answered
/// by `AdmissionWebhook`.
final class AdmissionHandler: ChannelInboundHandler, RemovableChannelHandler {
  typealias InboundIn = HTTPServerRequestPart
  typealias OutboundOut = HTTPServerResponsePart

  let logger: Logger
  private var head: HTTPRequestHead?
  private var body = ByteBuffer()
  private var tooLarge = false

  init(logger: Logger) { self.logger = logger }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch unwrapInboundIn(data) {
    case .head(let h):
      head = h
      body.clear()
      tooLarge = false
    case .body(var chunk):
      if body.readableBytes + chunk.readableBytes > WebhookServer.maxBody {
        tooLarge = true
      } else {
        body.writeBuffer(&chunk)
      }
    case .end:
      guard let h = head else { return }
      head = nil
      let (status, type, payload) = answer(h)
      respond(context: context, keepAlive: h.isKeepAlive, status: status, type: type, body: payload)
    }
  }

  func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
    if event is IdleStateHandler.IdleStateEvent { context.close(promise: nil) } else { context.fireUserInboundEventTriggered(event) }
  }

  func answer(_ h: HTTPRequestHead) -> (HTTPResponseStatus, String, Data) {
    func status(_ code: Int, _ reason: String, _ message: String) -> (HTTPResponseStatus, String, Data) {
      (HTTPResponseStatus(statusCode: code), "application/json",
       Data(kubernetesStatus(code: code, reason: reason, message: message).utf8))
    }
    let path = h.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? h.uri
    let handler: ((Data) throws -> Data)?
    switch path {
    case WebhookServer.mutatePath: handler = AdmissionWebhook.mutate(body:)
    case WebhookServer.validatePath: handler = AdmissionWebhook.validate(body:)
    case "/healthz", "/readyz":
      return h.method == .GET ? (.ok, "text/plain; charset=utf-8", Data("ok".utf8))
        : status(405, "MethodNotAllowed", "use GET")
    default: return status(404, "NotFound", "the webhook server serves \(WebhookServer.mutatePath) and \(WebhookServer.validatePath)")
    }
    guard h.method == .POST, let handler else { return status(405, "MethodNotAllowed", "an AdmissionReview is POSTed") }
    guard !tooLarge else { return status(413, "RequestEntityTooLarge", "the AdmissionReview is larger than \(WebhookServer.maxBody) bytes") }
    do {
      return (.ok, "application/json", try handler(Data(body.readableBytesView)))
    } catch let e as AdmissionWebhook.Malformed {
      logger.warning("admission review refused: \(e.message)")
      return status(400, "BadRequest", e.message)
    } catch {
      logger.error("admission review failed: \(error)")
      return status(500, "InternalError", "the webhook could not answer")
    }
  }

  func respond(context: ChannelHandlerContext, keepAlive: Bool, status: HTTPResponseStatus, type: String, body: Data) {
    var headers = HTTPHeaders()
    headers.add(name: "Content-Type", value: type)
    headers.add(name: "Content-Length", value: String(body.count))
    if !keepAlive { headers.add(name: "Connection", value: "close") }
    context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
    context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
    // On the channel's loop: the context stays there.
    context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
      if !keepAlive { context.close(promise: nil) }
    }
  }
}
