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
        public var log: (@Sendable (String) -> Void)?

        public init(storeDirectory: URL, bind: String = "tcp://127.0.0.1:5555", pub: String = "tcp://127.0.0.1:5556",
                    advertisedPub: String? = nil, scheduler: SchedulerConfig = SchedulerConfig(),
                    maxMessageBytes: Int = 64 << 20, tickMs: Int = 200, progressIntervalSeconds: Double = 0.5,
                    measureLatency: Bool = false, log: (@Sendable (String) -> Void)? = nil) {
            self.storeDirectory = storeDirectory; self.bind = bind; self.pub = pub; self.advertisedPub = advertisedPub
            self.scheduler = scheduler; self.maxMessageBytes = maxMessageBytes; self.tickMs = tickMs
            self.progressIntervalSeconds = progressIntervalSeconds; self.measureLatency = measureLatency; self.log = log
        }
    }

    public let options: Options
    private let store: Store
    private var scheduler: Scheduler
    private let lock = NSLock()
    private var _stopped = false
    private var _endpoint = ""
    private var _pubEndpoint = ""
    private var _counters: [String: UInt64] = [:]
    private var _latencies: [Double] = []
    private let finished = DispatchSemaphore(value: 0)
    private var thread: Thread?

    // Loop-thread state.
    private var router: ZSocket?
    private var pubSocket: ZSocket?
    private var counters: [String: UInt64] = [:]
    private var workerByIdentity: [Data: String] = [:]
    private var identityByWorker: [String: Data] = [:]
    private var pubSequence: [String: UInt64] = [:]
    private var lastProgress: [String: Double] = [:]
    private var leasePersistedAt: [String: Double] = [:]
    private var resultArrival: [String: UInt64] = [:]
    private var latencies: [Double] = []
    private var batch = Batch()

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
        store = try Store(directory: options.storeDirectory)
        scheduler = Scheduler(config: options.scheduler, jobs: try store.loadJobs(), experiments: try store.loadExperiments())
    }

    private func log(_ s: String) { options.log?(s) }

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
            + "\(s.experiments.count) experiments, \(s.jobs.count) jobs")
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

    private var stopped: Bool { lock.withLock { _stopped } }

    // MARK: loop

    private func open() throws {
        let ctx = try ZContext()
        var ro = ZSocketOptions()
        ro.maxMessageSize = Int64(options.maxMessageBytes) * 2
        ro.receiveHighWaterMark = 100_000
        ro.sendHighWaterMark = 100_000
        ro.routerMandatory = true
        ro.lingerMs = 500
        let r = try ZSocket(ctx, .router, options: ro)
        do { try r.bind(options.bind) } catch { r.close(); throw error }
        var po = ZSocketOptions()
        po.sendHighWaterMark = 100_000
        po.lingerMs = 200
        let p = try ZSocket(ctx, .pub, options: po)
        do { try p.bind(options.pub) } catch { r.close(); p.close(); throw error }
        router = r
        pubSocket = p
        lock.withLock {
            _endpoint = r.lastEndpoint
            _pubEndpoint = p.lastEndpoint
        }
    }

    private func count(_ key: String, _ n: UInt64 = 1) { counters[key, default: 0] += n }

    private static func now() -> Double { Date().timeIntervalSince1970 }

    private func loop() {
        guard let router else { return }
        var nextTick = Self.now()
        while !stopped {
            let waitMs = max(0, min(options.tickMs, Int(((nextTick - Self.now()) * 1000).rounded(.up))))
            do {
                if try router.poll(.readable, timeoutMs: waitMs).contains(.readable) {
                    var n = 0
                    while n < 64, let frames = try router.receive(timeoutMs: 0) {
                        n += 1
                        handleMessage(frames, arrival: DispatchTime.now().uptimeNanoseconds)
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
            }
            commit()
            lock.withLock {
                _counters = counters
                if options.measureLatency { _latencies = latencies }
            }
        }
        commit()
        router.close()
        pubSocket?.close()
        store.close()
        log("stopped")
    }

    // MARK: batch: store first, then replies and updates

    private struct Batch {
        var dirtyJobs: [String] = []
        var dirtySet: Set<String> = []
        var dirtyExperiments: Set<String> = []
        var steps: [(job: String, attempt: Int, step: Int, values: [String: Double])] = []
        var sends: [(identity: Data, body: EnvelopeBody, assignment: (worker: String, job: String, attempt: Int)?)] = []
        var updates: [Intervene_V1_Update] = []
        var isEmpty: Bool {
            dirtyJobs.isEmpty && dirtyExperiments.isEmpty && steps.isEmpty && sends.isEmpty && updates.isEmpty
        }
    }

    private func commit() {
        var rounds = 0
        while !batch.isEmpty, rounds < 8 {
            rounds += 1
            let b = batch
            batch = Batch()
            if !b.dirtyJobs.isEmpty || !b.dirtyExperiments.isEmpty || !b.steps.isEmpty {
                do {
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
                } catch {
                    // Keep serving from memory; the next change of these jobs writes them again.
                    count("store_errors")
                    log("store write failed: \(error)")
                }
            }
            for s in b.sends {
                if !send(s.identity, s.body), let a = s.assignment {
                    // The worker is gone: put the job back and forget the worker.
                    let now = Self.now()
                    apply(scheduler.handle(.assignmentRefused(worker: a.worker, job: a.job, attempt: a.attempt), now: now), now: now)
                    apply(scheduler.handle(.workerGone(worker: a.worker, reason: "unreachable"), now: now), now: now)
                    forget(worker: a.worker)
                }
            }
            for u in b.updates { publish(u) }
        }
    }

    @discardableResult
    private func send(_ identity: Data, _ body: EnvelopeBody) -> Bool {
        guard let router else { return false }
        do {
            try router.send([identity, Wire.encode(body)], timeoutMs: 0)
            return true
        } catch {
            count("send_failed")
            return false
        }
    }

    private func publish(_ u: Intervene_V1_Update) {
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

    private func forget(worker: String) {
        if let id = identityByWorker.removeValue(forKey: worker) { workerByIdentity[id] = nil }
    }

    // MARK: directives

    private func apply(_ directives: [Directive], now: Double) {
        for d in directives {
            if let j = d.changedJob, batch.dirtySet.insert(j).inserted { batch.dirtyJobs.append(j) }
            switch d {
            case let .assign(w, j, a, spec, exp, lease):
                guard let id = identityByWorker[w] else {
                    // Assigned to a worker we can no longer reach: undo at once.
                    apply(scheduler.handle(.assignmentRefused(worker: w, job: j, attempt: a), now: now), now: now)
                    continue
                }
                var m = Intervene_V1_JobAssignment()
                m.jobID = j
                m.attempt = UInt32(clamping: a)
                m.leaseMs = UInt32(clamping: Int(lease * 1000))
                m.experiment = exp
                m.params = JobParams(spec)
                batch.sends.append((id, .job(m), (w, j, a)))
                log("job \(j) attempt \(a) -> \(w) (\(spec.task) \(spec.method) layer \(spec.layer) seed \(spec.seed))")
            case let .ack(w, kind, j, a):
                guard let id = identityByWorker[w] else { continue }
                var m = Intervene_V1_Ack()
                switch kind {
                case .hello: m.kind = .hello
                case .ready: m.kind = .ready
                case .result: m.kind = .result
                case .failure: m.kind = .failure
                }
                m.jobID = j
                m.attempt = UInt32(clamping: a)
                m.accepted = true
                batch.sends.append((id, .ack(m), nil))
            case let .heartbeatAck(w, j, a, abandon):
                guard let id = identityByWorker[w] else { continue }
                var m = Intervene_V1_Ack()
                m.kind = .heartbeat
                m.jobID = j
                m.attempt = UInt32(clamping: a)
                m.accepted = !abandon
                m.abandon = abandon
                batch.sends.append((id, .ack(m), nil))
            case let .unknownWorker(w):
                if let id = identityByWorker[w] {
                    batch.sends.append((id, Wire.error(code: .unknownPeer, "unknown worker \(w); say Hello"), nil))
                }
            case let .requeue(j, a, reason):
                log("job \(j) requeued as attempt \(a): \(reason)")
            case let .markFailed(j, reason):
                log("job \(j) failed: \(reason)")
            case .publish(let rec):
                for e in scheduler.experimentsOf(rec.id) { batch.updates.append(update(rec, experiment: e, now: now)) }
            case .persistExperiment(let e):
                batch.dirtyExperiments.insert(e)
            case .ignored(let why):
                count("ignored")
                if why.hasPrefix("duplicate") { count("duplicate_results") }
                log(why)
            case .markRunning, .markDone, .markCancelled, .markQueued, .submitted, .cancelled:
                break
            }
        }
    }

    private func nextSequence(_ experiment: String) -> UInt64 {
        let s = (pubSequence[experiment] ?? 0) + 1
        pubSequence[experiment] = s
        return s
    }

    private func update(_ rec: JobRecord, experiment: String, now: Double) -> Intervene_V1_Update {
        var u = Intervene_V1_Update()
        u.sequence = nextSequence(experiment)
        u.experiment = experiment
        u.jobID = rec.id
        u.state = rec.state.rawValue
        u.metrics = rec.metrics
        u.attempt = UInt32(clamping: rec.attempt)
        u.workerID = rec.worker ?? ""
        u.error = rec.error ?? ""
        u.timeUnixMs = WireConvert.ms(now)
        u.params = JobParams(rec.spec)
        return u
    }

    // MARK: messages

    private func handleMessage(_ frames: [Data], arrival: UInt64) {
        count("received")
        let size = frames.reduce(0) { $0 + $1.count }
        guard frames.count >= 2, let identity = frames.first, !identity.isEmpty else {
            count("malformed"); return
        }
        if size > options.maxMessageBytes {
            count("dropped_oversized")
            send(identity, Wire.error(code: .tooLarge, "message of \(size) bytes exceeds the limit of \(options.maxMessageBytes)"))
            return
        }
        // [identity, envelope] from a DEALER; [identity, "", envelope] from a REQ.
        guard frames.count == 2 || (frames.count == 3 && frames[1].isEmpty) else {
            count("malformed")
            send(identity, .error(ProtocolError.badFrames(frames.count - 1).errorBody))
            return
        }
        let body: EnvelopeBody
        do {
            body = try Wire.decodeBody(frames[frames.count - 1])
        } catch let e as ProtocolError {
            if case .versionMismatch = e { count("version_mismatch") } else { count("malformed") }
            send(identity, .error(e.errorBody))
            return
        } catch {
            count("malformed")
            return
        }
        let now = Self.now()
        let worker = workerByIdentity[identity]
        switch body {
        case .hello(let h):
            var name = h.workerID.trimmingCharacters(in: .whitespaces)
            if name.isEmpty { name = "worker-" + identity.prefix(8).map { String(format: "%02x", $0) }.joined() }
            if let old = identityByWorker[name], old != identity { workerByIdentity[old] = nil }
            if let oldName = workerByIdentity[identity], oldName != name { identityByWorker[oldName] = nil }
            workerByIdentity[identity] = name
            identityByWorker[name] = identity
            let caps = WorkerCapabilities(device: h.device == "gpu" ? .gpu : .cpu, deviceIndex: Int(h.deviceIndex),
                                          threads: Int(h.threads), hostname: h.hostname, methods: h.methods,
                                          modelsCached: h.modelsCached)
            log("worker \(name) connected (\(h.device)\(h.device == "gpu" ? " \(h.deviceIndex)" : ""), \(h.threads) threads, \(h.hostname) pid \(h.pid))")
            apply(scheduler.handle(.workerHello(worker: name, capabilities: caps), now: now), now: now)

        case .ready:
            guard let w = worker else { return unknownPeer(identity) }
            apply(scheduler.handle(.workerReady(worker: w), now: now), now: now)

        case .ack(let a):
            guard let w = worker else { return unknownPeer(identity) }
            if a.kind == .job {
                let e: SchedulerEvent = a.accepted
                    ? .assignmentAccepted(worker: w, job: a.jobID, attempt: Int(a.attempt))
                    : .assignmentRefused(worker: w, job: a.jobID, attempt: Int(a.attempt))
                apply(scheduler.handle(e, now: now), now: now)
            }

        case .heartbeat(let h):
            guard let w = worker else { return unknownPeer(identity) }
            apply(scheduler.handle(.heartbeat(worker: w, job: h.jobID, attempt: Int(h.attempt), step: Int(h.step),
                                              total: Int(h.total)), now: now), now: now)
            persistLease(h.jobID, now: now)

        case .stepMetrics(let m):
            guard let w = worker else { return unknownPeer(identity) }
            let ds = scheduler.handle(.heartbeat(worker: w, job: m.jobID, attempt: Int(m.attempt), step: Int(m.step),
                                                 total: Int(m.total)), now: now)
            // Step reports are not acknowledged, except to tell a stale worker to stop.
            apply(ds.filter { if case .heartbeatAck(_, _, _, let abandon) = $0 { return abandon }; return true }, now: now)
            persistLease(m.jobID, now: now)
            guard let job = scheduler.job(m.jobID), job.state == .running, job.attempt == Int(m.attempt) else { return }
            batch.steps.append((m.jobID, Int(m.attempt), Int(m.step), m.values))
            let last = lastProgress[m.jobID] ?? 0
            if now - last >= options.progressIntervalSeconds || m.step >= m.total {
                lastProgress[m.jobID] = now
                for e in scheduler.experimentsOf(m.jobID) {
                    var u = update(job, experiment: e, now: now)
                    u.metrics = m.values
                    u.step = m.step
                    u.total = m.total
                    u.clearParams()
                    batch.updates.append(u)
                }
            }

        case .result(let r):
            let w = worker ?? (r.workerID.isEmpty ? "unknown" : r.workerID)
            var sha: String?
            var path: String?
            if !r.artefact.isEmpty || !r.artefactSha256.isEmpty {
                do {
                    let stored = try store.putArtefact(r.artefact, claimedSHA256: r.artefactSha256)
                    sha = stored.sha256
                    path = stored.relativePath
                } catch {
                    count("artefact_rejected")
                    log("result for \(r.jobID) from \(w) refused: \(error)")
                    send(identity, Wire.error(code: .badRequest, "result for \(r.jobID) refused: \(error)"))
                    return
                }
            }
            if options.measureLatency { resultArrival[r.jobID] = arrival }
            lastProgress[r.jobID] = nil
            leasePersistedAt[r.jobID] = nil
            withIdentity(identity, as: w, known: worker != nil) {
                // A result from a peer we do not know (e.g. sent before our restart) is kept and
                // acknowledged all the same.
                apply(scheduler.handle(.result(worker: w, job: r.jobID, attempt: Int(r.attempt), metrics: r.metrics,
                                               artefactSHA256: sha, artefactPath: path), now: now), now: now)
            }

        case .failure(let f):
            let w = worker ?? (f.workerID.isEmpty ? "unknown" : f.workerID)
            withIdentity(identity, as: w, known: worker != nil) {
                apply(scheduler.handle(.failure(worker: w, job: f.jobID, attempt: Int(f.attempt), reason: f.reason,
                                                deterministic: f.deterministic), now: now), now: now)
            }

        case .goodbye(let g):
            guard let w = worker else { return }
            log("worker \(w) left: \(g.reason)")
            apply(scheduler.handle(.workerGone(worker: w, reason: g.reason.isEmpty ? "goodbye" : g.reason), now: now), now: now)
            forget(worker: w)

        case .submit(let s):
            batch.sends.append((identity, .submitReply(submit(s, now: now)), nil))

        case .statusRequest(let r):
            batch.sends.append((identity, .statusReply(status(r, now: now)), nil))

        case .query(let q):
            batch.sends.append((identity, .queryReply(query(q)), nil))

        case .cancel(let c):
            var reply = Intervene_V1_CancelReply()
            if scheduler.experiments[c.experiment] == nil {
                reply.error = "no experiment named \"\(c.experiment)\""
            } else {
                let ds = scheduler.handle(.cancel(experiment: c.experiment, jobs: c.jobIds), now: now)
                apply(ds, now: now)
                for d in ds { if case .cancelled(_, let n) = d { reply.cancelled = UInt32(n) } }
                log("experiment \(c.experiment): \(reply.cancelled) jobs cancelled")
            }
            batch.sends.append((identity, .cancelReply(reply), nil))

        default:
            count("unexpected")
            send(identity, Wire.error(code: .badRequest, "the coordinator does not accept \(body.kindName) messages"))
        }
    }

    /// Writes a renewed lease now and then (at most every third of a lease), so that a restarted
    /// coordinator knows which leases are still live.
    private func persistLease(_ job: String, now: Double) {
        guard let j = scheduler.job(job), j.state == .running else { leasePersistedAt[job] = nil; return }
        if now - (leasePersistedAt[job] ?? j.started ?? 0) >= options.scheduler.leaseSeconds / 3 {
            leasePersistedAt[job] = now
            if batch.dirtySet.insert(job).inserted { batch.dirtyJobs.append(job) }
        }
    }

    /// Runs `body` with `identity` mapped to worker `w` (so replies reach the sender), restoring the
    /// previous mapping afterwards when the peer was not registered.
    private func withIdentity(_ identity: Data, as w: String, known: Bool, _ body: () -> Void) {
        if known { return body() }
        let oldIdentity = identityByWorker[w]
        identityByWorker[w] = identity
        workerByIdentity[identity] = w
        body()
        identityByWorker[w] = oldIdentity
        workerByIdentity[identity] = nil
    }

    private func unknownPeer(_ identity: Data) {
        count("unknown_peer")
        send(identity, Wire.error(code: .unknownPeer, "this coordinator does not know you; say Hello"))
    }

    // MARK: client requests

    private var advertisedPub: String { options.advertisedPub ?? pubEndpoint }

    private func submit(_ s: Intervene_V1_Submit, now: Double) -> Intervene_V1_SubmitReply {
        var reply = Intervene_V1_SubmitReply()
        reply.pubEndpoint = advertisedPub
        let grid: Grid
        do {
            grid = try Grid.parse(s.gridJson)
        } catch let e as GridErrors {
            reply.ok = false
            reply.errors = e.errors.map { var f = Intervene_V1_FieldError(); f.path = $0.path; f.message = $0.message; return f }
            return reply
        } catch {
            reply.ok = false
            var f = Intervene_V1_FieldError(); f.message = "\(error)"
            reply.errors = [f]
            return reply
        }
        let jobs = grid.expand()
        reply.experiment = grid.experiment
        reply.jobsTotal = UInt32(jobs.count)
        if s.dryRun {
            let known = jobs.filter { scheduler.job($0.id) != nil }.count
            reply.ok = true
            reply.jobsReused = UInt32(known)
            reply.jobsNew = UInt32(jobs.count - known)
            return reply
        }
        let ds = scheduler.handle(.submit(experiment: grid.experiment, gridJSON: s.gridJson, jobs: jobs), now: now)
        apply(ds, now: now)
        for d in ds {
            if case let .submitted(_, new, reused, requeued, total) = d {
                reply.jobsNew = UInt32(new); reply.jobsReused = UInt32(reused)
                reply.jobsRequeued = UInt32(requeued); reply.jobsTotal = UInt32(total)
            }
        }
        reply.ok = true
        log("experiment \(grid.experiment) submitted: \(reply.jobsTotal) jobs (\(reply.jobsNew) new, \(reply.jobsReused) reused, \(reply.jobsRequeued) requeued)")
        return reply
    }

    private func status(_ r: Intervene_V1_StatusRequest, now: Double) -> Intervene_V1_StatusReply {
        var reply = Intervene_V1_StatusReply()
        reply.pubEndpoint = advertisedPub
        reply.counters = counters
        reply.counters["duplicate_results"] = UInt64(scheduler.duplicateResults)
        reply.counters["stale_messages"] = UInt64(scheduler.staleMessages)
        let names = r.experiment.isEmpty
            ? scheduler.experiments.values.sorted { ($0.submitted, $0.name) < ($1.submitted, $1.name) }.map { $0.name }
            : [r.experiment]
        if !r.experiment.isEmpty, scheduler.experiments[r.experiment] == nil {
            reply.error = "no experiment named \"\(r.experiment)\""
        }
        for name in names {
            guard let exp = scheduler.experiments[name] else { continue }
            let reasons = scheduler.pendingReasons(exp.jobIDs)
            var s = Intervene_V1_ExperimentStatus()
            s.experiment = name
            s.createdUnixMs = WireConvert.ms(exp.submitted)
            for j in scheduler.jobs(of: name) {
                s.total += 1
                switch j.state {
                case .queued, .lost:
                    s.queued += 1
                    if let why = reasons[j.id] { s.pending[why, default: 0] += 1 }
                case .running: s.running += 1
                case .done: s.done += 1
                case .failed: s.failed += 1
                case .cancelled: s.cancelled += 1
                }
            }
            reply.experiments.append(s)
        }
        for w in scheduler.workers.values.sorted(by: { $0.id < $1.id }) {
            var ws = Intervene_V1_WorkerStatus()
            ws.workerID = w.id
            ws.device = w.capabilities?.device.rawValue ?? "?"
            ws.threads = UInt32(clamping: w.capabilities?.threads ?? 0)
            ws.hostname = w.capabilities?.hostname ?? ""
            ws.jobID = w.job ?? ""
            ws.step = UInt32(clamping: w.step)
            ws.total = UInt32(clamping: w.total)
            ws.lastSeenUnixMs = WireConvert.ms(w.lastSeen)
            reply.workers.append(ws)
        }
        return reply
    }

    private func query(_ q: Intervene_V1_Query) -> Intervene_V1_QueryReply {
        var reply = Intervene_V1_QueryReply()
        reply.pubEndpoint = advertisedPub
        reply.experiment = q.experiment
        guard let exp = scheduler.experiments[q.experiment] else {
            reply.ok = false
            let known = scheduler.experiments.keys.sorted()
            reply.error = "no experiment named \"\(q.experiment)\"" + (known.isEmpty ? " (none submitted yet)" : "; known: " + known.joined(separator: ", "))
            return reply
        }
        reply.ok = true
        reply.sequence = pubSequence[q.experiment] ?? 0
        reply.submittedUnixMs = WireConvert.ms(exp.submitted)
        let reasons = scheduler.pendingReasons(exp.jobIDs)
        reply.jobs = scheduler.jobs(of: q.experiment).map {
            WireConvert.record($0, experiments: scheduler.experimentsOf($0.id), pending: reasons[$0.id],
                               storeDirectory: options.storeDirectory)
        }
        if !q.format.isEmpty {
            // its own records: they always parse
            reply.text = (try? reply.jobs.map(JobView.init)).map { Render.results($0, format: q.format) } ?? ""
        }
        return reply
    }
}

/// A value shared between threads under a lock.
final class LockedBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var _value: T
    init(_ v: T) { _value = v }
    var value: T {
        get { lock.withLock { _value } }
        set { lock.withLock { _value = newValue } }
    }
    /// Changes the value in place (no copy of a collection).
    func mutate<R>(_ body: (inout T) -> R) -> R { lock.withLock { body(&_value) } }
}
