import Engine
import Foundation
import Protocol
@testable import Worker
import XCTest

/// A real WorkerNode (network + compute threads) against a fake coordinator: a ROUTER socket on
/// 127.0.0.1 driven by the test. Bounded waits everywhere.
final class WorkerLoopbackTests: XCTestCase {
    final class FakeCoordinator {
        let ctx: ZContext
        let router: ZSocket
        var seq = EnvelopeSequencer()
        var log: [EnvelopeBody] = []
        init(endpoint: String = "tcp://127.0.0.1:*", ctx: ZContext? = nil) throws {
            self.ctx = try ctx ?? ZContext()
            var o = ZSocketOptions(); o.lingerMs = 0
            router = try ZSocket(self.ctx, .router, options: o)
            try router.bind(endpoint)
        }
        var endpoint: String { router.lastEndpoint }
        func receive(timeoutMs: Int = 3_000) throws -> (peer: Data, body: EnvelopeBody)? {
            guard let f = try router.receive(timeoutMs: timeoutMs) else { return nil }
            let body = try Wire.decode(f[f.count - 1]).body!
            log.append(body)
            return (f[0], body)
        }
        /// Receives until `match` returns a value (answering nothing), bounded by `timeoutMs`.
        func expect<T>(_ what: String, timeoutMs: Int = 5_000, _ match: (Data, EnvelopeBody) -> T?) throws -> (Data, T) {
            let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
            while Date() < deadline {
                guard let (peer, body) = try receive(timeoutMs: 50) else { continue }
                if let t = match(peer, body) { return (peer, t) }
            }
            throw NSError(domain: "test", code: 1, userInfo: [NSLocalizedDescriptionKey: "timed out waiting for \(what); got \(log.map(\.kindName))"])
        }
        func send(_ peer: Data, _ body: EnvelopeBody) throws {
            try router.send([peer, seq.encode(body)], timeoutMs: 1_000)
        }
        func close() { router.close() }
    }

    final class Box<T>: @unchecked Sendable { var value: T; init(_ v: T) { value = v } }

    func startNode(_ endpoint: String, timing: NodeTiming, stepDelay: TimeInterval = 0.004) throws -> (WorkerNode, DispatchSemaphore, Box<Int32?>) {
        var opts = NodeOptions(endpoint: endpoint, hello: NodeOptions.hello(workerID: "test-worker", threads: 1, modelsCached: []))
        opts.timing = timing
        opts.pollMs = 5
        let node = try WorkerNode(options: opts, registry: RunnerRegistry(synthetic: { SyntheticJobRunner(stepDelay: stepDelay) }),
                                  log: { _ in })
        let done = DispatchSemaphore(value: 0)
        let status = Box<Int32?>(nil)
        let t = Thread { status.value = node.run(); done.signal() }
        t.start()
        return (node, done, status)
    }

    var fastTiming: NodeTiming {
        var t = NodeTiming()
        t.readyMs = 300; t.metricsMinIntervalMs = 50; t.resendInitialMs = 150; t.resendMaxMs = 600
        t.helloRetryMs = 500; t.silenceMs = 2_000; t.reconnectInitialMs = 100; t.reconnectMaxMs = 400
        t.drainMs = 1_000; t.heartbeatMinMs = 20
        return t
    }

    func assignment(_ id: String, method: JobMethod = .synthetic, steps: Int32 = 40, lease: UInt32 = 200) -> Intervene_V1_JobAssignment {
        var a = Intervene_V1_JobAssignment()
        a.jobID = id; a.attempt = 1; a.leaseMs = lease; a.experiment = "loopback"
        a.params = Intervene_V1_JobParams(JobSpec(model: "none", task: "toy", method: method, layer: 2, lambda: 0.01,
                                                  gamma: 0.01, seed: 3, trainSize: 10, testSize: 50, steps: Int(steps), lr: 0.1))
        return a
    }

