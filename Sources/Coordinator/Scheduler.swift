import JobCore
import Foundation

/// Tunables of the scheduler.
public struct SchedulerConfig: Sendable {
    /// A running job's lease; renewed by every heartbeat or step report of its worker.
    public var leaseSeconds: Double
    /// A worker not heard from (Ready, heartbeat, anything) for this long is forgotten.
    public var workerTimeoutSeconds: Double
    /// How many times a job may be lost (or fail transiently) before it is failed.
    public var maxAttempts: Int
    /// Jobs waiting in the queue, all experiments together: a submission that would queue more is
    /// refused whole (serve --max-queued-jobs).
    public var maxQueuedJobs: Int

    public init(leaseSeconds: Double = 30, workerTimeoutSeconds: Double = 60, maxAttempts: Int = 3,
                maxQueuedJobs: Int = 200_000) {
        self.leaseSeconds = leaseSeconds
        self.workerTimeoutSeconds = workerTimeoutSeconds
        self.maxAttempts = maxAttempts
        self.maxQueuedJobs = maxQueuedJobs
    }
}

/// One cell of a submitted grid, as the scheduler receives it.
public struct SubmittedJob: Equatable, Sendable {
    public var id: String
    public var spec: JobSpec
    public var device: DeviceRequirement
    public init(id: String, spec: JobSpec, device: DeviceRequirement) {
        self.id = id; self.spec = spec; self.device = device
    }
}

/// An input of the state machine. Every event is handled at a time `now` given by the caller.
public enum SchedulerEvent: Equatable, Sendable {
    /// A worker announced itself (protocol Hello). It is not idle until it says `workerReady`.
    /// `newConnection`: the Hello came over another connection than the worker's last (a new
    /// process, or a reconnect), not a Hello repeated on the same one.
    case workerHello(worker: String, capabilities: WorkerCapabilities, newConnection: Bool = true)
    /// A worker is idle and asks for a job (protocol Ready; repeated by idle workers).
    case workerReady(worker: String)
    /// A worker confirmed it received an assignment (protocol Ack{JOB, accepted}).
    case assignmentAccepted(worker: String, job: String, attempt: Int)
    /// A worker refused an assignment (it was busy).
    case assignmentRefused(worker: String, job: String, attempt: Int)
    /// The shell could not build an assignment: an input has no artefact to hand over (its method
    /// makes none). The job fails; the worker was told nothing and stays idle.
    case assignmentUndeliverable(worker: String, job: String, attempt: Int, reason: String)
    /// The shell could not build an assignment: the store lost an input's artefact (the file is
    /// gone, or its bytes no longer hash to the recorded SHA-256). The input runs again; the job
    /// goes back to waiting for it; the worker was told nothing and stays idle.
    case inputArtefactLost(worker: String, job: String, attempt: Int, input: String, reason: String)
    /// A running job is alive (protocol Heartbeat, or StepMetrics).
    case heartbeat(worker: String, job: String, attempt: Int, step: Int, total: Int)
    /// A job finished. The artefact, if any, is already verified and stored by the caller.
    case result(worker: String, job: String, attempt: Int, metrics: [String: Double],
                artefactSHA256: String?, artefactPath: String?)
    /// A job failed; `deterministic` failures are final at once, others count like a loss.
    case failure(worker: String, job: String, attempt: Int, reason: String, deterministic: Bool)
    /// The clock moved: leases and silent workers expire.
    case tick
    /// A grid was expanded: queue what is new, requeue what had failed or was cancelled.
    case submit(experiment: String, gridJSON: String, jobs: [SubmittedJob])
    /// Cancel an experiment's unfinished jobs (or just `jobs` of it, when non-empty). A job also
    /// needed by another experiment that is not cancelled keeps running.
    case cancel(experiment: String, jobs: [String])
    /// A worker left (Goodbye) or was replaced; its job, if any, is requeued at once.
    case workerGone(worker: String, reason: String)
}

/// What the I/O shell must do in answer to an event, one narrow list per consumer: the socket
/// (`toWorkers`), the store (`jobChanges`, `experiments`), the update stream (`published`), the
/// client being answered (`reply`), and the counters and log (`ignored`). The order within each
/// list is the order to act in; the lists are independent of each other.
public struct Effects: Equatable, Sendable {
    public var toWorkers: [WorkerMessage] = []
    /// Jobs whose stored record changed, and how (the shell saves each job's current record).
    public var jobChanges: [JobChange] = []
    /// Job snapshots for subscribers, in order (a loss is published before its requeue).
    public var published: [JobRecord] = []
    /// Experiments whose record changed (submitted, cancelled): persist them.
    public var experiments: [String] = []
    public var reply: ClientReply? = nil
    /// Messages ignored as stale or unknown (counted, logged).
    public var ignored: [String] = []

    public init(toWorkers: [WorkerMessage] = [], jobChanges: [JobChange] = [], published: [JobRecord] = [],
                experiments: [String] = [], reply: ClientReply? = nil, ignored: [String] = []) {
        self.toWorkers = toWorkers; self.jobChanges = jobChanges; self.published = published
        self.experiments = experiments; self.reply = reply; self.ignored = ignored
    }
}

