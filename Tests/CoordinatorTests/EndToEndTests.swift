import Engine
import Foundation
import Protocol
import XCTest
@testable import Coordinator
#if canImport(Glibc)
import Glibc
#endif

/// A child process whose output (stdout + stderr) is collected as it comes.
final class Child {
    let name: String
    let process = Process()
    private let pipe = Pipe()
    private let lock = NSLock()
    private var text = ""

    init(_ name: String, _ executable: URL, _ args: [String], env: [String: String] = [:]) throws {
        self.name = name
        process.executableURL = executable
        process.arguments = args
        var e = ProcessInfo.processInfo.environment
        e.removeValue(forKey: "INTERVENE_COORDINATOR")
        for (k, v) in env { e[k] = v }
        process.environment = e
        process.standardOutput = pipe
        process.standardError = pipe
        pipe.fileHandleForReading.readabilityHandler = { [weak self] h in
            let d = h.availableData
            if d.isEmpty { h.readabilityHandler = nil; return }
            guard let self else { return }
            self.lock.withLock { self.text += String(decoding: d, as: UTF8.self) }
        }
        try process.run()
    }

    var output: String { lock.withLock { text } }
    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }

    /// Waits (bounded) until the output matches; returns the first capture group.
    func await(_ pattern: String, timeout: Double) -> String? {
        let re = try! NSRegularExpression(pattern: pattern)
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let s = output
            if let m = re.firstMatch(in: s, range: NSRange(s.startIndex..., in: s)) {
                let r = m.numberOfRanges > 1 ? m.range(at: 1) : m.range
                return Range(r, in: s).map { String(s[$0]) }
            }
            if !process.isRunning { return nil }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return nil
    }

    /// Waits (bounded) for the exit; nil on timeout.
    func wait(timeout: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        if process.isRunning { return nil }
        Thread.sleep(forTimeInterval: 0.1)   // let the last output arrive
        return process.terminationStatus
    }

    func kill(_ sig: Int32 = SIGKILL) {
        if process.isRunning { Glibc.kill(process.processIdentifier, sig) }
    }
}

/// `coordinator serve` and `worker` processes on loopback.
final class EndToEndTests: XCTestCase {
    var dir: URL!
    var children: [Child] = []
    var coordinatorExe: URL!
    var workerExe: URL!

    static func findExecutables() -> (URL, URL)? {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        var candidates = [Bundle.main.bundleURL, Bundle.main.bundleURL.deletingLastPathComponent()]
        for b in Bundle.allBundles { candidates.append(b.bundleURL.deletingLastPathComponent()) }
        candidates.append(root.appendingPathComponent(".build/debug"))
        for d in candidates {
            let c = d.appendingPathComponent("coordinator"), w = d.appendingPathComponent("worker")
            if FileManager.default.isExecutableFile(atPath: c.path), FileManager.default.isExecutableFile(atPath: w.path) {
                return (c, w)
            }
        }
        return nil
    }

