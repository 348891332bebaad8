import Foundation

/// Cuts a byte stream into lines. A watch body is one JSON event per line
/// (apimachinery's JSON serializer ends each with "\n"), but reads do not
/// follow events: one read may hold several, an event may span many. No
/// I/O here: feed it what arrived, take the complete lines.
struct LineSplitter {
  /// The longest line accepted; a longer one is an error, not a growing buffer.
  let limit: Int
  private var pending: [UInt8] = []

  init(limit: Int) { self.limit = limit }

  /// The lines `chunk` completes, without their "\n" (nor a "\r" before
  /// it); blank lines are dropped.
  mutating func feed<C: RandomAccessCollection>(_ chunk: C) throws -> [Data] where C.Element == UInt8 {
    var lines: [Data] = []
    var start = chunk.startIndex
    while let nl = chunk[start...].firstIndex(of: 0x0A) {
      let piece = chunk[start..<nl]
      if pending.isEmpty {
        try emit(Data(piece), into: &lines)
      } else {
        pending.append(contentsOf: piece)
        try emit(Data(pending), into: &lines)
        pending.removeAll(keepingCapacity: pending.count <= 1 << 16)
      }
      start = chunk.index(after: nl)
    }
    pending.append(contentsOf: chunk[start...])
    if pending.count > limit { throw LineTooLong(limit: limit) }
    return lines
  }

  /// What is left after the stream ended: a last line without "\n", or nil.
  mutating func finish() -> Data? {
    defer { pending = [] }
    let line = Data(pending)
    return Self.isBlank(line) ? nil : Self.trimCR(line)
  }

  private func emit(_ line: Data, into lines: inout [Data]) throws {
    if line.count > limit { throw LineTooLong(limit: limit) }
    if !Self.isBlank(line) { lines.append(Self.trimCR(line)) }
  }

  private static func trimCR(_ d: Data) -> Data { d.last == 0x0D ? d.dropLast() : d }
  private static func isBlank(_ d: Data) -> Bool { d.allSatisfy { $0 == 0x20 || $0 == 0x09 || $0 == 0x0D } }

  struct LineTooLong: Error, CustomStringConvertible {
    var limit: Int
    var description: String { "a watch event longer than \(limit >> 20) MiB" }
  }
}

/// Reads `{"type": ..., "object": ...}` without decoding the object: its
/// bytes are handed on as they came, for the consumer's own `Decodable`.
enum WatchEventDecoder {
  static func decode(_ line: Data) -> WatchEvent? {
    let bytes = [UInt8](line)
    guard let members = RawJSON.members(bytes),
          let t = members.last(where: { $0.key == "type" }), let type = RawJSON.string(bytes[t.value]),
          let o = members.last(where: { $0.key == "object" }), bytes[o.value.lowerBound] == UInt8(ascii: "{")
    else { return nil }
    return WatchEvent(type: type, object: Data(bytes[o.value]))
  }
}

/// Just enough JSON to find the members of a top-level object and where
/// each value's bytes lie. Values are skipped by their brackets and
/// strings, not validated: whoever decodes a value validates it.
enum RawJSON {
  private static let quote = UInt8(ascii: "\""), backslash = UInt8(ascii: "\\")

  /// The members of the object `b` holds (and nothing after it but
  /// whitespace), each with the byte range of its value; nil if `b` is not
  /// an object.
  static func members(_ b: [UInt8]) -> [(key: String, value: Range<Int>)]? {
    var i = 0
    let n = b.count
    func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D }
    func skipSpace() { while i < n, isSpace(b[i]) { i += 1 } }
    // At a quote: past the closing quote, or false at the end of input.
    func skipString() -> Bool {
      i += 1
      while i < n {
        let c = b[i]
        if c == backslash { i += 2; continue }
        i += 1
        if c == quote { return true }
      }
      return false
    }
    func skipValue() -> Bool {
      guard i < n else { return false }
      switch b[i] {
      case quote:
        return skipString()
      case UInt8(ascii: "{"), UInt8(ascii: "["):
        var depth = 0
        while i < n {
          switch b[i] {
          case quote:
            guard skipString() else { return false }
            continue
          case UInt8(ascii: "{"), UInt8(ascii: "["):
            depth += 1
          case UInt8(ascii: "}"), UInt8(ascii: "]"):
            depth -= 1
            if depth == 0 { i += 1; return true }
          default:
            break
          }
          i += 1
        }
        return false
      default:  // a number, true, false or null
        let s = i
        while i < n, !isSpace(b[i]), b[i] != UInt8(ascii: ","), b[i] != UInt8(ascii: "}"), b[i] != UInt8(ascii: "]") {
          i += 1
        }
        return i > s
      }
    }

    var out: [(key: String, value: Range<Int>)] = []
    skipSpace()
    guard i < n, b[i] == UInt8(ascii: "{") else { return nil }
    i += 1
    skipSpace()
    if i < n, b[i] == UInt8(ascii: "}") {
      i += 1
    } else {
      while true {
        skipSpace()
        guard i < n, b[i] == quote else { return nil }
        let ks = i
        guard skipString(), let key = string(b[ks..<i]) else { return nil }
        skipSpace()
        guard i < n, b[i] == UInt8(ascii: ":") else { return nil }
        i += 1
        skipSpace()
        let vs = i
        guard skipValue() else { return nil }
        out.append((key, vs..<i))
        skipSpace()
        guard i < n else { return nil }
        if b[i] == UInt8(ascii: ",") { i += 1; continue }
        guard b[i] == UInt8(ascii: "}") else { return nil }
        i += 1
        break
      }
    }
    skipSpace()
    return i == n ? out : nil
  }

  /// A JSON string literal's value (quotes included in `s`), or nil.
  static func string(_ s: ArraySlice<UInt8>) -> String? {
    guard s.count >= 2, s.first == quote, s.last == quote else { return nil }
    let inner = s.dropFirst().dropLast()
    if !inner.contains(backslash) { return String(decoding: inner, as: UTF8.self) }
    return (try? JSONSerialization.jsonObject(with: Data(s), options: .fragmentsAllowed)) as? String
  }
}
