import Foundation
import Protocol

/// `coordinator drill`: a fault drill on this machine. Starts a coordinator and workers (real
/// processes, synthetic jobs), submits a grid and, while it runs, SIGKILLs and restarts workers
/// under the same id, SIGKILLs the coordinator and restarts it on its store, stalls a worker
/// (SIGSTOP past its lease, then SIGCONT), and floods the coordinator with malformed and
/// wrong-version frames. Then it checks that every job finished exactly once with its artefact.
public struct FaultDrill {
    public struct Config {
        public var coordinatorBinary: String
        public var workerBinary: String
        public var jobs = 80
        public var workers = 3
        public var workerKills = 20
        public var coordinatorKills = 2
        public var stalls = 1
        public var floodFrames = 2000
        /// Seconds between faults.
        public var interval = 1.5
        public var stepMs = 15
        public var steps = 100
        public var lease = 3.0
        /// Attempts before a job fails for good. A SIGKILLed worker looks like one its job crashed,
        /// so every kill costs the job on it an attempt; at a kill every 1.5 s among 3 workers,
        /// a job retried at once meets another kill with p ≈ 1/3, so 3 attempts lose ~2 of 20.
        public var maxAttempts = 8
        public var timeout = 300.0
        public var directory: String
        public var port: Int
        public init(coordinatorBinary: String, workerBinary: String, directory: String, port: Int) {
            self.coordinatorBinary = coordinatorBinary
            self.workerBinary = workerBinary
            self.directory = directory
            self.port = port
        }
    }

    public struct Report {
        public var jobs = 0, done = 0, failed = 0, unfinished = 0, missingArtefacts = 0
        public var workerKills = 0, coordinatorKills = 0, stalls = 0, floodFrames = 0
        public var requeues = 0
        public var maxAttempts = 0
        public var duplicateResults: UInt64 = 0, refusedResults: UInt64 = 0, malformed: UInt64 = 0
        public var versionMismatch: UInt64 = 0
        /// Per coordinator restart: seconds until it answered, and until the next job finished.
        public var recoveries: [(answer: Double, progress: Double)] = []
        /// Status round trip right after the flood.
        public var statusAfterFloodMs = 0.0
        public var seconds = 0.0
        public var failures: [String] = []
        public var ok: Bool { failed == 0 && unfinished == 0 && missingArtefacts == 0 && failures.isEmpty }

        public var text: String {
            var s = """
                jobs \(jobs): done \(done), failed \(failed), unfinished \(unfinished), \
                missing artefacts \(missingArtefacts)
                faults injected: \(workerKills) worker kills (restarted under the same id), \
                \(coordinatorKills) coordinator \
                kills (restarted on the store), \(stalls) stalled worker(s), \(floodFrames) malformed frames
                requeues \(requeues) (attempts beyond the first; at most \(maxAttempts) per job), duplicate results \
                ignored \(duplicateResults), refused results \(refusedResults); counted by the coordinator: \
                \(malformed) \
                malformed, \(versionMismatch) of the wrong protocol version
                status answered \(String(format: "%.1f", statusAfterFloodMs)) ms after the flood
                """
            for (i, r) in recoveries.enumerated() {
                s +=
                    "\ncoordinator restart \(i + 1): answering after \(String(format: "%.2f", r.answer)) s, "
                    + "next job done after \(String(format: "%.2f", r.progress)) s"
            }
            s += "\nwall time \(String(format: "%.1f", seconds)) s"
            for f in failures { s += "\nFAILED: \(f)" }
            s += ok ? "\nOK: no job lost, failed or duplicated" : "\nDRILL FAILED"
            return s + "\n"
        }
    }

    public let config: Config
    public init(_ config: Config) { self.config = config }

    var endpoint: String { "tcp://127.0.0.1:\(config.port)" }

    func start(_ binary: String, _ args: [String], log: String, env: [String: String] = [:]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        var e = ProcessInfo.processInfo.environment
        for (k, v) in env { e[k] = v }
        p.environment = e
        FileManager.default.createFile(atPath: log, contents: nil)
        let h = FileHandle(forWritingAtPath: log)!
        h.seekToEndOfFile()
        p.standardOutput = h
        p.standardError = h
        try p.run()
        return p
    }

