import Engine
import Foundation
import Protocol
import XCTest
@testable import Coordinator

/// The coordinator's socket shell in this process, with hand-driven DEALER peers.
final class EndToEndInProcessTests: XCTestCase {
    var dir: URL!
    var server: CoordinatorServer?
    let ctx = try! ZContext()
    var sockets: [ZSocket] = []

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("coord-inproc-\(UUID().uuidString)")
    }

    override func tearDownWithError() throws {
        sockets.forEach { $0.close() }
        server?.stop()
        try? FileManager.default.removeItem(at: dir)
    }

    func startServer(maxMessageBytes: Int = 64 << 20, lease: Double = 5) throws -> CoordinatorServer {
        let s = try CoordinatorServer(options: .init(
            storeDirectory: dir, bind: "tcp://127.0.0.1:*", pub: "tcp://127.0.0.1:*",
            scheduler: SchedulerConfig(leaseSeconds: lease), maxMessageBytes: maxMessageBytes, tickMs: 50))
        try s.start()
        server = s
        return s
    }

    func dealer(_ endpoint: String) throws -> ZSocket {
        var o = ZSocketOptions()
        o.lingerMs = 0
        let s = try ZSocket(ctx, .dealer, options: o)
        try s.connect(endpoint)
        sockets.append(s)
        return s
    }

    func receiveBody(_ s: ZSocket, timeout: Int = 5000) throws -> EnvelopeBody? {
        guard let frames = try s.receive(timeoutMs: timeout), let last = frames.last else { return nil }
        return try Wire.decodeBody(last)
    }

    /// A hand-driven worker that says Hello and Ready, and the job it is then given (nil if none
    /// comes within the receive timeout).
    func workerWithAJob(_ endpoint: String, id: String) throws -> (ZSocket, Intervene_V1_JobAssignment?) {
        let w = try dealer(endpoint)
        var hello = Intervene_V1_Hello(); hello.workerID = id; hello.device = "cpu"
        try w.send(Wire.encode(.hello(hello)), timeoutMs: 1000)
        try w.send(Wire.encode(.ready(Intervene_V1_Ready())), timeoutMs: 1000)
        var job: Intervene_V1_JobAssignment?
        while job == nil, let b = try receiveBody(w) { if case .job(let a) = b { job = a } }
        return (w, job)
    }

    /// Garbage, wrong shapes, another protocol version and oversized messages are dropped and
    /// counted; the coordinator keeps answering.
    func testMalformedAndOversizedFramesAreDroppedAndCounted() throws {
        let srv = try startServer(maxMessageBytes: 4096)
        let peer = try dealer(srv.endpoint)
        try peer.send(Data([0xFF, 0x00, 0x13, 0x37]), timeoutMs: 1000)                 // not protobuf
        if case .error(let e)? = try receiveBody(peer) { XCTAssertEqual(e.code, .malformed) } else { XCTFail("no error reply") }
        try peer.send([Data("a".utf8), Data("b".utf8), Data("c".utf8)], timeoutMs: 1000)   // wrong frame count
        if case .error(let e)? = try receiveBody(peer) { XCTAssertEqual(e.code, .malformed) } else { XCTFail("no error reply") }
        var env = Wire.envelope(.statusRequest(Intervene_V1_StatusRequest()))
        env.protocolVersion = 99
        try peer.send(Wire.encode(env), timeoutMs: 1000)
        if case .error(let e)? = try receiveBody(peer) { XCTAssertEqual(e.code, .versionMismatch) } else { XCTFail("no error reply") }
        var big = Intervene_V1_Submit()
        big.gridJson = String(repeating: " ", count: 6000)
        try peer.send(Wire.encode(.submit(big)), timeoutMs: 1000)
        if case .error(let e)? = try receiveBody(peer) { XCTAssertEqual(e.code, .tooLarge) } else { XCTFail("no error reply") }
        // A worker message from a peer that never said Hello.
        try peer.send(Wire.encode(.ready(Intervene_V1_Ready())), timeoutMs: 1000)
        if case .error(let e)? = try receiveBody(peer) { XCTAssertEqual(e.code, .unknownPeer) } else { XCTFail("no error reply") }

        let client = try CoordinatorClient(endpoint: srv.endpoint, timeoutSeconds: 5)
        let st = try client.status()
        XCTAssertEqual(st.counters["malformed"], 2)
        XCTAssertEqual(st.counters["version_mismatch"], 1)
        XCTAssertEqual(st.counters["dropped_oversized"], 1)
        XCTAssertEqual(st.counters["unknown_peer"], 1)
    }

    /// A client submits; a hand-driven worker runs the jobs; a follower that started late sees the
    /// snapshot and then every update, in sequence.
    func testSubmitRunAndFollow() throws {
        let srv = try startServer()
        let client = try CoordinatorClient(endpoint: srv.endpoint, timeoutSeconds: 5)
        let grid = #"{"experiment": "inproc", "model": "m", "tasks": "t", "methods": "synthetic", "layers": [1, 2], "seeds": [0, 1], "solver": {"steps": 3, "lr": 0.1}}"#
        let bad = try client.submit(gridJSON: #"{"experiment": "x", "tasks": "t", "layers": ["a"]}"#)
        XCTAssertFalse(bad.ok)
        XCTAssertEqual(bad.errors.map { "\($0.path): \($0.message)" }, [#"layers[0]: expected a non-negative integer, got "a""#])
        let r = try client.submit(gridJSON: grid)
        XCTAssertTrue(r.ok)
        XCTAssertEqual(r.jobsTotal, 4)
        XCTAssertEqual(r.jobsNew, 4)
        XCTAssertFalse(r.pubEndpoint.isEmpty)

        let follower = try ExperimentFollower(client: client, experiment: "inproc")
        _ = try follower.start()
        XCTAssertEqual(follower.experiments["inproc"]?.order.count, 4)
        XCTAssertTrue(follower.experiments["inproc"]!.views.allSatisfy { $0.state == .queued })
        XCTAssertEqual(follower.experiments["inproc"]!.views.first?.pendingReason, "no worker connected")

        // The worker.
        let w = try dealer(srv.endpoint)
        var hello = Intervene_V1_Hello()
        hello.workerID = "hand"; hello.device = "cpu"; hello.methods = ["synthetic"]
        try w.send(Wire.encode(.hello(hello)), timeoutMs: 1000)
        guard case .ack(let ha)? = try receiveBody(w), ha.kind == .hello else { return XCTFail("no hello ack") }
        let payload = Data("delta".utf8)
        var done = 0
        try w.send(Wire.encode(.ready(Intervene_V1_Ready())), timeoutMs: 1000)
        while done < 4 {
            guard let body = try receiveBody(w) else { return XCTFail("worker starved after \(done) jobs") }
            guard case .job(let a) = body else { continue }
            XCTAssertEqual(a.experiment, "inproc")
            XCTAssertEqual(a.params.method, "synthetic")
            var ack = Intervene_V1_Ack(); ack.kind = .job; ack.jobID = a.jobID; ack.attempt = a.attempt; ack.accepted = true
            try w.send(Wire.encode(.ack(ack)), timeoutMs: 1000)
            var m = Intervene_V1_StepMetrics(); m.jobID = a.jobID; m.attempt = a.attempt; m.step = 3; m.total = 3; m.values = ["loss": 0.5]
            try w.send(Wire.encode(.stepMetrics(m)), timeoutMs: 1000)
            var res = Intervene_V1_Result()
            res.jobID = a.jobID; res.attempt = a.attempt; res.workerID = "hand"
            res.metrics = ["exact_match": Double(a.params.seed), "final_loss": 0.25]
            res.artefact = payload; res.artefactSha256 = SHA256.hex(payload)
            try w.send(Wire.encode(.result(res)), timeoutMs: 1000)
            // Resend (as a worker does when an ack is slow): acknowledged, not counted twice.
            try w.send(Wire.encode(.result(res)), timeoutMs: 1000)
            var acks = 0
            while acks < 2 {
                guard let b = try receiveBody(w) else { return XCTFail("no result ack") }
                if case .ack(let k) = b, k.kind == .result, k.jobID == a.jobID { acks += 1 }
            }
            done += 1
            try w.send(Wire.encode(.ready(Intervene_V1_Ready())), timeoutMs: 1000)
        }

        let deadline = Date().addingTimeInterval(10)
        while !follower.finished && Date() < deadline { _ = try follower.poll(timeout: 0.1) }
        XCTAssertTrue(follower.finished)
        XCTAssertTrue(follower.allDone)
        XCTAssertEqual(follower.gaps, 0)
        let views = follower.experiments["inproc"]!.views
        XCTAssertEqual(Set(views.map { $0.metrics["exact_match"] ?? -1 }), [0, 1])
        let rows = Render.configurations(views)
        XCTAssertEqual(rows.count, 2, "one configuration per layer")
        XCTAssertEqual(rows[0].stats["exact_match"]?.mean, 0.5)
        XCTAssertEqual(rows[0].stats["exact_match"]?.n, 2)

        let q = try client.query(experiment: "inproc")
        XCTAssertEqual(q.text, "", "the coordinator renders nothing: clients do")
        let json = Render.results(try q.jobs.map(JobView.init), format: "json")
        let arr = try JSONSerialization.jsonObject(with: Data(json.utf8)) as! [[String: Any]]
        XCTAssertEqual(arr.count, 4)
        for o in arr {
            XCTAssertEqual(o["state"] as? String, "done")
            XCTAssertEqual(o["attempts"] as? Int, 1)
            let path = o["artefact_path"] as! String
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), payload)
            XCTAssertEqual((o["params"] as? [String: Any])?["method"] as? String, "synthetic")
        }
        let st = try client.status()
        XCTAssertEqual(st.counters["duplicate_results"], 4)
        XCTAssertEqual(st.experiments.first?.done, 4)
    }

    /// An add job is assigned after its inputs, with their artefacts as the store holds them; an
    /// input whose artefact has gone from the store runs again before the job that reads it.
    func testInputArtefactsTravelWithTheJobThatReadsThem() throws {
        let srv = try startServer()
        let client = try CoordinatorClient(endpoint: srv.endpoint, timeoutSeconds: 5)
        let grid = #"{"experiment": "compose", "model": "m", "tasks": ["a_b", "c_d"], "methods": "add", "seeds": 0, "#
            + #""solver": {"steps": 3}}"#
        let r = try client.submit(gridJSON: grid)
        XCTAssertTrue(r.ok, "\(r.errors)")
        XCTAssertEqual(r.jobsTotal, 6, "two add jobs and the four Δs they sum")
        let w = try dealer(srv.endpoint)
        var hello = Intervene_V1_Hello()
        hello.workerID = "hand"; hello.device = "cpu"; hello.methods = ["engine"]
        try w.send(Wire.encode(.hello(hello)), timeoutMs: 1000)
        try w.send(Wire.encode(.ready(Intervene_V1_Ready())), timeoutMs: 1000)
        var sent: [String: Data] = [:]   // job id → the artefact its result carried
        var order: [String] = []
        var addInputs: [String: [Intervene_V1_InputArtefact]] = [:]
        while order.count < 7 {
            guard let body = try receiveBody(w) else { return XCTFail("starved after \(order) ") }
            guard case .job(let a) = body else { continue }
            order.append(a.params.task)
            if a.params.method == "add" {
                addInputs[a.params.task] = a.inputs
                XCTAssertEqual(a.params.inputs, a.inputs.map(\.jobID))
            }
            if a.params.task == "d" {
                // c's artefact disappears from the store before c_d's add job is handed out
                let c = try XCTUnwrap(try client.query(experiment: "compose").jobs.first { $0.params.task == "c" })
                try FileManager.default.removeItem(atPath: c.artefactPath)
            }
            if a.params.task == "c" && order.filter({ $0 == "c" }).count == 2 {
                XCTAssertEqual(a.attempt, 2, "c runs again")
            }
            var res = Intervene_V1_Result()
            res.jobID = a.jobID; res.attempt = a.attempt; res.workerID = "hand"
            res.metrics = ["exact_match": 0.5]
            if a.params.method == "intervention" {
                res.artefact = Data("delta of \(a.params.task)".utf8)
                res.artefactSha256 = SHA256.hex(res.artefact)
                sent[a.jobID] = res.artefact
            }
            try w.send(Wire.encode(.result(res)), timeoutMs: 1000)
            try w.send(Wire.encode(.ready(Intervene_V1_Ready())), timeoutMs: 1000)
        }
        XCTAssertEqual(order, ["a", "b", "a_b", "c", "d", "c", "c_d"], "each add job after its inputs; c again")
        for (task, parts) in [("a_b", ["a", "b"]), ("c_d", ["c", "d"])] {
            let ins = try XCTUnwrap(addInputs[task])
            XCTAssertEqual(ins.map { String(decoding: $0.artefact, as: UTF8.self) }, parts.map { "delta of \($0)" })
            XCTAssertEqual(ins.map(\.artefactSha256), ins.map { SHA256.hex($0.artefact) })
            XCTAssertEqual(ins.map { sent[$0.jobID] }, ins.map(\.artefact))
        }
        let views = try client.query(experiment: "compose").jobs.map(JobView.init)
        let c = try XCTUnwrap(views.first { $0.spec.task == "c" })
        XCTAssertEqual([c.state.rawValue, "\(c.attempt)"], ["done", "2"])
    }

    /// A corrupt artefact is refused (no ack): the job stays running until a good copy arrives.
    func testArtefactWithWrongHashIsRefused() throws {
        let srv = try startServer()
        let client = try CoordinatorClient(endpoint: srv.endpoint, timeoutSeconds: 5)
        XCTAssertTrue(try client.submit(gridJSON: #"{"experiment": "h", "tasks": "t", "methods": "synthetic"}"#).ok)
        let (w, job) = try workerWithAJob(srv.endpoint, id: "h1")
        guard let a = job else { return XCTFail("no job") }
        var res = Intervene_V1_Result()
        res.jobID = a.jobID; res.attempt = a.attempt
        res.artefact = Data("good".utf8)
        res.artefactSha256 = SHA256.hex(Data("other".utf8))
        try w.send(Wire.encode(.result(res)), timeoutMs: 1000)
        var refused = false
        while let b = try receiveBody(w, timeout: 2000) {
            if case .error(let e) = b { refused = e.message.contains("sha256"); break }
            if case .ack(let k) = b, k.kind == .result { XCTFail("a corrupt result was acknowledged") }
        }
        XCTAssertTrue(refused)
        XCTAssertEqual(try client.query(experiment: "h").jobs.first?.state, "running")
        res.artefactSha256 = SHA256.hex(Data("good".utf8))
        try w.send(Wire.encode(.result(res)), timeoutMs: 1000)
        var acked = false
        while let b = try receiveBody(w, timeout: 2000) {
            if case .ack(let k) = b, k.kind == .result { acked = true; break }
        }
        XCTAssertTrue(acked)
        XCTAssertEqual(try client.query(experiment: "h").jobs.first?.state, "done")
        XCTAssertEqual(srv.counterSnapshot["artefact_rejected"], 1)
    }

    /// A store that cannot write (a full disk): results are not acknowledged (the worker keeps
    /// and resends them), new submissions are refused with a clear error, and once writes succeed
    /// again the held result is stored and acked, and survives a restart.
    func testAFullDiskLosesNothingAndRefusesNewWork() throws {
        var srv = try startServer()
        let client = try CoordinatorClient(endpoint: srv.endpoint, timeoutSeconds: 5)
        XCTAssertTrue(try client.submit(gridJSON: #"{"experiment": "d", "tasks": "t", "methods": "synthetic"}"#).ok)
        let (w, job) = try workerWithAJob(srv.endpoint, id: "d1")
        guard let a = job else { return XCTFail("no job") }
        srv.injectStoreFailure("database or disk is full")
        var res = Intervene_V1_Result()
        res.jobID = a.jobID; res.attempt = a.attempt; res.workerID = "d1"; res.metrics = ["exact_match": 0.5]
        try w.send(Wire.encode(.result(res)), timeoutMs: 1000)
        while let b = try receiveBody(w, timeout: 1500) {
            if case .ack(let k) = b, k.kind == .result { XCTFail("a result not on disk was acknowledged") }
        }
        let refused = try client.submit(gridJSON: #"{"experiment": "e", "tasks": "u", "methods": "synthetic"}"#)
        XCTAssertFalse(refused.ok)
        XCTAssertTrue(refused.errors.first?.message.contains("cannot write its store") ?? false, "\(refused.errors)")
        XCTAssertGreaterThan(srv.counterSnapshot["store_errors"] ?? 0, 0)

        srv.injectStoreFailure(nil)
        try w.send(Wire.encode(.result(res)), timeoutMs: 1000)   // the worker's resend
        var acked = false
        while let b = try receiveBody(w, timeout: 3000) {
            if case .ack(let k) = b, k.kind == .result { acked = true; break }
        }
        XCTAssertTrue(acked, "acked once the store writes again")
        XCTAssertTrue(try client.submit(gridJSON: #"{"experiment": "e", "tasks": "u", "methods": "synthetic"}"#).ok)
        client.close()
        srv.stop()
        srv = try startServer()
        let after = try CoordinatorClient(endpoint: srv.endpoint, timeoutSeconds: 5)
        defer { after.close() }
        let j = try XCTUnwrap(try after.query(experiment: "d").jobs.first)
        XCTAssertEqual(j.state, "done")
        XCTAssertEqual(j.metrics["exact_match"], 0.5)
    }

    /// The issue's drill: a peer that never said Hello posts results (with an artefact) for a
    /// running job and a queued one; a registered worker that does not hold the job tries too.
    /// Every one is refused (Ack, accepted = false), counted, and stores nothing; the holder's own
    /// result is then taken.
    func testForgedResultsAreRefusedAndCounted() throws {
        let srv = try startServer()
        let client = try CoordinatorClient(endpoint: srv.endpoint, timeoutSeconds: 5)
        let grid = #"{"experiment": "f", "tasks": "t", "methods": "synthetic", "seeds": [0, 1]}"#
        XCTAssertTrue(try client.submit(gridJSON: grid).ok)
        let (holder, job) = try workerWithAJob(srv.endpoint, id: "holder")
        guard let held = job else { return XCTFail("no job") }
        let queued = try XCTUnwrap(try client.query(experiment: "f").jobs.first { $0.state == "queued" }).jobID

        func forge(_ s: ZSocket, job: String, claiming id: String) throws -> Intervene_V1_Ack? {
            var res = Intervene_V1_Result()
            res.jobID = job; res.attempt = 1; res.workerID = id
            res.metrics = ["exact_match": 0.999]
            res.artefact = Data("forged".utf8); res.artefactSha256 = SHA256.hex(Data("forged".utf8))
            try s.send(Wire.encode(.result(res)), timeoutMs: 1000)
            while let b = try receiveBody(s, timeout: 2000) { if case .ack(let k) = b, k.kind == .result { return k } }
            return nil
        }
        let stranger = try dealer(srv.endpoint)
        XCTAssertEqual(try forge(stranger, job: held.jobID, claiming: "")?.accepted, false)
        XCTAssertEqual(try forge(stranger, job: queued, claiming: "intruder")?.accepted, false)
        let other = try dealer(srv.endpoint)
        var hello2 = Intervene_V1_Hello(); hello2.workerID = "other"; hello2.device = "cpu"
        try other.send(Wire.encode(.hello(hello2)), timeoutMs: 1000)
        XCTAssertEqual(try forge(other, job: held.jobID, claiming: "other")?.accepted, false)

        let jobs = try client.query(experiment: "f").jobs
        XCTAssertEqual(jobs.first { $0.jobID == held.jobID }?.state, "running")
        XCTAssertEqual(jobs.first { $0.jobID == queued }?.state, "queued")
        XCTAssertTrue(jobs.allSatisfy { $0.metrics["exact_match"] == nil }, "no forged metric was stored")
        XCTAssertEqual(try client.status().counters["refused_results"], 3)
        let artefacts = dir.appendingPathComponent("artefacts")
        XCTAssertEqual((try? FileManager.default.contentsOfDirectory(atPath: artefacts.path))?.count ?? 0, 0,
                       "a refused result stores no artefact")

        var res = Intervene_V1_Result()
        res.jobID = held.jobID; res.attempt = held.attempt; res.metrics = ["exact_match": 0.5]
        try holder.send(Wire.encode(.result(res)), timeoutMs: 1000)
        var accepted: Bool?
        while accepted == nil, let b = try receiveBody(holder, timeout: 2000) {
            if case .ack(let k) = b, k.kind == .result { accepted = k.accepted }
        }
        XCTAssertEqual(accepted, true)
        XCTAssertEqual(try client.query(experiment: "f").jobs.first { $0.jobID == held.jobID }?.state, "done")
    }

    func testCancelAndStatus() throws {
        let srv = try startServer()
        let client = try CoordinatorClient(endpoint: srv.endpoint, timeoutSeconds: 5)
        XCTAssertTrue(try client.submit(gridJSON: #"{"experiment": "c", "tasks": "t", "methods": "intervention", "seeds": [0, 1, 2], "device": "gpu"}"#).ok)
        var st = try client.status(experiment: "c")
        XCTAssertEqual(st.experiments.first?.queued, 3)
        XCTAssertEqual(st.experiments.first?.pending, ["no worker connected": 3])
        XCTAssertEqual(try client.cancel(experiment: "c").cancelled, 3)
        st = try client.status(experiment: "c")
        XCTAssertEqual(st.experiments.first?.cancelled, 3)
        XCTAssertThrowsError(try client.cancel(experiment: "nope"))
        XCTAssertThrowsError(try client.query(experiment: "nope")) { e in
            XCTAssertTrue("\(e)".contains("no experiment named \"nope\""), "\(e)")
        }
        // Resubmitting queues the cancelled jobs again; a dry run counts without queueing.
        let dry = try client.submit(gridJSON: #"{"experiment": "c2", "tasks": "t", "seeds": [0, 1, 2, 3], "device": "gpu"}"#, dryRun: true)
        XCTAssertEqual([dry.jobsNew, dry.jobsReused], [1, 3])
        XCTAssertEqual(try client.status().experiments.map(\.experiment), ["c"])
        let again = try client.submit(gridJSON: #"{"experiment": "c", "tasks": "t", "methods": "intervention", "seeds": [0, 1, 2], "device": "gpu"}"#)
        XCTAssertEqual(again.jobsRequeued, 3)
    }

    func testBenchRunsSmall() throws {
        let text = try BenchRun(workers: 4, jobs: 40, timeout: 60).run()
        let o = try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
        XCTAssertEqual(o["jobs_done"] as? Int, 40)
        XCTAssertEqual(o["workers"] as? Int, 4)
        XCTAssertGreaterThan(o["jobs_per_second"] as? Double ?? 0, 0)
        XCTAssertEqual((o["result_to_pub_ms"] as? [String: Any])?["n"] as? Int, 40)
    }
}
