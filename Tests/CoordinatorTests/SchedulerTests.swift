import Engine
import XCTest
@testable import Coordinator

/// The scheduler as a pure state machine, driven by a fake clock.
final class SchedulerTests: XCTestCase {
    var s = Scheduler()
    var now = 1000.0

    let cpu = WorkerCapabilities(device: .cpu)
    let gpu = WorkerCapabilities(device: .gpu, deviceIndex: 0)

    override func setUp() {
        s = Scheduler(config: SchedulerConfig(leaseSeconds: 10, workerTimeoutSeconds: 60, maxAttempts: 3))
        now = 1000
    }

    @discardableResult
    func on(_ e: SchedulerEvent) -> Effects { s.handle(e, now: now) }

    func jobs(_ n: Int, method: JobMethod = .synthetic, device: DeviceRequirement = .any) -> [SubmittedJob] {
        (0..<n).map { i in
            let spec = JobSpec(task: "t", method: method, seed: i, steps: 10)
            return SubmittedJob(id: spec.id, spec: spec, device: device)
        }
    }

    func assignments(_ ds: Effects) -> [(worker: String, job: String, attempt: Int)] {
        ds.toWorkers.compactMap { if case let .assign(w, j, a, _, _, _) = $0 { return (w, j, a) }; return nil }
    }

    func connect(_ w: String, _ caps: WorkerCapabilities) -> Effects {
        on(.workerHello(worker: w, capabilities: caps))
        return on(.workerReady(worker: w))
    }

    // MARK: dispatch

    func testIdleWorkerGetsJobsInSubmissionOrder() {
        XCTAssertTrue(assignments(connect("w1", cpu)).isEmpty, "nothing queued yet")
        let js = jobs(3)
        let ds = on(.submit(experiment: "e", gridJSON: "{}", jobs: js))
        let a = assignments(ds)
        XCTAssertEqual(a.count, 1)
        XCTAssertEqual(a[0].job, js[0].id)
        XCTAssertEqual(a[0].attempt, 1)
        XCTAssertEqual(s.job(js[0].id)?.state, .running)
        XCTAssertEqual(s.job(js[0].id)?.leaseExpiry, now + 10)
        XCTAssertEqual(ds.reply, .submitted(experiment: "e", new: 3, reused: 0, requeued: 0, total: 3))

        // Result, then Ready: the next job in order.
        now += 1
        let r = on(.result(worker: "w1", job: js[0].id, attempt: 1, metrics: ["exact_match": 1], artefactSHA256: nil, artefactPath: nil))
        XCTAssertTrue(r.toWorkers.contains(.ack(worker: "w1", kind: .result, job: js[0].id, attempt: 1)))
        XCTAssertTrue(r.jobChanges.contains(.done(job: js[0].id, worker: "w1", attempt: 1)))
        XCTAssertEqual(assignments(on(.workerReady(worker: "w1"))).map(\.job), [js[1].id])
    }

    func testWorkersKeepToTheEvaluationSplitsTheyRan() {
        _ = connect("w1", cpu)
        _ = connect("w2", cpu)
        func job(_ m: JobMethod, _ seed: Int) -> SubmittedJob {
            let spec = JobSpec(task: "antonym", method: m, seed: seed, steps: 10)
            return SubmittedJob(id: spec.id, spec: spec, device: .any)
        }
        let (int0, int1, zs0, zs1, zs2) = (job(.intervention, 0), job(.intervention, 1), job(.zeroShot, 0),
                                            job(.zeroShot, 1), job(.zeroShot, 2))
        XCTAssertNotNil(int0.spec.evaluationSplit)
        XCTAssertEqual(int0.spec.evaluationSplit, zs0.spec.evaluationSplit)
        XCTAssertNotEqual(zs0.spec.evaluationSplit, zs1.spec.evaluationSplit)
        XCTAssertNil(JobSpec(task: "antonym", method: .fewShot, seed: 0).evaluationSplit, "few-shot prompts are others")
        let first = assignments(on(.submit(experiment: "e", gridJSON: "{}", jobs: [int0, int1, zs1, zs2, zs0])))
        XCTAssertEqual(first.map(\.job).sorted(), [int0.id, int1.id].sorted(), "the earliest two, as always")
        let w1 = first.first { $0.job == int0.id }!.worker, w2 = w1 == "w1" ? "w2" : "w1"
        func finish(_ w: String, _ j: SubmittedJob) -> [String] {
            now += 1
            on(.result(worker: w, job: j.id, attempt: 1, metrics: [:], artefactSHA256: nil, artefactPath: nil))
            return assignments(on(.workerReady(worker: w))).map(\.job)
        }
        XCTAssertEqual(finish(w1, int0), [zs0.id], "the same split, though queued last")
        XCTAssertEqual(finish(w1, zs0), [zs2.id], "not the split the other worker ran, though queued earlier")
        XCTAssertEqual(finish(w2, int1), [zs1.id], "which that worker then takes")
    }