/// A message to one worker.
public enum WorkerMessage: Equatable, Sendable {
    /// Send this job to this worker.
    case assign(worker: String, job: String, attempt: Int, spec: JobSpec, experiment: String, leaseSeconds: Double)
    /// Acknowledge a worker's message (Hello, Ready with nothing to do, Result, Failure).
    case ack(worker: String, kind: AckKind, job: String, attempt: Int)
    /// Answer a heartbeat; `abandon` tells the worker to drop the job (lease lost, cancelled, done).
    case heartbeatAck(worker: String, job: String, attempt: Int, abandon: Bool)
    /// The sender is not registered (e.g. the coordinator restarted): ask it to say Hello again.
    case unknownWorker(worker: String)
    /// A result or failure from a worker that does not hold that job and attempt: answered (so it
    /// stops resending) but not taken.
    case refused(worker: String, kind: AckKind, job: String, attempt: Int)

    public enum AckKind: String, Sendable { case hello, ready, result, failure }
}

/// How a job's stored record changed.
public enum JobChange: Equatable, Sendable {
    case requeued(job: String, attempt: Int, reason: String)
    case running(job: String, worker: String, attempt: Int)
    case done(job: String, worker: String, attempt: Int)
    case failed(job: String, reason: String)
    case cancelled(job: String)
    case queued(job: String)

    public var job: String {
        switch self {
        case .requeued(let j, _, _), .running(let j, _, _), .done(let j, _, _), .failed(let j, _), .cancelled(let j),
             .queued(let j):
            return j
        }
    }
}

/// The answer to a client's submit or cancel.
public enum ClientReply: Equatable, Sendable {
    case submitted(experiment: String, new: Int, reused: Int, requeued: Int, total: Int)
    case cancelled(experiment: String, count: Int)
    /// Nothing was queued: the queue would pass its bound.
    case refused(experiment: String, reason: String)
}

/// The coordinator's scheduling logic as a pure state machine, in the manner of SWIM.Instance:
/// no sockets, no clock of its own. The shell feeds it events with the current time and carries
/// out the directives it returns (send, persist, publish).
///
/// Dispatch is pull-based: a worker that says Ready is idle until a job that fits it (device, method
/// family) is queued; jobs are served in submission order. A job with `inputs` waits outside the
/// queue until every input is done (then it is queued in its submission place), and fails when
/// one fails or is cancelled. A running job holds a lease renewed by
/// its worker's heartbeats; when the lease expires the job is lost and requeued with attempt + 1,
/// up to `maxAttempts` losses, after which it is failed. Results are idempotent by job id: the first
/// result of any attempt wins, later ones are acknowledged and dropped.
public struct Scheduler {
    public private(set) var config: SchedulerConfig
    public private(set) var jobs: [String: JobRecord] = [:]
    public private(set) var experiments: [String: ExperimentRecord] = [:]
    /// Job id → experiments it belongs to.
    public private(set) var membership: [String: Set<String>] = [:]
    public private(set) var workers: [String: WorkerRecord] = [:]
    /// Counters for diagnostics.
    public private(set) var duplicateResults = 0
    public private(set) var staleMessages = 0
    /// Results and failures refused because the sender never held that job and attempt.
    public private(set) var refusedResults = 0
    /// Every (worker, attempt) a job was assigned to since this coordinator started: a late result
    /// from an earlier holder still counts (once: the first result wins).
    private var holders: [String: Set<Holder>] = [:]
    struct Holder: Hashable { let worker: String; let attempt: Int }

    /// Whether `worker` held (or holds) `job` at `attempt`: it was assigned it since this
    /// coordinator started, or the store names it as the job's last holder and the attempt is not
    /// newer than the job's (a result resent across a coordinator restart).
    public func holds(worker: String, job j: String, attempt: Int) -> Bool {
        guard let job = jobs[j] else { return false }
        if job.worker == worker && attempt >= 1 && attempt <= job.attempt { return true }
        return holders[j]?.contains(Holder(worker: worker, attempt: attempt)) ?? false
    }

    public struct WorkerRecord: Equatable, Sendable {
        public var id: String
        public var capabilities: WorkerCapabilities?
        public var lastSeen: Double
        public var idle: Bool
        public var idleSince: Double
        public var job: String?
        public var attempt: Int
        public var step: Int
        public var total: Int
        /// The worker confirmed its current assignment (acked it or heartbeated it). Until then a
        /// Ready from it may have crossed the assignment on the wire and is not taken as "idle".
        public var confirmed: Bool
        /// The evaluation splits (`JobSpec.evaluationSplit`) of the last jobs assigned to it, most
        /// recent last: its evaluation memos likely hold them.
        public var splits: [String] = []
    }

    private var queue = DeviceQueues()
    /// Queued jobs that were the earliest to fit a worker which took another (dispatch's affinity).
    private var passedOver: [String: Int] = [:]
    private var running: Set<String> = []
    private var nextSeq = 0
    /// Input job id → the jobs that read its artefact.
    private var dependents: [String: Set<String>] = [:]
    /// Set when restored from a store: the first tick fails the queued jobs whose inputs can no
    /// longer be done (failed, cancelled or unknown), which a crash may have left waiting.
    private var checkRestoredInputs = false

