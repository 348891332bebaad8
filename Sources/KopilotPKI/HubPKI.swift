import Crypto
import Foundation
import SwiftASN1
import X509
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The embedded mode's own small PKI: an ECDSA P-256 CA and serving
/// certificates it signs. P-256 because every TLS stack (OpenSSL in the C
/// core, Go in the original agent, kubectl) verifies it and it is fast.
public enum HubPKI {
  public static let caValidity: TimeInterval = 10 * 365 * 86_400
  /// Three years, as minikube gives its API server; the state folder never
  /// replaces a certificate, so `StateDirectory.prepare` warns a month ahead.
  public static let servingValidity: TimeInterval = 3 * 365 * 86_400
  /// Certificates start a little in the past so a peer whose clock is a few
  /// minutes behind does not see a "not yet valid" certificate.
  static let backdate: TimeInterval = 300

  /// The names every serving certificate carries, so a hub reached on the
  /// machine itself always verifies.
  public static let defaultHosts = ["localhost", "127.0.0.1", "::1"]

  public struct KeyPair {
    public var certificate: Certificate
    public var key: P256.Signing.PrivateKey
    /// Ends with a newline, as PEM files conventionally do.
    public var certificatePEM: String { lined((try? certificate.serializeAsPEM().pemString) ?? "") }
    /// PKCS#8 (`BEGIN PRIVATE KEY`), which OpenSSL and Go both read.
    public var keyPEM: String { lined(key.pemRepresentation) }
    private func lined(_ s: String) -> String { s.isEmpty || s.hasSuffix("\n") ? s : s + "\n" }
  }

  public static func makeCA(commonName: String = "kopilot-ca", now: Date = Date()) throws -> KeyPair {
    let key = P256.Signing.PrivateKey()
    let name = try DistinguishedName {
      OrganizationName("kopilot")
      CommonName(commonName)
    }
    let pub = Certificate.PublicKey(key.publicKey)
    let cert = try Certificate(
      version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: pub,
      notValidBefore: now - backdate, notValidAfter: now + caValidity,
      issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
      extensions: try Certificate.Extensions {
        // Path length 0: this CA signs leaf certificates only.
        Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
        Critical(KeyUsage(keyCertSign: true, cRLSign: true))
        SubjectKeyIdentifier(hash: pub)
      },
      issuerPrivateKey: Certificate.PrivateKey(key))
    return KeyPair(certificate: cert, key: key)
  }

  /// A serving certificate for `hosts` (DNS names or IP addresses; IPv6 may be
  /// in brackets) plus `defaultHosts`, signed by `ca`.
  public static func makeServing(hosts: [String], ca: KeyPair, commonName: String = "kopilot-hub",
                                 now: Date = Date()) throws -> KeyPair {
    let key = P256.Signing.PrivateKey()
    let pub = Certificate.PublicKey(key.publicKey)
    var names: [GeneralName] = []
    var seen = Set<String>()
    for h in defaultHosts + hosts {
      let host = normalizeHost(h)
      guard !host.isEmpty, seen.insert(host).inserted else { continue }
      if let ip = ipBytes(host) {
        names.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(ip))))
      } else {
        names.append(.dnsName(host))
      }
    }
    let subject = try DistinguishedName {
      OrganizationName("kopilot")
      CommonName(commonName)
    }
    let caSKI = try ca.certificate.extensions.subjectKeyIdentifier?.keyIdentifier
    let cert = try Certificate(
      version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: pub,
      notValidBefore: now - backdate, notValidAfter: min(now + servingValidity, ca.certificate.notValidAfter),
      issuer: ca.certificate.subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
      extensions: try Certificate.Extensions {
        Critical(BasicConstraints.notCertificateAuthority)
        // ECDSA keys sign the handshake; no key encipherment.
        Critical(KeyUsage(digitalSignature: true))
        try ExtendedKeyUsage([.serverAuth])
        SubjectAlternativeNames(names)
        SubjectKeyIdentifier(hash: pub)
        if let caSKI { AuthorityKeyIdentifier(keyIdentifier: caSKI) }
      },
      issuerPrivateKey: Certificate.PrivateKey(ca.key))
    return KeyPair(certificate: cert, key: key)
  }

  /// Reads a PEM certificate and its PEM P-256 key (PKCS#8 or SEC1).
  public static func load(certificatePEM: String, keyPEM: String) throws -> KeyPair {
    let cert = try Certificate(pemEncoded: certificatePEM)
    let key = try P256.Signing.PrivateKey(pemRepresentation: keyPEM)
    guard cert.publicKey == Certificate.PublicKey(key.publicKey) else {
      throw PKIError("the key does not belong to the certificate")
    }
    return KeyPair(certificate: cert, key: key)
  }

  /// `[::1]` -> `::1`, `Hub.Example.com.` -> `hub.example.com`.
  static func normalizeHost(_ h: String) -> String {
    var s = h.trimmingCharacters(in: .whitespaces)
    if s.hasPrefix("[") && s.hasSuffix("]") { s = String(s.dropFirst().dropLast()) }
    if ipBytes(s) != nil { return s }
    if s.hasSuffix(".") { s.removeLast() }
    return s.lowercased()
  }

  /// The 4 or 16 bytes of an IP address literal, nil for anything else.
  static func ipBytes(_ s: String) -> [UInt8]? {
    var v4 = in_addr()
    if inet_pton(AF_INET, s, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
    var v6 = in6_addr()
    if inet_pton(AF_INET6, s, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
    return nil
  }

  /// The host part of `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
  public static func host(ofAddress addr: String) -> String {
    if addr.hasPrefix("["), let end = addr.firstIndex(of: "]") {
      return String(addr[addr.index(after: addr.startIndex)..<end])
    }
    if ipBytes(addr) != nil { return addr }  // bare IPv6: its colons are not a port
    if let colon = addr.lastIndex(of: ":") { return String(addr[..<colon]) }
    return addr
  }

  /// The hosts of `requested` that `certificate`'s SANs do not cover (exact
  /// names; a `*.` wildcard covers one label).
  public static func missingHosts(_ requested: [String], in certificate: Certificate) -> [String] {
    guard let sans = try? certificate.extensions.subjectAlternativeNames else { return requested }
    var dns: [String] = []
    var ips: [[UInt8]] = []
    for n in sans {
      switch n {
      case .dnsName(let d): dns.append(d.lowercased())
      case .ipAddress(let o): ips.append(Array(o.bytes))
      default: break
      }
    }
    return requested.filter { h in
      let host = normalizeHost(h)
      if host.isEmpty { return false }
      if let ip = ipBytes(host) { return !ips.contains(ip) }
      if dns.contains(host) { return false }
      if let dot = host.firstIndex(of: ".") { return !dns.contains("*" + host[dot...]) }
      return true
    }
  }
}

/// A certificate or key that cannot be used as asked.
public struct PKIError: Error, CustomStringConvertible, Sendable, Equatable {
  public var description: String
  public init(_ description: String) { self.description = description }
}
