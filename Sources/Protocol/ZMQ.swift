import CZMQ
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A libzmq error, with zmq_strerror's text.
public struct ZMQError: Error, CustomStringConvertible, Equatable, Sendable {
    public let code: Int32
    public let operation: String
    public var message: String { String(cString: zmq_strerror(code)) }
    public var description: String { "zmq \(operation): \(message) (errno \(code))" }

    public init(_ operation: String, code: Int32 = zmq_errno()) {
        self.operation = operation; self.code = code
    }

    /// The socket would block (high-water mark reached, or a send timed out).
    public var isWouldBlock: Bool { code == EAGAIN }
    /// ROUTER_MANDATORY: no peer with that identity is connected.
    public var isHostUnreachable: Bool { code == EHOSTUNREACH }
    /// The context was shut down.
    public var isTerminated: Bool { code == ZMQError.ETERM }
    static let ETERM: Int32 = 156_384_712 + 53
}

/// A libzmq context. Thread-safe. Sockets keep their context alive, so the context is terminated
/// (deinit) only after every socket made from it has been released.
public final class ZContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    public init(ioThreads: Int32 = 1) throws {
        guard let h = zmq_ctx_new() else { throw ZMQError("zmq_ctx_new") }
        handle = h
        if ioThreads != 1 { zmq_ctx_set(h, ZMQ_IO_THREADS, ioThreads) }
    }

    private let termLock = NSLock()
    private var terminated = false

    /// Makes every blocking call on this context's sockets return ETERM. Sockets must still be closed.
    public func shutdown() { zmq_ctx_shutdown(handle) }

    /// Terminates the context: waits until every socket is closed and its queued messages are sent
    /// (each socket waits at most its linger), so a process can exit without losing its last
    /// messages. Call only after closing every socket of this context (it blocks until then).
    /// Idempotent; deinit does it otherwise.
    public func terminate() {
        termLock.lock(); defer { termLock.unlock() }
        guard !terminated else { return }
        terminated = true
        while zmq_ctx_term(handle) != 0 && zmq_errno() == EINTR {}
    }

    deinit { terminate() }

    /// libzmq's version, e.g. "4.3.4".
    public static var libraryVersion: String {
        var a: Int32 = 0, b: Int32 = 0, c: Int32 = 0
        zmq_version(&a, &b, &c)
        return "\(a).\(b).\(c)"
    }
}

public enum ZSocketType: Sendable {
    case router, dealer, pub, sub, pair, rep
    var raw: Int32 {
        switch self {
        case .rep: return ZMQ_REP
        case .router: return ZMQ_ROUTER
        case .dealer: return ZMQ_DEALER
        case .pub: return ZMQ_PUB
        case .sub: return ZMQ_SUB
        case .pair: return ZMQ_PAIR
        }
    }
}

/// A socket's CurveZMQ role (keys in Z85: 40 characters for 32 bytes). Both ends of a connection
/// must use curve, or the handshake fails and no message passes.
public enum ZCurve: Sendable, Equatable {
    /// A curve server with this secret key. Its context's ZAP handler, if one is bound
    /// (`ZAPHandler`), decides which client keys may connect, and names them (`ZMessage.userID`).
    case server(secretKey: String)
    /// A curve client: its own key pair, and the public key of the server it connects to.
    case client(serverKey: String, publicKey: String, secretKey: String)
}

/// Key operations of libzmq's CurveZMQ (libsodium inside).
public enum ZCurveKeys {
    /// This libzmq was built with CurveZMQ.
    public static var available: Bool { zmq_has("curve") != 0 }

    /// A new random key pair, each key in Z85.
    public static func generate() throws -> (publicKey: String, secretKey: String) {
        var pub = [CChar](repeating: 0, count: 41)
        var sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else { throw ZMQError("zmq_curve_keypair") }
        return (String(cString: pub), String(cString: sec))
    }

