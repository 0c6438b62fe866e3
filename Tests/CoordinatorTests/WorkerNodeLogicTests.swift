import Foundation
import Protocol
import Engine
@testable import Worker
import XCTest

/// NodeLogic without sockets or threads: events and a fake clock in, actions out.
final class WorkerNodeLogicTests: XCTestCase {
    var timing: NodeTiming {
        var t = NodeTiming()
        t.readyMs = 1_000; t.metricsMinIntervalMs = 200; t.resendInitialMs = 500; t.resendMaxMs = 2_000
        t.helloRetryMs = 700; t.silenceMs = 5_000; t.reconnectInitialMs = 300; t.reconnectMaxMs = 1_200
        t.drainMs = 3_000; t.heartbeatMaxMs = 5_000; t.heartbeatMinMs = 50
        return t
    }

    func makeLogic() -> NodeLogic {
        var h = Intervene_V1_Hello(); h.workerID = "w1"; h.device = "cpu"; h.threads = 1
        return NodeLogic(hello: h, timing: timing)
    }

    func job(_ id: String = "j1", attempt: UInt32 = 1, lease: UInt32 = 2_000, steps: Int32 = 10) -> Intervene_V1_JobAssignment {
        var a = Intervene_V1_JobAssignment()
        a.jobID = id; a.attempt = attempt; a.leaseMs = lease; a.experiment = "e"
        a.params.method = "synthetic"; a.params.task = "t"; a.params.steps = steps
        return a
    }

    func ack(_ kind: Intervene_V1_Ack.Kind, _ id: String = "j1", attempt: UInt32 = 1, abandon: Bool = false) -> EnvelopeBody {
        var a = Intervene_V1_Ack(); a.kind = kind; a.jobID = id; a.attempt = attempt; a.abandon = abandon
        return .ack(a)
    }

    func sends(_ actions: [NodeAction]) -> [String] {
        actions.compactMap { if case let .send(b) = $0 { return b.kindName } else { return nil } }
    }

    func sentBodies(_ actions: [NodeAction]) -> [EnvelopeBody] {
        actions.compactMap { if case let .send(b) = $0 { return b } else { return nil } }
    }

    func testConnectSaysHelloThenReadyAndRepeatsReadyWhileIdle() {
        var n = makeLogic()
        XCTAssertEqual(n.tick(now: 0), [.openSocket], "starts disconnected and asks for a socket")
        XCTAssertEqual(sends(n.connected(now: 0)), ["hello", "ready"])
        XCTAssertEqual(sends(n.received(ack(.hello), now: 10)), [])
        XCTAssertTrue(n.isRegistered)
        XCTAssertEqual(sends(n.tick(now: 999)), [])
        XCTAssertEqual(sends(n.tick(now: 1_000)), ["ready"])
        XCTAssertEqual(sends(n.tick(now: 1_500)), [])
        XCTAssertEqual(sends(n.tick(now: 2_000)), ["ready"])
    }

    func testHelloIsRepeatedUntilTheCoordinatorAnswers() {
        var n = makeLogic()
        _ = n.connected(now: 0)
        XCTAssertEqual(sends(n.tick(now: 700)), ["hello"])
        XCTAssertEqual(sends(n.tick(now: 1_000)), ["ready"])
        XCTAssertFalse(sends(n.tick(now: 2_099)).contains("hello"))
        XCTAssertEqual(sends(n.tick(now: 2_100)).filter { $0 == "hello" }, ["hello"], "then after twice the delay")
        _ = n.received(ack(.ready), now: 2_200)
        XCTAssertEqual(sends(n.tick(now: 4_000)).filter { $0 == "hello" }, [])
    }

