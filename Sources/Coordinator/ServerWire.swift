import Foundation
import JobCore
import Protocol

/// The wire translation of the coordinator's loop: incoming frames become scheduler events
/// (`handleMessage`), and the scheduler's effects become store changes, sends and published
/// updates (`apply`).
extension CoordinatorServer {
    // MARK: effects

    func apply(_ e: Effects, now: Double) {
        // the store: records saved at the end of the batch, before any reply or update leaves
        for c in e.jobChanges {
            if batch.dirtySet.insert(c.job).inserted { batch.dirtyJobs.append(c.job) }
            switch c {
            case let .requeued(j, a, reason): log("job \(j) requeued as attempt \(a): \(reason)")
            case let .failed(j, reason): log("job \(j) failed: \(reason)")
            case .running, .done, .cancelled, .queued: break
            }
        }
        for x in e.experiments { batch.dirtyExperiments.insert(x) }
        // the socket
        for m in e.toWorkers { send(m, now: now) }
        // the update stream
        for rec in e.published {
            for x in scheduler.experimentsOf(rec.id) { batch.updates.append(update(rec, experiment: x, now: now)) }
        }
        for why in e.ignored {
            count("ignored")
            if why.hasPrefix("duplicate") { count("duplicate_results") }
            log(why)
        }
        guard !drainingDeferred else { return }
        drainingDeferred = true
        while !deferredEvents.isEmpty {
            let ev = deferredEvents.removeFirst()
            apply(scheduler.handle(ev, now: now), now: now)
        }
        drainingDeferred = false
    }

    /// The artefacts of a job's inputs, read from the store and checked against their recorded
    /// SHA-256, in the job's order.
    private func inputArtefacts(_ spec: JobSpec) throws -> [Intervene_V1_InputArtefact] {
        try spec.inputs.map { id in
            guard let job = scheduler.job(id), let path = job.artefactPath, let sha = job.artefactSHA256 else {
                throw InputError.none(description: "input job \(id) has no artefact (\(spec.method.rawValue) reads "
                                        + (spec.method.inputKind ?? "artefacts") + ")")
            }
            var i = Intervene_V1_InputArtefact()
            i.jobID = id
            i.artefactSha256 = sha
            do { i.artefact = try Data(contentsOf: store.artefactURL(relativePath: path)) } catch {
                throw InputError.lost(input: id, description: "\(path) cannot be read: \(error)")
            }
            guard SHA256.hex(i.artefact) == sha else {
                throw InputError.lost(input: id,
                                      description: "\(path) no longer hashes to its sha256 \(sha.prefix(12))…")
            }
            return i
        }
    }

    enum InputError: Error {
        /// The input's method makes no artefact: the job cannot run.
        case none(description: String)
        /// The store lost the input's artefact: the input runs again.
        case lost(input: String, description: String)
    }