    /// The public key of a secret key; nil unless `secretKey` is 40 valid Z85 characters.
    public static func publicKey(secretKey: String) -> String? {
        guard decode(secretKey) != nil else { return nil }
        var pub = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&pub, secretKey) == 0 else { return nil }
        return String(cString: pub)
    }

    /// The 32 bytes a Z85 key stands for; nil unless it is 40 valid Z85 characters.
    public static func decode(_ z85: String) -> Data? {
        guard z85.utf8.count == 40 else { return nil }
        var out = [UInt8](repeating: 0, count: 32)
        guard zmq_z85_decode(&out, z85) != nil else { return nil }
        return Data(out)
    }

    /// The Z85 form of a 32-byte key.
    public static func encode(_ key: Data) -> String? {
        guard key.count == 32 else { return nil }
        var out = [CChar](repeating: 0, count: 41)
        let ok = key.withUnsafeBytes { raw in
            zmq_z85_encode(&out, raw.bindMemory(to: UInt8.self).baseAddress, 32) != nil
        }
        return ok ? String(cString: out) : nil
    }
}

/// Options applied when a socket is created (before bind/connect).
public struct ZSocketOptions: Sendable {
    /// Milliseconds unsent messages may delay close/context termination. Never infinite.
    public var lingerMs: Int32 = 200
    /// Largest inbound message in bytes; a peer sending more is disconnected by libzmq and the
    /// message never surfaces. -1 = unlimited.
    public var maxMessageSize: Int64 = -1
    public var sendHighWaterMark: Int32 = 1000
    public var receiveHighWaterMark: Int32 = 1000
    /// DEALER/ROUTER routing identity (ZMQ_IDENTITY), at most 255 bytes, must not start with 0.
    public var identity: Data? = nil
    /// ROUTER: fail sends to unknown peers with EHOSTUNREACH (and EAGAIN at HWM) instead of dropping.
    public var routerMandatory: Bool = true
    /// ROUTER: a new connection with an identity already in use takes it over.
    public var routerHandover: Bool = false
    /// Only queue messages to completed connections (ZMQ_IMMEDIATE).
    public var immediate: Bool = false
    public var reconnectIntervalMs: Int32 = 100
    public var reconnectIntervalMaxMs: Int32 = 0
    /// ZMTP heartbeats (libzmq ≥ 4.2): PING every interval, drop the connection after timeout. 0 = off.
    public var zmtpHeartbeatIntervalMs: Int32 = 0
    public var zmtpHeartbeatTimeoutMs: Int32 = 0
    /// CurveZMQ: encrypt and authenticate every connection of this socket (nil: plain ZMTP).
    public var curve: ZCurve? = nil
    /// The ZAP domain this socket's connections are authenticated in (`ZAPRequest.domain`).
    public var zapDomain: String? = nil
    public init() {}
}

/// One event of a monitored socket (`ZSocket.startMonitor`).
public struct ZSocketEvent: Equatable, Sendable {
    /// One ZMQ_EVENT_* value.
    public var kind: Int32
    /// The event's value: an errno, a ZMQ_PROTOCOL_ERROR_* or a ZAP status code, by kind.
    public var value: UInt32
    public var endpoint: String

    /// Every way a security handshake fails.
    public static let handshakeFailures: Int32 =
        ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH

