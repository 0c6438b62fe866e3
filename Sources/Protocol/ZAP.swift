import Foundation

/// One ZAP 1.0 request (ZeroMQ RFC 27): libzmq asks its context's handler whether a connection
/// that completed a security handshake may proceed.
public struct ZAPRequest: Equatable, Sendable {
    public var requestID: Data
    /// The socket's ZAP domain (`ZSocketOptions.zapDomain`).
    public var domain: String
    /// The peer's address, e.g. "127.0.0.1".
    public var address: String
    /// "NULL", "PLAIN" or "CURVE".
    public var mechanism: String
    /// CURVE: one frame, the client's 32-byte public key.
    public var credentials: [Data]

    public init(requestID: Data = Data("1".utf8), domain: String, address: String = "", mechanism: String,
                credentials: [Data]) {
        self.requestID = requestID; self.domain = domain; self.address = address
        self.mechanism = mechanism; self.credentials = credentials
    }

    /// Parses [version, request id, domain, address, identity, mechanism, credentials...]; nil
    /// unless it is a version 1.0 request.
    public init?(frames: [Data]) {
        guard frames.count >= 6, frames[0] == Data("1.0".utf8) else { return nil }
        self.init(requestID: frames[1], domain: String(decoding: frames[2], as: UTF8.self),
                  address: String(decoding: frames[3], as: UTF8.self),
                  mechanism: String(decoding: frames[5], as: UTF8.self), credentials: Array(frames[6...]))
    }

    /// The CURVE client's public key in Z85 (nil for another mechanism or a malformed request).
    public var curvePublicKey: String? {
        guard mechanism == "CURVE", credentials.count == 1 else { return nil }
        return ZCurveKeys.encode(credentials[0])
    }
}

/// A ZAP handler's answer.
public enum ZAPDecision: Equatable, Sendable {
    /// Admit the connection; its messages carry `userID` (`ZMessage.userID`).
    case allow(userID: String)
    /// Refuse it: the handshake fails and nothing the peer sends arrives.
    case deny(reason: String)

    /// The reply frames: [version, request id, status code, status text, user id, metadata].
    public func replyFrames(to requestID: Data) -> [Data] {
        switch self {
        case .allow(let user):
            return [Data("1.0".utf8), requestID, Data("200".utf8), Data("OK".utf8), Data(user.utf8), Data()]
        case .deny(let reason):
            return [Data("1.0".utf8), requestID, Data("400".utf8), Data(reason.utf8), Data(), Data()]
        }
    }
}

/// Answers its context's ZAP requests on a thread of its own: a REP socket bound to
/// `inproc://zeromq.zap.01`, the address libzmq asks. The decision itself is `authorize`, a pure
/// function of the request. Bind it (init) before any curve-server socket of the context binds.
public final class ZAPHandler: @unchecked Sendable {
    public static let endpoint = "inproc://zeromq.zap.01"

    private let socket: ZSocket
    private let authorize: @Sendable (ZAPRequest) -> ZAPDecision
    private let log: (@Sendable (String) -> Void)?
    private let lock = NSLock()
    private var _stopped = false
    private var _allowed: UInt64 = 0
    private var _denied: UInt64 = 0
    private var loggedDenials: Set<String> = []
    private let finished = DispatchSemaphore(value: 0)
    private var started = false

    /// Binds the handler's socket in `context` (the thread starts with `start`).
    public init(context: ZContext, log: (@Sendable (String) -> Void)? = nil,
                authorize: @escaping @Sendable (ZAPRequest) -> ZAPDecision) throws {
        var o = ZSocketOptions()
        o.lingerMs = 0
        socket = try ZSocket(context, .rep, options: o)
        do { try socket.bind(Self.endpoint) } catch { socket.close(); throw error }
        self.authorize = authorize
        self.log = log
    }

    /// Connections admitted and refused so far.
    public var counts: (allowed: UInt64, denied: UInt64) { lock.withLock { (_allowed, _denied) } }

    public func start() {
        started = true
        let t = Thread { [self] in
            run()
            finished.signal()
        }
        t.name = "zap-handler"
        t.start()
    }

    /// Stops the thread and closes the socket (waits at most a second for the thread).
    public func stop() {
        lock.withLock { _stopped = true }
        if started { _ = finished.wait(timeout: .now() + 1) } else { socket.close() }
    }

    private func run() {
        defer { socket.close() }
        while !lock.withLock({ _stopped }) {
            let frames: [Data]
            do {
                guard let f = try socket.receive(timeoutMs: 100) else { continue }
                frames = f
            } catch {
                return   // the context is shutting down
            }
            let decision: ZAPDecision
            let id: Data
            if let request = ZAPRequest(frames: frames) {
                id = request.requestID
                decision = authorize(request)
                if case .deny(let why) = decision { noteDenial(request, why) }
            } else {
                id = frames.count > 1 ? frames[1] : Data()
                decision = .deny(reason: "malformed ZAP request")
            }
            lock.withLock {
                if case .allow = decision { _allowed += 1 } else { _denied += 1 }
            }
            try? socket.send(decision.replyFrames(to: id), timeoutMs: 100)
        }
    }

    /// Logs the first refusal of each key (a refused peer keeps reconnecting).
    private func noteDenial(_ r: ZAPRequest, _ why: String) {
        let key = (r.curvePublicKey ?? r.mechanism) + "@" + r.domain
        let first = lock.withLock { loggedDenials.count < 1000 && loggedDenials.insert(key).inserted }
        if first { log?("refused a \(r.mechanism) connection from \(r.address) (\(r.domain)): \(why)") }
    }
}
