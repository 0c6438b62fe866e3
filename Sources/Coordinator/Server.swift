import JobCore
import Foundation
import Protocol

/// The coordinator's I/O shell: one ROUTER socket for workers and clients, one PUB socket for
/// updates, the store, and the `Scheduler` state machine, all driven from ONE dedicated thread
/// (blocking ZeroMQ calls never run on Swift's cooperative pool).
///
/// Each loop turn receives a batch of messages, turns them into scheduler events, writes every
/// resulting change to the store in one transaction, and only then sends replies (so an Ack means
/// "stored") and publishes updates. Oversized, malformed and wrong-version messages are dropped and
/// counted; nothing a peer sends can stop the loop.
public final class CoordinatorServer: @unchecked Sendable {
    public struct Options: Sendable {
        public var storeDirectory: URL
        public var bind: String
        public var pub: String
        /// The PUB address clients are told to subscribe to (default: the bound one).
        public var advertisedPub: String?
        public var scheduler: SchedulerConfig
        /// Messages larger than this are dropped and counted (libzmq disconnects peers that send
        /// more than twice this).
        public var maxMessageBytes: Int
        /// How often leases and silent workers are checked.
        public var tickMs: Int
        /// Step-metric updates are published at most this often per job.
        public var progressIntervalSeconds: Double
        /// Record the delay from a result's arrival to its Update on the PUB socket.
        public var measureLatency: Bool
        /// CurveZMQ: the coordinator's key pair and the allow-lists (nil: no authentication).
        public var keys: CurveServerKeys?
        public var limits: CoordinatorLimits
        public var log: (@Sendable (String) -> Void)?

        public init(storeDirectory: URL, bind: String = "tcp://127.0.0.1:5555", pub: String = "tcp://127.0.0.1:5556",
                    advertisedPub: String? = nil, scheduler: SchedulerConfig = SchedulerConfig(),
                    maxMessageBytes: Int = 64 << 20, tickMs: Int = 200, progressIntervalSeconds: Double = 0.5,
                    measureLatency: Bool = false, keys: CurveServerKeys? = nil,
                    limits: CoordinatorLimits = CoordinatorLimits(), log: (@Sendable (String) -> Void)? = nil) {
            self.storeDirectory = storeDirectory; self.bind = bind; self.pub = pub; self.advertisedPub = advertisedPub
            self.scheduler = scheduler; self.maxMessageBytes = maxMessageBytes; self.tickMs = tickMs
            self.progressIntervalSeconds = progressIntervalSeconds; self.measureLatency = measureLatency
            self.keys = keys; self.limits = limits; self.log = log
        }
    }

    public let options: Options
    let store: Store
    var scheduler: Scheduler
    let lock = NSLock()
    var _stopped = false
    var _endpoint = ""
    var _pubEndpoint = ""
    var _counters: [String: UInt64] = [:]
    var _latencies: [Double] = []
    let finished = DispatchSemaphore(value: 0)
    var thread: Thread?

    // Loop-thread state.
    var router: ZSocket?
    var pubSocket: ZSocket?
    var zap: ZAPHandler?
    var badFrames: BadFrameLimiter
    var counters: [String: UInt64] = [:]
    /// Why the last store write failed (disk full, I/O error), until a write succeeds again.
    var storeFailure: String?
    var retryStoreAt = 0.0
    /// Tests: make every store write fail with this message (a full disk on demand), or stop.
    private var _injectedStoreFailure: String?
    public func injectStoreFailure(_ message: String?) { lock.withLock { _injectedStoreFailure = message } }
    struct InjectedStoreFailure: Error, CustomStringConvertible { var description: String }
    var workerByIdentity: [Data: String] = [:]
    var identityByWorker: [String: Data] = [:]
    var pubSequence: [String: UInt64] = [:]
    var lastProgress: [String: Double] = [:]
    var leasePersistedAt: [String: Double] = [:]
    var resultArrival: [String: UInt64] = [:]
    var latencies: [Double] = []
    var batch = Batch()
    /// Scheduler events the effects being applied gave rise to (an assignment that could not be
    /// built), handled once those effects are all out, in order, never from inside them.
    var deferredEvents: [SchedulerEvent] = []
    var drainingDeferred = false

