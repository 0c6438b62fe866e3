import Engine
import Foundation
import Protocol

/// Everything a node needs to know to run.
public struct NodeOptions: Sendable {
    public var endpoint: String
    public var hello: Intervene_V1_Hello
    public var timing = NodeTiming()
    /// Largest message accepted from the coordinator (bytes).
    public var maxMessageSize: Int64 = 64 << 20
    /// Network loop poll period (ms): bounds the latency of progress/ends reaching the socket.
    public var pollMs: Int = 20
    /// This worker's keys, for a coordinator that has keys (the socket is then CurveZMQ).
    public var keys: CurveClientKeys?

    public init(endpoint: String, hello: Intervene_V1_Hello) {
        self.endpoint = endpoint; self.hello = hello
    }

    /// Hello for this process: hostname, pid, build version, method families.
    public static func hello(workerID: String, device: String = "cpu", deviceIndex: Int32 = -1,
                             threads: Int, modelsCached: [String]) -> Intervene_V1_Hello {
        var h = Intervene_V1_Hello()
        h.workerID = workerID
        h.device = device
        h.deviceIndex = deviceIndex
        h.threads = UInt32(clamping: threads)
        h.modelsCached = modelsCached
        h.hostname = ProcessInfo.processInfo.hostName
        h.pid = UInt32(clamping: ProcessInfo.processInfo.processIdentifier)
        h.version = WorkerNode.version
        h.methods = RunnerRegistry.methodFamilies
        h.precisions = Precision.runnable.map(\.rawValue)
        return h
    }
}

/// A worker node: a network thread (the caller of `run()`) owning one DEALER socket, and a
/// compute thread running one job at a time through a `RunnerRegistry`. All decisions are made by
/// `NodeLogic`; this class moves events between the threads, the socket and the logic.
public final class WorkerNode: @unchecked Sendable {
    public static let version = "0.1.0"

    public let options: NodeOptions
    private let log: @Sendable (String) -> Void
    private let context: ZContext
    private let compute: ComputeThread
    private let inbox = Inbox()

    /// `registry` is handed to the compute thread and used only there.
    public init(options: NodeOptions, registry: RunnerRegistry,
                log: @escaping @Sendable (String) -> Void = WorkerNode.stderrLog) throws {
        self.options = options
        self.log = log
        self.context = try ZContext()
        self.compute = ComputeThread(registry: registry, inbox: inbox)
    }

    public static let stderrLog: @Sendable (String) -> Void = { line in
        let stamp = ISO8601DateFormatter().string(from: Date())
        FileHandle.standardError.write(Data("[\(stamp)] worker: \(line)\n".utf8))
    }

    /// Asks the node to stop (thread-safe; e.g. from a signal handler). The first request finishes
    /// the running job and delivers its outcome; `immediate` (or a second request) leaves now.
    public func requestStop(immediate: Bool = false) { inbox.stop(immediate: immediate) }

