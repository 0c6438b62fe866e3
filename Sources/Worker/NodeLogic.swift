import Engine
import Foundation
import Protocol

/// Timing knobs of a worker node, in milliseconds.
public struct NodeTiming: Sendable, Equatable {
    /// Heartbeat period while computing when the assignment names no lease (otherwise lease/4).
    public var heartbeatMs: Int64 = 2_000
    /// Upper/lower bounds on the heartbeat period derived from a lease.
    public var heartbeatMaxMs: Int64 = 5_000
    public var heartbeatMinMs: Int64 = 50
    /// An idle node repeats Ready this often (it doubles as liveness for the coordinator).
    public var readyMs: Int64 = 3_000
    /// At most one StepMetrics per this period (the final one is always sent).
    public var metricsMinIntervalMs: Int64 = 200
    /// Result/Failure resend: first retry after `resendInitialMs`, doubling up to `resendMaxMs`.
    public var resendInitialMs: Int64 = 1_000
    public var resendMaxMs: Int64 = 15_000
    /// Hello is repeated (with the same doubling) until the coordinator answers anything.
    public var helloRetryMs: Int64 = 2_000
    /// Nothing heard from the coordinator for this long → drop the socket and make a new one.
    public var silenceMs: Int64 = 15_000
    /// Wait before opening the new socket: doubles per silent reconnect, up to the max.
    public var reconnectInitialMs: Int64 = 500
    public var reconnectMaxMs: Int64 = 10_000
    /// On shutdown, how long to wait for acks of sent results before leaving anyway.
    public var drainMs: Int64 = 10_000
    public init() {}
}

/// How a job ended on the compute thread.
public enum JobEnd: Sendable, Equatable {
    case success(metrics: [String: Double], artefact: Data?, wallSeconds: Double)
    case failure(reason: String, deterministic: Bool, wallSeconds: Double)
}

/// What the node runtime must do.
public enum NodeAction: Equatable {
    case send(EnvelopeBody)
    /// Hand this job to the compute thread.
    case startJob(Intervene_V1_JobAssignment)
    /// Close the socket now (the logic asks for `openSocket` later, after a backoff).
    case closeSocket
    /// Make a new socket, connect it, then call `connected(now:)`.
    case openSocket
    /// Leave the process with this status (0 = clean).
    case exit(code: Int32, reason: String)
    /// A line for the log.
    case log(String)
    /// Tell the running job to stop: its outcome is no longer wanted.
    case cancelJob(JobKey)
}

/// Identifies one attempt of one job.
public struct JobKey: Hashable, Sendable, CustomStringConvertible {
    public var jobID: String
    public var attempt: UInt32
    public init(_ jobID: String, _ attempt: UInt32) { self.jobID = jobID; self.attempt = attempt }
    public var description: String { "\(jobID)#\(attempt)" }
}

/// The worker node's decisions, with no sockets or threads: feed it events and a monotonic clock
/// (milliseconds), perform the actions it returns. The runtime (`WorkerNode`) is a thin shell.
public struct NodeLogic {
    public let timing: NodeTiming
    public let hello: Intervene_V1_Hello
    public var workerID: String { hello.workerID }

    enum Link: Equatable {
        case down(reopenAt: Int64)
        case up(registered: Bool)
    }

    struct Running {
        var assignment: Intervene_V1_JobAssignment
        var key: JobKey
        var step: UInt32 = 0
        var total: UInt32 = 0
        var nextHeartbeatAt: Int64
        var heartbeatMs: Int64
        var abandoned = false
    }

    struct Pending {
        var body: EnvelopeBody
        var nextSendAt: Int64
        var backoffMs: Int64
        var sends: Int
    }

    private(set) var link: Link = .down(reopenAt: 0)
    private(set) var running: Running?
    /// Results/failures sent but not yet acknowledged, by job attempt (oldest first).
    private(set) var pending: [(key: JobKey, p: Pending)] = []
    private var lastHeardAt: Int64 = 0
    private var nextHelloAt: Int64 = .max
    private var helloBackoffMs: Int64 = 0
    private var nextReadyAt: Int64 = 0
    private var reconnectBackoffMs: Int64 = 0
    private var pendingMetrics: Intervene_V1_StepMetrics?
    private var lastMetricsAt: Int64 = .min / 2
    private var draining = false
    private var drainDeadline: Int64 = .max
    private(set) var stopped = false

