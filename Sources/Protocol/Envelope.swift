import Foundation
import SwiftProtobuf

/// The wire protocol version this build speaks. Every Envelope carries it; a peer with another
/// version is refused. Bump only for incompatible changes (additive proto changes don't need it).
/// v2: JobParams.precision. Additive on the wire, but a v1 worker would ignore it and run its
/// own default under a job id that names another precision, so v1 peers are refused.
/// v3: JobParams.tunables, for the same reason (a v2 worker would run every tunable at its default).
public let PROTOCOL_VERSION: UInt32 = 3

// Short names for the generated types (the generated ones stay usable).
public typealias Envelope = Intervene_V1_Envelope
public typealias EnvelopeBody = Intervene_V1_Envelope.OneOf_Body
public typealias JobParams = Intervene_V1_JobParams

public enum ProtocolError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The peer's envelope has another protocol version.
    case versionMismatch(peer: UInt32, ours: UInt32)
    /// The bytes are not an Envelope.
    case malformed(String)
    /// A valid envelope of our version whose body this build does not know (or none).
    case emptyBody
    /// A message had an unexpected number of frames.
    case badFrames(Int)

    public var description: String {
        switch self {
        case let .versionMismatch(peer, ours):
            return "peer speaks protocol v\(peer), this build speaks v\(ours)"
        case let .malformed(why): return "malformed envelope: \(why)"
        case .emptyBody: return "envelope has no body this build understands"
        case let .badFrames(n): return "unexpected message shape (\(n) frames)"
        }
    }

    /// The Error body to send back to the peer, where one should be sent.
    public var errorBody: Intervene_V1_Error {
        var e = Intervene_V1_Error()
        e.message = description
        e.supportedVersion = PROTOCOL_VERSION
        switch self {
        case .versionMismatch: e.code = .versionMismatch
        case .malformed, .badFrames: e.code = .malformed
        case .emptyBody: e.code = .badRequest
        }
        return e
    }
}

public enum Wire {
    /// Builds an envelope of this build's version.
    public static func envelope(_ body: EnvelopeBody, seq: UInt64 = 0) -> Envelope {
        var e = Envelope()
        e.protocolVersion = PROTOCOL_VERSION
        e.seq = seq
        e.body = body
        return e
    }

    /// Serializes `body` in an envelope of this build's version.
    public static func encode(_ body: EnvelopeBody, seq: UInt64 = 0) -> Data {
        encode(envelope(body, seq: seq))
    }

    public static func encode(_ envelope: Envelope) -> Data {
        // Serializing a proto3 message without required fields cannot fail.
        (try? envelope.serializedData()) ?? Data()
    }

    /// Parses an envelope and refuses any other protocol version (checked before the body, so a
    /// peer speaking another version gets the version error, not a parse error).
    public static func decode(_ data: Data) throws -> Envelope {
        let env: Envelope
        do {
            env = try Envelope(serializedBytes: data)
        } catch {
            throw ProtocolError.malformed("\(error)")
        }
        if env.protocolVersion != PROTOCOL_VERSION {
            throw ProtocolError.versionMismatch(peer: env.protocolVersion, ours: PROTOCOL_VERSION)
        }
        if env.body == nil { throw ProtocolError.emptyBody }
        return env
    }

    /// `decode`, returning just the body.
    public static func decodeBody(_ data: Data) throws -> EnvelopeBody {
        try decode(data).body!
    }

    /// An Error envelope for a failed decode (e.g. to answer a peer of another version).
    public static func errorReply(_ error: ProtocolError, seq: UInt64 = 0) -> Data {
        encode(.error(error.errorBody), seq: seq)
    }

    /// Error for a reply that carries an Error body from the peer.
    public static func error(code: Intervene_V1_Error.Code, _ message: String) -> EnvelopeBody {
        var e = Intervene_V1_Error()
        e.code = code
        e.message = message
        e.supportedVersion = PROTOCOL_VERSION
        return .error(e)
    }
}

/// Numbers envelopes from one sender. Not thread-safe: one per sending thread/socket.
public struct EnvelopeSequencer: Sendable {
    public private(set) var next: UInt64 = 1
    public init() {}
    public mutating func encode(_ body: EnvelopeBody) -> Data {
        defer { next &+= 1 }
        return Wire.encode(body, seq: next)
    }
}

extension EnvelopeBody {
    /// The case name, for logs and counters ("hello", "result", "stepMetrics", ...). Derived by
    /// reflection so that new oneof cases need no code here.
    public var kindName: String {
        let text = String(describing: self)
        return String(text.prefix { $0 != "(" })
    }
}

// MARK: - frame shapes

extension Wire {
    /// ROUTER side: a received message is [identity, envelope] (a DEALER peer adds no delimiter).
    /// Also accepts [identity, "", envelope] from REQ-style peers.
    public static func splitRouterFrames(_ frames: [Data]) throws -> (identity: Data, envelope: Envelope) {
        guard frames.count == 2 || (frames.count == 3 && frames[1].isEmpty) else {
            throw ProtocolError.badFrames(frames.count)
        }
        return (frames[0], try decode(frames[frames.count - 1]))
    }

    /// ROUTER side: the frames that send `body` to the peer `identity`.
    public static func routerFrames(to identity: Data, _ body: EnvelopeBody, seq: UInt64 = 0) -> [Data] {
        [identity, encode(body, seq: seq)]
    }

    /// PUB side: [topic = experiment name, envelope(Update)], so SUB sockets can filter by experiment.
    public static func pubFrames(_ update: Intervene_V1_Update, seq: UInt64 = 0) -> [Data] {
        [Data(update.experiment.utf8), encode(.update(update), seq: seq)]
    }

    /// SUB side: decodes [topic, envelope] and returns the Update.
    public static func decodeUpdate(_ frames: [Data]) throws -> Intervene_V1_Update {
        guard frames.count == 2 else { throw ProtocolError.badFrames(frames.count) }
        guard case let .update(u)? = try decode(frames[1]).body else { throw ProtocolError.emptyBody }
        return u
    }
}