    public init(config: SchedulerConfig = SchedulerConfig(), jobs: [JobRecord] = [], experiments: [ExperimentRecord] = []) {
        self.config = config
        for e in experiments {
            self.experiments[e.name] = e
            for j in e.jobIDs { membership[j, default: []].insert(e.name) }
        }
        for j in jobs {
            self.jobs[j.id] = j
            for i in j.spec.inputs { dependents[i, default: []].insert(j.id) }
            nextSeq = max(nextSeq, j.seq + 1)
        }
        checkRestoredInputs = jobs.contains { $0.state == .queued && !$0.spec.inputs.isEmpty }
        for j in jobs {
            switch j.state {
            case .queued: enqueue(j)
            case .running: running.insert(j.id)
            case .lost:
                // A job caught between lost and requeued: requeue it on the first tick.
                running.insert(j.id)
            default: break
            }
        }
    }

    // MARK: queries

    public func job(_ id: String) -> JobRecord? { jobs[id] }

    /// The jobs of an experiment, in expansion order.
    public func jobs(of experiment: String) -> [JobRecord] {
        experiments[experiment]?.jobIDs.compactMap { jobs[$0] } ?? []
    }

    /// Every experiment a job belongs to, sorted by name.
    public func experimentsOf(_ job: String) -> [String] {
        (membership[job] ?? []).sorted()
    }

    /// Why these jobs may not be submitted now (nil: they may): the jobs they would put in the
    /// queue (new ones, and failed or cancelled ones queued again) would take it past its bound.
    public func queueRefusal(_ submitted: [SubmittedJob]) -> String? {
        var ids = Set<String>()
        let adds = submitted.filter { s in
            guard ids.insert(s.id).inserted else { return false }
            guard let j = jobs[s.id] else { return true }
            return j.state == .failed || j.state == .cancelled
        }.count
        let queued = jobs.values.filter { $0.state == .queued || $0.state == .lost }.count
        guard adds > 0, queued + adds > config.maxQueuedJobs else { return nil }
        return "the queue holds \(queued) jobs and this grid would add \(adds); this coordinator queues at most "
            + "\(config.maxQueuedJobs) (serve --max-queued-jobs). Nothing was queued: submit again when jobs have "
            + "finished, cancel an experiment, or raise the limit"
    }

    /// Why a queued job waits.
    public func pendingReason(_ id: String) -> String? {
        guard let j = jobs[id], j.state == .queued else { return nil }
        return inputsReason(j.spec) ?? waitReason(device: j.device, spec: j.spec)
    }

    /// Whether every input of `spec` is done (true when it has none).
    func inputsDone(_ spec: JobSpec) -> Bool { spec.inputs.allSatisfy { jobs[$0]?.state == .done } }

    /// Puts a queued job in the dispatch queue, unless it still waits for an input (it is put
    /// there when its last input is done, so waiting jobs never crowd the queue's scan).
    private mutating func enqueue(_ job: JobRecord) {
        if inputsDone(job.spec) { queue.push(job) }
    }

    /// After `j` is done: the queued jobs that now have all their inputs enter the queue; those
    /// that had failed because `j` had (a late result) are queued again.
    private mutating func inputDone(_ j: String, now: Double, into out: inout Effects) {
        for d in (dependents[j] ?? []).sorted() {
            guard var job = jobs[d] else { continue }
            if job.state == .failed, job.error?.hasPrefix("input \(j) ") == true {
                job.state = .queued
                job.attempt += 1
                job.losses = 0
                job.error = nil
                job.ended = nil
                job.updated = now
                jobs[d] = job
                let why = "its input \(j) is done after all"
                out.jobChanges.append(.requeued(job: d, attempt: job.attempt, reason: why))
                out.published.append(job)
            }
            if job.state == .queued { enqueue(job) }
        }
    }

    /// Why a job waits for its inputs (nil: they are all done).
    private func inputsReason(_ spec: JobSpec) -> String? {
        let waiting = spec.inputs.filter { jobs[$0]?.state != .done }
        guard !waiting.isEmpty else { return nil }
        let which = waiting.prefix(3).map { "\($0) \(jobs[$0]?.state.rawValue ?? "unknown")" }.joined(separator: ", ")
        let more = waiting.count > 3 ? ", …" : ""
        return "waiting for \(waiting.count) of its \(spec.inputs.count) input jobs (\(which)\(more))"
    }

    /// Why each of these jobs waits (nil entries for jobs that are not queued); one computation per
    /// kind of job, so it stays cheap for long queues.
    public func pendingReasons<S: Sequence>(_ ids: S) -> [String: String] where S.Element == String {
        var memo: [String: String] = [:]
        var out: [String: String] = [:]
        for id in ids {
            guard let j = jobs[id], j.state == .queued else { continue }
            if let r = inputsReason(j.spec) { out[id] = r; continue }
            let key = j.device.rawValue + "|" + j.spec.method.family.rawValue + "|"
                + (j.spec.kernelPrecision?.rawValue ?? "")
            if let r = memo[key] { out[id] = r; continue }
            let r = waitReason(device: j.device, spec: j.spec)
            memo[key] = r
            out[id] = r
        }
        return out
    }