    public var isHandshakeFailure: Bool { kind & Self.handshakeFailures != 0 }
    /// The ZAP handler refused the key (its status code, e.g. 400).
    public var isAuthRefusal: Bool { kind == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH }
    /// The two ends use different mechanisms (one has keys, the other not).
    public var isMechanismMismatch: Bool {
        kind == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL && value == UInt32(ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
    }
    /// The peer hung up during the handshake, before it said why. A keyless peer meeting a keyed
    /// coordinator ends this way when it reads the coordinator's greeting (and hangs up) before the
    /// coordinator has read its own: the two greetings cross, so either end may see the mismatch.
    public var isHangUp: Bool { kind == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL }
    /// A message could not be decrypted (a wrong server key, on the server's side).
    public var isCryptographic: Bool {
        kind == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL && value == UInt32(ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
    }
}

/// One received multipart message, with what libzmq knows of its sender's connection.
public struct ZMessage: Sendable {
    public var frames: [Data]
    /// The user id the ZAP handler gave the sender's connection (libzmq's "User-Id" property);
    /// nil when no ZAP handler authenticated it.
    public var userID: String?
}

public struct ZPollEvents: OptionSet, Sendable {
    public let rawValue: Int16
    public init(rawValue: Int16) { self.rawValue = rawValue }
    public static let readable = ZPollEvents(rawValue: Int16(ZMQ_POLLIN))
    public static let writable = ZPollEvents(rawValue: Int16(ZMQ_POLLOUT))
}

/// One ZeroMQ socket. Not thread-safe: use it from ONE thread (create it there or hand it over
/// before use). Every wait takes a timeout; nothing blocks forever. Call `close()` explicitly.
public final class ZSocket: @unchecked Sendable {
    private var handle: UnsafeMutableRawPointer?
    public let type: ZSocketType
    public let context: ZContext
    /// The PAIR socket this socket's events arrive on (`startMonitor`).
    private var monitor: ZSocket?

    public init(_ context: ZContext, _ type: ZSocketType, options: ZSocketOptions = ZSocketOptions()) throws {
        guard let h = zmq_socket(context.handle, type.raw) else { throw ZMQError("zmq_socket") }
        self.handle = h; self.type = type; self.context = context
        do {
            try setInt(ZMQ_LINGER, options.lingerMs)
            try setInt64(ZMQ_MAXMSGSIZE, options.maxMessageSize)
            try setInt(ZMQ_SNDHWM, options.sendHighWaterMark)
            try setInt(ZMQ_RCVHWM, options.receiveHighWaterMark)
            try setInt(ZMQ_RECONNECT_IVL, options.reconnectIntervalMs)
            try setInt(ZMQ_RECONNECT_IVL_MAX, options.reconnectIntervalMaxMs)
            if options.immediate { try setInt(ZMQ_IMMEDIATE, 1) }
            if options.zmtpHeartbeatIntervalMs > 0 {
                try setInt(ZMQ_HEARTBEAT_IVL, options.zmtpHeartbeatIntervalMs)
                try setInt(ZMQ_HEARTBEAT_TIMEOUT, options.zmtpHeartbeatTimeoutMs)
            }
            if let id = options.identity, type == .dealer || type == .router {
                try setBytes(ZMQ_IDENTITY, id)
            }
            if let domain = options.zapDomain { try setBytes(ZMQ_ZAP_DOMAIN, Data(domain.utf8)) }
            switch options.curve {
            case .server(let secret)?:
                try setInt(ZMQ_CURVE_SERVER, 1)
                try setBytes(ZMQ_CURVE_SECRETKEY, Data(secret.utf8))
            case let .client(serverKey, publicKey, secretKey)?:
                try setBytes(ZMQ_CURVE_SERVERKEY, Data(serverKey.utf8))
                try setBytes(ZMQ_CURVE_PUBLICKEY, Data(publicKey.utf8))
                try setBytes(ZMQ_CURVE_SECRETKEY, Data(secretKey.utf8))
            case nil: break
            }
            if type == .router {
                if options.routerMandatory { try setInt(ZMQ_ROUTER_MANDATORY, 1) }
                if options.routerHandover { try setInt(ZMQ_ROUTER_HANDOVER, 1) }
            }
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    public var isClosed: Bool { handle == nil }

    /// Closes the socket (idempotent). Pending outbound messages get at most `lingerMs`.
    public func close() {
        if let h = handle {
            // stop the monitor first: libzmq's end of it would block on a closed reader
            if monitor != nil { zmq_socket_monitor(h, nil, 0) }
            zmq_close(h)
            handle = nil
        }
        monitor?.close()
        monitor = nil
    }

    // MARK: monitor

    /// Starts reporting this socket's `events` (ZMQ_EVENT_* bits) to `monitorEvents()`. Read them
    /// often: up to ~100,000 wait unread, then libzmq's I/O thread waits for room.
    public func startMonitor(_ events: Int32) throws {
        let h = try live("monitor")
        let address = "inproc://monitor-\(UUID().uuidString)"
        guard zmq_socket_monitor(h, address, events) == 0 else { throw ZMQError("zmq_socket_monitor") }
        var o = ZSocketOptions()
        o.lingerMs = 0
        o.receiveHighWaterMark = 100_000
        let pair = try ZSocket(context, .pair, options: o)
        do { try pair.connect(address) } catch {
            zmq_socket_monitor(h, nil, 0)
            pair.close()
            throw error
        }
        monitor = pair
    }

    /// The events reported since the last call (none without `startMonitor`).
    public func monitorEvents(max: Int = 100_000) -> [ZSocketEvent] {
        guard let m = monitor else { return [] }
        var out: [ZSocketEvent] = []
        while out.count < max, let frames = try? m.receive(timeoutMs: 0) {
            guard let head = frames.first, head.count >= 6 else { continue }
            let kind = head.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt16.self) }
            let value = head.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 2, as: UInt32.self) }
            let endpoint = frames.count > 1 ? String(decoding: frames[1], as: UTF8.self) : ""
            out.append(ZSocketEvent(kind: Int32(kind), value: value, endpoint: endpoint))
        }
        return out
    }