    func testAffinityPassesOverTheEarliestJobAFewTimesAtMost() {
        _ = connect("w1", cpu)
        func job(_ m: JobMethod, seed: Int, layer: Int = 4) -> SubmittedJob {
            let spec = JobSpec(task: "antonym", method: m, layer: layer, seed: seed, steps: 10)
            return SubmittedJob(id: spec.id, spec: spec, device: .any)
        }
        let first = job(.intervention, seed: 0)
        XCTAssertEqual(assignments(on(.submit(experiment: "a", gridJSON: "{}", jobs: [first]))).map(\.job), [first.id])
        // then the earliest job of another split, and a stream of jobs of the worker's split
        let other = job(.zeroShot, seed: 5)
        let mine = (10..<30).map { job(.intervention, seed: 0, layer: $0) }
        _ = on(.submit(experiment: "b", gridJSON: "{}", jobs: [other] + mine))
        var taken: [String] = [], last = first
        for _ in 0..<(Scheduler.affinityPatience + 2) {
            now += 1
            on(.result(worker: "w1", job: last.id, attempt: 1, metrics: [:], artefactSHA256: nil, artefactPath: nil))
            let a = assignments(on(.workerReady(worker: "w1"))).map(\.job)
            XCTAssertEqual(a.count, 1)
            taken += a
            last = ([other] + mine).first { $0.id == a.first }!
        }
        let patience = Scheduler.affinityPatience
        XCTAssertEqual(Array(taken.prefix(patience)), mine.prefix(patience).map(\.id), "the worker's own split first")
        XCTAssertEqual(taken[patience], other.id, "then the job passed over, however many follow")
    }

    func testReadyWithNothingQueuedIsAcked() {
        let ds = connect("w1", cpu)
        XCTAssertTrue(ds.toWorkers.contains(.ack(worker: "w1", kind: .ready, job: "", attempt: 0)))
    }

    func testReadyFromUnknownWorkerAsksForHello() {
        XCTAssertEqual(on(.workerReady(worker: "ghost")), Effects(toWorkers: [.unknownWorker(worker: "ghost")]))
    }

    func testCapabilityMismatchGivesPendingReason() {
        _ = connect("c1", cpu)
        let js = jobs(1, device: .gpu)
        XCTAssertTrue(assignments(on(.submit(experiment: "e", gridJSON: "{}", jobs: js))).isEmpty)
        XCTAssertEqual(s.job(js[0].id)?.state, .queued)
        XCTAssertEqual(s.pendingReason(js[0].id), "needs gpu, no gpu worker connected")

        // A busy GPU worker: a different reason.
        on(.workerHello(worker: "g1", capabilities: gpu))
        let other = jobs(2, device: .gpu)[1]
        _ = on(.submit(experiment: "e2", gridJSON: "{}", jobs: [other]))
        XCTAssertEqual(s.pendingReason(js[0].id), "needs gpu, no idle gpu worker (1 busy)")

        // The GPU worker says Ready: it takes the oldest GPU job.
        XCTAssertEqual(assignments(on(.workerReady(worker: "g1"))).map(\.job), [js[0].id])
    }

