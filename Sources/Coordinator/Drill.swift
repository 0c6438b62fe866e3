import Foundation
import Protocol

/// `coordinator drill`: a fault drill on this machine. Starts a coordinator and workers (real
/// processes, synthetic jobs), submits a grid and, while it runs, SIGKILLs and restarts workers
/// under the same id, SIGKILLs the coordinator and restarts it on its store, stalls a worker
/// (SIGSTOP past its lease, then SIGCONT), and floods the coordinator with malformed and
/// wrong-version frames. With keys (the default) every process presents CurveZMQ keys, and
/// intruders without an admitted key, or with a client's key, try to post results, submit and
/// cancel. Then it checks that every job finished exactly once with its artefact.
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
        /// CurveZMQ keys for every process, and the intruders' attempts.
        public var keys = true
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
        /// Flood frames dropped unread once their connection was blocked, and connections blocked.
        public var droppedBlocked: UInt64 = 0, peersBlocked: UInt64 = 0
        public var keys = false
        /// Messages sent by peers without an admitted key, and how many of them were answered.
        public var intruderMessages = 0, intruderAnswers = 0
        /// Worker messages (a forged result) sent with a client's key, and how many were refused.
        public var forgedWithClientKey = 0, forbidden: UInt64 = 0, handshakesFailed: UInt64 = 0
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
                malformed, \(versionMismatch) of the wrong protocol version, \(droppedBlocked) dropped unread from \
                \(peersBlocked) blocked connection(s)
                status answered \(String(format: "%.1f", statusAfterFloodMs)) ms after the flood
                """
            if keys {
                s += "\nkeys on: \(intruderMessages) messages from peers without an admitted key, \(intruderAnswers) "
                    + "answered (\(handshakesFailed) failed handshakes counted); \(forgedWithClientKey) forged results "
                    + "with a client key, \(forbidden) refused as forbidden"
            } else {
                s += "\nkeys off"
            }
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
    var keyDirectory: String { config.directory + "/keys" }
    func keyFile(_ name: String) -> String { keyDirectory + "/" + name }

    /// The drill's pairs: the coordinator's, the workers' (one shared), the client's and the
    /// flooder's (a client key too; the client list is their .pub files concatenated).
    func makeKeys() throws {
        for name in ["coordinator", "worker", "client", "flooder", "stranger"] {
            try CurveKeyPair.generate().write(name: name, directory: keyDirectory, overwrite: true)
        }
        let clients = try ["client", "flooder"].map {
            try String(contentsOfFile: keyFile($0 + ".pub"), encoding: .utf8)
        }
        try clients.joined().write(toFile: keyFile("clients.txt"), atomically: true, encoding: .utf8)
    }

    /// `name`'s keys for reaching the drill's coordinator (nil without keys).
    func clientKeys(_ name: String = "client") throws -> CurveClientKeys? {
        guard config.keys else { return nil }
        let server = try CurveKeyList.load(keyFile("coordinator.pub"), flag: "--server-key").keys[0]
        return CurveClientKeys(pair: try CurveKeyPair.load(secretFile: keyFile(name + ".secret")), serverKey: server)
    }

    func client(timeout: Double) throws -> CoordinatorClient {
        try CoordinatorClient(endpoint: endpoint, timeoutSeconds: timeout, keys: try clientKeys())
    }

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
            ] + (config.keys
                ? ["--curve-secret", keyFile("coordinator.secret"), "--worker-keys", keyFile("worker.pub"),
                   "--client-keys", keyFile("clients.txt")] : []),
            log: config.directory + "/coordinator.log")
    }

    func startWorker(_ i: Int) throws -> Process {
        try start(
            config.workerBinary,
            ["--connect", endpoint, "--cpu", "--threads", "1", "--id", "drill-\(i)"]
                + (config.keys
                    ? ["--curve-secret", keyFile("worker.secret"), "--server-key", keyFile("coordinator.pub")] : []),
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
            if let c = try? client(timeout: 1), (try? c.status()) != nil {
                c.close()
                return Date().timeIntervalSince(t0)
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw ClientError.remote("the coordinator did not answer within \(deadline) s")
    }

    func doneCount() -> Int? {
        guard let c = try? client(timeout: 2) else { return nil }
        defer { c.close() }
        return (try? c.query(experiment: "drill"))?.jobs.filter { $0.state == "done" }.count
    }

    /// Sends `n` bad frames from a DEALER: random bytes, truncated envelopes and a wrong protocol version.
    func flood(_ n: Int) throws {
        let ctx = try ZContext()
        var o = ZSocketOptions()
        o.lingerMs = 0
        o.curve = try clientKeys("flooder")?.socketCurve
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

    /// Peers without an admitted key (none, a stranger's) send a forged result for a running job,
    /// a submission and a cancellation, and must hear nothing; a peer with a client key forges a
    /// result and must be refused.
    func intrude(_ r: inout Report) throws {
        guard let jobs = (try? client(timeout: 2).query(experiment: "drill"))?.jobs,
              let running = jobs.first(where: { $0.state == "running" }) ?? jobs.first
        else { return }
        var forged = Intervene_V1_Result()
        forged.jobID = running.jobID; forged.attempt = running.attempt; forged.workerID = running.workerID
        forged.metrics = ["exact_match": 0.999]
        var submit = Intervene_V1_Submit()
        submit.gridJson = #"{"experiment": "intruder", "tasks": "drill", "methods": "synthetic"}"#
        var cancel = Intervene_V1_Cancel()
        cancel.experiment = "drill"
        let bodies: [EnvelopeBody] = [.result(forged), .submit(submit), .cancel(cancel)]
        let ctx = try ZContext()
        var o = ZSocketOptions()
        o.lingerMs = 0
        let strangerKeys = CurveClientKeys(pair: try CurveKeyPair.load(secretFile: keyFile("stranger.secret")),
                                           serverKey: try clientKeys()!.serverKey)
        var sockets: [ZSocket] = []
        defer { sockets.forEach { $0.close() } }
        for curve in [nil, strangerKeys.socketCurve] {
            o.curve = curve
            let s = try ZSocket(ctx, .dealer, options: o)
            try s.connect(endpoint)
            sockets.append(s)
            for b in bodies { try? s.send(Wire.encode(b), timeoutMs: 0) }
            r.intruderMessages += bodies.count
        }
        o.curve = try clientKeys("flooder")?.socketCurve
        let withClientKey = try ZSocket(ctx, .dealer, options: o)
        try withClientKey.connect(endpoint)
        sockets.append(withClientKey)
        try withClientKey.send(Wire.encode(.result(forged)), timeoutMs: 1000)
        r.forgedWithClientKey += 1
        let deadline = Date().addingTimeInterval(1.5)
        while Date() < deadline {
            for s in sockets.prefix(2) where (try? s.receive(timeoutMs: 0)) != nil { r.intruderAnswers += 1 }
            let reply = try withClientKey.receive(timeoutMs: 50).flatMap { try Wire.decodeBody($0.last!) }
            if case .error(let e)? = reply, e.code != .forbidden {
                r.failures.append("a result forged with a client key got \(e.code), not forbidden")
            }
        }
        if r.intruderAnswers > 0 { r.failures.append("peers without an admitted key got \(r.intruderAnswers) answers") }
    }

    public func run(progress: (String) -> Void) throws -> Report {
        var r = Report()
        let c0 = config
        r.keys = c0.keys
        try FileManager.default.createDirectory(atPath: c0.directory, withIntermediateDirectories: true)
        if c0.keys { try makeKeys() }
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
            let c = try client(timeout: 10)
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
        // the hostile peers (the flood, and with keys the intruders) after the last coordinator
        // restart, so that its counters still hold what they did
        if c0.floodFrames > 0 || c0.keys {
            let last = faults.lastIndex(of: "coordinator").map { $0 + 1 } ?? 0
            faults.insert("hostile", at: max(last, min(faults.count, 2 * faults.count / 3)))
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
            case "hostile":
                if c0.floodFrames > 0 {
                    try flood(c0.floodFrames)
                    r.floodFrames += c0.floodFrames
                    let t = Date()
                    _ = try waitForAnswer(deadline: 10)
                    r.statusAfterFloodMs = Date().timeIntervalSince(t) * 1000
                    progress("\(c0.floodFrames) malformed frames sent")
                }
                if c0.keys {
                    try intrude(&r)
                    progress("intruders: \(r.intruderMessages) messages without an admitted key, "
                        + "\(r.intruderAnswers) answered")
                }
            default: break
            }
        }
        // let the grid finish
        let deadline = Date().addingTimeInterval(c0.timeout)
        while Date() < deadline {
            if let d = doneCount(), d >= c0.jobs { break }
            guard let c = try? client(timeout: 2),
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
        let c = try client(timeout: 10)
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
        r.droppedBlocked = st.counters["dropped_blocked_peer"] ?? 0
        r.peersBlocked = st.counters["peers_blocked"] ?? 0
        r.forbidden = st.counters["forbidden"] ?? 0
        r.handshakesFailed = st.counters["handshakes_failed"] ?? 0
        if c0.keys && r.forbidden < UInt64(r.forgedWithClientKey) {
            r.failures.append("\(r.forgedWithClientKey) results forged with a client key, \(r.forbidden) refused")
        }
        let others = st.experiments.map(\.experiment).filter { $0 != "drill" }
        if !others.isEmpty { r.failures.append("experiments an intruder submitted: \(others)") }
        for j in q.jobs where j.state == "failed" { r.failures.append("job \(j.jobID) failed: \(j.error)") }
        return r
    }
}