    private func live(_ op: String) throws -> UnsafeMutableRawPointer {
        guard let h = handle else { throw ZMQError(op, code: ENOTSOCK) }
        return h
    }

    // MARK: options

    public func setInt(_ option: Int32, _ value: Int32) throws {
        var v = value
        if zmq_setsockopt(try live("setsockopt"), option, &v, MemoryLayout<Int32>.size) != 0 {
            throw ZMQError("setsockopt(\(option))")
        }
    }

    public func setInt64(_ option: Int32, _ value: Int64) throws {
        var v = value
        if zmq_setsockopt(try live("setsockopt"), option, &v, MemoryLayout<Int64>.size) != 0 {
            throw ZMQError("setsockopt(\(option))")
        }
    }

    public func setBytes(_ option: Int32, _ value: Data) throws {
        let h = try live("setsockopt")
        let rc = value.withUnsafeBytes { zmq_setsockopt(h, option, $0.baseAddress, value.count) }
        if rc != 0 { throw ZMQError("setsockopt(\(option))") }
    }

    public func getInt(_ option: Int32) throws -> Int32 {
        var v: Int32 = 0
        var size = MemoryLayout<Int32>.size
        if zmq_getsockopt(try live("getsockopt"), option, &v, &size) != 0 { throw ZMQError("getsockopt(\(option))") }
        return v
    }

    /// SUB: receive messages whose first frame starts with `prefix` ("" = everything).
    public func subscribe(_ prefix: Data = Data()) throws { try setBytes(ZMQ_SUBSCRIBE, prefix) }
    public func subscribe(_ prefix: String) throws { try subscribe(Data(prefix.utf8)) }
    public func unsubscribe(_ prefix: Data) throws { try setBytes(ZMQ_UNSUBSCRIBE, prefix) }

    // MARK: endpoints

    public func bind(_ endpoint: String) throws {
        if zmq_bind(try live("bind"), endpoint) != 0 { throw ZMQError("bind \(endpoint)") }
    }

    public func connect(_ endpoint: String) throws {
        if zmq_connect(try live("connect"), endpoint) != 0 { throw ZMQError("connect \(endpoint)") }
    }

    public func disconnect(_ endpoint: String) throws {
        if zmq_disconnect(try live("disconnect"), endpoint) != 0 { throw ZMQError("disconnect \(endpoint)") }
    }

    /// The endpoint actually bound, e.g. "tcp://127.0.0.1:41873" after binding "tcp://127.0.0.1:*".
    public var lastEndpoint: String {
        guard let h = handle else { return "" }
        var buf = [CChar](repeating: 0, count: 512)
        var size = buf.count
        if zmq_getsockopt(h, ZMQ_LAST_ENDPOINT, &buf, &size) != 0 { return "" }
        return String(cString: buf)
    }

    // MARK: poll

    /// Waits at most `timeoutMs` (≥ 0) for `events`; returns the events that are ready (empty on timeout).
    public func poll(_ events: ZPollEvents = .readable, timeoutMs: Int) throws -> ZPollEvents {
        precondition(timeoutMs >= 0, "ZSocket.poll: an infinite wait is not allowed")
        var item = zmq_pollitem_t(socket: try live("poll"), fd: 0, events: events.rawValue, revents: 0)
        let rc = zmq_poll(&item, 1, timeoutMs)
        if rc < 0 {
            if zmq_errno() == EINTR { return [] }
            throw ZMQError("poll")
        }
        return ZPollEvents(rawValue: item.revents)
    }

    /// Polls several sockets at once; returns the ready events per socket (all empty on timeout).
    public static func poll(_ items: [(ZSocket, ZPollEvents)], timeoutMs: Int) throws -> [ZPollEvents] {
        precondition(timeoutMs >= 0, "ZSocket.poll: an infinite wait is not allowed")
        var raw = try items.map { zmq_pollitem_t(socket: try $0.0.live("poll"), fd: 0, events: $0.1.rawValue, revents: 0) }
        let rc = zmq_poll(&raw, Int32(raw.count), timeoutMs)
        if rc < 0 {
            if zmq_errno() == EINTR { return items.map { _ in [] } }
            throw ZMQError("poll")
        }
        return raw.map { ZPollEvents(rawValue: $0.revents) }
    }

