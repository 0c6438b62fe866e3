import Engine
import Protocol
import XCTest
@testable import Coordinator

final class StoreTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("store-tests-\(UUID().uuidString)")
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    func spec(_ seed: Int, method: JobMethod = .synthetic) -> JobSpec {
        JobSpec(model: "m", task: "t", method: method, layer: 2, seed: seed, steps: 5)
    }

    func testSchemaIsVersionedAndInWALMode() throws {
        let store = try Store(directory: dir)
        XCTAssertEqual(store.journalMode, "wal")
        XCTAssertEqual(store.db.userVersion, Store.schemaVersion)
        store.close()
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.appendingPathComponent("store.sqlite").path))
        // Reopening does not migrate again; a newer store is refused.
        let again = try Store(directory: dir)
        try again.db.setUserVersion(Store.schemaVersion + 1)
        again.close()
        XCTAssertThrowsError(try Store(directory: dir)) { e in
            XCTAssertEqual(e as? Store.StoreError, .newerSchema(found: Store.schemaVersion + 1, supported: Store.schemaVersion))
        }
    }

    func testRoundTripOfJobsExperimentsMetricsAndResults() throws {
        let store = try Store(directory: dir)
        let s = spec(1)
        var j = JobRecord(id: s.id, spec: s, device: .gpu, seq: 7, state: .running, attempt: 2, losses: 1,
                          leaseExpiry: 123.5, worker: "w1", error: nil, created: 100, started: 110)
        try store.saveJobs([j])
        try store.saveExperiment(ExperimentRecord(name: "e", gridJSON: "{\"a\":1}", submitted: 99, jobIDs: [j.id]))
        try store.saveStepMetrics(job: j.id, attempt: 2, step: 1, values: ["loss": 2.5, "nonzero": 3])
        try store.saveStepMetrics(job: j.id, attempt: 2, step: 2, values: ["loss": 1.5])
        j.state = .done
        j.metrics = ["exact_match": 0.75, "final_loss": 0.1]
        j.artefactSHA256 = "abc"
        j.artefactPath = "artefacts/abc.safetensors"
        j.ended = 130
        try store.saveJobs([j])
        // A second save of a done job (a duplicate result) leaves the first result row.
        var dup = j
        dup.metrics = ["exact_match": 0]
        try store.saveJobs([dup])
        store.close()

        let reopened = try Store(directory: dir)
        let jobs = try reopened.loadJobs()
        XCTAssertEqual(jobs.count, 1)
        XCTAssertEqual(jobs[0].spec, s)
        XCTAssertEqual(jobs[0].device, .gpu)
        XCTAssertEqual(jobs[0].state, .done)
        XCTAssertEqual(jobs[0].attempt, 2)
        XCTAssertEqual(jobs[0].metrics, ["exact_match": 0.75, "final_loss": 0.1])
        XCTAssertEqual(jobs[0].artefactPath, "artefacts/abc.safetensors")
        XCTAssertEqual(try reopened.resultCount(), 1)
        let exps = try reopened.loadExperiments()
        XCTAssertEqual(exps, [ExperimentRecord(name: "e", gridJSON: "{\"a\":1}", submitted: 99, jobIDs: [j.id])])
        let steps = try reopened.stepMetrics(job: j.id)
        XCTAssertEqual(steps.map(\.name), ["loss", "nonzero", "loss"])
        XCTAssertEqual(steps.map(\.value), [2.5, 3, 1.5])
    }

    func testArtefactsAreVerifiedAndWrittenAtomically() throws {
        let store = try Store(directory: dir)
        let data = Data("pretend safetensors".utf8)
        let sha = SHA256.hex(data)
        let stored = try store.putArtefact(data, claimedSHA256: sha.uppercased())
        XCTAssertEqual(stored.sha256, sha)
        XCTAssertEqual(stored.relativePath, "artefacts/\(sha).safetensors")
        XCTAssertEqual(try Data(contentsOf: store.artefactURL(relativePath: stored.relativePath)), data)

        // A wrong hash is refused and nothing is written.
        var corrupt = data
        corrupt[0] ^= 0xFF
        XCTAssertThrowsError(try store.putArtefact(corrupt, claimedSHA256: sha)) { e in
            guard case .artefactHashMismatch(let claimed, let actual)? = e as? Store.StoreError else {
                return XCTFail("\(e)")
            }
            XCTAssertEqual(claimed, sha)
            XCTAssertEqual(actual, SHA256.hex(corrupt))
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: store.artefactsDirectory.path)
        XCTAssertEqual(files, ["\(sha).safetensors"], "no temporary files left, no corrupt file")
    }

    /// A coordinator restarted on the same store: finished jobs stay finished, nothing is lost,
    /// running jobs whose lease has expired go back to the queue (attempt + 1), live ones stay.
    func testRestartResumes() throws {
        let cfg = SchedulerConfig(leaseSeconds: 10)
        var now = 1000.0
        do {
            let store = try Store(directory: dir)
            var sched = Scheduler(config: cfg)
            let jobs = (0..<4).map { SubmittedJob(id: spec($0).id, spec: spec($0), device: .any) }
            var changed = Set<String>()
            func apply(_ ds: Effects) throws {
                for c in ds.jobChanges { changed.insert(c.job) }
                try store.saveJobs(changed.sorted().compactMap { sched.job($0) })
                for e in ds.experiments { try store.saveExperiment(sched.experiments[e]!) }
            }
            try apply(sched.handle(.submit(experiment: "e", gridJSON: "{}", jobs: jobs), now: now))
            for w in ["a", "b", "c"] {
                _ = sched.handle(.workerHello(worker: w, capabilities: WorkerCapabilities()), now: now)
                try apply(sched.handle(.workerReady(worker: w), now: now))
            }
            // a finishes; b keeps heartbeating until just before the crash; c goes silent.
            try apply(sched.handle(.result(worker: "a", job: jobs[0].id, attempt: 1, metrics: ["exact_match": 1],
                                           artefactSHA256: nil, artefactPath: nil), now: now))
            now += 9
            try apply(sched.handle(.heartbeat(worker: "b", job: jobs[1].id, attempt: 1, step: 1, total: 5), now: now))
            try store.saveJobs(jobs.compactMap { sched.job($0.id) })   // lease renewals are written in batches
            store.close()
        }
        // The coordinator is gone for 5 s: c's lease (1010) has expired, b's (1019) has not.
        now += 5
        let store = try Store(directory: dir)
        var sched = Scheduler(config: cfg, jobs: try store.loadJobs(), experiments: try store.loadExperiments())
        let ids = sched.experiments["e"]!.jobIDs
        XCTAssertEqual(ids.count, 4)
        XCTAssertEqual(sched.job(ids[0])?.state, .done)
        XCTAssertEqual(sched.job(ids[0])?.metrics, ["exact_match": 1])
        let ds = sched.handle(.tick, now: now)
        XCTAssertTrue(ds.jobChanges.contains(.requeued(job: ids[2], attempt: 2, reason: "lease expired on worker c")))
        XCTAssertEqual(sched.job(ids[1])?.state, .running, "b's lease is still valid")
        XCTAssertEqual(sched.job(ids[2])?.state, .queued)
        XCTAssertEqual(sched.job(ids[3])?.state, .queued)
        // A new worker takes the requeued job first (submission order), then the never-started one.
        _ = sched.handle(.workerHello(worker: "d", capabilities: WorkerCapabilities()), now: now)
        let a = sched.handle(.workerReady(worker: "d"), now: now).toWorkers.compactMap { d -> String? in
            if case let .assign(_, j, _, _, _, _) = d { return j }; return nil
        }
        XCTAssertEqual(a, [ids[2]])
        // Resubmitting the same grid reuses all four jobs; the finished one is not run again.
        let re = sched.handle(.submit(experiment: "e", gridJSON: "{}", jobs: (0..<4).map {
            SubmittedJob(id: spec($0).id, spec: spec($0), device: .any)
        }), now: now)
        XCTAssertEqual(re.reply, .submitted(experiment: "e", new: 0, reused: 4, requeued: 0, total: 4))
        XCTAssertEqual(sched.job(ids[0])?.state, .done)
    }

    func testConcurrentReaderSeesCommittedDataInWAL() throws {
        let store = try Store(directory: dir)
        let s = spec(3)
        try store.saveJobs([JobRecord(id: s.id, spec: s, device: .any, seq: 0, created: 1)])
        // A second connection (e.g. a report tool) reads while the first holds a write transaction.
        let reader = try Store(directory: dir)
        try store.db.execute("BEGIN IMMEDIATE")
        try store.db.run("UPDATE jobs SET state = 'running'")
        XCTAssertEqual(try reader.loadJobs().first?.state, .queued, "readers are not blocked and see the last commit")
        try store.db.execute("COMMIT")
        XCTAssertEqual(try reader.loadJobs().first?.state, .running)
    }
}