    /// Runs the network loop on the calling thread until the node leaves. Returns the exit status.
    /// Call once per node: it terminates the node's ZeroMQ context on the way out.
    public func run() -> Int32 {
        compute.start()
        defer { compute.finish() }
        var logic = NodeLogic(hello: options.hello, timing: options.timing)
        var socket: ZSocket?
        var seq = EnvelopeSequencer()
        let clock = MonotonicClock()
        var dropped = 0
        var stopsSeen = 0
        var status: Int32?
        var handshakeTrouble: String?

        func perform(_ actions: [NodeAction]) {
            for a in actions {
                switch a {
                case let .send(body):
                    guard let s = socket else { continue }
                    do {
                        try s.send([seq.encode(body)], timeoutMs: 0)
                    } catch {
                        dropped += 1
                        if dropped == 1 || dropped % 100 == 0 { log("send \(body.kindName) dropped (\(dropped) so far): \(error)") }
                    }
                case let .startJob(a):
                    compute.submit(a)
                case let .cancelJob(key):
                    compute.cancel(key)
                case .closeSocket:
                    socket?.close()
                    socket = nil
                case .openSocket:
                    do {
                        var o = ZSocketOptions()
                        o.lingerMs = 500
                        o.maxMessageSize = options.maxMessageSize
                        o.sendHighWaterMark = 200
                        o.reconnectIntervalMs = 200
                        o.reconnectIntervalMaxMs = 5_000
                        o.curve = options.keys?.socketCurve
                        // A fresh identity per socket: the coordinator keys work by job+attempt.
                        o.identity = Data("\(options.hello.workerID)/\(UUID().uuidString.prefix(8))".utf8)
                        let s = try ZSocket(context, .dealer, options: o)
                        do {
                            try s.startMonitor(ZSocketEvent.handshakeFailures)
                            try s.connect(options.endpoint)
                        } catch { s.close(); throw error }
                        socket = s
                        log("connecting to \(options.endpoint) as \(options.hello.workerID)"
                            + (options.keys.map { " with key \($0.pair.publicKey)" } ?? ""))
                        perform(logic.connected(now: clock.ms))
                    } catch {
                        log("cannot open a socket to \(options.endpoint): \(error)")
                        status = 1
                    }
                case let .exit(code, reason):
                    log(reason)
                    status = code
                case let .log(line):
                    log(line)
                }
            }
        }

        perform([.openSocket])
        while status == nil {
            // 1. Messages from the coordinator (wait at most one poll period).
            if let s = socket {
                do {
                    var wait = options.pollMs
                    while let frames = try s.receive(timeoutMs: wait) {
                        wait = 0
                        do {
                            let env = try Wire.decode(frames[frames.count - 1])
                            perform(logic.received(env.body!, now: clock.ms))
                        } catch let e as ProtocolError {
                            if case .versionMismatch = e {
                                perform([.exit(code: 2, reason: "coordinator refused: \(e)")])
                            } else {
                                log("dropping a message from the coordinator: \(e)")
                            }
                        }
                        if status != nil || socket !== s { break }
                    }
                } catch {
                    log("socket error: \(error); reopening")
                    perform([.closeSocket, .openSocket])
                }
            } else {
                Thread.sleep(forTimeInterval: Double(options.pollMs) / 1000)
            }
            if status != nil { break }
            // a refused key or a missing one: say why, once (libzmq keeps retrying)
            if let events = socket?.monitorEvents(),
               let why = CurveClientKeys.diagnose(events, keys: options.keys, role: .worker), why != handshakeTrouble {
                handshakeTrouble = why
                log(why)
            }
            // 2. Events from the compute thread and signals.
            let events = inbox.drain()
            for p in events.progress {
                perform(logic.progress(key: p.key, step: p.step, total: p.total, metrics: p.metrics, now: clock.ms))
            }
            for (key, end) in events.ended { perform(logic.jobEnded(key: key, end, now: clock.ms)) }
            if events.stops > 0 {
                stopsSeen += events.stops
                perform(logic.shutdown(immediate: events.immediate || stopsSeen > 1, now: clock.ms))
            }
            // 3. Timers.
            if status == nil { perform(logic.tick(now: clock.ms)) }
        }
        if dropped > 0 { log("\(dropped) outbound message(s) dropped over this run") }
        socket?.close()
        // Flush what is queued (Goodbye, a last Result) before the process may exit: bounded by
        // the socket's linger. The node cannot run again afterwards.
        context.terminate()
        return status ?? 0
    }
}

// MARK: - threads and mailboxes

/// Monotonic milliseconds.
struct MonotonicClock {
    let origin = DispatchTime.now().uptimeNanoseconds
    var ms: Int64 { Int64((DispatchTime.now().uptimeNanoseconds - origin) / 1_000_000) }
}

/// Events from the compute thread and signal handlers to the network thread. Progress is
/// coalesced: the latest report, plus the latest one that carried metrics if that is older.
final class Inbox: @unchecked Sendable {
    struct Progress { var key: JobKey; var step: Int; var total: Int; var metrics: [String: Double] }
    struct Events { var progress: [Progress]; var ended: [(JobKey, JobEnd)]; var stops: Int; var immediate: Bool }

    private let lock = NSLock()
    private var latest: Progress?
    private var latestWithMetrics: Progress?
    private var ended: [(JobKey, JobEnd)] = []
    private var stops = 0
    private var immediate = false

    func post(_ p: Progress) {
        lock.lock(); defer { lock.unlock() }
        latest = p
        if !p.metrics.isEmpty { latestWithMetrics = p }
    }

    func post(_ key: JobKey, _ end: JobEnd) {
        lock.lock(); defer { lock.unlock() }
        ended.append((key, end))
    }

    func stop(immediate: Bool) {
        lock.lock(); defer { lock.unlock() }
        stops += 1
        self.immediate = self.immediate || immediate
    }

