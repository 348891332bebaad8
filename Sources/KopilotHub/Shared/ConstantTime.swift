/// Compares two strings in time that depends only on their lengths, so a
/// token check does not leak how many leading bytes matched. The length
/// difference is folded in whole: folding it into a byte, as this once did,
/// made a token followed by 256 NUL bytes compare equal to the token.
public func constantTimeEquals(_ a: String, _ b: String) -> Bool {
  let x = Array(a.utf8), y = Array(b.utf8)
  // Every byte of the longer input is read, the missing ones of the shorter
  // read as 0; a difference in length is then carried by `lengths`.
  var diff: UInt8 = 0
  let n = max(x.count, y.count)
  for i in 0..<n {
    let p = i < x.count ? x[i] : 0
    let q = i < y.count ? y[i] : 0
    diff |= p ^ q
  }
  let lengths = UInt(bitPattern: x.count) ^ UInt(bitPattern: y.count)
  return diff == 0 && lengths == 0
}
