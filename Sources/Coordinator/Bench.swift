import ArgumentParser
import JobCore
import Foundation
import Protocol

extension CoordinatorCommand {
    /// `coordinator bench`: the coordinator's own throughput and latency on loopback.
    struct Bench: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure dispatch throughput and result→update latency with in-process workers.",
            discussion: """
            Starts a coordinator on a temporary store and --workers synthetic DEALER workers in this \
            process (loopback, ephemeral ports), submits --jobs jobs with zero solver steps, and prints \
            a JSON object: jobs dispatched per second (submit to last result published), and the delay \
            from a result's arrival at the coordinator to its update leaving the PUB socket (p50/p99), \
            plus the same measured from the worker's send to a subscriber's receipt.

            Example:
              coordinator bench --workers 50 --jobs 5000
            """,
            shouldDisplay: false
        )

        @Option(help: "In-process workers.")
        var workers: Int = 50

        @Option(help: "Jobs to run (zero steps each).")
        var jobs: Int = 5000

        @Option(name: .customLong("artefact-bytes"), help: "Size of each result's Δ artefact (0 = none).")
        var artefactBytes: Int = 2304

        @Option(help: "Give up after this many seconds.")
        var timeout: Double = 300

        func validate() throws {
            guard workers >= 1, jobs >= 1 else { throw ValidationError("--workers and --jobs must be positive") }
        }

        func run() throws {
            let result = try BenchRun(workers: workers, jobs: jobs, artefactBytes: artefactBytes, timeout: timeout).run()
            print(result)
        }
    }
}

/// The benchmark itself (also used by tests with small numbers).
public struct BenchRun {
    public var workers: Int
    public var jobs: Int
    public var artefactBytes: Int
    public var timeout: Double

    public init(workers: Int, jobs: Int, artefactBytes: Int = 2304, timeout: Double = 300) {
        self.workers = workers; self.jobs = jobs; self.artefactBytes = artefactBytes; self.timeout = timeout
    }

    static func percentile(_ xs: [Double], _ p: Double) -> Double {
        guard !xs.isEmpty else { return .nan }
        let s = xs.sorted()
        let i = min(s.count - 1, max(0, Int((p * Double(s.count - 1)).rounded())))
        return s[i]
    }

