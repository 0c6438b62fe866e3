import Foundation
import Protocol
#if canImport(Glibc)
import Glibc
#endif

/// Errors a client command reports.
public enum ClientError: Error, CustomStringConvertible {
    /// `handshake`: what the client's failed security handshakes say, if any failed (a refused key
    /// would look like no coordinator at all otherwise).
    case noReply(endpoint: String, seconds: Double, handshake: String?)
    case remote(String)
    case unexpected(String)

    public var description: String {
        switch self {
        case let .noReply(e, s, handshake?):
            return "no reply from the coordinator at \(e) within \(Int(s)) s: \(handshake)"
        case let .noReply(e, s, nil):
            return "no reply from a coordinator at \(e) within \(Int(s)) s. Is `coordinator serve` running there? "
                + "(Point clients elsewhere with --coordinator tcp://HOST:PORT or $INTERVENE_COORDINATOR.)"
        case .remote(let m): return m
        case .unexpected(let m): return "unexpected reply from the coordinator: \(m)"
        }
    }
}

/// A request/reply connection to the coordinator's ROUTER (a DEALER socket). One request at a time,
/// each bounded by a timeout. Used from one thread.
public final class CoordinatorClient {
    public let endpoint: String
    /// This client's keys, for a coordinator that has keys (its sockets are then CurveZMQ).
    public let keys: CurveClientKeys?
    private let context: ZContext
    private var socket: ZSocket?
    public var timeoutSeconds: Double

    /// `$INTERVENE_COORDINATOR`, else tcp://127.0.0.1:5555.
    public static var defaultEndpoint: String {
        let env = ProcessInfo.processInfo.environment["INTERVENE_COORDINATOR"] ?? ""
        return env.isEmpty ? "tcp://127.0.0.1:5555" : env
    }

    public init(endpoint: String, timeoutSeconds: Double = 10, keys: CurveClientKeys? = nil) throws {
        self.endpoint = endpoint
        self.timeoutSeconds = timeoutSeconds
        self.keys = keys
        context = try ZContext()
        try reconnect()
    }

    deinit { close() }

    public func close() {
        socket?.close()
        socket = nil
    }

    private func reconnect() throws {
        socket?.close()
        var o = ZSocketOptions()
        o.lingerMs = 0
        o.curve = keys?.socketCurve
        let s = try ZSocket(context, .dealer, options: o)
        try s.startMonitor(ZSocketEvent.handshakeFailures)
        try s.connect(endpoint)
        socket = s
    }

    /// Sends one request and waits for its reply. Error bodies become `ClientError.remote`.
    public func request(_ body: EnvelopeBody, timeoutSeconds: Double? = nil) throws -> EnvelopeBody {
        let t = timeoutSeconds ?? self.timeoutSeconds
        if socket == nil { try reconnect() }
        guard let s = socket else {
            throw ClientError.noReply(endpoint: endpoint, seconds: t, handshake: nil)
        }
        try s.send(Wire.encode(body), timeoutMs: Int(t * 1000))
        let deadline = Date().addingTimeInterval(t)
        while true {
            let left = deadline.timeIntervalSinceNow
            guard left > 0, let frames = try s.receive(timeoutMs: max(1, Int(left * 1000))) else {
                // A late reply must not be taken for the next request's: start a fresh socket.
                let why = CurveClientKeys.diagnose(s.monitorEvents(), keys: keys, role: .client)
                try? reconnect()
                throw ClientError.noReply(endpoint: endpoint, seconds: t, handshake: why)
            }
            guard let last = frames.last else { continue }
            let reply: EnvelopeBody
            do {
                reply = try Wire.decodeBody(last)
            } catch {
                throw ClientError.unexpected("\(error)")
            }
            if case .error(let e) = reply { throw ClientError.remote("coordinator: \(e.message)") }
            return reply
        }
    }

