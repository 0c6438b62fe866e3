import Foundation

/// What the coordinator refuses at its door, so that no peer can exhaust it. (The queue's bound is
/// the scheduler's: `SchedulerConfig.maxQueuedJobs`.) Every refusal is answered where an answer
/// can reach the sender, and counted (`coordinator status --verbose`).
public struct CoordinatorLimits: Equatable, Sendable {
    /// Jobs one submission may expand to (serve --max-grid-jobs); counted before expanding
    /// (`Grid.parse`).
    public var maxGridJobs: Int
    /// Bad frames (malformed, of another protocol version, oversized, or forbidden to the sender's
    /// key) one connection may send in a second; past that, its messages are dropped unread for
    /// `blockSeconds` (serve --max-bad-frames, --bad-frame-block).
    public var badFramesPerSecond: Int
    public var blockSeconds: Double

    public init(maxGridJobs: Int = Grid.defaultMaxJobs, badFramesPerSecond: Int = 100, blockSeconds: Double = 10) {
        self.maxGridJobs = maxGridJobs
        self.badFramesPerSecond = badFramesPerSecond
        self.blockSeconds = blockSeconds
    }
}

/// Each connection's budget of bad frames, as a pure state machine (time is given). A connection is
/// the peer here: one whose key is shared by many workers blocks only itself, and one that
/// reconnects to start afresh pays a new handshake (with keys, only an admitted key can).
public struct BadFrameLimiter: Sendable {
    public let perSecond: Int
    public let blockSeconds: Double
    private var windows: [Data: (start: Double, count: Int)] = [:]
    private var blockedUntil: [Data: Double] = [:]

    public init(perSecond: Int, blockSeconds: Double) {
        self.perSecond = perSecond
        self.blockSeconds = blockSeconds
    }

    public init(_ limits: CoordinatorLimits) {
        self.init(perSecond: limits.badFramesPerSecond, blockSeconds: limits.blockSeconds)
    }

    /// This peer's messages are being dropped.
    public func isBlocked(_ peer: Data, now: Double) -> Bool {
        (blockedUntil[peer] ?? -.infinity) > now
    }

    /// Notes one bad frame from `peer`; true when it is the one past the budget (the peer is now
    /// blocked: tell it once).
    public mutating func record(_ peer: Data, now: Double) -> Bool {
        var w = windows[peer] ?? (now, 0)
        if now - w.start >= 1 { w = (now, 0) }
        w.count += 1
        windows[peer] = w
        guard w.count > perSecond else { return false }
        windows[peer] = nil
        blockedUntil[peer] = now + blockSeconds
        return true
    }

    /// Forgets peers whose window and block are over (call now and then).
    public mutating func prune(now: Double) {
        windows = windows.filter { now - $0.value.start < 1 }
        blockedUntil = blockedUntil.filter { $0.value > now }
    }

    /// Peers being tracked (tests: pruning keeps this bounded).
    public var tracked: Int { windows.count + blockedUntil.count }
}

/// Whether an address reaches beyond this machine: a coordinator without keys binds only to
/// loopback unless told otherwise (serve --insecure-no-auth).
public enum Exposure {
    /// tcp://127.x.x.x, tcp://localhost, tcp://[::1], ipc:// and inproc:// stay on this machine.
    public static func isLocal(_ endpoint: String) -> Bool {
        guard let sep = endpoint.range(of: "://") else { return false }
        let transport = endpoint[..<sep.lowerBound]
        if transport == "ipc" || transport == "inproc" { return true }
        let rest = endpoint[sep.upperBound...]
        let host = rest.lastIndex(of: ":").map { String(rest[..<$0]) } ?? String(rest)
        return host == "localhost" || host == "::1" || host == "[::1]" || host.hasPrefix("127.")
    }

    /// Why serving on these endpoints must be refused (nil: it may go ahead).
    public static func refusal(_ endpoints: [String], keyed: Bool, insecure: Bool) -> String? {
        let open = endpoints.filter { !isLocal($0) }
        guard !keyed, !insecure, !open.isEmpty else { return nil }
        return "\(open.joined(separator: " and ")) can be reached from other machines, and this coordinator has no "
            + "keys: anyone who reaches it could submit, cancel and post results. Give it keys (coordinator keys "
            + "coordinator worker client --out keys; serve --curve-secret keys/coordinator.secret --worker-keys "
            + "keys/worker.pub --client-keys keys/client.pub), bind to 127.0.0.1, or pass --insecure-no-auth on a "
            + "network you trust"
    }
}
