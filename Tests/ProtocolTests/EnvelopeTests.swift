import Foundation
import XCTest
@testable import Protocol

final class EnvelopeTests: XCTestCase {
    func sampleResult() -> Intervene_V1_Result {
        var r = Intervene_V1_Result()
        r.jobID = "job-0123abcd"
        r.attempt = 2
        r.metrics = ["exact_match": 0.75, "final_loss": 1.25, "nonzero": 17]
        r.artefact = Data((0..<4096).map { UInt8($0 & 0xff) })
        r.artefactSha256 = String(repeating: "ab", count: 32)
        r.wallSeconds = 3.5
        r.workerID = "w1"
        return r
    }

    func testRoundTripOfEveryWorkerMessage() throws {
        var hello = Intervene_V1_Hello()
        hello.workerID = "w1"; hello.device = "cpu"; hello.deviceIndex = -1; hello.threads = 2
        hello.modelsCached = ["smollm2-135m-instruct"]; hello.hostname = "h"; hello.pid = 42; hello.version = "0.1"
        var params = JobParams()
        params.model = "m"; params.task = "antonym"; params.method = "synthetic"; params.layer = 4
        params.lambda = 0.01; params.gamma = 0.02; params.seed = 7; params.trainSize = 10; params.testSize = 20
        params.steps = 30; params.lr = 0.05; params.maxNewTokens = 4; params.shots = 3
        var job = Intervene_V1_JobAssignment()
        job.jobID = "j"; job.attempt = 1; job.leaseMs = 30_000; job.experiment = "e"; job.params = params
        var hb = Intervene_V1_Heartbeat(); hb.jobID = "j"; hb.attempt = 1; hb.step = 5; hb.total = 30
        var sm = Intervene_V1_StepMetrics(); sm.jobID = "j"; sm.step = 5; sm.values = ["loss": 0.5]
        var fail = Intervene_V1_Failure(); fail.jobID = "j"; fail.reason = "unknown task"; fail.deterministic = true
        var ack = Intervene_V1_Ack(); ack.kind = .result; ack.jobID = "j"; ack.attempt = 1
        var upd = Intervene_V1_Update(); upd.sequence = 99; upd.experiment = "e"; upd.state = "done"; upd.metrics = ["a": 1]
        var sub = Intervene_V1_SubmitReply(); sub.ok = false
        var fe = Intervene_V1_FieldError(); fe.path = "solver.steps"; fe.message = "expected a positive integer"
        sub.errors = [fe]
        let bodies: [EnvelopeBody] = [
            .hello(hello), .ready(Intervene_V1_Ready()), .job(job), .heartbeat(hb), .stepMetrics(sm),
            .result(sampleResult()), .failure(fail), .ack(ack), .update(upd), .submitReply(sub),
            Wire.error(code: .unknownPeer, "say hello"),
        ]
        var seqr = EnvelopeSequencer()
        for (i, body) in bodies.enumerated() {
            let data = seqr.encode(body)
            let env = try Wire.decode(data)
            XCTAssertEqual(env.protocolVersion, PROTOCOL_VERSION)
            XCTAssertEqual(env.seq, UInt64(i + 1))
            XCTAssertEqual(env.body, body, "round trip of \(body.kindName)")
        }
        XCTAssertEqual(EnvelopeBody.heartbeat(hb).kindName, "heartbeat")
        XCTAssertEqual(EnvelopeBody.stepMetrics(sm).kindName, "stepMetrics")
    }

    func testVersionMismatchIsRefusedWithAClearError() throws {
        var env = Wire.envelope(.ready(Intervene_V1_Ready()))
        env.protocolVersion = 2     // a build from before JobParams.tunables
        let data = try env.serializedData()
        XCTAssertThrowsError(try Wire.decode(data)) { error in
            XCTAssertEqual(error as? ProtocolError, .versionMismatch(peer: 2, ours: 3))
            XCTAssertEqual("\(error)", "peer speaks protocol v2, this build speaks v3")
        }
        // The reply to send back is an Error envelope of our version with the same text.
        let reply = try Wire.decode(Wire.errorReply(.versionMismatch(peer: 1, ours: PROTOCOL_VERSION)))
        guard case let .error(e)? = reply.body else { return XCTFail("not an error") }
        XCTAssertEqual(e.code, .versionMismatch)
        XCTAssertEqual(e.supportedVersion, PROTOCOL_VERSION)
        XCTAssertTrue(e.message.contains("v1"))
        // A missing version (0) is refused too.
        env.protocolVersion = 0
        XCTAssertThrowsError(try Wire.decode(try env.serializedData()))
    }

    func testMalformedAndEmptyEnvelopes() {
        XCTAssertThrowsError(try Wire.decode(Data([0xff, 0xff, 0xff, 0x01]))) { error in
            guard case .malformed? = error as? ProtocolError else { return XCTFail("\(error)") }
        }
        var env = Envelope(); env.protocolVersion = PROTOCOL_VERSION
        XCTAssertThrowsError(try Wire.decode(Wire.encode(env))) { error in
            XCTAssertEqual(error as? ProtocolError, .emptyBody)
        }
    }

    func testEncodeDecodeSpeed() throws {
        let body = EnvelopeBody.result(sampleResult())
        let n = 2000
        var t0 = DispatchTime.now().uptimeNanoseconds
        var data = Data()
        for _ in 0..<n { data = Wire.encode(body, seq: 1) }
        let enc = Double(DispatchTime.now().uptimeNanoseconds - t0) / Double(n) / 1000
        t0 = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<n { _ = try Wire.decode(data) }
        let dec = Double(DispatchTime.now().uptimeNanoseconds - t0) / Double(n) / 1000
        print(String(format: "envelope(Result, %d bytes): encode %.2f µs, decode %.2f µs (debug build)", data.count, enc, dec))
    }
}
