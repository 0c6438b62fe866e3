import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A key file or allow-list that cannot be used; the message names the file, the line and the fix.
public struct CurveKeyError: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A CurveZMQ key pair and its two files (written by `coordinator keys NAME --out DIR`):
///   DIR/NAME.pub     one line: the public key (40 Z85 characters); give it to whoever must admit you
///   DIR/NAME.secret  two lines, `public <z85>` and `secret <z85>`; mode 0600; keep it
public struct CurveKeyPair: Equatable, Sendable {
    public let publicKey: String
    public let secretKey: String

    public static func generate() throws -> CurveKeyPair {
        guard ZCurveKeys.available else {
            throw CurveKeyError("this libzmq was built without CurveZMQ (zmq_has(\"curve\") = 0); install one with "
                + "libsodium (Debian: libzmq5)")
        }
        let k = try ZCurveKeys.generate()
        return CurveKeyPair(publicKey: k.publicKey, secretKey: k.secretKey)
    }

    init(publicKey: String, secretKey: String) {
        self.publicKey = publicKey; self.secretKey = secretKey
    }

    /// The pair of a secret key (its public key is derived from it).
    public init(secretKey: String) throws {
        guard let pub = ZCurveKeys.publicKey(secretKey: secretKey) else {
            throw CurveKeyError("not a CurveZMQ secret key (40 Z85 characters expected)")
        }
        self.init(publicKey: pub, secretKey: secretKey)
    }

    /// NAME.secret's text.
    public var secretFileText: String { "public \(publicKey)\nsecret \(secretKey)\n" }
    /// NAME.pub's text.
    public var publicFileText: String { publicKey + "\n" }

    /// Reads a NAME.secret file. Its `public` line, if any, must match the secret key.
    public static func load(secretFile path: String) throws -> CurveKeyPair {
        let text = try readKeyFile(path, what: "secret key file")
        var pub: String?, sec: String?
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            switch keyLine(raw) {
            case .blank: continue
            case .labelled("public", let k): pub = k
            case .labelled("secret", let k): sec = k
            case .key:
                throw CurveKeyError("\(path):\(n + 1): a bare key: this looks like a NAME.pub file; give the "
                    + "NAME.secret file written beside it by `coordinator keys`")
            default:
                throw CurveKeyError("\(path):\(n + 1): expected `public <key>` or `secret <key>` "
                    + "(the NAME.secret format written by `coordinator keys`)")
            }
        }
        guard let sec else {
            throw CurveKeyError("\(path): no `secret <key>` line; give the NAME.secret file written by "
                + "`coordinator keys NAME --out DIR`")
        }
        let pair: CurveKeyPair
        do { pair = try CurveKeyPair(secretKey: sec) } catch {
            throw CurveKeyError("\(path): the secret line is \(error)")
        }
        if let pub, pub != pair.publicKey {
            throw CurveKeyError("\(path): its public line does not belong to its secret key (the file was edited "
                + "or mixed up); generate a new pair with `coordinator keys`")
        }
        return pair
    }

    /// Writes DIR/NAME.pub and DIR/NAME.secret (0600); returns their paths. Refuses to overwrite
    /// either unless `overwrite`.
    @discardableResult
    public func write(name: String, directory: String, overwrite: Bool = false)
        throws -> (pub: String, secret: String)
    {
        guard !name.isEmpty, !name.contains("/"), !name.hasPrefix(".") else {
            throw CurveKeyError("key name \"\(name)\": use a plain file name such as coordinator, worker or alice")
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let dir = URL(fileURLWithPath: directory, isDirectory: true)
        let pubPath = dir.appendingPathComponent(name + ".pub").path
        let secPath = dir.appendingPathComponent(name + ".secret").path
        if !overwrite {
            for p in [pubPath, secPath] where FileManager.default.fileExists(atPath: p) {
                throw CurveKeyError("\(p) exists; pick another name, or pass --force to replace the pair (peers "
                    + "holding the old public key must then be given the new one)")
            }
        }
        try writeFile(secPath, secretFileText, mode: 0o600)
        try writeFile(pubPath, publicFileText, mode: 0o644)
        return (pubPath, secPath)
    }

    private func writeFile(_ path: String, _ text: String, mode: mode_t) throws {
        unlink(path)   // a fresh file gets `mode` at creation: a secret is never readable by others
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode)
        guard fd >= 0 else { throw CurveKeyError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        guard Glibc.write(fd, bytes, bytes.count) == bytes.count, fchmod(fd, mode) == 0 else {
            throw CurveKeyError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }
}

/// Public keys admitted in one role: one Z85 key per line; `#` comments (see `keyLine`) and blank
/// lines are ignored. Concatenated NAME.pub files are a valid list.
public struct CurveKeyList: Equatable, Sendable {
    public let keys: [String]

    public init(keys: [String]) { self.keys = keys }

    public static func load(_ path: String, flag: String) throws -> CurveKeyList {
        try parse(try readKeyFile(path, what: "\(flag) file"), source: path)
    }

    public static func parse(_ text: String, source: String) throws -> CurveKeyList {
        var keys: [String] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            switch keyLine(raw) {
            case .blank: continue
            case .key(let k), .labelled("public", let k): keys.append(k)
            case .labelled("secret", _):
                throw CurveKeyError("\(source):\(n + 1): a secret key; allow-lists take public keys (the NAME.pub "
                    + "files), and a secret key must never leave its owner: generate a new pair")
            case .labelled, .other:
                throw CurveKeyError("\(source):\(n + 1): \"\(raw.prefix(48))\" is not a public key (one 40-character "
                    + "Z85 key per line, as in the NAME.pub files of `coordinator keys`)")
            }
        }
        return CurveKeyList(keys: keys)
    }
}