    /// Runs the benchmark; returns the JSON text.
    public func run() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("coordinator-bench-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let server = try CoordinatorServer(options: .init(
            storeDirectory: dir, bind: "tcp://127.0.0.1:*", pub: "tcp://127.0.0.1:*",
            scheduler: SchedulerConfig(leaseSeconds: 60, workerTimeoutSeconds: 120), tickMs: 100, measureLatency: true))
        try server.start()
        defer { server.stop() }

        let stop = LockedBox(false)
        let sent = LockedBox<[String: UInt64]>([:])
        let received = LockedBox<[String: UInt64]>([:])
        let doneCount = LockedBox(0)
        let registered = LockedBox(0)
        let endpoint = server.endpoint
        let pubEndpoint = server.pubEndpoint
        let ctx = try ZContext()

        // Subscriber: when does each job's "done" update arrive?
        let subReady = DispatchSemaphore(value: 0)
        let subDone = DispatchSemaphore(value: 0)
        let subThread = Thread {
            defer { subDone.signal() }
            guard let sub = try? ZSocket(ctx, .sub, options: { var o = ZSocketOptions(); o.lingerMs = 0; o.receiveHighWaterMark = 1_000_000; return o }()) else {
                subReady.signal(); return
            }
            defer { sub.close() }
            try? sub.connect(pubEndpoint)
            try? sub.subscribe("")
            subReady.signal()
            while !stop.value {
                guard let frames = try? sub.receive(timeoutMs: 50), frames.count == 2,
                      case .update(let u) = try? Wire.decodeBody(frames[1]) else { continue }
                if u.state == "done" {
                    let t = DispatchTime.now().uptimeNanoseconds
                    received.mutate { $0[u.jobID] = t }
                    doneCount.mutate { $0 += 1 }
                }
            }
        }
        subThread.start()
        subReady.wait()

        // Workers: one thread polling every DEALER socket.
        let artefact = Data((0..<artefactBytes).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        let sha = artefact.isEmpty ? "" : SHA256.hex(artefact)
        let nWorkers = workers
        let workerDone = DispatchSemaphore(value: 0)
        let workerThread = Thread {
            defer { workerDone.signal() }
            var sockets: [ZSocket] = []
            defer { sockets.forEach { $0.close() } }
            for i in 0..<nWorkers {
                var o = ZSocketOptions()
                o.lingerMs = 0
                o.identity = Data("bench-\(i)".utf8)
                guard let s = try? ZSocket(ctx, .dealer, options: o) else { return }
                try? s.connect(endpoint)
                var h = Intervene_V1_Hello()
                h.workerID = "bench-\(i)"; h.device = "cpu"; h.deviceIndex = -1; h.threads = 1
                h.methods = ["synthetic"]; h.hostname = "bench"
                try? s.send(Wire.encode(.hello(h)), timeoutMs: 1000)
                var r = Intervene_V1_Ready(); r.workerID = h.workerID; r.slots = 1
                try? s.send(Wire.encode(.ready(r)), timeoutMs: 1000)
                sockets.append(s)
            }
            registered.value = sockets.count
            let items = sockets.map { ($0, ZPollEvents.readable) }
            while !stop.value {
                guard let ready = try? ZSocket.poll(items, timeoutMs: 50) else { continue }
                for (i, ev) in ready.enumerated() where ev.contains(.readable) {
                    let s = sockets[i]
                    while let frames = try? s.receive(timeoutMs: 0), let last = frames.last {
                        guard let body = try? Wire.decodeBody(last) else { continue }
                        switch body {
                        case .job(let a):
                            var ack = Intervene_V1_Ack()
                            ack.kind = .job; ack.jobID = a.jobID; ack.attempt = a.attempt; ack.accepted = true
                            try? s.send(Wire.encode(.ack(ack)), timeoutMs: 1000)
                            var res = Intervene_V1_Result()
                            res.jobID = a.jobID; res.attempt = a.attempt; res.workerID = "bench-\(i)"
                            res.metrics = ["final_loss": 0, "exact_match": 1]
                            res.artefact = artefact; res.artefactSha256 = sha
                            let t = DispatchTime.now().uptimeNanoseconds
                            sent.mutate { $0[a.jobID] = t }
                            try? s.send(Wire.encode(.result(res)), timeoutMs: 1000)
                        case .ack(let ack) where ack.kind == .result:
                            var r = Intervene_V1_Ready(); r.workerID = "bench-\(i)"; r.slots = 1
                            try? s.send(Wire.encode(.ready(r)), timeoutMs: 1000)
                        default:
                            break
                        }
                    }
                }
            }
        }
        workerThread.start()

        // Wait for the workers to register.
        let client = try CoordinatorClient(endpoint: endpoint, timeoutSeconds: 30)
        defer { client.close() }
        let regDeadline = Date().addingTimeInterval(30)
        while Date() < regDeadline {
            if let st = try? client.status(), st.workers.count >= nWorkers { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        let grid = """
        {"experiment": "bench", "tasks": ["bench"], "methods": ["synthetic"],
         "seeds": [\((0..<jobs).map(String.init).joined(separator: ","))],
         "solver": {"steps": 0, "lr": 0.1}, "test_size": 1, "train_size": 1}
        """
        let t0 = DispatchTime.now().uptimeNanoseconds
        let reply = try client.submit(gridJSON: grid)
        guard reply.ok else { throw ClientError.remote("bench grid refused: \(reply.errors)") }
        let deadline = Date().addingTimeInterval(timeout)
        while doneCount.value < jobs && Date() < deadline { Thread.sleep(forTimeInterval: 0.005) }
        let t1 = DispatchTime.now().uptimeNanoseconds
        let finished = doneCount.value
        stop.value = true
        workerDone.wait()
        subDone.wait()
        let counters = server.counterSnapshot
        let serverLat = server.latencySnapshot
        server.stop()

        let s = sent.value, r = received.value
        let e2e = r.compactMap { id, t in s[id].map { Double(t &- $0) / 1e9 } }.filter { $0 >= 0 }
        let seconds = Double(t1 - t0) / 1e9
        func ms(_ x: Double) -> String { x.isFinite ? String(format: "%.3f", x * 1000) : "null" }
        return """
        {"workers": \(registered.value), "jobs": \(jobs), "jobs_done": \(finished), "seconds": \(String(format: "%.3f", seconds)), \
        "jobs_per_second": \(String(format: "%.1f", Double(finished) / seconds)), \
        "artefact_bytes": \(artefactBytes), \
        "result_to_pub_ms": {"p50": \(ms(Self.percentile(serverLat, 0.5))), "p99": \(ms(Self.percentile(serverLat, 0.99))), "n": \(serverLat.count)}, \
        "worker_send_to_sub_receive_ms": {"p50": \(ms(Self.percentile(e2e, 0.5))), "p99": \(ms(Self.percentile(e2e, 0.99))), "n": \(e2e.count)}, \
        "dropped_or_malformed": \((counters["dropped_oversized"] ?? 0) + (counters["malformed"] ?? 0))}
        """
    }
}