    func testAssignmentAckHeartbeatsAndProgress() {
        var n = makeLogic()
        _ = n.connected(now: 0)
        let out = n.received(.job(job(lease: 2_000)), now: 100)
        XCTAssertEqual(sends(out), ["ack", "heartbeat"])
        XCTAssertTrue(out.contains(.startJob(job(lease: 2_000))))
        guard case let .ack(a) = sentBodies(out)[0] else { return XCTFail() }
        XCTAssertEqual(a.kind, .job); XCTAssertTrue(a.accepted)
        // lease 2000 → heartbeat every 500 ms, carrying the last progress step.
        XCTAssertEqual(sends(n.tick(now: 599)), [])
        _ = n.progress(key: JobKey("j1", 1), step: 3, total: 10, metrics: [:], now: 550)
        let hb = sentBodies(n.tick(now: 600))
        guard case let .heartbeat(h)? = hb.first else { return XCTFail("no heartbeat") }
        XCTAssertEqual(h.step, 3); XCTAssertEqual(h.total, 10); XCTAssertEqual(h.jobID, "j1")
        XCTAssertEqual(sends(n.tick(now: 1_100)), ["heartbeat"])
        XCTAssertEqual(sends(n.tick(now: 2_500)).filter { $0 == "ready" }, [], "no Ready while busy")
        // A second job while busy is refused; a duplicate of the running one is re-acked.
        guard case let .ack(r) = sentBodies(n.received(.job(job("j2")), now: 1_200))[0] else { return XCTFail() }
        XCTAssertFalse(r.accepted)
        let dup = n.received(.job(job()), now: 1_300)
        guard case let .ack(d) = sentBodies(dup)[0] else { return XCTFail() }
        XCTAssertTrue(d.accepted)
        XCTAssertFalse(dup.contains(.startJob(job())), "never starts the same job twice")
    }

    func testStepMetricsAreRateLimitedAndTheFinalOneAlwaysGoes() {
        var n = makeLogic()
        _ = n.connected(now: 0)
        _ = n.received(.job(job(lease: 60_000, steps: 100)), now: 0)
        let key = JobKey("j1", 1)
        var sent: [UInt32] = []
        func collect(_ a: [NodeAction]) {
            for b in sentBodies(a) { if case let .stepMetrics(m) = b { sent.append(m.step) } }
        }
        for step in 1...99 {  // one step every 10 ms for ~1 s
            let t = Int64(step * 10)
            collect(n.progress(key: key, step: step, total: 100, metrics: ["loss": Double(100 - step)], now: t))
            collect(n.tick(now: t))
        }
        XCTAssertLessThanOrEqual(sent.count, 6, "at most 5/s (+1): \(sent)")
        XCTAssertGreaterThanOrEqual(sent.count, 4, "\(sent)")
        collect(n.progress(key: key, step: 100, total: 100, metrics: ["loss": 0], now: 1_001))
        XCTAssertEqual(sent.last, 100, "the final step is sent immediately")
        // A pending (throttled) report is flushed before the result.
        var m = makeLogic()
        _ = m.connected(now: 0)
        _ = m.received(.job(job(steps: 10)), now: 0)
        _ = m.progress(key: key, step: 1, total: 10, metrics: ["loss": 1], now: 0)
        XCTAssertEqual(sends(m.progress(key: key, step: 2, total: 10, metrics: ["loss": 0.5], now: 50)), [])
        let end = m.jobEnded(key: key, .success(metrics: [:], artefact: nil, wallSeconds: 0.05), now: 60)
        XCTAssertEqual(sends(end), ["stepMetrics", "result", "ready"])
    }