    /// The ROUTER endpoint actually bound (after `start`), e.g. tcp://127.0.0.1:41873.
    public var endpoint: String { lock.withLock { _endpoint } }
    /// The PUB endpoint actually bound.
    public var pubEndpoint: String { lock.withLock { _pubEndpoint } }
    /// Diagnostic counters (received, dropped_oversized, malformed, ...), as of the last loop turn.
    public var counterSnapshot: [String: UInt64] { lock.withLock { _counters } }
    /// Result-arrival → PUB latencies in seconds (with `measureLatency`).
    public var latencySnapshot: [Double] { lock.withLock { _latencies } }

    /// Opens the store and loads the queue; `start()` binds and runs.
    public init(options: Options) throws {
        self.options = options
        badFrames = BadFrameLimiter(options.limits)
        store = try Store(directory: options.storeDirectory)
        scheduler = Scheduler(config: options.scheduler, jobs: try store.loadJobs(), experiments: try store.loadExperiments())
    }

    func log(_ s: String) { options.log?(s) }

    /// Binds the sockets and starts the loop thread; returns once bound (or throws the bind error).
    public func start() throws {
        let ready = DispatchSemaphore(value: 0)
        let failure = LockedBox<Error?>(nil)
        let t = Thread { [self] in
            do {
                try self.open()
            } catch {
                failure.value = error
                ready.signal()
                self.finished.signal()
                return
            }
            ready.signal()
            self.loop()
            self.finished.signal()
        }
        t.stackSize = 8 << 20
        t.name = "coordinator-loop"
        thread = t
        t.start()
        ready.wait()
        if let e = failure.value { throw e }
        let s = scheduler
        log("serving \(endpoint) (updates on \(pubEndpoint)); store \(options.storeDirectory.path): "
            + "\(s.experiments.count) experiments, \(s.jobs.count) jobs; "
            + (options.keys.map { "CurveZMQ keys: \($0.workerCount) worker, \($0.clientCount) client" }
                ?? "no authentication (no keys)"))
    }

    /// Asks the loop to stop and waits for it (at most `timeout` seconds).
    public func stop(timeout: Double = 10) {
        lock.withLock { _stopped = true }
        _ = finished.wait(timeout: .now() + timeout)
        finished.signal()   // later waiters return at once
    }

    /// Blocks until the loop ends (after `stop()` from another thread, or a signal handler).
    public func wait() {
        finished.wait()
        finished.signal()
    }

    var stopped: Bool { lock.withLock { _stopped } }

    // MARK: loop

    func open() throws {
        let ctx = try ZContext()
        // with keys, the ZAP handler must be bound before the curve sockets
        let curve: ZCurve?
        if let keys = options.keys {
            let z = try ZAPHandler(context: ctx, log: options.log) { keys.authorize($0) }
            z.start()
            zap = z
            curve = .server(secretKey: keys.pair.secretKey)
        } else {
            curve = nil
        }
        do { try bindSockets(ctx, curve: curve) } catch {
            zap?.stop()
            zap = nil
            throw error
        }
    }

