import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// File writes that never leave a half-written file where a reader (the
/// hub's FileWatcher, an agent, a user) can see it.
enum Files {
  /// Writes `data` to a temporary file beside `path` with `mode`, flushes
  /// it, then links it into place only if `path` does not exist yet. Returns
  /// false, writing nothing, when `path` exists: first-start files are never
  /// overwritten, even when two hubs start at once. The mode is set at
  /// creation, so a key is never readable by others, not even briefly.
  static func createNew(_ path: String, _ data: Data, mode: mode_t) throws -> Bool {
    let tmp = try writeTemp(beside: path, data, mode: mode)
    defer { unlink(tmp) }
    if link(tmp, path) == 0 { return true }
    let e = errno
    if e == EEXIST { return false }
    throw HubError(.io, "cannot create the file: \(String(cString: strerror(e)))", file: path)
  }

  /// Replaces `path` atomically (temp file + rename), keeping its mode when
  /// it exists. A `secret` file (it holds tokens) keeps only its owner's
  /// bits: whatever it had, after a write it is readable by its owner alone.
  static func replace(_ path: String, _ data: Data, defaultMode: mode_t, secret: Bool = false) throws {
    var st = stat()
    var mode = stat(path, &st) == 0 ? st.st_mode & 0o7777 : defaultMode
    if secret { mode &= 0o700 }
    let tmp = try writeTemp(beside: path, data, mode: mode)
    if rename(tmp, path) != 0 {
      let e = errno
      unlink(tmp)
      throw HubError(.io, "cannot replace the file: \(String(cString: strerror(e)))", file: path)
    }
  }

  private static func writeTemp(beside path: String, _ data: Data, mode: mode_t) throws -> String {
    let dir = (path as NSString).deletingLastPathComponent
    let base = (path as NSString).lastPathComponent
    var template = Array(((dir.isEmpty ? "." : dir) + "/.\(base).XXXXXX").utf8CString)
    let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    guard fd >= 0 else {
      throw HubError(.io, "cannot create a temporary file: \(String(cString: strerror(errno)))", file: path)
    }
    let tmp = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    // mkstemp made it 0600, so a secret is never readable by others, not
    // even for a moment; a wider mode is set while the file is still empty.
    var ok = fchmod(fd, mode) == 0
    data.withUnsafeBytes { buf in
      var off = 0
      while ok && off < buf.count {
        let n = write(fd, buf.baseAddress! + off, buf.count - off)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { ok = false } else { off += n }
      }
    }
    // Durable before it becomes visible: a crash must not leave an empty key.
    ok = ok && fsync(fd) == 0
    let err = errno
    close(fd)
    guard ok else {
      unlink(tmp)
      throw HubError(.io, "cannot write: \(String(cString: strerror(err)))", file: path)
    }
    return tmp
  }

  /// Creates `dir` with mode 0700 when absent (made with that mode, never
  /// wider for a moment); missing parents get the default mode.
  static func ensureDirectory(_ dir: String) throws {
    if dir.isEmpty { return }
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: dir, isDirectory: &isDir) {
      guard isDir.boolValue else { throw HubError(.io, "exists and is not a folder", file: dir) }
      return
    }
    let parent = (dir as NSString).deletingLastPathComponent
    if !parent.isEmpty && parent != dir && !FileManager.default.fileExists(atPath: parent) {
      do {
        try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
      } catch {
        throw HubError(.io, "cannot create the folder: \(error.localizedDescription)", file: parent)
      }
    }
    if mkdir(dir, 0o700) != 0 && errno != EEXIST {
      throw HubError(.io, "cannot create the folder: \(String(cString: strerror(errno)))", file: dir)
    }
  }

  /// The permission bits of `path` (following links), nil when it is absent.
  static func mode(_ path: String) -> mode_t? {
    var st = stat()
    return stat(path, &st) == 0 ? st.st_mode & 0o7777 : nil
  }

  static func readText(_ path: String) throws -> String {
    guard let d = FileManager.default.contents(atPath: path) else { throw HubError(.io, "cannot read the file", file: path) }
    return String(decoding: d, as: UTF8.self)
  }

  static func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

  /// Runs `body` holding an exclusive lock on `path + ".lock"`, so two
  /// admin commands editing one file do not lose each other's change.
  static func withLock<T>(_ path: String, _ body: () throws -> T) throws -> T {
    let lockPath = path + ".lock"
    let fd = open(lockPath, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
    guard fd >= 0 else {
      throw HubError(.io, "cannot open the lock file: \(String(cString: strerror(errno)))", file: lockPath)
    }
    defer { close(fd) }
    while flock(fd, LOCK_EX) != 0 {
      guard errno == EINTR else { throw HubError(.io, "cannot lock: \(String(cString: strerror(errno)))", file: lockPath) }
    }
    defer { flock(fd, LOCK_UN) }
    return try body()
  }
}

/// Random tokens: 32 bytes (256 bits) from the system's CSPRNG
/// (`SystemRandomNumberGenerator` is getrandom(2) on Linux,
/// arc4random_buf on Darwin), URL-safe base64 without padding (RFC 4648 5),
/// so a token goes in a URL query, a CSV field and a bearer header as is.
public enum RandomToken {
  public static func make(bytes: Int = 32) -> String {
    var rng = SystemRandomNumberGenerator()
    let raw = (0..<bytes).map { _ in UInt8.random(in: .min ... .max, using: &rng) }
    return Data(raw).base64EncodedString()
      .replacingOccurrences(of: "+", with: "-")
      .replacingOccurrences(of: "/", with: "_")
      .replacingOccurrences(of: "=", with: "")
  }
}