    override func setUpWithError() throws {
        guard let (c, w) = Self.findExecutables() else {
            throw XCTSkip("the `coordinator` and `worker` executables were not found next to the tests; run `swift build` first")
        }
        coordinatorExe = c
        workerExe = w
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("coord-e2e-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        for c in children { c.kill() }
        for c in children { _ = c.wait(timeout: 5) }
        if let run = testRun, run.failureCount + run.unexpectedExceptionCount > 0 {
            for c in children { print("---- \(c.name) output ----\n\(c.output.suffix(4000))") }
        }
        children = []
        try? FileManager.default.removeItem(at: dir)
    }

    @discardableResult
    func spawn(_ name: String, _ exe: URL, _ args: [String], env: [String: String] = [:]) throws -> Child {
        let c = try Child(name, exe, args, env: env)
        children.append(c)
        return c
    }

    /// Starts `coordinator serve`; returns it and its ROUTER endpoint.
    func serve(bind: String = "tcp://127.0.0.1:*", pub: String = "tcp://127.0.0.1:*", lease: Double = 2) throws -> (Child, String) {
        let c = try spawn("coordinator", coordinatorExe, ["serve", "--store", dir.appendingPathComponent("store").path,
                                                           "--bind", bind, "--pub", pub, "--lease", "\(lease)",
                                                           "--worker-timeout", "30"])
        guard let ep = c.await(#"serving (tcp://[0-9.]+:[0-9]+)"#, timeout: 20) else {
            XCTFail("coordinator did not start: \(c.output)")
            throw XCTSkip("no coordinator")
        }
        return (c, ep)
    }

    func worker(_ id: String, _ endpoint: String, stepMs: Int = 25) throws -> Child {
        try spawn("worker \(id)", workerExe, ["--connect", endpoint, "--cpu", "--id", id],
                  env: ["INTERVENE_SYNTHETIC_STEP_MS": "\(stepMs)"])
    }

    func cli(_ args: [String], timeout: Double = 30) throws -> (status: Int32?, output: String) {
        let c = try spawn("coordinator \(args.first ?? "")", coordinatorExe, args)
        let status = c.wait(timeout: timeout)
        if status == nil { c.kill() }
        return (status, c.output)
    }

    func writeGrid(_ json: String) throws -> String {
        let url = dir.appendingPathComponent("grid-\(UUID().uuidString).json")
        try json.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    static let grid = """
    {"experiment": "e2e", "model": "synthetic", "tasks": ["toy"], "methods": ["synthetic"],
     "layers": [1, 2], "lambda": 0.01, "gamma": 0.01, "seeds": [0, 1, 2],
     "train_size": 4, "test_size": 20, "solver": {"steps": 40, "lr": 0.05}}
    """

    /// Two workers run a synthetic grid; one is killed mid-job; its job is requeued and finished by
    /// the other. The store then holds every metric and Δ, and `results` prints them.
    func testGridCompletesDespiteAKilledWorker() throws {
        let (_, ep) = try serve()
        let workers = ["wa": try worker("wa", ep), "wb": try worker("wb", ep)]
        let gridPath = try writeGrid(Self.grid)
        let submit = try spawn("submit", coordinatorExe, ["submit", gridPath, "--wait", "--coordinator", ep])

        // Kill whichever worker is computing, once it is a few steps in.
        let client = try CoordinatorClient(endpoint: ep, timeoutSeconds: 5)
        var killed: String?
        let deadline = Date().addingTimeInterval(30)
        while killed == nil && Date() < deadline {
            if let st = try? client.status(), let w = st.workers.first(where: { !$0.jobID.isEmpty && $0.step >= 5 }) {
                workers[w.workerID]?.kill()
                killed = w.workerID
            } else {
                Thread.sleep(forTimeInterval: 0.05)
            }
        }
        XCTAssertNotNil(killed, "no worker was seen computing")

        XCTAssertEqual(submit.wait(timeout: 90), 0, "submit --wait: \(submit.output)")
        XCTAssertTrue(submit.output.contains("experiment e2e: 6 jobs"), submit.output)

        let (status, json) = try cli(["results", "e2e", "--format", "json", "--coordinator", ep])
        XCTAssertEqual(status, 0, json)
        let arr = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]])
        XCTAssertEqual(arr.count, 6)
        var retried = 0
        for o in arr {
            XCTAssertEqual(o["state"] as? String, "done")
            let attempts = o["attempts"] as? Int ?? 0
            if attempts > 1 { retried += 1 }
            let metrics = try XCTUnwrap(o["metrics"] as? [String: Double])
            XCTAssertNotNil(metrics["exact_match"])
            XCTAssertNotNil(metrics["final_loss"])
            let params = try XCTUnwrap(o["params"] as? [String: Any])
            XCTAssertEqual(params["method"] as? String, "synthetic")
            XCTAssertEqual(params["steps"] as? Int, 40)
            let path = try XCTUnwrap(o["artefact_path"] as? String)
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            XCTAssertEqual(URL(fileURLWithPath: path).lastPathComponent, SHA256.hex(data) + ".safetensors")
            XCTAssertEqual(o["artefact_sha256"] as? String, SHA256.hex(data))
        }
        if killed != nil { XCTAssertEqual(retried, 1, "exactly the killed worker's job ran twice") }

        // The store holds every result, step metrics for every job, and one file per Δ.
        let store = try Store(directory: dir.appendingPathComponent("store"))
        XCTAssertEqual(try store.resultCount(), 6)
        for o in arr {
            let steps = try store.stepMetrics(job: o["job_id"] as! String)
            XCTAssertFalse(steps.isEmpty, "step metrics of \(o["job_id"]!)")
        }
        store.close()