    private func bindSockets(_ ctx: ZContext, curve: ZCurve?) throws {
        var ro = ZSocketOptions()
        ro.curve = curve
        ro.zapDomain = curve == nil ? nil : CurveServerKeys.routerDomain
        ro.maxMessageSize = Int64(options.maxMessageBytes) * 2
        ro.receiveHighWaterMark = 100_000
        ro.sendHighWaterMark = 100_000
        ro.routerMandatory = true
        ro.lingerMs = 500
        let r = try ZSocket(ctx, .router, options: ro)
        do {
            if curve != nil { try r.startMonitor(ZSocketEvent.handshakeFailures) }
            try r.bind(options.bind)
        } catch { r.close(); throw error }
        var po = ZSocketOptions()
        po.curve = curve
        po.zapDomain = curve == nil ? nil : CurveServerKeys.updatesDomain
        po.sendHighWaterMark = 100_000
        po.lingerMs = 200
        let p = try ZSocket(ctx, .pub, options: po)
        do {
            if curve != nil { try p.startMonitor(ZSocketEvent.handshakeFailures) }
            try p.bind(options.pub)
        } catch { r.close(); p.close(); throw error }
        router = r
        pubSocket = p
        lock.withLock {
            _endpoint = r.lastEndpoint
            _pubEndpoint = p.lastEndpoint
        }
    }

    func count(_ key: String, _ n: UInt64 = 1) { counters[key, default: 0] += n }

    /// With keys: connections that failed their handshake, i.e. peers that got nothing through
    /// (a key on no list, no keys at all, or a wrong coordinator key). A keyless peer is counted as
    /// `no_keys` or, when it saw the mismatch first and hung up, as `hung_up` (`ZSocketEvent.isHangUp`).
    func countHandshakeFailures() {
        for e in (router?.monitorEvents() ?? []) + (pubSocket?.monitorEvents() ?? []) where e.isHandshakeFailure {
            count("handshakes_failed")
            if e.isAuthRefusal { count("handshakes_failed_key_refused") }
            if e.isMechanismMismatch { count("handshakes_failed_no_keys") }
            if e.isHangUp { count("handshakes_failed_hung_up") }
        }
    }

    static func now() -> Double { Date().timeIntervalSince1970 }

    func loop() {
        guard let router else { return }
        var nextTick = Self.now()
        while !stopped {
            let waitMs = max(0, min(options.tickMs, Int(((nextTick - Self.now()) * 1000).rounded(.up))))
            do {
                if try router.poll(.readable, timeoutMs: waitMs).contains(.readable) {
                    var n = 0
                    while n < 64, let m = try router.receiveMessage(timeoutMs: 0) {
                        n += 1
                        handleMessage(m.frames, userID: m.userID, arrival: DispatchTime.now().uptimeNanoseconds)
                    }
                }
            } catch let e as ZMQError where e.isTerminated {
                break
            } catch {
                count("socket_errors")
                log("socket error: \(error)")
            }
            let now = Self.now()
            if now >= nextTick {
                apply(scheduler.handle(.tick, now: now), now: now)
                nextTick = now + Double(options.tickMs) / 1000
                badFrames.prune(now: now)
                countHandshakeFailures()
            }
            commit()
            lock.withLock {
                _counters = counters
                if options.measureLatency { _latencies = latencies }
            }
        }
        // last writes before closing: past the retry gate, a few tries
        for _ in 0..<3 where !batch.isEmpty {
            retryStoreAt = 0
            commit()
            if storeFailure != nil { Thread.sleep(forTimeInterval: 0.2) }
        }
        router.close()
        pubSocket?.close()
        zap?.stop()
        store.close()
        log("stopped")
    }

    // MARK: batch: store first, then replies and updates

    struct Batch {
        var dirtyJobs: [String] = []
        var dirtySet: Set<String> = []
        var dirtyExperiments: Set<String> = []
        var steps: [(job: String, attempt: Int, step: Int, values: [String: Double])] = []
        typealias Send = (identity: Data, body: EnvelopeBody, assignment: (worker: String, job: String, attempt: Int)?)
        var sends: [Send] = []
        var updates: [Intervene_V1_Update] = []
        var isEmpty: Bool {
            dirtyJobs.isEmpty && dirtyExperiments.isEmpty && steps.isEmpty && sends.isEmpty && updates.isEmpty
        }
    }