    func testResultIsResentWithBackoffUntilAcked() throws {
        var n = makeLogic()
        _ = n.connected(now: 0)
        _ = n.received(.job(job()), now: 0)
        let artefact = Data("delta-bytes".utf8)
        let end = n.jobEnded(key: JobKey("j1", 1), .success(metrics: ["final_loss": 0.5], artefact: artefact, wallSeconds: 1.5), now: 1_000)
        XCTAssertEqual(sends(end), ["result", "ready"])
        guard case let .result(r) = sentBodies(end)[0] else { return XCTFail() }
        XCTAssertEqual(r.artefact, artefact)
        XCTAssertEqual(r.artefactSha256, SHA256.hex(artefact))
        XCTAssertEqual(r.metrics["final_loss"], 0.5)
        XCTAssertEqual(r.workerID, "w1")
        XCTAssertEqual(r.wallSeconds, 1.5)
        // Resends at +500, +1000, +2000, +2000 (capped) ...
        var resentAt: [Int64] = []
        var t: Int64 = 1_000
        while t <= 7_000 {
            if sends(n.tick(now: t)).contains("result") { resentAt.append(t) }
            if t % 1_000 == 0 { _ = n.received(ack(.ready), now: t) }  // keep the link alive
            t += 50
        }
        XCTAssertEqual(resentAt, [1_500, 2_500, 4_500, 6_500])
        _ = n.received(ack(.result), now: 7_000)
        XCTAssertEqual(n.pendingKeys, [])
        var after: [String] = []
        for t in stride(from: Int64(7_000), to: 12_000, by: 100) { after += sends(n.tick(now: t)) }
        XCTAssertFalse(after.contains("result"))
        XCTAssertEqual(n.jobsCompleted, 1)
    }

    func testFailureCarriesTheDeterministicFlagAndIsResentUntilAcked() {
        var n = makeLogic()
        _ = n.connected(now: 0)
        _ = n.received(.job(job()), now: 0)
        let out = n.jobEnded(key: JobKey("j1", 1), .failure(reason: "unknown task", deterministic: true, wallSeconds: 0), now: 10)
        guard case let .failure(f) = sentBodies(out)[0] else { return XCTFail() }
        XCTAssertTrue(f.deterministic); XCTAssertEqual(f.reason, "unknown task")
        XCTAssertEqual(sends(n.tick(now: 510)), ["failure"])
        _ = n.received(ack(.failure), now: 520)
        XCTAssertTrue(n.pendingKeys.isEmpty)
        // An ack for the wrong attempt acks nothing.
        _ = n.received(.job(job("j2")), now: 600)
        _ = n.jobEnded(key: JobKey("j2", 1), .failure(reason: "x", deterministic: false, wallSeconds: 0), now: 700)
        _ = n.received(ack(.failure, "j2", attempt: 2), now: 710)
        XCTAssertEqual(n.pendingKeys, [JobKey("j2", 1)])
    }

    func testSilenceReconnectsWithBackoffAndResumes() {
        var n = makeLogic()
        _ = n.connected(now: 0)
        _ = n.received(.job(job(lease: 60_000)), now: 0)
        _ = n.progress(key: JobKey("j1", 1), step: 4, total: 10, metrics: [:], now: 100)
        XCTAssertFalse(n.tick(now: 4_999).contains(.closeSocket))
        let down = n.tick(now: 5_000)
        XCTAssertTrue(down.contains(.closeSocket))
        XCTAssertFalse(n.isConnected)
        XCTAssertEqual(n.tick(now: 5_299), [])
        XCTAssertEqual(n.tick(now: 5_300), [.openSocket])
        let up = sentBodies(n.connected(now: 5_300))
        XCTAssertEqual(up.map(\.kindName), ["hello", "heartbeat"])
        if case let .heartbeat(h) = up[1] { XCTAssertEqual(h.step, 4) }
        // Still silent: the next wait doubles (300 → 600), capped at 1200.
        XCTAssertTrue(n.tick(now: 10_300).contains(.closeSocket))
        XCTAssertEqual(n.tick(now: 10_899), [])
        XCTAssertEqual(n.tick(now: 10_900), [.openSocket])
        _ = n.connected(now: 10_900)
        // Outcomes finished while disconnected are sent on reconnect.
        XCTAssertTrue(n.tick(now: 15_900).contains(.closeSocket))
        XCTAssertEqual(sends(n.jobEnded(key: JobKey("j1", 1), .success(metrics: [:], artefact: nil, wallSeconds: 1), now: 16_000)), [])
        XCTAssertEqual(n.tick(now: 17_100), [.openSocket], "backoff capped at 1200")
        XCTAssertEqual(sends(n.connected(now: 17_100)), ["hello", "ready", "result"])
        XCTAssertEqual(n.reconnects, 3)
    }