    /// Counters, for logs and tests.
    public private(set) var jobsCompleted = 0
    public private(set) var resends = 0
    public private(set) var reconnects = 0

    public init(hello: Intervene_V1_Hello, timing: NodeTiming = NodeTiming()) {
        self.hello = hello
        self.timing = timing
    }

    public var isIdle: Bool { running == nil }
    public var isConnected: Bool { if case .up = link { return true } else { return false } }
    public var isRegistered: Bool { link == .up(registered: true) }
    public var pendingKeys: [JobKey] { pending.map(\.key) }
    public var runningKey: JobKey? { running?.key }

    // MARK: events

    /// The runtime opened and connected a new socket.
    public mutating func connected(now: Int64) -> [NodeAction] {
        guard !stopped else { return [] }
        link = .up(registered: false)
        lastHeardAt = now
        helloBackoffMs = timing.helloRetryMs
        var out: [NodeAction] = [.send(.hello(hello))]
        nextHelloAt = now + helloBackoffMs
        out += resume(now: now)
        return out
    }

    /// A decoded message from the coordinator.
    public mutating func received(_ body: EnvelopeBody, now: Int64) -> [NodeAction] {
        guard !stopped else { return [] }
        lastHeardAt = now
        reconnectBackoffMs = 0
        var out: [NodeAction] = []
        if link == .up(registered: false) {
            link = .up(registered: true)
            nextHelloAt = .max
        }
        switch body {
        case let .ack(ack):
            switch ack.kind {
            case .result, .failure:
                let key = JobKey(ack.jobID, ack.attempt)
                if let i = pending.firstIndex(where: { $0.key == key }) {
                    pending.remove(at: i)
                    let what = ack.kind == .result ? "result" : "failure"
                    out.append(.log(ack.accepted ? "coordinator acknowledged \(what) of \(key)"
                                    : "coordinator refused \(what) of \(key): this worker does not hold that job"))
                }
            case .heartbeat:
                if ack.abandon, var r = running, r.key == JobKey(ack.jobID, ack.attempt), !r.abandoned {
                    r.abandoned = true
                    running = r
                    out.append(.log("coordinator abandoned \(r.key); stopping it, its outcome will be discarded"))
                    out.append(.cancelJob(r.key))
                }
            default:
                break
            }
        case let .job(assignment):
            out += assign(assignment, now: now)
        case let .error(e):
            switch e.code {
            case .unknownPeer:
                out.append(.log("coordinator does not know this worker (\(e.message)); saying hello again"))
                out.append(.send(.hello(hello)))
                out += resume(now: now)
            case .versionMismatch:
                stopped = true
                out.append(.exit(code: 2, reason: "coordinator refused this worker: \(e.message)"))
            default:
                out.append(.log("coordinator error \(e.code): \(e.message)"))
            }
        default:
            out.append(.log("ignoring unexpected \(body.kindName) from coordinator"))
        }
        out += finishIfDrained(now: now)
        return out
    }

    /// Progress reported by the running job (coalesced by the runtime: only the latest matters).
    public mutating func progress(key: JobKey, step: Int, total: Int, metrics: [String: Double], now: Int64) -> [NodeAction] {
        guard var r = running, r.key == key, !stopped else { return [] }
        r.step = UInt32(clamping: max(0, step))
        r.total = UInt32(clamping: max(0, total))
        running = r
        guard !metrics.isEmpty, !r.abandoned else { return [] }
        var m = Intervene_V1_StepMetrics()
        m.jobID = key.jobID; m.attempt = key.attempt
        m.step = r.step; m.total = r.total; m.values = metrics
        if step >= total || now - lastMetricsAt >= timing.metricsMinIntervalMs {
            pendingMetrics = nil
            lastMetricsAt = now
            return isConnected ? [.send(.stepMetrics(m))] : []
        }
        pendingMetrics = m
        return []
    }