    public func submit(gridJSON: String, dryRun: Bool = false) throws -> Intervene_V1_SubmitReply {
        var s = Intervene_V1_Submit()
        s.gridJson = gridJSON
        s.dryRun = dryRun
        guard case .submitReply(let r) = try request(.submit(s)) else { throw ClientError.unexpected("not a SubmitReply") }
        return r
    }

    public func status(experiment: String = "") throws -> Intervene_V1_StatusReply {
        var s = Intervene_V1_StatusRequest()
        s.experiment = experiment
        guard case .statusReply(let r) = try request(.statusRequest(s)) else { throw ClientError.unexpected("not a StatusReply") }
        return r
    }

    /// An experiment's job records (render them with `Render.results`).
    public func query(experiment: String) throws -> Intervene_V1_QueryReply {
        var q = Intervene_V1_Query()
        q.experiment = experiment
        guard case .queryReply(let r) = try request(.query(q)) else { throw ClientError.unexpected("not a QueryReply") }
        if !r.ok { throw ClientError.remote(r.error) }
        return r
    }

    public func cancel(experiment: String, jobs: [String] = []) throws -> Intervene_V1_CancelReply {
        var c = Intervene_V1_Cancel()
        c.experiment = experiment
        c.jobIds = jobs
        guard case .cancelReply(let r) = try request(.cancel(c)) else { throw ClientError.unexpected("not a CancelReply") }
        if !r.error.isEmpty { throw ClientError.remote(r.error) }
        return r
    }

    /// The PUB endpoint to subscribe to: the advertised one, with a wildcard host (0.0.0.0, *)
    /// replaced by the host this client reaches the coordinator at.
    public func resolvePub(_ advertised: String) -> String {
        guard let hostStart = advertised.range(of: "://") else { return advertised }
        let rest = advertised[hostStart.upperBound...]
        guard let colon = rest.lastIndex(of: ":") else { return advertised }
        let host = rest[rest.startIndex..<colon]
        guard host == "0.0.0.0" || host == "*" || host == "[::]" || host == "::" else { return advertised }
        guard let myStart = endpoint.range(of: "://") else { return advertised }
        let mine = endpoint[myStart.upperBound...]
        guard let myColon = mine.lastIndex(of: ":") else { return advertised }
        return String(advertised[..<hostStart.upperBound]) + mine[mine.startIndex..<myColon] + rest[colon...]
    }
}

/// Follows one experiment (or all) live: a snapshot (Query), then sequenced updates from the PUB
/// socket, re-snapshotting on a sequence gap, an unknown job, or a long silence.
public final class ExperimentFollower {
    public struct ExperimentState {
        public var name: String
        public var order: [String] = []
        public var jobs: [String: JobView] = [:]
        public var sequence: UInt64 = 0
        public var submitted: Double = 0
        /// When the snapshot was taken (this machine's clock).
        public var snapshotTime: Double = 0
        public var views: [JobView] { order.compactMap { jobs[$0] } }
    }

    public enum Event {
        case snapshot(String)
        /// A job changed state (not mere progress).
        case changed(experiment: String, job: JobView, previous: JobState?)
        case progress(experiment: String, job: JobView)
    }

    public let client: CoordinatorClient
    public let experiment: String?
    public private(set) var experiments: [String: ExperimentState] = [:]
    public private(set) var gaps = 0
    public private(set) var snapshots = 0
    private var sub: ZSocket?
    private let context: ZContext
    private var lastHeard = Date()

    /// `experiment` nil follows every experiment.
    public init(client: CoordinatorClient, experiment: String?) throws {
        self.client = client
        self.experiment = experiment
        context = try ZContext()
    }

    deinit { sub?.close() }

    public func close() { sub?.close(); sub = nil }

    /// Subscribes, then takes the first snapshot.
    public func start() throws -> [Event] {
        let pub: String
        if let e = experiment {
            pub = try client.query(experiment: e).pubEndpoint
        } else {
            pub = try client.status().pubEndpoint
        }
        var o = ZSocketOptions()
        o.lingerMs = 0
        o.receiveHighWaterMark = 100_000
        o.curve = client.keys?.socketCurve
        let s = try ZSocket(context, .sub, options: o)
        try s.connect(client.resolvePub(pub))
        try s.subscribe(experiment ?? "")
        sub = s
        // Let the subscription reach the publisher before the snapshot, so nothing falls between.
        Thread.sleep(forTimeInterval: 0.2)
        return try snapshot()
    }