    func startCoordinator() throws -> Process {
        try start(
            config.coordinatorBinary,
            [
                "serve", "--store", config.directory + "/store", "--bind", endpoint,
                "--pub", "tcp://127.0.0.1:\(config.port + 1)", "--lease", "\(config.lease)", "--worker-timeout", "10",
                "--max-attempts", "\(config.maxAttempts)",
            ], log: config.directory + "/coordinator.log")
    }

    func startWorker(_ i: Int) throws -> Process {
        try start(
            config.workerBinary, ["--connect", endpoint, "--cpu", "--threads", "1", "--id", "drill-\(i)"],
            log: config.directory + "/worker-\(i).log", env: ["INTERVENE_SYNTHETIC_STEP_MS": "\(config.stepMs)"])
    }

    static func hardKill(_ p: Process) {
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
    }

    /// Waits until the coordinator answers status; returns the seconds it took.
    func waitForAnswer(deadline: Double) throws -> Double {
        let t0 = Date()
        while Date().timeIntervalSince(t0) < deadline {
            if let c = try? CoordinatorClient(endpoint: endpoint, timeoutSeconds: 1), (try? c.status()) != nil {
                c.close()
                return Date().timeIntervalSince(t0)
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw ClientError.remote("the coordinator did not answer within \(deadline) s")
    }

    func doneCount() -> Int? {
        guard let c = try? CoordinatorClient(endpoint: endpoint, timeoutSeconds: 2) else { return nil }
        defer { c.close() }
        return (try? c.query(experiment: "drill"))?.jobs.filter { $0.state == "done" }.count
    }

    /// Sends `n` bad frames from a DEALER: random bytes, truncated envelopes and a wrong protocol version.
    func flood(_ n: Int) throws {
        let ctx = try ZContext()
        var o = ZSocketOptions()
        o.lingerMs = 0
        let s = try ZSocket(ctx, .dealer, options: o)
        try s.connect(endpoint)
        var rng = SystemRandomNumberGenerator()
        var wrong = Wire.envelope(.statusRequest(Intervene_V1_StatusRequest()))
        wrong.protocolVersion = PROTOCOL_VERSION + 100
        let wrongVersion = Wire.encode(wrong)
        var hello = Intervene_V1_Hello()
        hello.workerID = "flood"
        let valid = Wire.encode(.hello(hello))
        for i in 0..<n {
            let frame: Data
            switch i % 3 {
            case 0: frame = Data((0..<(1 + Int(rng.next() % 200))).map { _ in UInt8.random(in: 0...255, using: &rng) })
            case 1: frame = valid.prefix(max(1, valid.count / 2))
            default: frame = wrongVersion
            }
            try s.send(frame, timeoutMs: 1000)
        }
        Thread.sleep(forTimeInterval: 0.2)
        s.close()
    }

    public func run(progress: (String) -> Void) throws -> Report {
        var r = Report()
        let c0 = config
        try FileManager.default.createDirectory(atPath: c0.directory, withIntermediateDirectories: true)
        let t0 = Date()
        var coordinator = try startCoordinator()
        var workers: [Process] = []
        defer {
            for w in workers where w.isRunning {
                kill(w.processIdentifier, SIGCONT)
                Self.hardKill(w)
            }
            if coordinator.isRunning {
                kill(coordinator.processIdentifier, SIGTERM)
                let t = Date()
                while coordinator.isRunning && Date().timeIntervalSince(t) < 10 { Thread.sleep(forTimeInterval: 0.05) }
                Self.hardKill(coordinator)
            }
        }
        workers = try (0..<c0.workers).map(startWorker)
        _ = try waitForAnswer(deadline: 20)
        let grid = """
            {"experiment": "drill", "tasks": ["drill"], "methods": ["synthetic"],
             "seeds": [\((0..<c0.jobs).map(String.init).joined(separator: ","))],
             "solver": {"steps": \(c0.steps), "lr": 0.1}, "test_size": 1, "train_size": 4}
            """
        do {
            let c = try CoordinatorClient(endpoint: endpoint, timeoutSeconds: 10)
            let reply = try c.submit(gridJSON: grid)
            c.close()
            guard reply.ok else { throw ClientError.remote("drill grid refused: \(reply.errors)") }
        }
        r.jobs = c0.jobs
        r.maxAttempts = c0.maxAttempts
        progress("submitted \(c0.jobs) jobs to \(c0.workers) workers; injecting faults every \(c0.interval) s")

        // the faults, spread over the run: worker kills, coordinator kills at even intervals among
        // them, the stall and the flood in the middle
        var faults: [String] = Array(repeating: "worker", count: c0.workerKills)
        for k in 0..<c0.coordinatorKills {
            faults.insert("coordinator", at: min(faults.count, (k + 1) * faults.count / (c0.coordinatorKills + 1) + k))
        }
        if c0.stalls > 0 { for _ in 0..<c0.stalls { faults.insert("stall", at: faults.count / 2) } }
        // the flood after the last coordinator restart, so its counter still holds the count
        if c0.floodFrames > 0 {
            let last = faults.lastIndex(of: "coordinator").map { $0 + 1 } ?? 0
            faults.insert("flood", at: max(last, min(faults.count, 2 * faults.count / 3)))
        }
        var rng = SystemRandomNumberGenerator()
        for f in faults {
            Thread.sleep(forTimeInterval: c0.interval)
            if let d = doneCount(), d >= c0.jobs {
                progress("all jobs done before the faults ran out")
                break
            }
            switch f {
            case "worker":
                let i = Int(rng.next() % UInt64(workers.count))
                Self.hardKill(workers[i])
                workers[i] = try startWorker(i)
                r.workerKills += 1
            case "coordinator":
                let before = doneCount() ?? 0
                Self.hardKill(coordinator)
                r.coordinatorKills += 1
                coordinator = try startCoordinator()
                let answer = try waitForAnswer(deadline: 30)
                let t = Date()
                var progressed = Double.nan
                while Date().timeIntervalSince(t) < 60 {
                    if let d = doneCount(), d > before || d >= c0.jobs {
                        progressed = answer + Date().timeIntervalSince(t)
                        break
                    }
                    Thread.sleep(forTimeInterval: 0.05)
                }
                r.recoveries.append((answer, progressed))
                if progressed.isNaN {
                    r.failures.append("no job finished within 60 s of coordinator restart \(r.coordinatorKills)")
                }
                progress(
                    "coordinator restart \(r.coordinatorKills): answering after \(String(format: "%.2f", answer)) s")
            case "stall":
                let i = Int(rng.next() % UInt64(workers.count))
                guard workers[i].isRunning else { break }
                kill(workers[i].processIdentifier, SIGSTOP)
                Thread.sleep(forTimeInterval: c0.lease + 3)
                if workers[i].isRunning { kill(workers[i].processIdentifier, SIGCONT) }
                r.stalls += 1
                progress("worker drill-\(i) stalled for \(c0.lease + 3) s")
            case "flood":
                try flood(c0.floodFrames)
                r.floodFrames += c0.floodFrames
                let t = Date()
                _ = try waitForAnswer(deadline: 10)
                r.statusAfterFloodMs = Date().timeIntervalSince(t) * 1000
                progress("\(c0.floodFrames) malformed frames sent")
            default: break
            }
        }
        // let the grid finish
        let deadline = Date().addingTimeInterval(c0.timeout)
        while Date() < deadline {
            if let d = doneCount(), d >= c0.jobs { break }
            guard let c = try? CoordinatorClient(endpoint: endpoint, timeoutSeconds: 2),
                let q = try? c.query(experiment: "drill")
            else {
                Thread.sleep(forTimeInterval: 0.2)
                continue
            }
            c.close()
            if q.jobs.allSatisfy({ ["done", "failed", "cancelled"].contains($0.state) }) { break }
            Thread.sleep(forTimeInterval: 0.2)
        }
        r.seconds = Date().timeIntervalSince(t0)
        let c = try CoordinatorClient(endpoint: endpoint, timeoutSeconds: 10)
        defer { c.close() }
        let q = try c.query(experiment: "drill")
        let st = try c.status()
        r.done = q.jobs.filter { $0.state == "done" }.count
        r.failed = q.jobs.filter { $0.state == "failed" }.count
        r.unfinished = r.jobs - r.done - r.failed
        r.requeues = q.jobs.reduce(0) { $0 + max(0, Int($1.attempt) - 1) }
        r.missingArtefacts =
            q.jobs.filter { $0.state == "done" && !FileManager.default.fileExists(atPath: $0.artefactPath) }
            .count
        r.duplicateResults = st.counters["duplicate_results"] ?? 0
        r.refusedResults = st.counters["refused_results"] ?? 0
        r.malformed = st.counters["malformed"] ?? 0
        r.versionMismatch = st.counters["version_mismatch"] ?? 0
        for j in q.jobs where j.state == "failed" { r.failures.append("job \(j.jobID) failed: \(j.error)") }
        return r
    }
}