    /// One message to a worker, in its wire form (queued for after the store's commit).
    private func send(_ message: WorkerMessage, now: Double) {
        switch message {
        case let .assign(w, j, a, spec, exp, lease):
            guard let id = identityByWorker[w] else {
                // Assigned to a worker we can no longer reach: undo at once.
                apply(scheduler.handle(.assignmentRefused(worker: w, job: j, attempt: a), now: now), now: now)
                return
            }
            var m = Intervene_V1_JobAssignment()
            m.jobID = j
            m.attempt = UInt32(clamping: a)
            m.leaseMs = UInt32(clamping: Int(lease * 1000))
            m.experiment = exp
            m.params = JobParams(spec)
            do {
                m.inputs = try inputArtefacts(spec)
            } catch InputError.lost(let input, let why) {
                log("job \(j): input \(input)'s artefact is lost from the store (\(why)); the input runs again")
                deferredEvents.append(.inputArtefactLost(worker: w, job: j, attempt: a, input: input, reason: why))
                return
            } catch InputError.none(let why) {
                deferredEvents.append(.assignmentUndeliverable(worker: w, job: j, attempt: a, reason: why))
                return
            } catch {
                deferredEvents.append(.assignmentUndeliverable(worker: w, job: j, attempt: a, reason: "\(error)"))
                return
            }
            batch.sends.append((id, .job(m), (w, j, a)))
            log("job \(j) attempt \(a) -> \(w) (\(spec.task) \(spec.method) layer \(spec.layer) seed \(spec.seed))")
        case let .ack(w, kind, j, a):
            guard let id = identityByWorker[w] else { return }
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
            guard let id = identityByWorker[w] else { return }
            var m = Intervene_V1_Ack()
            m.kind = .heartbeat
            m.jobID = j
            m.attempt = UInt32(clamping: a)
            m.accepted = !abandon
            m.abandon = abandon
            batch.sends.append((id, .ack(m), nil))
        case let .refused(w, kind, j, a):   // counted by the scheduler (status: refused_results)
            guard let id = identityByWorker[w] else { return }
            var m = Intervene_V1_Ack()
            m.kind = kind == .failure ? .failure : .result
            m.jobID = j
            m.attempt = UInt32(clamping: a)
            m.accepted = false
            batch.sends.append((id, .ack(m), nil))
        case let .unknownWorker(w):
            if let id = identityByWorker[w] {
                batch.sends.append((id, Wire.error(code: .unknownPeer, "unknown worker \(w); say Hello"), nil))
            }
        }
    }

    func nextSequence(_ experiment: String) -> UInt64 {
        let s = (pubSequence[experiment] ?? 0) + 1
        pubSequence[experiment] = s
        return s
    }