    // MARK: send / receive

    /// Sends a multipart message atomically. Waits at most `timeoutMs` for room (0 = don't wait).
    /// Throws ZMQError: `isWouldBlock` when it timed out (HWM reached / no peer yet for DEALER with
    /// IMMEDIATE), `isHostUnreachable` on a ROUTER whose first frame names no connected peer.
    public func send(_ frames: [Data], timeoutMs: Int = 0) throws {
        precondition(!frames.isEmpty, "ZSocket.send: no frames")
        precondition(timeoutMs >= 0, "ZSocket.send: an infinite wait is not allowed")
        let h = try live("send")
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeoutMs) * 1_000_000
        // First frame: retry on EAGAIN until the deadline. Once it is queued, the rest of a
        // multipart message is always accepted (libzmq queues multipart messages atomically).
        while true {
            let rc = Self.sendFrame(h, frames[0], more: frames.count > 1)
            if rc >= 0 { break }
            let err = zmq_errno()
            if err == EINTR { continue }
            guard err == EAGAIN else { throw ZMQError("send", code: err) }
            let now = DispatchTime.now().uptimeNanoseconds
            if now >= deadline { throw ZMQError("send", code: EAGAIN) }
            let left = Int((deadline - now) / 1_000_000)
            _ = try poll(.writable, timeoutMs: max(1, left))
        }
        for i in 1..<frames.count {
            while Self.sendFrame(h, frames[i], more: i < frames.count - 1) < 0 {
                let err = zmq_errno()
                if err != EINTR && err != EAGAIN { throw ZMQError("send", code: err) }
            }
        }
    }

    public func send(_ frame: Data, timeoutMs: Int = 0) throws { try send([frame], timeoutMs: timeoutMs) }

    private static func sendFrame(_ h: UnsafeMutableRawPointer, _ data: Data, more: Bool) -> Int32 {
        let flags = ZMQ_DONTWAIT | (more ? ZMQ_SNDMORE : 0)
        if data.isEmpty { return zmq_send(h, nil, 0, flags) }
        return data.withUnsafeBytes { zmq_send(h, $0.baseAddress, data.count, flags) }
    }

    /// Receives one multipart message, waiting at most `timeoutMs` (0 = only if one is queued).
    /// Returns nil on timeout.
    public func receive(timeoutMs: Int) throws -> [Data]? {
        try receiveMessage(timeoutMs: timeoutMs)?.frames
    }

    /// `receive`, with the sender's connection properties (its ZAP user id).
    public func receiveMessage(timeoutMs: Int) throws -> ZMessage? {
        precondition(timeoutMs >= 0, "ZSocket.receive: an infinite wait is not allowed")
        let h = try live("receive")
        if let m = try receiveNow(h) { return m }
        if timeoutMs == 0 { return nil }
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeoutMs) * 1_000_000
        while true {
            let now = DispatchTime.now().uptimeNanoseconds
            if now >= deadline { return nil }
            let left = max(1, Int((deadline - now) / 1_000_000))
            if try poll(.readable, timeoutMs: left).contains(.readable) {
                if let m = try receiveNow(h) { return m }
            }
        }
    }

    private func receiveNow(_ h: UnsafeMutableRawPointer) throws -> ZMessage? {
        var frames: [Data] = []
        var userID: String?
        var msg = zmq_msg_t()
        zmq_msg_init(&msg)
        defer { zmq_msg_close(&msg) }
        var flags = ZMQ_DONTWAIT
        while true {
            let rc = zmq_msg_recv(&msg, h, flags)
            if rc < 0 {
                let err = zmq_errno()
                if err == EINTR { continue }
                if err == EAGAIN && frames.isEmpty { return nil }
                if err == EAGAIN { continue }  // rest of a multipart message is already queued
                throw ZMQError("receive", code: err)
            }
            let size = zmq_msg_size(&msg)
            if size == 0 {
                frames.append(Data())
            } else {
                frames.append(Data(bytes: zmq_msg_data(&msg), count: size))
            }
            // every frame that came over the connection carries its properties (a ROUTER's
            // identity frame may not): keep the last one found
            if let u = zmq_msg_gets(&msg, "User-Id") { userID = String(cString: u) }
            if zmq_msg_more(&msg) == 0 { return ZMessage(frames: frames, userID: userID) }
            flags = 0  // remaining parts are already here
        }
    }
}