    public func snapshot() throws -> [Event] {
        snapshots += 1
        lastHeard = Date()
        let names: [String]
        if let e = experiment { names = [e] } else { names = try client.status().experiments.map { $0.experiment } }
        var events: [Event] = []
        for n in names {
            let r = try client.query(experiment: n)
            var st = ExperimentState(name: n)
            st.sequence = r.sequence
            st.submitted = Double(r.submittedUnixMs) / 1000
            st.snapshotTime = Date().timeIntervalSince1970
            for rec in r.jobs {
                var v = try JobView(rec)
                if let old = experiments[n]?.jobs[rec.jobID], old.state == .running, v.state == .running {
                    v.step = old.step; v.total = old.total
                }
                st.order.append(rec.jobID)
                st.jobs[rec.jobID] = v
            }
            experiments[n] = st
            events.append(.snapshot(n))
        }
        return events
    }

    /// Waits up to `timeout` for updates; returns what changed.
    public func poll(timeout: Double) throws -> [Event] {
        guard let sub else { return [] }
        var events: [Event] = []
        let deadline = Date().addingTimeInterval(timeout)
        var needSnapshot = false
        while true {
            let left = deadline.timeIntervalSinceNow
            guard let frames = try sub.receive(timeoutMs: max(0, Int(left * 1000))) else { break }
            lastHeard = Date()
            guard frames.count == 2, case .update(let u) = try? Wire.decodeBody(frames[1]) else { continue }
            if let e = experiment, u.experiment != e { continue }   // topic prefix matched a longer name
            guard var st = experiments[u.experiment] else { needSnapshot = true; continue }
            if u.sequence <= st.sequence {
                // Normally an update the snapshot already covers; one stamped well after the snapshot
                // means the coordinator restarted (its sequences start again at 1).
                if Double(u.timeUnixMs) / 1000 > st.snapshotTime + 1 { needSnapshot = true }
                continue
            }
            if u.sequence != st.sequence + 1 { gaps += 1; needSnapshot = true; continue }
            st.sequence = u.sequence
            guard var v = st.jobs[u.jobID] else { experiments[u.experiment] = st; needSnapshot = true; continue }
            let previous = v.state
            let state = JobState(rawValue: u.state) ?? v.state
            if u.hasParams {
                // A state change.
                v.state = state
                v.attempt = Int(u.attempt)
                v.worker = u.workerID
                v.error = u.error
                if state == .done { v.metrics = u.metrics; v.ended = Double(u.timeUnixMs) / 1000 }
                if state == .failed || state == .cancelled { v.ended = Double(u.timeUnixMs) / 1000 }
                if state == .running { v.started = Double(u.timeUnixMs) / 1000; v.step = 0; v.total = 0 }
                st.jobs[u.jobID] = v
                experiments[u.experiment] = st
                events.append(.changed(experiment: u.experiment, job: v, previous: previous))
            } else {
                v.step = Int(u.step)
                v.total = Int(u.total)
                st.jobs[u.jobID] = v
                experiments[u.experiment] = st
                events.append(.progress(experiment: u.experiment, job: v))
            }
            if left <= 0 { break }
        }
        if needSnapshot || Date().timeIntervalSince(lastHeard) > 10 {
            events += try snapshot()
        }
        return events
    }

    /// Every job of the followed experiment(s) has ended.
    public var finished: Bool {
        !experiments.isEmpty && experiments.values.allSatisfy { st in
            !st.order.isEmpty && st.order.allSatisfy { st.jobs[$0]?.state.isTerminal == true }
        }
    }

    public var allDone: Bool {
        experiments.values.allSatisfy { st in st.order.allSatisfy { st.jobs[$0]?.state == .done } }
    }
}