    private func waitReason(device: DeviceRequirement, spec: JobSpec) -> String {
        let live = workers.values.filter { $0.capabilities != nil }
        if live.isEmpty { return "no worker connected" }
        let family = spec.method.family.rawValue
        let byFamily = live.filter { $0.capabilities!.runs(spec.method) }
        if byFamily.isEmpty { return "needs a worker that runs \(family) jobs, none connected" }
        let byMethod = byFamily.filter { $0.capabilities!.runsPrecision(of: spec) }
        if byMethod.isEmpty, let p = spec.kernelPrecision {
            let theirs = Set(byFamily.flatMap { $0.capabilities!.precisions }).sorted().joined(separator: ", ")
            return "needs a worker whose CPU runs \(p.rawValue) products (int8: AVX2, AVX-512 VNNI or aarch64 "
                + "sdot); the \(byFamily.count) connected run \(theirs) only (solver.precision \"fp32\" runs anywhere)"
        }
        let fitting = byMethod.filter { device.fits($0.capabilities!.device) }
        let need = device == .any ? "" : "needs \(device.rawValue), "
        let kind = device == .any ? "" : device.rawValue + " "
        if fitting.isEmpty { return "\(need)no \(kind)worker connected" }
        if fitting.allSatisfy({ !$0.idle }) { return "\(need)no idle \(kind)worker (\(fitting.count) busy)" }
        return "waiting for dispatch"
    }

    // MARK: events