    func testNoWorkerAndMethodFamilyReasons() {
        let js = jobs(1, method: .intervention)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: js))
        XCTAssertEqual(s.pendingReason(js[0].id), "no worker connected")
        _ = connect("syn", WorkerCapabilities(device: .cpu, methods: ["synthetic"]))
        XCTAssertEqual(s.job(js[0].id)?.state, .queued)
        XCTAssertEqual(s.pendingReason(js[0].id), "needs a worker that runs engine jobs, none connected")
    }

    /// An int8 job goes only to a worker whose CPU runs int8 products (Hello's precisions), and
    /// waits with a reason that says so; its fp32 twin runs on the fp32-only worker; a worker that
    /// says nothing (an older build) takes either.
    func testInt8JobsGoOnlyToWorkersThatRunInt8() {
        func job(_ p: Precision, seed: Int) -> SubmittedJob {
            let spec = JobSpec(task: "t", method: .intervention, seed: seed, steps: 10, precision: p)
            return SubmittedJob(id: spec.id, spec: spec, device: .any)
        }
        let int8 = job(.int8, seed: 0), fp32 = job(.fp32, seed: 1)
        var noSolver = JobSpec(task: "t", method: .zeroShot, seed: 2)
        noSolver.precision = nil
        let zero = SubmittedJob(id: noSolver.id, spec: noSolver, device: .any)
        _ = connect("arm", WorkerCapabilities(device: .cpu, precisions: ["fp32"]))
        let a = assignments(on(.submit(experiment: "e", gridJSON: "{}", jobs: [int8, fp32, zero])))
        XCTAssertEqual(a.map(\.job), [fp32.id], "the fp32-only worker skips the int8 job and takes the fp32 one")
        XCTAssertEqual(s.job(int8.id)?.state, .queued)
        let reason = s.pendingReason(int8.id) ?? ""
        XCTAssertTrue(reason.contains("int8") && reason.contains("run fp32 only"), reason)
        _ = on(.result(worker: "arm", job: fp32.id, attempt: 1, metrics: [:], artefactSHA256: nil, artefactPath: nil))
        XCTAssertEqual(assignments(on(.workerReady(worker: "arm"))).map(\.job), [zero.id], "no solver, no check")

        _ = connect("x86", WorkerCapabilities(device: .cpu, precisions: ["fp32", "int8"]))
        XCTAssertEqual(s.job(int8.id)?.state, .running)
        XCTAssertEqual(s.job(int8.id)?.worker, "x86")

        // synthetic jobs use no kernels: an fp32-only worker takes them whatever their precision
        var syn = JobSpec(task: "t", method: .synthetic, seed: 9, steps: 10, precision: .int8)
        syn.testSize = 1
        _ = on(.submit(experiment: "s", gridJSON: "{}", jobs: [SubmittedJob(id: syn.id, spec: syn, device: .any)]))
        _ = on(.result(worker: "arm", job: zero.id, attempt: 1, metrics: [:], artefactSHA256: nil, artefactPath: nil))
        XCTAssertEqual(assignments(on(.workerReady(worker: "arm"))).map(\.job), [syn.id])

        let later = job(.int8, seed: 3)
        _ = connect("old", cpu)  // says no precisions: takes anything
        XCTAssertEqual(assignments(on(.submit(experiment: "e2", gridJSON: "{}", jobs: [later]))).map(\.worker), ["old"])
    }

    func testCPUWorkerSkipsGPUJobsButTakesLaterCPUJob() {
        _ = connect("c1", cpu)
        let g = jobs(1, device: .gpu)
        var c = jobs(2, device: .cpu)
        c.removeFirst()
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: g + c))
        XCTAssertEqual(s.job(c[0].id)?.state, .running)
        XCTAssertEqual(s.job(g[0].id)?.state, .queued)
    }

    // MARK: leases and losses

    func testLostWorkerRequeuesWithNextAttempt() {
        _ = connect("w1", cpu)
        _ = connect("w2", cpu)
        let js = jobs(1)
        let a = assignments(on(.submit(experiment: "e", gridJSON: "{}", jobs: js)))
        XCTAssertEqual(a.count, 1)
        let first = a[0].worker
        let other = first == "w1" ? "w2" : "w1"

        // Heartbeats renew the lease.
        now += 8
        XCTAssertEqual(on(.heartbeat(worker: first, job: js[0].id, attempt: 1, step: 3, total: 10)),
                       Effects(toWorkers: [.heartbeatAck(worker: first, job: js[0].id, attempt: 1, abandon: false)]))
        now += 8
        XCTAssertTrue(assignments(on(.tick)).isEmpty)
        XCTAssertEqual(s.job(js[0].id)?.state, .running)

        // Silence past the lease: lost, requeued as attempt 2, given to the idle worker.
        now += 11
        let ds = on(.tick)
        XCTAssertTrue(ds.jobChanges.contains(.requeued(job: js[0].id, attempt: 2,
                                                       reason: "lease expired on worker \(first)")))
        XCTAssertTrue(ds.published.contains { $0.state == .lost },
                      "the loss itself is published")
        let re = assignments(ds)
        XCTAssertEqual(re.count, 1)
        XCTAssertEqual(re[0].worker, other)
        XCTAssertEqual(re[0].attempt, 2)
        XCTAssertEqual(s.job(js[0].id)?.losses, 1)

        // The presumed-dead worker's heartbeat for attempt 1 is told to abandon.
        XCTAssertEqual(on(.heartbeat(worker: first, job: js[0].id, attempt: 1, step: 5, total: 10)),
                       Effects(toWorkers: [.heartbeatAck(worker: first, job: js[0].id, attempt: 1, abandon: true)]))
    }

    func testAttemptsAreCappedWithMessageNamingLastWorker() {
        let js = jobs(1)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: js))
        for attempt in 1...3 {
            let w = "w\(attempt)"
            let a = assignments(connect(w, cpu))
            XCTAssertEqual(a.first?.attempt, attempt)
            now += 11
            _ = on(.tick)
        }
        let j = s.job(js[0].id)!
        XCTAssertEqual(j.state, .failed)
        XCTAssertEqual(j.error, "lost 3 times (last worker w3)")
        XCTAssertEqual(j.attempt, 3)
    }

    func testWorkerGoneRequeuesAtOnce() {
        _ = connect("w1", cpu)
        let js = jobs(1)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: js))
        let ds = on(.workerGone(worker: "w1", reason: "goodbye"))
        XCTAssertTrue(ds.jobChanges.contains(.requeued(job: js[0].id, attempt: 2, reason: "worker w1 left: goodbye")))
        XCTAssertEqual(s.job(js[0].id)?.state, .queued)
        XCTAssertNil(s.workers["w1"])
    }

    func testRestartedWorkerSayingReadyLosesItsJob() {
        _ = connect("w1", cpu)
        let js = jobs(2)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: js))
        _ = on(.assignmentAccepted(worker: "w1", job: js[0].id, attempt: 1))
        // Same worker name, new process: Hello, Ready. Its old job is lost; it gets the oldest job.
        on(.workerHello(worker: "w1", capabilities: cpu))
        let ds = on(.workerReady(worker: "w1"))
        XCTAssertTrue(ds.jobChanges.contains(.requeued(job: js[0].id, attempt: 2, reason: "worker w1 reported idle")))
        XCTAssertEqual(assignments(ds).map(\.job), [js[0].id])
    }

    func testReadyCrossingAnAssignmentIsNotALoss() {
        _ = connect("w1", cpu)
        let js = jobs(1)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: js))
        // A periodic Ready sent before the assignment arrived.
        let ds = on(.workerReady(worker: "w1"))
        XCTAssertEqual(ds, Effects(toWorkers: [.ack(worker: "w1", kind: .ready, job: "", attempt: 0)]))
        XCTAssertEqual(s.job(js[0].id)?.state, .running)
    }

    func testRefusedAssignmentGoesBackToQueueWithoutLoss() {
        _ = connect("w1", cpu)
        let js = jobs(1)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: js))
        _ = on(.assignmentRefused(worker: "w1", job: js[0].id, attempt: 1))
        let j = s.job(js[0].id)!
        XCTAssertEqual(j.state, .queued)
        XCTAssertEqual(j.losses, 0)
        XCTAssertEqual(j.attempt, 1)
    }

    func testSilentWorkerIsForgotten() {
        _ = connect("w1", cpu)
        now += 61
        _ = on(.tick)
        XCTAssertNil(s.workers["w1"])
    }

    // MARK: results

    func testDuplicateAndLateResultsCountOnce() {
        _ = connect("w1", cpu)
        _ = connect("w2", cpu)
        let js = jobs(1)
        let first = assignments(on(.submit(experiment: "e", gridJSON: "{}", jobs: js)))[0].worker
        let other = first == "w1" ? "w2" : "w1"
        now += 11
        _ = on(.tick)   // lost; attempt 2 goes to the other worker
        XCTAssertEqual(s.job(js[0].id)?.worker, other)

        // The presumed-dead worker's late result for attempt 1 arrives first: accepted.
        let late = on(.result(worker: first, job: js[0].id, attempt: 1, metrics: ["exact_match": 0.5],
                              artefactSHA256: "aa", artefactPath: "artefacts/aa.safetensors"))
        XCTAssertTrue(late.jobChanges.contains(.done(job: js[0].id, worker: first, attempt: 1)))
        XCTAssertEqual(s.job(js[0].id)?.metrics, ["exact_match": 0.5])

        // The other worker's result, and a resend of the first: acked, not counted again.
        for (w, a) in [(other, 2), (first, 1)] {
            let d = on(.result(worker: w, job: js[0].id, attempt: a, metrics: ["exact_match": 0.9],
                               artefactSHA256: nil, artefactPath: nil))
            XCTAssertTrue(d.toWorkers.contains(.ack(worker: w, kind: .result, job: js[0].id, attempt: a)))
            XCTAssertTrue(d.jobChanges.isEmpty && d.published.isEmpty, "no state change for a duplicate")
        }
        XCTAssertEqual(s.duplicateResults, 2)
        XCTAssertEqual(s.job(js[0].id)?.metrics, ["exact_match": 0.5])
        XCTAssertEqual(s.jobs.values.filter { $0.state == .done }.count, 1)

        // The other worker, still computing attempt 2, is told to abandon it.
        XCTAssertEqual(on(.heartbeat(worker: other, job: js[0].id, attempt: 2, step: 1, total: 10)),
                       Effects(toWorkers: [.heartbeatAck(worker: other, job: js[0].id, attempt: 2, abandon: true)]))
    }

    /// Results and failures count only from a worker that holds (or held) that job and attempt;
    /// the rest are refused and counted, and change nothing.
    func testResultsOnlyFromTheLeaseHolder() {
        _ = connect("w1", cpu)
        _ = connect("w2", cpu)
        let js = jobs(3)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: js))
        let heldByW1 = js.first { s.job($0.id)?.worker == "w1" }!.id
        let queued = js.first { s.job($0.id)?.state == .queued }!.id
        for (w, j) in [("intruder", heldByW1), ("w2", heldByW1), ("intruder", queued)] {
            let ds = on(.result(worker: w, job: j, attempt: 1, metrics: ["exact_match": 0.999], artefactSHA256: nil,
                                artefactPath: nil))
            XCTAssertEqual(ds.toWorkers, [.refused(worker: w, kind: .result, job: j, attempt: 1)])
            XCTAssertTrue(ds.jobChanges.isEmpty && ds.published.isEmpty)
        }
        let f = on(.failure(worker: "w2", job: heldByW1, attempt: 1, reason: "forged", deterministic: true))
        XCTAssertEqual(f.toWorkers, [.refused(worker: "w2", kind: .failure, job: heldByW1, attempt: 1)])
        XCTAssertEqual(s.refusedResults, 4)
        XCTAssertEqual(s.job(heldByW1)?.state, .running)
        XCTAssertEqual(s.job(queued)?.state, .queued)
        XCTAssertFalse(s.holds(worker: "w2", job: heldByW1, attempt: 1))
        XCTAssertTrue(s.holds(worker: "w1", job: heldByW1, attempt: 1))
        let ok = on(.result(worker: "w1", job: heldByW1, attempt: 1, metrics: ["exact_match": 0.5], artefactSHA256: nil,
                            artefactPath: nil))
        XCTAssertTrue(ok.jobChanges.contains(.done(job: heldByW1, worker: "w1", attempt: 1)))
    }

    /// A worker restarted under the same id costs its job one attempt, not more: a Hello the new
    /// process sends again on the same connection (its first one crossed our answer) must not
    /// mark the assignment just sent to it as received, or its crossing Ready reads as "idle"
    /// and loses the job a second and third time (the drill in issue 13: "lost 3 times").
    func testARestartedWorkerCostsItsJobOneAttempt() {
        _ = connect("w1", cpu)
        let js = jobs(1)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: js))
        let j = js[0].id
        _ = on(.assignmentAccepted(worker: "w1", job: j, attempt: 1))
        _ = on(.heartbeat(worker: "w1", job: j, attempt: 1, step: 1, total: 10))
        // the process dies; a new one with the same id says Hello (a new connection) and Ready
        _ = on(.workerHello(worker: "w1", capabilities: cpu, newConnection: true))
        let ready = on(.workerReady(worker: "w1"))
        XCTAssertTrue(ready.jobChanges.contains(.requeued(job: j, attempt: 2, reason: "worker w1 reported idle")))
        XCTAssertEqual(assignments(ready).map(\.attempt), [2], "the job goes straight back to the idle worker")
        // its Hello is sent again on the same connection, then a Ready that crossed the assignment
        _ = on(.workerHello(worker: "w1", capabilities: cpu, newConnection: false))
        let crossed = on(.workerReady(worker: "w1"))
        XCTAssertTrue(crossed.jobChanges.isEmpty, "a crossed Ready is not a loss: \(crossed.jobChanges)")
        XCTAssertEqual(s.job(j)?.attempt, 2)
        XCTAssertEqual(s.job(j)?.losses, 1)
        XCTAssertEqual(s.job(j)?.state, .running)
    }

    func testDeterministicFailureIsFinalAtOnce() {
        _ = connect("w1", cpu)
        let js = jobs(1, method: .syntheticFail)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: js))
        let ds = on(.failure(worker: "w1", job: js[0].id, attempt: 1, reason: "boom at step 5", deterministic: true))
        XCTAssertTrue(ds.jobChanges.contains(.failed(job: js[0].id, reason: "boom at step 5")))
        XCTAssertTrue(ds.toWorkers.contains(.ack(worker: "w1", kind: .failure, job: js[0].id, attempt: 1)))
        let j = s.job(js[0].id)!
        XCTAssertEqual(j.state, .failed)
        XCTAssertEqual(j.attempt, 1)
        XCTAssertEqual(j.error, "boom at step 5")
    }

    func testTransientFailuresRetryUpToTheCap() {
        let js = jobs(1)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: js))
        _ = connect("w1", cpu)
        for attempt in 1...3 {
            XCTAssertEqual(s.job(js[0].id)?.state, .running)
            _ = on(.failure(worker: "w1", job: js[0].id, attempt: attempt, reason: "out of memory", deterministic: false))
            _ = on(.workerReady(worker: "w1"))
        }
        let j = s.job(js[0].id)!
        XCTAssertEqual(j.state, .failed)
        XCTAssertEqual(j.error, "failed 3 times (last on worker w1: out of memory)")
    }

    // MARK: submit and cancel

    func testResubmitReusesDoneAndRequeuesFailed() {
        _ = connect("w1", cpu)
        let js = jobs(2)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: js))
        _ = on(.result(worker: "w1", job: js[0].id, attempt: 1, metrics: [:], artefactSHA256: nil, artefactPath: nil))
        _ = on(.workerReady(worker: "w1"))
        _ = on(.failure(worker: "w1", job: js[1].id, attempt: 1, reason: "bad", deterministic: true))
        let ds = on(.submit(experiment: "e", gridJSON: "{}", jobs: js))
        XCTAssertEqual(ds.reply, .submitted(experiment: "e", new: 0, reused: 2, requeued: 1, total: 2))
        XCTAssertEqual(s.job(js[0].id)?.state, .done)
        XCTAssertEqual(s.job(js[1].id)?.state, .queued)
        XCTAssertEqual(s.job(js[1].id)?.attempt, 2)
    }

    func testJobSharedByTwoExperimentsRunsOnce() {
        let js = jobs(2)
        _ = on(.submit(experiment: "a", gridJSON: "{}", jobs: js))
        let ds = on(.submit(experiment: "b", gridJSON: "{}", jobs: [js[1]]))
        XCTAssertEqual(ds.reply, .submitted(experiment: "b", new: 0, reused: 1, requeued: 0, total: 1))
        XCTAssertEqual(s.jobs.count, 2)
        XCTAssertEqual(s.experimentsOf(js[1].id), ["a", "b"])
        // Cancelling a keeps the job b needs.
        let c = on(.cancel(experiment: "a", jobs: []))
        XCTAssertEqual(c.reply, .cancelled(experiment: "a", count: 1))
        XCTAssertEqual(s.job(js[0].id)?.state, .cancelled)
        XCTAssertEqual(s.job(js[1].id)?.state, .queued)
    }

    func testCancelDropsQueuedAndAbandonsRunning() {
        _ = connect("w1", cpu)
        let js = jobs(3)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: js))
        _ = on(.result(worker: "w1", job: js[0].id, attempt: 1, metrics: [:], artefactSHA256: nil, artefactPath: nil))
        _ = on(.workerReady(worker: "w1"))   // takes js[1]
        XCTAssertEqual(s.job(js[1].id)?.state, .running)
        let ds = on(.cancel(experiment: "e", jobs: []))
        XCTAssertEqual(ds.reply, .cancelled(experiment: "e", count: 2))
        XCTAssertEqual(s.job(js[0].id)?.state, .done, "finished results stay")
        XCTAssertEqual(s.job(js[1].id)?.state, .cancelled)
        XCTAssertEqual(s.job(js[2].id)?.state, .cancelled)
        XCTAssertEqual(on(.heartbeat(worker: "w1", job: js[1].id, attempt: 1, step: 2, total: 10)),
                       Effects(toWorkers: [.heartbeatAck(worker: "w1", job: js[1].id, attempt: 1, abandon: true)]))
        // Nothing is dispatched any more.
        XCTAssertTrue(assignments(on(.workerReady(worker: "w1"))).isEmpty)
        // Resubmitting queues them again.
        let re = on(.submit(experiment: "e", gridJSON: "{}", jobs: js))
        XCTAssertEqual(re.reply, .submitted(experiment: "e", new: 0, reused: 3, requeued: 2, total: 3))
    }

    // MARK: restart

    func testRestoredSchedulerRequeuesExpiredLeasesAndAdoptsLiveOnes() {
        let js = jobs(3)
        var a = JobRecord(id: js[0].id, spec: js[0].spec, device: .any, seq: 0, state: .done, created: 0)
        a.metrics = ["exact_match": 1]
        let b = JobRecord(id: js[1].id, spec: js[1].spec, device: .any, seq: 1, state: .running, leaseExpiry: now - 1,
                          worker: "old", created: 0)
        let c = JobRecord(id: js[2].id, spec: js[2].spec, device: .any, seq: 2, state: .running, leaseExpiry: now + 5,
                          worker: "alive", created: 0)
        s = Scheduler(config: SchedulerConfig(leaseSeconds: 10), jobs: [a, b, c],
                      experiments: [ExperimentRecord(name: "e", gridJSON: "{}", submitted: 0, jobIDs: js.map(\.id))])
        let ds = on(.tick)
        XCTAssertTrue(ds.jobChanges.contains(.requeued(job: js[1].id, attempt: 2,
                                                       reason: "lease expired on worker old")))
        XCTAssertEqual(s.job(js[0].id)?.state, .done)
        XCTAssertEqual(s.job(js[2].id)?.state, .running)
        // The live worker re-introduces itself and heartbeats: its lease is renewed.
        on(.workerHello(worker: "alive", capabilities: cpu))
        XCTAssertEqual(on(.heartbeat(worker: "alive", job: js[2].id, attempt: 1, step: 1, total: 10)),
                       Effects(toWorkers: [.heartbeatAck(worker: "alive", job: js[2].id, attempt: 1, abandon: false)]))
        XCTAssertEqual(s.job(js[2].id)?.leaseExpiry, now + 10)
    }

    // MARK: jobs that read other jobs' artefacts

    /// A synthetic job reading the artefacts of `inputs`.
    func dependent(on inputs: [SubmittedJob], seed: Int = 100) -> SubmittedJob {
        var spec = JobSpec(task: "t", method: .synthetic, seed: seed, steps: 10)
        spec.inputs = inputs.map(\.id)
        return SubmittedJob(id: spec.id, spec: spec, device: .any)
    }

    func done(_ w: String, _ j: SubmittedJob, attempt: Int = 1) -> Effects {
        on(.result(worker: w, job: j.id, attempt: attempt, metrics: [:], artefactSHA256: "ab", artefactPath: "p"))
    }

    func testAJobWaitsForItsInputsAndRunsOnceTheyAreDone() {
        let ins = jobs(2)
        let d = dependent(on: ins)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: [d] + ins))   // the dependent first in order
        XCTAssertEqual(assignments(connect("w1", cpu)).map(\.job), [ins[0].id], "the dependent waits")
        XCTAssertEqual(assignments(connect("w2", cpu)).map(\.job), [ins[1].id])
        XCTAssertTrue(assignments(connect("w3", cpu)).isEmpty)
        XCTAssertEqual(s.pendingReason(d.id),
                       "waiting for 2 of its 2 input jobs (\(ins[0].id) running, \(ins[1].id) running)")
        XCTAssertEqual(s.pendingReasons([d.id])[d.id], s.pendingReason(d.id))
        XCTAssertTrue(assignments(done("w1", ins[0])).isEmpty, "one input is still running")
        XCTAssertEqual(s.pendingReason(d.id), "waiting for 1 of its 2 input jobs (\(ins[1].id) running)")
        // the last input's result hands the dependent to a worker already idle
        XCTAssertEqual(assignments(done("w2", ins[1])).map { [$0.worker, $0.job] }, [["w3", d.id]])
    }

    func testAFailedInputFailsItsDependentsAndAResubmissionRunsThemAgain() {
        _ = connect("w1", cpu)
        let a = jobs(1)[0]
        let d = dependent(on: [a])
        let d2 = dependent(on: [d], seed: 101)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: [a, d, d2]))
        let ds = on(.failure(worker: "w1", job: a.id, attempt: 1, reason: "boom", deterministic: true))
        let why = "input \(a.id) (synthetic on t) failed: boom"
        XCTAssertTrue(ds.jobChanges.contains(.failed(job: d.id, reason: why)))
        XCTAssertEqual(s.job(d.id)?.state, .failed)
        XCTAssertEqual(s.job(d2.id)?.state, .failed)
        XCTAssertEqual(s.job(d2.id)?.error, "input \(d.id) (synthetic on t) failed: " + why)
        // submitted again: all three queued, the dependents still after their inputs
        let re = on(.submit(experiment: "e", gridJSON: "{}", jobs: [a, d, d2]))
        XCTAssertEqual(re.reply, .submitted(experiment: "e", new: 0, reused: 3, requeued: 3, total: 3))
        XCTAssertEqual(assignments(on(.workerReady(worker: "w1"))).map(\.job), [a.id])
        XCTAssertEqual(s.job(d.id)?.state, .queued)
        _ = done("w1", a, attempt: 2)
        XCTAssertEqual(assignments(on(.workerReady(worker: "w1"))).map(\.job), [d.id])
    }

    func testUnknownOrFailedInputsFailAtSubmission() {
        var spec = JobSpec(task: "t", method: .synthetic, steps: 10)
        spec.inputs = ["0123456789abcdef"]
        let orphan = SubmittedJob(id: spec.id, spec: spec, device: .any)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: [orphan]))
        XCTAssertEqual(s.job(orphan.id)?.state, .failed)
        XCTAssertEqual(s.job(orphan.id)?.error, "input 0123456789abcdef is not a job this coordinator knows: name a "
                           + "job from `coordinator results`, or put it in the same grid")
        // an input that failed in another experiment, named by id
        _ = connect("w1", cpu)
        let a = jobs(1, method: .syntheticFail)[0]
        _ = on(.submit(experiment: "first", gridJSON: "{}", jobs: [a]))
        _ = on(.failure(worker: "w1", job: a.id, attempt: 1, reason: "bad", deterministic: true))
        let d = dependent(on: [a])
        _ = on(.submit(experiment: "second", gridJSON: "{}", jobs: [d]))
        XCTAssertEqual(s.job(d.id)?.error, "input \(a.id) (synthetic-fail on t) failed: bad")
    }

    func testCancellingAnExperimentCancelsDependentsRatherThanFailingThem() {
        let a = jobs(1)[0]
        let d = dependent(on: [a])
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: [a, d]))
        XCTAssertEqual(on(.cancel(experiment: "e", jobs: [])).reply, .cancelled(experiment: "e", count: 2))
        XCTAssertEqual(s.job(d.id)?.state, .cancelled)
        XCTAssertEqual(s.job(a.id)?.state, .cancelled)
    }

    func testAnUndeliverableAssignmentFailsTheJobAndTheWorkerTakesTheNext() {
        let a = jobs(2)
        _ = connect("w1", cpu)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: a))
        let ds = on(.assignmentUndeliverable(worker: "w1", job: a[0].id, attempt: 1, reason: "artefact gone"))
        XCTAssertEqual(s.job(a[0].id)?.state, .failed)
        XCTAssertEqual(s.job(a[0].id)?.error, "artefact gone")
        XCTAssertFalse(ds.toWorkers.contains { if case .ack = $0 { return true } else { return false } },
                       "the worker never saw the job: nothing to acknowledge")
        XCTAssertEqual(assignments(ds).map(\.job), [a[1].id])
    }

    func testALostInputArtefactRunsTheInputAgainBeforeItsReader() {
        let a = jobs(1)[0]
        let d = dependent(on: [a])
        _ = connect("w1", cpu)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: [a, d]))
        _ = done("w1", a)
        XCTAssertEqual(assignments(on(.workerReady(worker: "w1"))).map(\.job), [d.id])
        let ds = on(.inputArtefactLost(worker: "w1", job: d.id, attempt: 1, input: a.id, reason: "file gone"))
        XCTAssertTrue(ds.jobChanges.contains(.requeued(job: a.id, attempt: 2,
                                                       reason: "its artefact was lost from the store (file gone)")))
        XCTAssertEqual(assignments(ds).map(\.job), [a.id], "the input first, on the idle worker")
        XCTAssertEqual(s.job(d.id)?.state, .queued)
        XCTAssertEqual(s.job(d.id)?.attempt, 1, "not the reader's fault: no attempt spent")
        XCTAssertNil(s.job(a.id)?.artefactPath)
        _ = done("w1", a, attempt: 2)
        XCTAssertEqual(assignments(on(.workerReady(worker: "w1"))).map(\.job), [d.id])
    }

    func testALateResultOfAFailedInputRevivesItsReaders() {
        let a = jobs(1)[0]
        let d = dependent(on: [a])
        _ = connect("w1", cpu)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: [a, d]))
        now += 11   // a's lease expires three times: failed
        for _ in 0..<3 { _ = on(.tick); _ = on(.workerReady(worker: "w1")); now += 11 }
        XCTAssertEqual(s.job(a.id)?.state, .failed)
        XCTAssertEqual(s.job(d.id)?.state, .failed)
        // the first attempt's result arrives after all: the first result wins, and d may run
        let ds = done("w1", a)
        XCTAssertEqual(s.job(a.id)?.state, .done)
        let why = "its input \(a.id) is done after all"
        XCTAssertTrue(ds.jobChanges.contains(.requeued(job: d.id, attempt: 2, reason: why)))
        XCTAssertEqual(assignments(ds).map(\.job), [d.id], "on the worker already idle")
    }

    func testJobsWaitingForInputsDoNotHideRunnableOnes() {
        let a = jobs(1)[0]
        let waiting = (0..<5000).map { dependent(on: [a], seed: 1000 + $0) }
        var spec = JobSpec(task: "later", method: .synthetic, steps: 10)
        spec.seed = 7
        let later = SubmittedJob(id: spec.id, spec: spec, device: .any)
        _ = connect("w1", cpu)
        _ = on(.submit(experiment: "e", gridJSON: "{}", jobs: [a] + waiting + [later]))
        XCTAssertEqual(assignments(connect("w2", cpu)).map(\.job), [later.id],
                       "5,000 jobs waiting for a running input stand in no one's way")
    }

    func testCancellingKeepsAnInputThatAnotherExperimentStillWaitsFor() {
        let a = jobs(1)[0]
        let d = dependent(on: [a])
        _ = on(.submit(experiment: "components", gridJSON: "{}", jobs: [a]))
        _ = on(.submit(experiment: "sums", gridJSON: "{}", jobs: [d]))
        XCTAssertEqual(on(.cancel(experiment: "components", jobs: [])).reply,
                       .cancelled(experiment: "components", count: 0))
        XCTAssertEqual(s.job(a.id)?.state, .queued)
        XCTAssertEqual(s.job(d.id)?.state, .queued)
    }

    func testARestoredSchedulerKeepsJobsWaitingForTheirInputs() {
        let a = jobs(1)[0]
        let d = dependent(on: [a])
        let ra = JobRecord(id: a.id, spec: a.spec, device: .any, seq: 1, state: .queued, created: 0)
        let rd = JobRecord(id: d.id, spec: d.spec, device: .any, seq: 0, state: .queued, created: 0)
        s = Scheduler(config: SchedulerConfig(leaseSeconds: 10), jobs: [rd, ra],
                      experiments: [ExperimentRecord(name: "e", gridJSON: "{}", submitted: 0, jobIDs: [d.id, a.id])])
        XCTAssertEqual(assignments(connect("w1", cpu)).map(\.job), [a.id])
        _ = on(.failure(worker: "w1", job: a.id, attempt: 1, reason: "boom", deterministic: true))
        XCTAssertEqual(s.job(d.id)?.state, .failed, "the restored scheduler knows who reads a's artefact")
    }

    /// A store saved between an input's failure and its reader's (a crash) is mended on the first tick.
    func testARestoredSchedulerFailsJobsWhoseInputCanNoLongerBeDone() {
        let a = jobs(1)[0]
        let d = dependent(on: [a])
        var ra = JobRecord(id: a.id, spec: a.spec, device: .any, seq: 0, state: .failed, created: 0)
        ra.error = "boom"
        let rd = JobRecord(id: d.id, spec: d.spec, device: .any, seq: 1, state: .queued, created: 0)
        s = Scheduler(config: SchedulerConfig(leaseSeconds: 10), jobs: [ra, rd],
                      experiments: [ExperimentRecord(name: "e", gridJSON: "{}", submitted: 0, jobIDs: [a.id, d.id])])
        XCTAssertEqual(s.job(d.id)?.state, .queued)
        let ds = on(.tick)
        XCTAssertTrue(ds.jobChanges.contains(.failed(job: d.id, reason: "input \(a.id) (synthetic on t) failed: boom")))
    }
}