    /// The running job ended.
    public mutating func jobEnded(key: JobKey, _ end: JobEnd, now: Int64) -> [NodeAction] {
        guard let r = running, r.key == key, !stopped else { return [] }
        running = nil
        var out: [NodeAction] = []
        if let m = pendingMetrics, !r.abandoned, isConnected { out.append(.send(.stepMetrics(m))) }
        pendingMetrics = nil
        lastMetricsAt = .min / 2
        if r.abandoned {
            out.append(.log("dropping the outcome of abandoned job \(key)"))
        } else {
            let body: EnvelopeBody
            switch end {
            case let .success(metrics, artefact, wall):
                var res = Intervene_V1_Result()
                res.jobID = key.jobID; res.attempt = key.attempt
                res.metrics = metrics
                if let a = artefact {
                    res.artefact = a
                    res.artefactSha256 = SHA256.hex(a)
                }
                res.wallSeconds = wall
                res.workerID = workerID
                body = .result(res)
                jobsCompleted += 1
                out.append(.log(String(format: "job %@ done in %.2f s", key.description, wall)))
            case let .failure(reason, deterministic, wall):
                var f = Intervene_V1_Failure()
                f.jobID = key.jobID; f.attempt = key.attempt
                f.reason = reason; f.deterministic = deterministic
                f.wallSeconds = wall; f.workerID = workerID
                body = .failure(f)
                out.append(.log("job \(key) failed\(deterministic ? " (deterministic)" : ""): \(reason)"))
            }
            pending.append((key, Pending(body: body, nextSendAt: now + timing.resendInitialMs,
                                         backoffMs: timing.resendInitialMs, sends: 1)))
            if isConnected { out.append(.send(body)) }
        }
        if !draining && isConnected {
            out.append(.send(.ready(readyBody())))
            nextReadyAt = now + timing.readyMs
        }
        out += finishIfDrained(now: now)
        return out
    }

    /// Time passes: heartbeats, Ready, metrics flush, resends, silence detection, reconnects.
    public mutating func tick(now: Int64) -> [NodeAction] {
        guard !stopped else { return [] }
        var out: [NodeAction] = []
        switch link {
        case let .down(reopenAt):
            if now >= reopenAt { out.append(.openSocket) }
            out += finishIfDrained(now: now)
            return out
        case .up:
            break
        }
        if now - lastHeardAt >= timing.silenceMs {
            reconnects += 1
            reconnectBackoffMs = reconnectBackoffMs == 0
                ? timing.reconnectInitialMs : min(reconnectBackoffMs * 2, timing.reconnectMaxMs)
            link = .down(reopenAt: now + reconnectBackoffMs)
            out.append(.log("no word from the coordinator for \(now - lastHeardAt) ms; reconnecting in \(reconnectBackoffMs) ms"))
            out.append(.closeSocket)
            out += finishIfDrained(now: now)
            return out
        }
        if now >= nextHelloAt {
            out.append(.send(.hello(hello)))
            helloBackoffMs = min(helloBackoffMs * 2, timing.resendMaxMs)
            nextHelloAt = now + helloBackoffMs
        }
        if var r = running {
            if now >= r.nextHeartbeatAt {
                out.append(.send(.heartbeat(heartbeatBody(r))))
                r.nextHeartbeatAt = now + r.heartbeatMs
                running = r
            }
            if let m = pendingMetrics, now - lastMetricsAt >= timing.metricsMinIntervalMs {
                out.append(.send(.stepMetrics(m)))
                pendingMetrics = nil
                lastMetricsAt = now
            }
        } else if !draining, now >= nextReadyAt {
            out.append(.send(.ready(readyBody())))
            nextReadyAt = now + timing.readyMs
        }
        for i in pending.indices where now >= pending[i].p.nextSendAt {
            out.append(.send(pending[i].p.body))
            resends += 1
            pending[i].p.sends += 1
            pending[i].p.backoffMs = min(pending[i].p.backoffMs * 2, timing.resendMaxMs)
            pending[i].p.nextSendAt = now + pending[i].p.backoffMs
        }
        out += finishIfDrained(now: now)
        return out
    }