    public mutating func handle(_ event: SchedulerEvent, now: Double) -> Effects {
        var out = Effects()
        switch event {
        case let .workerHello(w, caps, newConnection):
            var rec = workers[w] ?? WorkerRecord(id: w, capabilities: nil, lastSeen: now, idle: false,
                                                 idleSince: now, job: nil, attempt: 0, step: 0, total: 0, confirmed: true)
            rec.capabilities = caps
            // A new connection: nothing is in flight to it any more (what we sent went to the old
            // one). A Hello repeated on the same connection changes nothing: an assignment sent to
            // it may still be on its way, and a Ready crossing it is no loss.
            if newConnection { rec.confirmed = true }
            rec.lastSeen = now
            rec.idle = false
            if rec.job == nil {
                // A worker we thought held a job comes back through its heartbeats; otherwise adopt a
                // running job the store says it holds (coordinator restart).
                if let j = running.first(where: { jobs[$0]?.worker == w && jobs[$0]?.state == .running }) {
                    rec.job = j; rec.attempt = jobs[j]!.attempt
                }
            }
            workers[w] = rec
            out.toWorkers.append(.ack(worker: w, kind: .hello, job: "", attempt: 0))

        case let .workerReady(w):
            guard var rec = workers[w], rec.capabilities != nil else {
                out.toWorkers.append(.unknownWorker(worker: w)); break
            }
            rec.lastSeen = now
            if rec.job != nil, !rec.confirmed {
                // This Ready crossed our assignment on the wire; the worker will ack the job.
                workers[w] = rec
                out.toWorkers.append(.ack(worker: w, kind: .ready, job: "", attempt: 0))
                break
            }
            if let j = rec.job {
                // It says it is idle, so it no longer runs the job we think it holds.
                rec.job = nil
                workers[w] = rec
                if let job = jobs[j], job.state == .running, job.worker == w {
                    lose(j, reason: "worker \(w) reported idle", now: now, into: &out)
                }
                rec = workers[w]!
            }
            if !rec.idle { rec.idle = true; rec.idleSince = now }
            workers[w] = rec
            let before = out.toWorkers.count
            dispatch(now: now, into: &out)
            let assigned = out.toWorkers[before...].contains {
                if case .assign(let ww, _, _, _, _, _) = $0 { return ww == w }
                return false
            }
            if !assigned { out.toWorkers.append(.ack(worker: w, kind: .ready, job: "", attempt: 0)) }

        case let .assignmentAccepted(w, j, a):
            if var rec = workers[w] {
                rec.lastSeen = now
                if rec.job == j, rec.attempt == a { rec.confirmed = true }
                workers[w] = rec
            }

        case let .assignmentRefused(w, j, a):
            if var rec = workers[w] {
                rec.lastSeen = now
                if rec.job == j { rec.job = nil }
                rec.idle = false
                workers[w] = rec
            }
            if unassign(j, worker: w, attempt: a, now: now, into: &out) { dispatch(now: now, into: &out) }

        case let .inputArtefactLost(w, j, a, input, reason):
            if var rec = workers[w] {
                if rec.job == j { rec.job = nil }
                rec.idle = true
                workers[w] = rec
            }
            if var inJob = jobs[input], inJob.state == .done {
                inJob.state = .queued
                inJob.attempt += 1
                inJob.losses = 0
                inJob.metrics = [:]
                inJob.artefactSHA256 = nil
                inJob.artefactPath = nil
                inJob.worker = nil
                inJob.ended = nil
                inJob.updated = now
                jobs[input] = inJob
                enqueue(inJob)
                out.jobChanges.append(.requeued(job: input, attempt: inJob.attempt,
                                                reason: "its artefact was lost from the store (\(reason))"))
                out.published.append(inJob)
            }
            unassign(j, worker: w, attempt: a, now: now, into: &out)
            dispatch(now: now, into: &out)

        case let .assignmentUndeliverable(w, j, a, reason):
            if var rec = workers[w] {
                if rec.job == j { rec.job = nil }
                rec.idle = true
                workers[w] = rec
            }
            if let job = jobs[j], job.state == .running, job.attempt == a, job.worker == w {
                fail(j, reason: reason, worker: w, now: now, into: &out)
                dispatch(now: now, into: &out)
            }

        case let .heartbeat(w, j, a, step, total):
            guard var rec = workers[w] else { out.toWorkers.append(.unknownWorker(worker: w)); break }
            rec.lastSeen = now
            guard var job = jobs[j], job.state == .running, job.attempt == a else {
                staleMessages += 1
                if rec.job == j { rec.job = nil }
                workers[w] = rec
                out.toWorkers.append(.heartbeatAck(worker: w, job: j, attempt: a, abandon: true))
                break
            }
            if job.worker != w {
                // Another worker holds this attempt now: this one is stale.
                staleMessages += 1
                workers[w] = rec
                out.toWorkers.append(.heartbeatAck(worker: w, job: j, attempt: a, abandon: true))
                break
            }
            rec.job = j; rec.attempt = a; rec.idle = false; rec.step = step; rec.total = total; rec.confirmed = true
            workers[w] = rec
            job.leaseExpiry = now + config.leaseSeconds
            jobs[j] = job
            out.toWorkers.append(.heartbeatAck(worker: w, job: j, attempt: a, abandon: false))

        case let .result(w, j, a, metrics, sha, path):
            if var rec = workers[w] {
                rec.lastSeen = now
                if rec.job == j { rec.job = nil }
                workers[w] = rec
            }
            guard var job = jobs[j] else {
                out.toWorkers.append(.ack(worker: w, kind: .result, job: j, attempt: a))
                staleMessages += 1
                out.ignored.append("result for unknown job \(j)")
                break
            }
            guard holds(worker: w, job: j, attempt: a) else {
                refusedResults += 1
                out.toWorkers.append(.refused(worker: w, kind: .result, job: j, attempt: a))
                out.ignored.append("refused result for \(j) attempt \(a) from \(w), which does not hold it")
                break
            }
            out.toWorkers.append(.ack(worker: w, kind: .result, job: j, attempt: a))
            if job.state == .done {
                duplicateResults += 1
                out.ignored.append("duplicate result for \(j) (attempt \(a) from \(w))")
                break
            }
            // First result wins, whatever the attempt: the computation is deterministic per job.
            if job.state == .running, let holder = job.worker, holder != w, var other = workers[holder], other.job == j {
                other.job = nil   // it learns on its next heartbeat (abandon)
                workers[holder] = other
            }
            job.worker = w
            job.attempt = max(1, a)
            job.metrics = metrics
            job.artefactSHA256 = sha
            job.artefactPath = path
            job.pendingReason = nil
            end(job, .done, error: nil, now: now, mark: .done(job: j, worker: w, attempt: a), into: &out)
            // jobs that waited for this one may run now, on workers already idle
            if dependents[j] != nil {
                inputDone(j, now: now, into: &out)
                dispatch(now: now, into: &out)
            }

        case let .failure(w, j, a, reason, deterministic):
            if var rec = workers[w] {
                rec.lastSeen = now
                if rec.job == j { rec.job = nil }
                workers[w] = rec
            }
            guard jobs[j] == nil || holds(worker: w, job: j, attempt: a) else {
                refusedResults += 1
                out.toWorkers.append(.refused(worker: w, kind: .failure, job: j, attempt: a))
                out.ignored.append("refused failure for \(j) attempt \(a) from \(w), which does not hold it")
                break
            }
            out.toWorkers.append(.ack(worker: w, kind: .failure, job: j, attempt: a))
            guard let job = jobs[j], job.state == .running, job.attempt == a, job.worker == w else {
                staleMessages += 1
                out.ignored.append("stale failure for \(j) attempt \(a) from \(w)")
                break
            }
            if deterministic {
                fail(j, reason: reason, worker: w, now: now, into: &out)
            } else {
                lose(j, reason: "failed on \(w): \(reason)", now: now, into: &out, failureReason: reason)
            }
            dispatch(now: now, into: &out)

        case .tick:
            if checkRestoredInputs {
                checkRestoredInputs = false
                for id in jobs.keys.sorted() { failIfInputsCannotBeDone(id, now: now, into: &out) }
            }
            for j in running.sorted() {
                guard let job = jobs[j] else { running.remove(j); continue }
                if job.state == .lost || (job.leaseExpiry ?? 0) <= now {
                    if let w = job.worker, var rec = workers[w], rec.job == j { rec.job = nil; workers[w] = rec }
                    lose(j, reason: "lease expired on worker \(job.worker ?? "?")", now: now, into: &out)
                }
            }
            for (id, w) in workers where w.lastSeen + config.workerTimeoutSeconds <= now {
                workers[id] = nil
                out.ignored.append("worker \(id) timed out")
            }
            dispatch(now: now, into: &out)

        case let .submit(name, grid, submitted):
            if let why = queueRefusal(submitted) {
                out.reply = .refused(experiment: name, reason: why)
                break
            }
            var new = 0, reused = 0, requeued = 0
            var ids: [String] = [], fresh: [String] = []
            var seen = Set<String>()
            for s in submitted where seen.insert(s.id).inserted {
                ids.append(s.id)
                membership[s.id, default: []].insert(name)
                if var job = jobs[s.id] {
                    reused += 1
                    switch job.state {
                    case .failed, .cancelled:
                        job.state = .queued
                        job.attempt += 1
                        job.losses = 0
                        job.error = nil
                        job.worker = nil
                        job.device = s.device
                        job.ended = nil
                        job.updated = now
                        jobs[s.id] = job
                        enqueue(job)
                        requeued += 1
                        out.jobChanges.append(.requeued(job: s.id, attempt: job.attempt, reason: "resubmitted"))
                        out.published.append(jobs[s.id]!)
                    case .queued where job.device != s.device:
                        // The latest submission's device requirement applies to a job not yet started.
                        job.device = s.device
                        job.updated = now
                        jobs[s.id] = job
                        enqueue(job)
                        out.jobChanges.append(.queued(job: s.id))
                    default: break
                    }
                } else {
                    new += 1
                    fresh.append(s.id)
                    let job = JobRecord(id: s.id, spec: s.spec, device: s.device, seq: nextSeq, created: now)
                    nextSeq += 1
                    jobs[s.id] = job
                    out.jobChanges.append(.queued(job: s.id))
                    out.published.append(jobs[s.id]!)
                }
            }
            // new jobs into the queue once all exist (an input may come later in the submission)
            for id in fresh { enqueue(jobs[id]!) }
            for s in submitted where !s.spec.inputs.isEmpty {
                for i in s.spec.inputs { dependents[i, default: []].insert(s.id) }
            }
            // a job whose input is unknown, or failed or cancelled (and not queued again above),
            // cannot run
            for id in ids { failIfInputsCannotBeDone(id, now: now, into: &out) }
            if let old = experiments[name] {
                // The experiment now means this grid; jobs only the old grid had stay in the store.
                for j in Set(old.jobIDs).subtracting(seen) { membership[j]?.remove(name) }
            }
            experiments[name] = ExperimentRecord(name: name, gridJSON: grid, submitted: now, cancelled: false, jobIDs: ids)
            out.experiments.append(name)
            out.reply = .submitted(experiment: name, new: new, reused: reused, requeued: requeued, total: ids.count)
            dispatch(now: now, into: &out)

        case let .cancel(name, only):
            guard var exp = experiments[name] else {
                out.reply = .cancelled(experiment: name, count: 0); break
            }
            if only.isEmpty { exp.cancelled = true }
            experiments[name] = exp
            out.experiments.append(name)
            let targets = only.isEmpty ? exp.jobIDs : exp.jobIDs.filter { Set(only).contains($0) }
            var count = 0
            // latest first: a job is cancelled before the inputs it reads (which would fail it)
            for j in targets.reversed() {
                guard let job = jobs[j], job.state == .queued || job.state == .running || job.state == .lost else { continue }
                let others = (membership[j] ?? []).subtracting([name])
                if others.contains(where: { experiments[$0]?.cancelled == false }) { continue }
                // an input that a live job of another experiment still waits for keeps running
                if (dependents[j] ?? []).contains(where: { d in
                    jobs[d]?.state == .queued && (membership[d] ?? []).contains { experiments[$0]?.cancelled == false }
                }) { continue }
                if let w = job.worker, job.state == .running, var rec = workers[w], rec.job == j {
                    rec.job = nil   // told to abandon on its next heartbeat
                    workers[w] = rec
                }
                end(job, .cancelled, error: "cancelled", now: now, mark: .cancelled(job: j), into: &out)
                count += 1
            }
            out.reply = .cancelled(experiment: name, count: count)

        case let .workerGone(w, reason):
            if let rec = workers.removeValue(forKey: w), let j = rec.job,
               let job = jobs[j], job.state == .running, job.worker == w {
                lose(j, reason: "worker \(w) left: \(reason)", now: now, into: &out)
            }
            dispatch(now: now, into: &out)
        }
        return out
    }

