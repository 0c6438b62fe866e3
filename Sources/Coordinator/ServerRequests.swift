import Foundation
import JobCore
import Protocol

/// The client requests the coordinator answers: submit, status, query (records only: clients
/// render them).
extension CoordinatorServer {
    // MARK: client requests

    var advertisedPub: String { options.advertisedPub ?? pubEndpoint }

    func submit(_ s: Intervene_V1_Submit, now: Double) -> Intervene_V1_SubmitReply {
        var reply = Intervene_V1_SubmitReply()
        reply.pubEndpoint = advertisedPub
        if let failure = storeFailure {
            reply.ok = false
            var f = Intervene_V1_FieldError()
            f.message = "the coordinator cannot write its store (\(failure)); nothing was queued. Free space on the "
                + "store's disk and submit again (jobs already stored are safe)."
            reply.errors = [f]
            return reply
        }
        let grid: Grid
        do {
            grid = try Grid.parse(s.gridJson, maxJobs: options.limits.maxGridJobs)
        } catch let e as GridErrors {
            if e.tooLarge { count("refused_grid_too_large") }
            reply.ok = false
            reply.errors = e.errors.map {
                var f = Intervene_V1_FieldError()
                f.path = $0.path; f.message = $0.message
                return f
            }
            return reply
        } catch {
            reply.ok = false
            var f = Intervene_V1_FieldError(); f.message = "\(error)"
            reply.errors = [f]
            return reply
        }
        reply.experiment = grid.experiment
        let jobs = grid.expand()
        reply.jobsTotal = UInt32(jobs.count)
        if s.dryRun {
            if let why = scheduler.queueRefusal(jobs) { return refuse(reply, why) }
            let known = jobs.filter { scheduler.job($0.id) != nil }.count
            reply.ok = true
            reply.jobsReused = UInt32(known)
            reply.jobsNew = UInt32(jobs.count - known)
            return reply
        }
        let ds = scheduler.handle(.submit(experiment: grid.experiment, gridJSON: s.gridJson, jobs: jobs), now: now)
        apply(ds, now: now)
        switch ds.reply {
        case let .submitted(_, new, reused, requeued, total)?:
            reply.jobsNew = UInt32(new); reply.jobsReused = UInt32(reused)
            reply.jobsRequeued = UInt32(requeued); reply.jobsTotal = UInt32(total)
        case let .refused(_, why)?:
            count("refused_queue_full")
            return refuse(reply, why)
        default: break
        }
        reply.ok = true
        log("experiment \(grid.experiment) submitted: \(reply.jobsTotal) jobs (\(reply.jobsNew) new, \(reply.jobsReused) reused, \(reply.jobsRequeued) requeued)")
        return reply
    }

    /// A submission refused whole (nothing queued), with the reason and its fix.
    private func refuse(_ r: Intervene_V1_SubmitReply, _ why: String) -> Intervene_V1_SubmitReply {
        var reply = r
        reply.ok = false
        var f = Intervene_V1_FieldError()
        f.message = why
        reply.errors = [f]
        log("submission of \(r.experiment) refused: \(why)")
        return reply
    }

    func status(_ r: Intervene_V1_StatusRequest, now: Double) -> Intervene_V1_StatusReply {
        var reply = Intervene_V1_StatusReply()
        reply.pubEndpoint = advertisedPub
        reply.counters = counters
        reply.counters["duplicate_results"] = UInt64(scheduler.duplicateResults)
        reply.counters["stale_messages"] = UInt64(scheduler.staleMessages)
        reply.counters["refused_results"] = UInt64(scheduler.refusedResults)
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

    func query(_ q: Intervene_V1_Query) -> Intervene_V1_QueryReply {
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
        return reply
    }
}