    func update(_ rec: JobRecord, experiment: String, now: Double) -> Intervene_V1_Update {
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

    func handleMessage(_ frames: [Data], userID: String? = nil, arrival: UInt64) {
        count("received")
        let size = frames.reduce(0) { $0 + $1.count }
        guard frames.count >= 2, let identity = frames.first, !identity.isEmpty else {
            count("malformed"); return
        }
        let now = Self.now()
        if badFrames.isBlocked(identity, now: now) {
            count("dropped_blocked_peer")
            return
        }
        if size > options.maxMessageBytes {
            count("dropped_oversized")
            let why = "message of \(size) bytes exceeds the limit of \(options.maxMessageBytes)"
            return refuseBadFrame(identity, Wire.error(code: .tooLarge, why), now: now)
        }
        // [identity, envelope] from a DEALER; [identity, "", envelope] from a REQ.
        guard frames.count == 2 || (frames.count == 3 && frames[1].isEmpty) else {
            count("malformed")
            return refuseBadFrame(identity, .error(ProtocolError.badFrames(frames.count - 1).errorBody), now: now)
        }
        let body: EnvelopeBody
        do {
            body = try Wire.decodeBody(frames[frames.count - 1])
        } catch let e as ProtocolError {
            if case .versionMismatch = e { count("version_mismatch") } else { count("malformed") }
            return refuseBadFrame(identity, .error(e.errorBody), now: now)
        } catch {
            count("malformed")
            return refuseBadFrame(identity, nil, now: now)
        }
        // With keys, each connection's role is its key's (the ZAP handler admitted no other), and
        // a message outside that role changes nothing.
        if options.keys != nil {
            guard let role = userID.flatMap(PeerRole.init(userID:)) else {
                count("unauthenticated")
                return
            }
            if let why = body.refusal(for: role) {
                count("forbidden")
                let n = counters["forbidden"] ?? 0
                if n == 1 || n % 100 == 0 { log("refused (\(n) so far): \(why); from \(userID ?? "")") }
                return refuseBadFrame(identity, Wire.error(code: .forbidden, why), now: now)
            }
        }
        let worker = workerByIdentity[identity]
        switch body {
        case .hello(let h):
            var name = h.workerID.trimmingCharacters(in: .whitespaces)
            if name.isEmpty { name = "worker-" + identity.prefix(8).map { String(format: "%02x", $0) }.joined() }
            let newConnection = identityByWorker[name] != identity
            if let old = identityByWorker[name], old != identity { workerByIdentity[old] = nil }
            if let oldName = workerByIdentity[identity], oldName != name { identityByWorker[oldName] = nil }
            workerByIdentity[identity] = name
            identityByWorker[name] = identity
            let caps = WorkerCapabilities(device: h.device == "gpu" ? .gpu : .cpu, deviceIndex: Int(h.deviceIndex),
                                          threads: Int(h.threads), hostname: h.hostname, methods: h.methods,
                                          modelsCached: h.modelsCached, precisions: h.precisions)
            log("worker \(name) connected (\(h.device)\(h.device == "gpu" ? " \(h.deviceIndex)" : ""), \(h.threads) threads, \(h.hostname) pid \(h.pid))")
            let hello = SchedulerEvent.workerHello(worker: name, capabilities: caps, newConnection: newConnection)
            apply(scheduler.handle(hello, now: now), now: now)

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
            var ds = scheduler.handle(.heartbeat(worker: w, job: m.jobID, attempt: Int(m.attempt), step: Int(m.step),
                                                 total: Int(m.total)), now: now)
            // Step reports are not acknowledged, except to tell a stale worker to stop.
            ds.toWorkers.removeAll {
                if case .heartbeatAck(_, _, _, let abandon) = $0 { return !abandon }
                return false
            }
            apply(ds, now: now)
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
            // Only the job's holder may post its result: a refused one, or one for a job this
            // coordinator does not know, never touches the disk.
            let holder = scheduler.holds(worker: w, job: r.jobID, attempt: Int(r.attempt))
            if holder, !r.artefact.isEmpty || !r.artefactSha256.isEmpty {
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
                if case .cancelled(_, let n)? = ds.reply { reply.cancelled = UInt32(n) }
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
    func persistLease(_ job: String, now: Double) {
        guard let j = scheduler.job(job), j.state == .running else { leasePersistedAt[job] = nil; return }
        if now - (leasePersistedAt[job] ?? j.started ?? 0) >= options.scheduler.leaseSeconds / 3 {
            leasePersistedAt[job] = now
            if batch.dirtySet.insert(job).inserted { batch.dirtyJobs.append(job) }
        }
    }

    /// Runs `body` with `identity` mapped to worker `w` (so replies reach the sender), restoring the
    /// previous mapping afterwards when the peer was not registered.
    func withIdentity(_ identity: Data, as w: String, known: Bool, _ body: () -> Void) {
        if known { return body() }
        let oldIdentity = identityByWorker[w]
        identityByWorker[w] = identity
        workerByIdentity[identity] = w
        body()
        identityByWorker[w] = oldIdentity
        workerByIdentity[identity] = nil
    }

    /// Answers a bad frame (malformed, of another version, oversized, forbidden) with `reply`, or,
    /// once its connection passes its budget, says it is blocked (then drops its messages unread).
    func refuseBadFrame(_ identity: Data, _ reply: EnvelopeBody?, now: Double) {
        guard badFrames.record(identity, now: now) else {
            if let reply { send(identity, reply) }
            return
        }
        count("peers_blocked")
        let l = options.limits
        let peer = identity.prefix(16).map { String(format: "%02x", $0) }.joined()
        log("blocking peer \(peer) for \(l.blockSeconds) s: more than \(l.badFramesPerSecond) bad frames in a second")
        send(identity, Wire.error(code: .limit, "more than \(l.badFramesPerSecond) bad frames (malformed, of another "
            + "protocol version, oversized or forbidden) in one second: this connection's messages are dropped "
            + "unread for \(Render.num(l.blockSeconds)) s. Fix the sender; serve --max-bad-frames sets the budget"))
    }

    func unknownPeer(_ identity: Data) {
        count("unknown_peer")
        send(identity, Wire.error(code: .unknownPeer, "this coordinator does not know you; say Hello"))
    }
}