    // MARK: transitions

    /// A running job's worker is gone: requeue it with attempt + 1, or fail it at the cap.
    private mutating func lose(_ j: String, reason: String, now: Double, into out: inout Effects,
                               failureReason: String? = nil) {
        guard var job = jobs[j] else { return }
        running.remove(j)
        job.losses += 1
        job.leaseExpiry = nil
        job.updated = now
        let last = job.worker ?? "?"
        if job.losses >= config.maxAttempts {
            let error = failureReason.map { "failed \(job.losses) times (last on worker \(last): \($0))" }
                ?? "lost \(job.losses) times (last worker \(last))"
            end(job, .failed, error: error, now: now, mark: .failed(job: j, reason: error), into: &out)
            return
        }
        // Publish the loss itself, then the requeue.
        job.state = .lost
        job.error = reason
        jobs[j] = job
        out.published.append(jobs[j]!)
        job.state = .queued
        job.attempt += 1
        job.started = nil
        jobs[j] = job
        enqueue(job)
        out.jobChanges.append(.requeued(job: j, attempt: job.attempt, reason: reason))
        out.published.append(jobs[j]!)
    }

    private mutating func fail(_ j: String, reason: String, worker: String, now: Double, into out: inout Effects) {
        guard var job = jobs[j] else { return }
        job.worker = worker
        end(job, .failed, error: reason, now: now, mark: .failed(job: j, reason: reason), into: &out)
    }