    func drain() -> Events {
        lock.lock(); defer { lock.unlock() }
        var progress: [Progress] = []
        if let m = latestWithMetrics, m.step != latest?.step || m.key != latest?.key { progress.append(m) }
        if let l = latest { progress.append(l) }
        let e = Events(progress: progress, ended: ended, stops: stops, immediate: immediate)
        latest = nil; latestWithMetrics = nil; ended = []; stops = 0
        return e
    }
}

/// Forwards a job's progress to the inbox (called on the compute thread).
final class ProgressSink: JobProgress, @unchecked Sendable {
    let key: JobKey
    let inbox: Inbox
    let cancelled: LockedBox<Set<JobKey>>
    init(key: JobKey, inbox: Inbox, cancelled: LockedBox<Set<JobKey>>) {
        self.key = key; self.inbox = inbox; self.cancelled = cancelled
    }
    func progress(step: Int, total: Int, metrics: [String: Double]) {
        inbox.post(Inbox.Progress(key: key, step: step, total: total, metrics: metrics))
    }
    var isCancelled: Bool { cancelled.value.contains(key) }
}

/// The compute thread: runs submitted jobs one at a time and posts their ends to the inbox.
final class ComputeThread: @unchecked Sendable {
    private let registry: RunnerRegistry
    private let inbox: Inbox
    private let cond = NSCondition()
    private var queue: [Intervene_V1_JobAssignment] = []
    private var finishing = false
    private var thread: Thread?
    /// The job being computed (under `cond`).
    private var current: JobKey?
    /// Attempts whose outcome is no longer wanted (read by their `ProgressSink` on this thread).
    private let cancelled = LockedBox<Set<JobKey>>([])

    init(registry: RunnerRegistry, inbox: Inbox) {
        self.registry = registry; self.inbox = inbox
    }

    func start() {
        let t = Thread { [self] in loop() }
        t.name = "worker-compute"
        t.stackSize = 16 << 20
        thread = t
        t.start()
    }

    func submit(_ a: Intervene_V1_JobAssignment) {
        cond.lock(); queue.append(a); cond.signal(); cond.unlock()
    }

    /// Asks the job `key` to stop at its next step (or not to start, if still queued); a key that
    /// is neither (it has just ended) is not kept.
    func cancel(_ key: JobKey) {
        cond.lock()
        defer { cond.unlock() }
        guard current == key || queue.contains(where: { JobKey($0.jobID, $0.attempt) == key }) else { return }
        cancelled.mutate { _ = $0.insert(key) }
    }

    /// Lets the thread end after its current job (the process may exit before that).
    func finish() {
        cond.lock(); finishing = true; cond.signal(); cond.unlock()
    }

    /// The input artefacts an assignment carries, each checked against its SHA-256 (a mismatch is
    /// not deterministic: the next attempt gets a fresh copy).
    static func inputs(of a: Intervene_V1_JobAssignment) throws -> JobInputs {
        var out: [String: Data] = [:]
        for i in a.inputs {
            let sha = SHA256.hex(i.artefact)
            guard sha == i.artefactSha256 else {
                throw JobError("input \(i.jobID)'s artefact arrived with sha256 \(sha.prefix(12))…, not the "
                                + "\(i.artefactSha256.prefix(12))… it was sent with", deterministic: false)
            }
            out[i.jobID] = i.artefact
        }
        return JobInputs(out)
    }

    private func loop() {
        while true {
            cond.lock()
            while queue.isEmpty && !finishing { _ = cond.wait(until: Date().addingTimeInterval(1)) }
            if queue.isEmpty { cond.unlock(); return }
            let a = queue.removeFirst()
            let key = JobKey(a.jobID, a.attempt)
            current = key
            cond.unlock()
            let t0 = Date()
            let end: JobEnd
            do {
                let spec = try JobSpec(wire: a.params)
                if cancelled.value.contains(key) { throw JobCancelled() }
                let sink = ProgressSink(key: key, inbox: inbox, cancelled: cancelled)
                let outcome = try registry.run(spec, inputs: try Self.inputs(of: a), progress: sink)
                end = .success(metrics: outcome.metrics, artefact: outcome.artefact, wallSeconds: Date().timeIntervalSince(t0))
            } catch {
                let (reason, deterministic) = JobError.classify(error)
                end = .failure(reason: reason, deterministic: deterministic, wallSeconds: Date().timeIntervalSince(t0))
            }
            cond.lock()
            current = nil
            cancelled.mutate { _ = $0.remove(key) }
            cond.unlock()
            inbox.post(key, end)
        }
    }
}