/// What a worker or a client needs to reach a coordinator that has keys: its own key pair, and the
/// coordinator's public key.
public struct CurveClientKeys: Equatable, Sendable {
    public let pair: CurveKeyPair
    public let serverKey: String

    public init(pair: CurveKeyPair, serverKey: String) {
        self.pair = pair; self.serverKey = serverKey
    }

    public var socketCurve: ZCurve {
        .client(serverKey: serverKey, publicKey: pair.publicKey, secretKey: pair.secretKey)
    }

    public static let secretHelp = "This peer's NAME.secret (from `coordinator keys`) when the coordinator has keys "
        + "(default: $INTERVENE_CURVE_SECRET)."
    public static let serverKeyHelp = "The coordinator's public key file, its NAME.pub "
        + "(default: $INTERVENE_SERVER_KEY)."

    /// The keys named by --curve-secret and --server-key, else by $INTERVENE_CURVE_SECRET and
    /// $INTERVENE_SERVER_KEY; nil when neither is named. One without the other is an error.
    public static func resolve(secretFile: String?, serverKeyFile: String?,
                               environment: [String: String] = ProcessInfo.processInfo.environment)
        throws -> CurveClientKeys?
    {
        let secret = nonEmpty(secretFile) ?? nonEmpty(environment["INTERVENE_CURVE_SECRET"])
        let server = nonEmpty(serverKeyFile) ?? nonEmpty(environment["INTERVENE_SERVER_KEY"])
        switch (secret, server) {
        case (nil, nil): return nil
        case (_?, nil):
            throw CurveKeyError("--curve-secret needs --server-key: the coordinator's public key file (NAME.pub)")
        case (nil, _?):
            throw CurveKeyError("--server-key needs --curve-secret: this peer's NAME.secret (make one with "
                + "`coordinator keys NAME --out DIR` and add NAME.pub to the coordinator's allow-list)")
        case let (s?, k?):
            let list = try CurveKeyList.load(k, flag: "--server-key")
            guard list.keys.count == 1 else {
                throw CurveKeyError("--server-key \(k): \(list.keys.count) keys; give the coordinator's NAME.pub, "
                    + "which holds exactly one")
            }
            return CurveClientKeys(pair: try CurveKeyPair.load(secretFile: s), serverKey: list.keys[0])
        }
    }
}

extension CurveClientKeys {
    /// What a peer in `role` should do about its failed handshakes with the coordinator (nil: none
    /// failed). `keys`: the keys it presented.
    public static func diagnose(_ events: [ZSocketEvent], keys: CurveClientKeys?, role: PeerRole) -> String? {
        let failed = events.filter(\.isHandshakeFailure)
        guard !failed.isEmpty else { return nil }
        if failed.contains(where: \.isAuthRefusal) {
            return "the coordinator refused this \(role.rawValue)'s key \(keys?.pair.publicKey ?? ""): add its "
                + "NAME.pub to the coordinator's \(role.allowListFlag) list"
        }
        // without keys a handshake fails only against a coordinator that has them (the first
        // failure may come without detail: the coordinator hung up first)
        if keys == nil {
            return "the coordinator requires keys: give --curve-secret (this \(role.rawValue)'s NAME.secret) and "
                + "--server-key (the coordinator's NAME.pub)"
        }
        if failed.contains(where: \.isMechanismMismatch) {
            return "the coordinator has no keys: drop --curve-secret and --server-key (and $INTERVENE_CURVE_SECRET, "
                + "$INTERVENE_SERVER_KEY)"
        }
        return "the security handshake with the coordinator failed: is --server-key its public key (the "
            + "coordinator's NAME.pub)?"
    }
}

func nonEmpty(_ s: String?) -> String? {
    guard let s, !s.isEmpty else { return nil }
    return s
}

/// One line of a key file: a key (40 Z85 characters), `public <key>` or `secret <key>`, blank, or
/// a comment. `#` starts a comment at the start of a line or after whitespace (Z85 keys hold `#`,
/// though never as their first character).
enum KeyLine: Equatable {
    case blank
    case key(String)
    case labelled(String, String)
    case other
}

func keyLine(_ raw: Substring) -> KeyLine {
    var words = raw.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
    if let comment = words.indices.first(where: { $0 > 0 && words[$0].hasPrefix("#") }) {
        words.removeSubrange(comment...)
    }
    guard let first = words.first else { return .blank }
    if ZCurveKeys.decode(first) != nil { return words.count == 1 ? .key(first) : .other }
    if first.hasPrefix("#") { return .blank }
    if words.count == 2, first == "public" || first == "secret", ZCurveKeys.decode(words[1]) != nil {
        return .labelled(first, words[1])
    }
    return .other
}

private func readKeyFile(_ path: String, what: String) throws -> String {
    guard let data = FileManager.default.contents(atPath: path) else {
        let exists = FileManager.default.fileExists(atPath: path)
        throw CurveKeyError("\(what) \(path): " + (exists ? "not readable" : "no such file"))
    }
    return String(decoding: data, as: UTF8.self)
}