    func testUnknownPeerSaysHelloAgainAndVersionMismatchExits() {
        var n = makeLogic()
        _ = n.connected(now: 0)
        _ = n.received(.job(job()), now: 0)
        XCTAssertEqual(sends(n.received(Wire.error(code: .unknownPeer, "who?"), now: 10)), ["hello", "heartbeat"])
        let out = n.received(Wire.error(code: .versionMismatch, "peer speaks protocol v1, this build speaks v2"), now: 20)
        XCTAssertTrue(out.contains { if case .exit(code: 2, _) = $0 { return true } else { return false } })
        XCTAssertEqual(n.tick(now: 10_000), [], "stopped")
    }

    func testShutdownFinishesTheJobDeliversTheResultAndSaysGoodbye() {
        var n = makeLogic()
        _ = n.connected(now: 0)
        _ = n.received(.job(job()), now: 0)
        XCTAssertEqual(sends(n.shutdown(immediate: false, now: 10)), [])
        guard case let .ack(refused) = sentBodies(n.received(.job(job("j2")), now: 20))[0] else { return XCTFail() }
        XCTAssertFalse(refused.accepted)
        let end = n.jobEnded(key: JobKey("j1", 1), .success(metrics: [:], artefact: nil, wallSeconds: 1), now: 100)
        XCTAssertEqual(sends(end), ["result"], "no Ready while draining")
        let fin = n.received(ack(.result), now: 150)
        XCTAssertEqual(sends(fin), ["goodbye"])
        XCTAssertTrue(fin.contains(.exit(code: 0, reason: "finished cleanly")))
    }

    func testShutdownGivesUpOnMissingAcksAfterTheDrainTimeAndImmediateLeavesAtOnce() {
        var n = makeLogic()
        _ = n.connected(now: 0)
        _ = n.received(.job(job()), now: 0)
        _ = n.jobEnded(key: JobKey("j1", 1), .success(metrics: [:], artefact: nil, wallSeconds: 1), now: 100)
        _ = n.shutdown(immediate: false, now: 200)
        XCTAssertFalse(n.tick(now: 3_199).contains { if case .exit = $0 { return true } else { return false } })
        XCTAssertTrue(n.tick(now: 3_200).contains { if case .exit(code: 0, _) = $0 { return true } else { return false } })

        var m = makeLogic()
        _ = m.connected(now: 0)
        _ = m.received(.job(job()), now: 0)
        let out = m.shutdown(immediate: true, now: 10)
        XCTAssertEqual(sends(out), ["goodbye"])
        XCTAssertTrue(out.contains { if case .exit(code: 0, _) = $0 { return true } else { return false } })
    }

    func testAbandonedJobIsStoppedAndItsOutcomeDropped() {
        var n = makeLogic()
        _ = n.connected(now: 0)
        _ = n.received(.job(job()), now: 0)
        let told = n.received(ack(.heartbeat, abandon: true), now: 10)
        XCTAssertTrue(told.contains(.cancelJob(JobKey("j1", 1))), "the compute thread is told to stop the job")
        XCTAssertFalse(n.received(ack(.heartbeat, abandon: true), now: 11).contains(.cancelJob(JobKey("j1", 1))),
                       "once")
        let other = n.received(ack(.heartbeat, "j2", abandon: true), now: 12)
        XCTAssertFalse(other.contains { if case .cancelJob = $0 { return true } else { return false } },
                       "not for another job")
        let out = n.jobEnded(key: JobKey("j1", 1), .success(metrics: [:], artefact: nil, wallSeconds: 1), now: 100)
        XCTAssertEqual(sends(out), ["ready"])
        XCTAssertTrue(n.pendingKeys.isEmpty)
    }
}