    /// A job assigned to `worker` at `attempt` that never started there goes back to the queue
    /// with no attempt spent; false when the worker does not hold it (any more).
    @discardableResult
    private mutating func unassign(_ j: String, worker w: String, attempt a: Int, now: Double,
                                   into out: inout Effects) -> Bool {
        guard var job = jobs[j], job.state == .running, job.attempt == a, job.worker == w else { return false }
        job.state = .queued; job.leaseExpiry = nil; job.updated = now
        jobs[j] = job
        running.remove(j)
        enqueue(job)
        out.jobChanges.append(.queued(job: j))
        out.published.append(job)
        return true
    }

    /// Fails a queued job one of whose inputs is unknown, failed or cancelled.
    private mutating func failIfInputsCannotBeDone(_ id: String, now: Double, into out: inout Effects) {
        guard let job = jobs[id], job.state == .queued else { return }
        if let bad = job.spec.inputs.first(where: { jobs[$0] == nil }) {
            let why = "input \(bad) is not a job this coordinator knows: name a job from "
                + "`coordinator results`, or put it in the same grid"
            end(job, .failed, error: why, now: now, mark: .failed(job: id, reason: why), into: &out)
        } else if let bad = job.spec.inputs.first(where: { jobs[$0]!.state.endsReaders }) {
            failForInput(id, input: bad, now: now, into: &out)
        }
    }

    /// A queued job whose input `input` failed or was cancelled fails with the input's reason (and
    /// so do the jobs that read its artefact in turn).
    private mutating func failForInput(_ j: String, input: String, now: Double, into out: inout Effects) {
        guard let job = jobs[j], job.state == .queued, let inJob = jobs[input] else { return }
        let why = "input \(input) (\(inJob.spec.method.rawValue) on \(inJob.spec.task)) \(inJob.state.rawValue)"
            + (inJob.error.map { ": \($0)" } ?? "")
        end(job, .failed, error: why, now: now, mark: .failed(job: j, reason: why), into: &out)
    }

    /// Ends a job in `state` (done, failed, cancelled): no lease, an end time, no longer running;
    /// the store is told `mark`, subscribers get the record. A failed or cancelled job fails the
    /// queued jobs that read its artefact.
    private mutating func end(_ job: JobRecord, _ state: JobState, error: String?, now: Double, mark: JobChange,
                              into out: inout Effects) {
        var job = job
        job.state = state
        job.error = error
        job.leaseExpiry = nil
        job.ended = now
        job.updated = now
        jobs[job.id] = job
        running.remove(job.id)
        passedOver[job.id] = nil
        out.jobChanges.append(mark)
        out.published.append(job)
        if state.endsReaders {
            for d in (dependents[job.id] ?? []).sorted() { failForInput(d, input: job.id, now: now, into: &out) }
        }
    }

    /// The job for the idle worker `w`, taken out of `q` (see `dispatch`), and the earliest job that
    /// fits it when another was taken instead.
    private func pick(for w: WorkerRecord, from q: inout DeviceQueues) -> (job: String?, passedOver: String?) {
        let caps = w.capabilities!
        func fits(_ j: String) -> Bool { jobs[j].map { caps.runs($0.spec) && inputsDone($0.spec) } ?? false }
        func isLive(_ j: String) -> Bool { jobs[j]?.state == .queued }
        guard let head = q.popFirst(for: caps.device, fits: fits, isLive: isLive) else { return (nil, nil) }
        let mine = Set(w.splits)
        let others = workers.values.filter { $0.id != w.id && !$0.splits.isEmpty && $0.capabilities != nil }
        guard !(mine.isEmpty && others.isEmpty), passedOver[head, default: 0] < Self.affinityPatience else {
            return (head, nil)
        }
        func isMine(_ s: JobSpec) -> Bool { s.evaluationSplit.map(mine.contains) == true }
        func othersWant(_ s: JobSpec) -> Bool {
            others.contains { s.evaluationSplit.map($0.splits.contains) == true && $0.capabilities!.runs(s) }
        }
        // the head is out of `q`: a job found here is a later one, and the head goes back
        func later(_ wanted: (JobSpec) -> Bool) -> String? {
            let j = q.popFirst(for: caps.device, fits: { fits($0) && wanted(jobs[$0]!.spec) }, isLive: isLive,
                               limit: Self.affinityWindow)
            if j != nil { q.push(jobs[head]!) }
            return j
        }
        let spec = jobs[head]!.spec
        if isMine(spec) { return (head, nil) }
        if !mine.isEmpty, let j = later(isMine) { return (j, head) }
        if !othersWant(spec) { return (head, nil) }
        if let j = later({ !othersWant($0) }) { return (j, head) }
        return (head, nil)
    }

    /// Splits a worker remembers (`WorkerRecord.splits`), queued jobs looked at for one of them, and
    /// how many times the earliest job that fits may be passed over for them.
    static let affinitySplits = 4, affinityWindow = 64, affinityPatience = 8