        let (s2, csv) = try cli(["results", "e2e", "--format", "csv", "--coordinator", ep])
        XCTAssertEqual(s2, 0)
        XCTAssertEqual(csv.split(separator: "\n").count, 7, csv)
        XCTAssertTrue(csv.hasPrefix("job_id,model,task,method,layer,"), csv)
        let (s3, table) = try cli(["results", "e2e", "--coordinator", ep])
        XCTAssertEqual(s3, 0)
        XCTAssertTrue(table.contains("±"), table)
        XCTAssertTrue(table.contains("3/3"), table)

        // Submitting again reuses everything.
        let again = try cli(["submit", gridPath, "--wait", "--coordinator", ep])
        XCTAssertEqual(again.status, 0)
        XCTAssertTrue(again.output.contains("queued 0 new, reused 6"), again.output)

        // A late tail sees the whole, finished state and returns.
        let tail = try cli(["tail", "e2e", "--coordinator", ep])
        XCTAssertEqual(tail.status, 0, tail.output)
        XCTAssertTrue(tail.output.contains("6/6 ended (6 done)"), tail.output)
    }

    /// Real engine jobs on real workers: intervention and zero-shot on the built-in antonym task
    /// with the default model (few steps, few test pairs). Every Δ lands in the store and loads, and
    /// says it was solved at the precision the grid asked for (fp32: what runs on any CPU).
    func testRealInterventionGridRunsOnTwoWorkers() throws {
        guard (try? ModelRegistry.resolve(ModelRegistry.defaultModel)) != nil else {
            return XCTFail("the default model is needed (run cluster/setup.sh)")
        }
        let (_, ep) = try serve(lease: 30)
        try worker("real-a", ep)
        try worker("real-b", ep)
        let gridPath = try writeGrid("""
        {"experiment": "real", "tasks": ["antonym"], "methods": ["intervention", "zero-shot"],
         "layers": [3, 5], "seeds": [0, 1], "train_size": 10, "test_size": 8,
         "solver": {"steps": 5, "lr": 0.1, "precision": "fp32"}}
        """)
        let submit = try cli(["submit", gridPath, "--wait", "--coordinator", ep], timeout: 240)
        XCTAssertEqual(submit.status, 0, submit.output)
        let (status, json) = try cli(["results", "real", "--format", "json", "--coordinator", ep])
        XCTAssertEqual(status, 0, json)
        let arr = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]])
        XCTAssertEqual(arr.count, 6, "4 intervention jobs (2 layers × 2 seeds) + 2 zero-shot jobs (one per seed)")
        for o in arr {
            XCTAssertEqual(o["state"] as? String, "done", "\(o)")
            let m = try XCTUnwrap(o["metrics"] as? [String: Double])
            XCTAssertEqual(m["n_test"], 8)
            XCTAssertNotNil(m["exact_match"]); XCTAssertNotNil(m["judge_accuracy"])
            let params = try XCTUnwrap(o["params"] as? [String: Any])
            guard params["method"] as? String == "intervention" else { continue }
            XCTAssertLessThan(try XCTUnwrap(m["final_loss"]), try XCTUnwrap(m["initial_loss"]))
            let data = try Data(contentsOf: URL(fileURLWithPath: try XCTUnwrap(o["artefact_path"] as? String)))
            let (tensors, md) = try Safetensors.read(data)
            XCTAssertEqual(tensors["delta"]?.shape, [576])
            XCTAssertEqual(md["layer"], "\(params["layer"] as? Int ?? -1)")
            XCTAssertEqual(md["task"], "antonym")
            XCTAssertEqual(md["model_sha256"], ModelRegistry.known[0].sha256)
            XCTAssertEqual(params["precision"] as? String, "fp32")
            XCTAssertEqual(md["precision"], "fp32", "the worker's default is int8: only the job can have asked for fp32")
        }
    }

    /// A job that fails deterministically is failed at once with its reason; one that crashes its
    /// worker every time is failed after the cap; `submit --wait` exits non-zero.
    func testFailuresAndCrashesAreReported() throws {
        let (_, ep) = try serve()
        let gridPath = try writeGrid("""
        {"experiment": "bad", "model": "synthetic", "tasks": "toy", "methods": ["synthetic-fail", "synthetic-crash"],
         "layers": 1, "seeds": 0, "train_size": 2, "test_size": 5, "solver": {"steps": 10, "lr": 0.05}}
        """)
        let submit = try spawn("submit", coordinatorExe, ["submit", gridPath, "--wait", "--coordinator", ep])
        // A supervisor that restarts the crashing worker (same name), like docker's restart policy.
        var starts = 0
        var current: Child?
        let deadline = Date().addingTimeInterval(60)
        while submit.isRunning && Date() < deadline {
            if current == nil || !current!.isRunning {
                if starts >= 5 { break }
                current = try worker("crashy", ep, stepMs: 5)
                starts += 1
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
        let status = submit.wait(timeout: 30)
        XCTAssertNotNil(status)
        XCTAssertNotEqual(status, 0, "submit --wait must fail when jobs failed")
        XCTAssertTrue((3...4).contains(starts), "three attempts, three crashes (and maybe a fourth start that reveals the last loss): \(starts)")

        let client = try CoordinatorClient(endpoint: ep, timeoutSeconds: 5)
        let jobs = try client.query(experiment: "bad").jobs
        let fail = try XCTUnwrap(jobs.first { $0.params.method == "synthetic-fail" })
        XCTAssertEqual(fail.state, "failed")
        XCTAssertEqual(fail.attempt, 1)
        XCTAssertTrue(fail.error.contains("deliberate failure"), fail.error)
        let crash = try XCTUnwrap(jobs.first { $0.params.method == "synthetic-crash" })
        XCTAssertEqual(crash.state, "failed")
        XCTAssertEqual(crash.attempt, 3)
        XCTAssertEqual(crash.error, "lost 3 times (last worker crashy)")
    }

    /// The coordinator is killed while a job runs and restarted on the same store and port: the
    /// finished job is not run again, the running one is finished by its worker, nothing is lost.
    func testCoordinatorRestartResumes() throws {
        // A fixed port, so the worker can find the restarted coordinator.
        let probe = try ZSocket(try ZContext(), .router)
        try probe.bind("tcp://127.0.0.1:*")
        let port = probe.lastEndpoint.split(separator: ":").last.map(String.init)!
        let probe2 = try ZSocket(try ZContext(), .pub)
        try probe2.bind("tcp://127.0.0.1:*")
        let pubPort = probe2.lastEndpoint.split(separator: ":").last.map(String.init)!
        probe.close(); probe2.close()
        let bind = "tcp://127.0.0.1:\(port)", pub = "tcp://127.0.0.1:\(pubPort)"

        let (coord, ep) = try serve(bind: bind, pub: pub, lease: 6)
        _ = try worker("solo", ep, stepMs: 40)
        let gridPath = try writeGrid("""
        {"experiment": "restart", "model": "synthetic", "tasks": "toy", "methods": "synthetic", "layers": 1,
         "seeds": [0, 1], "train_size": 2, "test_size": 5, "solver": {"steps": 50, "lr": 0.05}}
        """)
        XCTAssertEqual(try cli(["submit", gridPath, "--coordinator", ep]).status, 0)
        let client = try CoordinatorClient(endpoint: ep, timeoutSeconds: 5)
        // Wait until the first job is done and the second has started.
        let deadline = Date().addingTimeInterval(30)
        var ready = false
        while !ready && Date() < deadline {
            if let jobs = try? client.query(experiment: "restart").jobs {
                ready = jobs.contains { $0.state == "done" } && jobs.contains { $0.state == "running" }
            }
            if !ready { Thread.sleep(forTimeInterval: 0.05) }
        }
        XCTAssertTrue(ready)
        coord.kill(SIGKILL)
        _ = coord.wait(timeout: 5)
        client.close()

        let (_, ep2) = try serve(bind: bind, pub: pub, lease: 6)
        XCTAssertEqual(ep2, ep)
        let client2 = try CoordinatorClient(endpoint: ep2, timeoutSeconds: 5)
        var jobs: [Intervene_V1_JobRecord] = []
        let deadline2 = Date().addingTimeInterval(40)
        while Date() < deadline2 {
            jobs = (try? client2.query(experiment: "restart").jobs) ?? []
            if jobs.count == 2 && jobs.allSatisfy({ $0.state == "done" }) { break }
            Thread.sleep(forTimeInterval: 0.1)
        }
        XCTAssertEqual(jobs.map(\.state), ["done", "done"])
        XCTAssertEqual(jobs.map(\.attempt), [1, 1], "neither job ran again: the live worker's result was kept")
        let store = try Store(directory: dir.appendingPathComponent("store"))
        XCTAssertEqual(try store.resultCount(), 2)
        store.close()
    }
}