    func commit() {
        // after a failed write, retry at most every 0.5 s (the loop turns faster)
        if storeFailure != nil, Self.now() < retryStoreAt { return }
        var rounds = 0
        while !batch.isEmpty, rounds < 8 {
            rounds += 1
            let b = batch
            batch = Batch()
            if !b.dirtyJobs.isEmpty || !b.dirtyExperiments.isEmpty || !b.steps.isEmpty {
                do {
                    if let e = lock.withLock({ _injectedStoreFailure }) { throw InjectedStoreFailure(description: e) }
                    let reasons = scheduler.pendingReasons(b.dirtyJobs)
                    try store.db.transaction {
                        for id in b.dirtyJobs {
                            guard var j = scheduler.job(id) else { continue }
                            j.pendingReason = reasons[id]
                            try store.saveJob(j)
                        }
                        for e in b.dirtyExperiments.sorted() {
                            if let rec = scheduler.experiments[e] { try store.saveExperimentInTransaction(rec) }
                        }
                        for s in b.steps {
                            try store.saveStepMetrics(job: s.job, attempt: s.attempt, step: s.step, values: s.values)
                        }
                    }
                    if storeFailure != nil { log("store writes again") }
                    storeFailure = nil
                } catch {
                    // Nothing is acknowledged that is not on disk: the writes go back into the
                    // next batch (retried every loop turn), results are not acked (their workers
                    // resend them), and new submissions are refused until a write succeeds.
                    count("store_errors")
                    if storeFailure == nil {
                        log("store write failed: \(error); refusing submissions, holding result acks")
                    }
                    storeFailure = "\(error)"
                    for id in b.dirtyJobs where batch.dirtySet.insert(id).inserted { batch.dirtyJobs.append(id) }
                    batch.dirtyExperiments.formUnion(b.dirtyExperiments)
                    batch.steps = Array((b.steps + batch.steps).suffix(10_000))  // step metrics: the latest only
                    retryStoreAt = Self.now() + 0.5
                    // replies that say a change is kept wait until it is: result and failure acks,
                    // submit and cancel replies go out after the write succeeds
                    var held: [Batch.Send] = []
                    for s in b.sends {
                        switch s.body {
                        case .ack(let a) where a.kind == .result || a.kind == .failure: held.append(s)
                        case .submitReply(let r) where r.ok: held.append(s)  // a refusal keeps nothing
                        case .cancelReply: held.append(s)
                        default: deliver(s)
                        }
                    }
                    count("replies_held", UInt64(held.count))
                    batch.sends = held + batch.sends
                    for u in b.updates { publish(u) }
                    return
                }
            }
            for s in b.sends { deliver(s) }
            for u in b.updates { publish(u) }
        }
    }

    /// Sends one of a batch's messages; an assignment that cannot be sent puts its job back and
    /// forgets the worker (it is gone).
    func deliver(_ s: Batch.Send) {
        guard !send(s.identity, s.body), let a = s.assignment else { return }
        let now = Self.now()
        apply(scheduler.handle(.assignmentRefused(worker: a.worker, job: a.job, attempt: a.attempt), now: now), now: now)
        apply(scheduler.handle(.workerGone(worker: a.worker, reason: "unreachable"), now: now), now: now)
        forget(worker: a.worker)
    }

    @discardableResult
    func send(_ identity: Data, _ body: EnvelopeBody) -> Bool {
        guard let router else { return false }
        do {
            try router.send([identity, Wire.encode(body)], timeoutMs: 0)
            return true
        } catch {
            count("send_failed")
            return false
        }
    }

    func publish(_ u: Intervene_V1_Update) {
        guard let p = pubSocket else { return }
        do {
            try p.send([Data(u.experiment.utf8), Wire.encode(.update(u))], timeoutMs: 0)
            count("published")
            if options.measureLatency, u.state == JobState.done.rawValue, let t0 = resultArrival.removeValue(forKey: u.jobID) {
                latencies.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            }
        } catch {
            count("publish_failed")
        }
    }

    func forget(worker: String) {
        if let id = identityByWorker.removeValue(forKey: worker) { workerByIdentity[id] = nil }
    }
}
