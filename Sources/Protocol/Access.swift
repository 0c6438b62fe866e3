import Foundation

/// The role a key is admitted in. A coordinator with keys knows each connection's role from its
/// ZAP user id ("worker:<key>", "client:<key>") and takes from it only that role's messages.
public enum PeerRole: String, CaseIterable, Sendable {
    case worker, client

    /// The ZAP user id of `key` in this role.
    public func userID(key: String) -> String { "\(rawValue):\(key)" }

    /// The role named by a ZAP user id; nil for any other.
    public init?(userID: String) {
        guard let colon = userID.firstIndex(of: ":"), let r = PeerRole(rawValue: String(userID[..<colon])) else {
            return nil
        }
        self = r
    }

    /// The serve flag of this role's allow-list.
    public var allowListFlag: String { self == .worker ? "--worker-keys" : "--client-keys" }
}

extension EnvelopeBody {
    /// Who may send this message to the coordinator (empty: only the coordinator sends it). Workers
    /// run jobs and report on them; clients submit and cancel; both may read status and records.
    public var senderRoles: Set<PeerRole> {
        switch self {
        case .hello, .ready, .ack, .heartbeat, .stepMetrics, .result, .failure, .goodbye: return [.worker]
        case .submit, .cancel: return [.client]
        case .statusRequest, .query: return [.worker, .client]
        case .job, .error, .submitReply, .statusReply, .queryReply, .cancelReply, .update: return []
        }
    }

    /// Why a peer in `role` may not send this message (nil: it may). Messages only the coordinator
    /// sends are not refused here: the coordinator answers them as unexpected whoever sends them.
    public func refusal(for role: PeerRole) -> String? {
        let roles = senderRoles
        guard !roles.isEmpty, !roles.contains(role) else { return nil }
        let other: PeerRole = role == .worker ? .client : .worker
        return "a \(role.rawValue) key may not send \(kindName) (\(other.rawValue) messages need a key on the "
            + "coordinator's \(other.allowListFlag) list)"
    }
}

/// The coordinator's side of CurveZMQ: its key pair, and which public keys are admitted in which
/// role. Its `authorize` is the ZAP decision.
public struct CurveServerKeys: Equatable, Sendable {
    public let pair: CurveKeyPair
    public let roles: [String: PeerRole]

    /// ZAP domains: the ROUTER (workers and clients) and the update stream (clients).
    public static let routerDomain = "intervene"
    public static let updatesDomain = "intervene-updates"

    /// A key on both lists is refused: a key has one role.
    public init(pair: CurveKeyPair, workerKeys: CurveKeyList, clientKeys: CurveKeyList) throws {
        var roles: [String: PeerRole] = [:]
        for k in workerKeys.keys { roles[k] = .worker }
        for k in clientKeys.keys {
            if roles[k] == .worker {
                throw CurveKeyError("key \(k) is on both --worker-keys and --client-keys; a key has one role: give "
                    + "the client its own pair (`coordinator keys NAME --out DIR`)")
            }
            roles[k] = .client
        }
        if roles[pair.publicKey] != nil {
            throw CurveKeyError("the coordinator's own public key is on an allow-list; workers and clients need "
                + "pairs of their own")
        }
        self.pair = pair
        self.roles = roles
    }

    /// Reads serve's --curve-secret, --worker-keys and --client-keys (else $INTERVENE_SERVER_SECRET,
    /// $INTERVENE_WORKER_KEYS, $INTERVENE_CLIENT_KEYS); nil when none is named.
    public static func resolve(secretFile: String?, workerKeysFile: String?, clientKeysFile: String?,
                               environment: [String: String] = ProcessInfo.processInfo.environment)
        throws -> CurveServerKeys?
    {
        let secret = nonEmpty(secretFile) ?? nonEmpty(environment["INTERVENE_SERVER_SECRET"])
        let workers = nonEmpty(workerKeysFile) ?? nonEmpty(environment["INTERVENE_WORKER_KEYS"])
        let clients = nonEmpty(clientKeysFile) ?? nonEmpty(environment["INTERVENE_CLIENT_KEYS"])
        if secret == nil && workers == nil && clients == nil { return nil }
        guard let secret, let workers, let clients else {
            let missing = [("--curve-secret", secret), ("--worker-keys", workers), ("--client-keys", clients)]
                .filter { $0.1 == nil }.map { $0.0 }
            throw CurveKeyError("keys need all of --curve-secret, --worker-keys and --client-keys; missing "
                + missing.joined(separator: " and ") + " (an allow-list may be an empty file)")
        }
        return try CurveServerKeys(pair: try CurveKeyPair.load(secretFile: secret),
                                   workerKeys: try CurveKeyList.load(workers, flag: "--worker-keys"),
                                   clientKeys: try CurveKeyList.load(clients, flag: "--client-keys"))
    }

    public var workerCount: Int { roles.values.filter { $0 == .worker }.count }
    public var clientCount: Int { roles.values.filter { $0 == .client }.count }

    /// The ZAP decision: a CURVE key on a list is admitted with its role as user id (the update
    /// stream admits client keys only); anything else is refused.
    public func authorize(_ r: ZAPRequest) -> ZAPDecision {
        guard let key = r.curvePublicKey else { return .deny(reason: "\(r.mechanism) is not CurveZMQ") }
        guard let role = roles[key] else { return .deny(reason: "key \(key) is on no allow-list") }
        switch r.domain {
        case Self.routerDomain: return .allow(userID: role.userID(key: key))
        case Self.updatesDomain where role == .client: return .allow(userID: role.userID(key: key))
        case Self.updatesDomain: return .deny(reason: "the update stream admits client keys only")
        default: return .deny(reason: "unknown ZAP domain \"\(r.domain)\"")
        }
    }
}