    /// SIGINT/SIGTERM. The first asks to finish the running job, deliver its outcome and leave;
    /// `immediate` (a second signal) leaves at once (the coordinator requeues the job).
    public mutating func shutdown(immediate: Bool, now: Int64) -> [NodeAction] {
        guard !stopped else { return [] }
        if immediate {
            return leave(now: now, reason: "stopped" + (running != nil ? " while computing \(running!.key)" : ""))
        }
        if !draining {
            draining = true
            if running == nil { drainDeadline = now + timing.drainMs }
        }
        var out: [NodeAction] = []
        if let r = running {
            out.append(.log("finishing job \(r.key) before leaving; signal again to leave now"))
        }
        out += finishIfDrained(now: now)
        return out
    }

    // MARK: helpers

    private mutating func assign(_ a: Intervene_V1_JobAssignment, now: Int64) -> [NodeAction] {
        let key = JobKey(a.jobID, a.attempt)
        var ack = Intervene_V1_Ack()
        ack.kind = .job; ack.jobID = a.jobID; ack.attempt = a.attempt
        if let r = running {
            ack.accepted = r.key == key  // a duplicate of the job we run is fine
            return [.send(.ack(ack))] + (ack.accepted ? [] : [.log("refusing job \(key): busy with \(r.key)")])
        }
        if draining {
            ack.accepted = false
            return [.send(.ack(ack)), .log("refusing job \(key): shutting down")]
        }
        let hb = a.leaseMs > 0
            ? min(max(Int64(a.leaseMs) / 4, timing.heartbeatMinMs), timing.heartbeatMaxMs)
            : timing.heartbeatMs
        let r = Running(assignment: a, key: key, total: UInt32(clamping: max(0, a.params.steps)),
                        nextHeartbeatAt: now + hb, heartbeatMs: hb)
        running = r
        ack.accepted = true
        return [.send(.ack(ack)), .send(.heartbeat(heartbeatBody(r))), .startJob(a),
                .log("job \(key): \(a.params.method) \(a.params.task) layer \(a.params.layer) seed \(a.params.seed) (experiment \(a.experiment))")]
    }

    /// After (re)connecting or re-introducing ourselves: say where we stand.
    private mutating func resume(now: Int64) -> [NodeAction] {
        var out: [NodeAction] = []
        if let r = running {
            out.append(.send(.heartbeat(heartbeatBody(r))))
            running!.nextHeartbeatAt = now + r.heartbeatMs
        } else if !draining {
            out.append(.send(.ready(readyBody())))
            nextReadyAt = now + timing.readyMs
        }
        for i in pending.indices {
            out.append(.send(pending[i].p.body))
            pending[i].p.sends += 1
            pending[i].p.backoffMs = timing.resendInitialMs
            pending[i].p.nextSendAt = now + timing.resendInitialMs
        }
        return out
    }

    private mutating func finishIfDrained(now: Int64) -> [NodeAction] {
        guard draining, !stopped, running == nil else { return [] }
        if drainDeadline == .max { drainDeadline = now + timing.drainMs }
        if pending.isEmpty { return leave(now: now, reason: "finished cleanly") }
        if now >= drainDeadline {
            return leave(now: now, reason: "leaving with \(pending.count) unacknowledged outcome(s)")
        }
        return []
    }

    private mutating func leave(now: Int64, reason: String) -> [NodeAction] {
        stopped = true
        var out: [NodeAction] = []
        if isConnected {
            var g = Intervene_V1_Goodbye()
            g.workerID = workerID
            g.reason = reason
            out.append(.send(.goodbye(g)))
        }
        out.append(.exit(code: 0, reason: reason))
        return out
    }

    private func readyBody() -> Intervene_V1_Ready {
        var r = Intervene_V1_Ready()
        r.workerID = workerID
        r.slots = 1
        return r
    }

    private func heartbeatBody(_ r: Running) -> Intervene_V1_Heartbeat {
        var h = Intervene_V1_Heartbeat()
        h.jobID = r.key.jobID; h.attempt = r.key.attempt
        h.step = r.step; h.total = r.total
        return h
    }
}