    /// Pairs idle workers (longest idle first) with a queued job that fits each: among the first
    /// `affinityWindow` that fit, one whose evaluation split the worker ran lately (its memos
    /// make that job's evaluation 3–4× faster, every number the same), else one that no other
    /// worker able to run it ran lately (that worker will want it), else the earliest. The
    /// earliest is taken anyway once it has been passed over `affinityPatience` times, so that a
    /// stream of newer jobs never holds it back.
    private mutating func dispatch(now: Double, into out: inout Effects) {
        if queue.isEmpty { return }
        let idle = workers.values.filter { $0.idle && $0.job == nil && $0.capabilities != nil }
            .sorted { ($0.idleSince, $0.id) < ($1.idleSince, $1.id) }
        for w in idle {
            // Move the queue out while `pick` reads `jobs` (no overlapping access, no copy).
            var q = queue
            queue = DeviceQueues()
            let (picked, passed) = pick(for: w, from: &q)
            queue = q
            if let passed { passedOver[passed, default: 0] += 1 }
            guard let j = picked else { continue }
            passedOver[j] = nil
            var job = jobs[j]!
            job.state = .running
            job.worker = w.id
            holders[j, default: []].insert(Holder(worker: w.id, attempt: job.attempt))
            job.leaseExpiry = now + config.leaseSeconds
            job.started = now
            job.error = nil
            job.pendingReason = nil
            job.updated = now
            jobs[j] = job
            running.insert(j)
            var rec = w
            rec.idle = false
            rec.job = j
            rec.attempt = job.attempt
            rec.step = 0
            rec.total = job.spec.steps
            rec.confirmed = false
            if let s = job.spec.evaluationSplit {
                rec.splits.removeAll { $0 == s }
                rec.splits = Array((rec.splits + [s]).suffix(Self.affinitySplits))
            }
            workers[w.id] = rec
            let exp = experimentsOf(j).first ?? ""
            out.toWorkers.append(.assign(worker: w.id, job: j, attempt: job.attempt, spec: job.spec, experiment: exp,
                               leaseSeconds: config.leaseSeconds))
            out.jobChanges.append(.running(job: j, worker: w.id, attempt: job.attempt))
            out.published.append(jobs[j]!)
            if queue.isEmpty { break }
        }
    }
}

/// One queue per device requirement; a worker draws from the queues its device fits.
struct DeviceQueues {
    private var heaps: [DeviceRequirement: JobHeap] = [.cpu: JobHeap(), .gpu: JobHeap(), .any: JobHeap()]

    var isEmpty: Bool { heaps.values.allSatisfy { $0.isEmpty } }

    mutating func push(_ job: JobRecord) { heaps[job.device]!.push(job) }

    /// The lowest-sequence live job that fits a worker of this device, among the first `limit`
    /// live jobs of each queue.
    mutating func popFirst(for device: WorkerDevice, fits: (String) -> Bool, isLive: (String) -> Bool,
                           limit: Int = 4096) -> String? {
        var best: (req: DeviceRequirement, seq: Int, id: String)?
        for req in DeviceRequirement.allCases where req.fits(device) {
            guard let c = heaps[req]!.popFirst(where: fits, isLive: isLive, limit: limit) else { continue }
            if let b = best {
                if c.seq < b.seq { heaps[b.req]!.pushRaw(seq: b.seq, id: b.id); best = (req, c.seq, c.id) }
                else { heaps[req]!.pushRaw(seq: c.seq, id: c.id) }
            } else {
                best = (req, c.seq, c.id)
            }
        }
        return best?.id
    }
}

/// The queue of job ids ordered by submission sequence, with lazy deletion: entries whose job is
/// no longer queued are dropped when they reach the top.
struct JobHeap {
    private var heap: [(seq: Int, id: String)] = []

    var isEmpty: Bool { heap.isEmpty }
    var count: Int { heap.count }

    mutating func push(_ job: JobRecord) { pushRaw(seq: job.seq, id: job.id) }

    mutating func pushRaw(seq: Int, id: String) {
        heap.append((seq, id))
        siftUp(heap.count - 1)
    }

    private mutating func popTop() -> (seq: Int, id: String)? {
        guard !heap.isEmpty else { return nil }
        let top = heap[0]
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < heap.count, heap[l].seq < heap[m].seq { m = l }
                if r < heap.count, heap[r].seq < heap[m].seq { m = r }
                if m == i { break }
                heap.swapAt(m, i); i = m
            }
        }
        return top
    }

    /// Pops the lowest-sequence live entry for which `fits` is true, among the first `limit` live
    /// entries. Entries that do not fit are kept; dead entries (`isLive` false) met on the way are
    /// dropped.
    mutating func popFirst(where fits: (String) -> Bool, isLive: (String) -> Bool,
                           limit: Int = 4096) -> (seq: Int, id: String)? {
        var skipped: [(seq: Int, id: String)] = []
        var found: (seq: Int, id: String)?
        var seenLive = Set<String>()
        while let top = popTop() {
            guard isLive(top.id), seenLive.insert(top.id).inserted else { continue }
            if fits(top.id) { found = top; break }
            skipped.append(top)
            // Bound the scan so a long queue of jobs no idle worker fits stays cheap.
            if skipped.count >= limit { break }
        }
        for s in skipped { heap.append(s); siftUp(heap.count - 1) }
        return found
    }

    private mutating func siftUp(_ start: Int) {
        var i = start
        while i > 0 {
            let p = (i - 1) / 2
            if heap[p].seq <= heap[i].seq { break }
            heap.swapAt(p, i); i = p
        }
    }
}