    func testSyntheticJobHeartbeatsMetricsAndResultResentUntilAcked() throws {
        let coord = try FakeCoordinator()
        defer { coord.close() }
        let (node, done, status) = try startNode(coord.endpoint, timing: fastTiming)
        defer { node.requestStop(immediate: true); _ = done.wait(timeout: .now() + 5) }

        let (peer, hello) = try coord.expect("hello") { _, b -> Intervene_V1_Hello? in if case let .hello(h) = b { return h }; return nil }
        XCTAssertEqual(hello.workerID, "test-worker")
        XCTAssertEqual(hello.device, "cpu")
        XCTAssertEqual(hello.pid, UInt32(ProcessInfo.processInfo.processIdentifier))
        XCTAssertTrue(hello.methods.contains("synthetic"))
        var ack = Intervene_V1_Ack(); ack.kind = .hello
        try coord.send(peer, .ack(ack))
        _ = try coord.expect("ready") { _, b in if case .ready = b { return true }; return nil }

        let t0 = Date()
        try coord.send(peer, .job(assignment("job-1")))   // 40 steps × 4 ms, heartbeat every 50 ms
        var heartbeats = 0, metrics: [Intervene_V1_StepMetrics] = []
        let (_, result) = try coord.expect("result") { _, b -> Intervene_V1_Result? in
            switch b {
            case let .ack(a): XCTAssertEqual(a.kind, .job); XCTAssertTrue(a.accepted)
            case .heartbeat: heartbeats += 1
            case let .stepMetrics(m): metrics.append(m)
            case let .result(r): return r
            default: break
            }
            return nil
        }
        let elapsed = Date().timeIntervalSince(t0)
        XCTAssertGreaterThanOrEqual(heartbeats, 2, "heartbeats while computing")
        XCTAssertEqual(metrics.last?.step, 40, "the final step metrics always arrive")
        XCTAssertLessThanOrEqual(Double(metrics.count), elapsed / 0.05 + 3, "rate-limited step metrics")
        XCTAssertEqual(result.jobID, "job-1"); XCTAssertEqual(result.attempt, 1)
        XCTAssertFalse(result.artefact.isEmpty)
        XCTAssertEqual(result.artefactSha256, SHA256.hex(result.artefact))
        XCTAssertNotNil(result.metrics["final_loss"]); XCTAssertNotNil(result.metrics["exact_match"])
        XCTAssertEqual(result.metrics["n_test"], 50)

        // Don't ack: the same result comes again.
        let (_, again) = try coord.expect("resent result", timeoutMs: 2_000) { _, b -> Intervene_V1_Result? in
            if case let .result(r) = b { return r }; return nil
        }
        XCTAssertEqual(again, result)
        var rack = Intervene_V1_Ack(); rack.kind = .result; rack.jobID = "job-1"; rack.attempt = 1
        try coord.send(peer, .ack(rack))
        // After the ack: Ready keeps coming (the node is idle), results don't.
        let quiet = Date().addingTimeInterval(1.0)
        var extra = 0
        while Date() < quiet {
            guard let (p, b) = try coord.receive(timeoutMs: 50) else { continue }
            if case .result = b { extra += 1 }
            if case .ready = b { var a = Intervene_V1_Ack(); a.kind = .ready; try coord.send(p, .ack(a)) }
        }
        XCTAssertLessThanOrEqual(extra, 1, "at most one resend already in flight when the ack arrived")

        // SIGINT-like stop: the idle node says goodbye and run() returns 0.
        node.requestStop()
        _ = try coord.expect("goodbye", timeoutMs: 3_000) { _, b in if case .goodbye = b { return true }; return nil }
        XCTAssertEqual(done.wait(timeout: .now() + 5), .success)
        XCTAssertEqual(status.value, 0)
        done.signal()  // let the deferred wait pass
    }

    func testDeterministicFailureAndEngineNotWired() throws {
        let coord = try FakeCoordinator()
        defer { coord.close() }
        let (node, done, _) = try startNode(coord.endpoint, timing: fastTiming)
        defer { node.requestStop(immediate: true); _ = done.wait(timeout: .now() + 5) }
        let (peer, _) = try coord.expect("ready") { _, b in if case .ready = b { return true }; return nil }
        try coord.send(peer, .job(assignment("job-fail", method: .syntheticFail, steps: 10)))
        let (_, f) = try coord.expect("failure") { _, b -> Intervene_V1_Failure? in if case let .failure(f) = b { return f }; return nil }
        XCTAssertEqual(f.jobID, "job-fail")
        XCTAssertTrue(f.deterministic)
        XCTAssertTrue(f.reason.contains("synthetic-fail"), f.reason)
        var a = Intervene_V1_Ack(); a.kind = .failure; a.jobID = "job-fail"; a.attempt = 1
        try coord.send(peer, .ack(a))

        _ = try coord.expect("ready") { _, b in if case .ready = b { return true }; return nil }
        try coord.send(peer, .job(assignment("job-engine", method: .intervention, steps: 10)))
        let (_, g) = try coord.expect("failure") { _, b -> Intervene_V1_Failure? in if case let .failure(f) = b { return f }; return nil }
        XCTAssertEqual(g.jobID, "job-engine")
        if g.reason.contains("not wired") { XCTAssertTrue(g.deterministic) }
    }

    func testWorkerComesBackAfterTheCoordinatorRestarts() throws {
        var coord = try FakeCoordinator()
        let endpoint = coord.endpoint
        var t = fastTiming
        t.silenceMs = 500
        let (node, done, _) = try startNode(endpoint, timing: t)
        defer { node.requestStop(immediate: true); _ = done.wait(timeout: .now() + 5) }
        let (peer, _) = try coord.expect("ready") { _, b in if case .ready = b { return true }; return nil }
        try coord.send(peer, .job(assignment("job-long", steps: 150)))  // ~0.6 s
        _ = try coord.expect("heartbeat") { _, b in if case .heartbeat = b { return true }; return nil }

        // The coordinator dies; a new one binds the same port and knows nobody.
        coord.close()
        Thread.sleep(forTimeInterval: 0.3)
        coord = try FakeCoordinator(endpoint: endpoint, ctx: coord.ctx)
        defer { coord.close() }
        var saidHello = false
        let (p2, r) = try coord.expect("result after restart", timeoutMs: 8_000) { p, b -> Intervene_V1_Result? in
            switch b {
            case .hello: saidHello = true
            case .heartbeat, .ready, .stepMetrics: if !saidHello { try? coord.send(p, Wire.error(code: .unknownPeer, "who are you?")) }
            case let .result(r): return r
            default: break
            }
            return nil
        }
        XCTAssertTrue(saidHello)
        XCTAssertEqual(r.jobID, "job-long")
        var a = Intervene_V1_Ack(); a.kind = .result; a.jobID = r.jobID; a.attempt = r.attempt
        try coord.send(p2, .ack(a))
    }
}
