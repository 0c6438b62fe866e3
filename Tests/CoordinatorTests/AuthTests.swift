import Foundation
import JobCore
import Protocol
import XCTest
@testable import Coordinator

/// A coordinator with CurveZMQ keys, in this process, and hand-driven peers: some with listed keys,
/// some with none or a stranger's.
final class AuthTests: XCTestCase {
    var dir: URL!
    var server: CoordinatorServer!
    let ctx = try! ZContext()
    var sockets: [ZSocket] = []
    var serverPair: CurveKeyPair!
    var workerPair: CurveKeyPair!
    var clientPair: CurveKeyPair!
    var strangerPair: CurveKeyPair!

    override func setUpWithError() throws {
        try XCTSkipUnless(ZCurveKeys.available, "this libzmq has no CurveZMQ")
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("coord-auth-\(UUID().uuidString)")
        serverPair = try CurveKeyPair.generate()
        workerPair = try CurveKeyPair.generate()
        clientPair = try CurveKeyPair.generate()
        strangerPair = try CurveKeyPair.generate()
        let keys = try CurveServerKeys(pair: serverPair, workerKeys: CurveKeyList(keys: [workerPair.publicKey]),
                                       clientKeys: CurveKeyList(keys: [clientPair.publicKey]))
        server = try CoordinatorServer(options: .init(
            storeDirectory: dir, bind: "tcp://127.0.0.1:*", pub: "tcp://127.0.0.1:*",
            scheduler: SchedulerConfig(leaseSeconds: 60), tickMs: 50, keys: keys))
        try server.start()
    }

    override func tearDownWithError() throws {
        sockets.forEach { $0.close() }
        server?.stop()
        if let dir { try? FileManager.default.removeItem(at: dir) }
    }

    func keys(_ pair: CurveKeyPair) -> CurveClientKeys { CurveClientKeys(pair: pair, serverKey: serverPair.publicKey) }

    /// A DEALER to the coordinator presenting `pair` (nil: no keys at all).
    func dealer(_ pair: CurveKeyPair?) throws -> ZSocket {
        var o = ZSocketOptions()
        o.lingerMs = 0
        o.curve = pair.map { keys($0).socketCurve }
        let s = try ZSocket(ctx, .dealer, options: o)
        try s.connect(server.endpoint)
        sockets.append(s)
        return s
    }

    func client() throws -> CoordinatorClient {
        try CoordinatorClient(endpoint: server.endpoint, timeoutSeconds: 5, keys: keys(clientPair))
    }

    func receiveBody(_ s: ZSocket, timeout: Int = 3000) throws -> EnvelopeBody? {
        guard let frames = try s.receive(timeoutMs: timeout), let last = frames.last else { return nil }
        return try Wire.decodeBody(last)
    }

    /// The Error a message gets (nil: another answer, or none).
    func errorFor(_ body: EnvelopeBody, from s: ZSocket) throws -> Intervene_V1_Error? {
        try s.send(Wire.encode(body), timeoutMs: 2000)
        guard case .error(let e)? = try receiveBody(s) else { return nil }
        return e
    }

    static let grid = #"{"experiment": "a", "tasks": "t", "methods": "synthetic", "seeds": [0, 1, 2]}"#

    /// A listed worker, holding the first job of experiment "a".
    func workerWithAJob() throws -> (ZSocket, Intervene_V1_JobAssignment) {
        XCTAssertTrue(try client().submit(gridJSON: Self.grid).ok)
        let w = try dealer(workerPair)
        var hello = Intervene_V1_Hello()
        hello.workerID = "w1"; hello.device = "cpu"; hello.methods = ["synthetic"]
        try w.send(Wire.encode(.hello(hello)), timeoutMs: 2000)
        try w.send(Wire.encode(.ready(Intervene_V1_Ready())), timeoutMs: 2000)
        while let b = try receiveBody(w) { if case .job(let a) = b { return (w, a) } }
        throw ClientError.unexpected("the listed worker got no job")
    }

    func forgedResult(_ job: String) -> EnvelopeBody {
        var r = Intervene_V1_Result()
        r.jobID = job; r.attempt = 1; r.workerID = "w1"; r.metrics = ["exact_match": 0.999]
        return .result(r)
    }

    /// Every worker and client message, as an intruder would send them.
    func everyRequest(job: String) -> [EnvelopeBody] {
        var hello = Intervene_V1_Hello(); hello.workerID = "intruder"; hello.methods = ["synthetic"]
        var hb = Intervene_V1_Heartbeat(); hb.jobID = job; hb.attempt = 1
        var submit = Intervene_V1_Submit()
        submit.gridJson = #"{"experiment": "evil", "tasks": "t", "methods": "synthetic"}"#
        var cancel = Intervene_V1_Cancel(); cancel.experiment = "a"
        var q = Intervene_V1_Query(); q.experiment = "a"
        return [.hello(hello), .ready(Intervene_V1_Ready()), .heartbeat(hb), forgedResult(job), .submit(submit),
                .cancel(cancel), .statusRequest(Intervene_V1_StatusRequest()), .query(q)]
    }

    // MARK: tests

    /// A peer without keys, and one whose key is on no list, get nothing through: no reply, no
    /// state change, not even a received message; their failed handshakes are counted.
    func testUnauthenticatedPeersGetNothingThrough() throws {
        let (_, job) = try workerWithAJob()
        let c = try client()
        let jobsBefore = try c.query(experiment: "a").jobs.map { "\($0.jobID) \($0.state)" }
        let before = try c.status()

        let intruders = [try dealer(nil), try dealer(strangerPair)]
        for s in intruders {
            for body in everyRequest(job: job.jobID) { try? s.send(Wire.encode(body), timeoutMs: 0) }
        }
        for s in intruders { XCTAssertNil(try s.receive(timeoutMs: 1000), "an intruder got an answer") }

        let after = try c.status()
        XCTAssertEqual(after.counters["received"], (before.counters["received"] ?? 0) + 1,
                       "nothing of theirs reached the coordinator (only this status request)")
        XCTAssertEqual(after.counters["malformed"], nil)
        XCTAssertEqual(after.counters["forbidden"], nil)
        XCTAssertEqual(after.experiments.map(\.experiment), ["a"], "no experiment submitted")
        XCTAssertEqual(after.experiments.first?.cancelled, 0, "nothing cancelled")
        XCTAssertEqual(after.workers.map(\.workerID), ["w1"], "no intruder registered as a worker")
        XCTAssertEqual(try c.query(experiment: "a").jobs.map { "\($0.jobID) \($0.state)" }, jobsBefore)
        // both intruders' handshakes failed: the stranger's key refused by ZAP; the keyless one's
        // greeting crosses the coordinator's, so libzmq reports it as a mechanism mismatch or, when
        // the intruder hung up first, without detail (CI saw the latter once): any failure but a ZAP
        // refusal
        let failed = { (k: String) in after.counters["handshakes_failed\(k)"] ?? 0 }
        XCTAssertGreaterThanOrEqual(failed(""), 2, "\(after.counters)")
        XCTAssertGreaterThanOrEqual(failed("_key_refused"), 1, "\(after.counters)")
        XCTAssertGreaterThanOrEqual(failed("") - failed("_key_refused"), 1, "\(after.counters)")
    }

    /// A client key cannot act as a worker: Hello, Ready, Heartbeat and a Result for a running job
    /// are refused with FORBIDDEN, counted, and change nothing.
    func testAClientKeyCannotPostResultsOrActAsAWorker() throws {
        let (_, job) = try workerWithAJob()
        let s = try dealer(clientPair)
        let bodies = everyRequest(job: job.jobID).filter { $0.senderRoles == [.worker] }
        XCTAssertEqual(bodies.count, 4)
        for body in bodies {
            let e = try errorFor(body, from: s)
            XCTAssertEqual(e?.code, .forbidden, body.kindName)
            XCTAssertTrue(e?.message.contains("--worker-keys") == true, e?.message ?? "no error")
        }
        let c = try client()
        let rec = try XCTUnwrap(try c.query(experiment: "a").jobs.first { $0.jobID == job.jobID })
        XCTAssertEqual(rec.state, "running")
        XCTAssertNil(rec.metrics["exact_match"], "no forged metric stored")
        let st = try c.status()
        XCTAssertEqual(st.workers.map(\.workerID), ["w1"])
        XCTAssertEqual(st.counters["forbidden"], 4)
        XCTAssertEqual(st.counters["refused_results"], 0, "refused before the scheduler saw it")
    }

    /// A worker key cannot submit or cancel; it may read status.
    func testAWorkerKeyCannotSubmitOrCancel() throws {
        let (w, job) = try workerWithAJob()
        for body in everyRequest(job: job.jobID).filter({ $0.senderRoles == [.client] }) {
            let e = try errorFor(body, from: w)
            XCTAssertEqual(e?.code, .forbidden, body.kindName)
            XCTAssertTrue(e?.message.contains("--client-keys") == true, e?.message ?? "no error")
        }
        try w.send(Wire.encode(.statusRequest(Intervene_V1_StatusRequest())), timeoutMs: 2000)
        var status: Intervene_V1_StatusReply?
        while status == nil, let b = try receiveBody(w) { if case .statusReply(let r) = b { status = r } }
        XCTAssertEqual(status?.experiments.map(\.experiment), ["a"], "no experiment \"evil\"")
        XCTAssertEqual(status?.experiments.first?.cancelled, 0)
        XCTAssertEqual(status?.counters["forbidden"], 2)

        // the job's holder still reports it
        var r = Intervene_V1_Result()
        r.jobID = job.jobID; r.attempt = job.attempt; r.metrics = ["exact_match": 0.5]
        try w.send(Wire.encode(.result(r)), timeoutMs: 2000)
        var accepted: Bool?
        while accepted == nil, let b = try receiveBody(w) {
            if case .ack(let a) = b, a.kind == .result { accepted = a.accepted }
        }
        XCTAssertEqual(accepted, true)
    }

    /// The update stream admits client keys only; a keyed client follows an experiment through it.
    func testUpdatesReachClientKeysOnly() throws {
        let c = try client()
        XCTAssertTrue(try c.submit(gridJSON: Self.grid).ok)
        func subscriber(_ pair: CurveKeyPair?) throws -> ZSocket {
            var o = ZSocketOptions()
            o.lingerMs = 0
            o.curve = pair.map { keys($0).socketCurve }
            let s = try ZSocket(ctx, .sub, options: o)
            try s.connect(server.pubEndpoint)
            try s.subscribe()
            sockets.append(s)
            return s
        }
        let subs = [try subscriber(clientPair), try subscriber(workerPair), try subscriber(nil),
                    try subscriber(strangerPair)]
        let follower = try ExperimentFollower(client: c, experiment: "a")
        _ = try follower.start()
        Thread.sleep(forTimeInterval: 0.3)
        XCTAssertEqual(try c.cancel(experiment: "a").cancelled, 3)   // three updates
        XCTAssertNotNil(try subs[0].receive(timeoutMs: 3000), "a client key reads updates")
        for s in subs[1...] { XCTAssertNil(try s.receive(timeoutMs: 500), "only client keys read updates") }
        var cancelled = 0
        let deadline = Date().addingTimeInterval(5)
        while cancelled < 3, Date() < deadline {
            for case .changed(_, let j, _) in try follower.poll(timeout: 0.2) where j.state == .cancelled {
                cancelled += 1
            }
        }
        XCTAssertEqual(cancelled, 3, "the keyed follower saw every update")
    }

    /// `coordinator keys` writes pairs that serve, workers and clients load as they are.
    func testKeysCommandOutputLoads() throws {
        let out = dir.appendingPathComponent("keys").path
        var cmd = try CoordinatorCommand.Keys.parse(["coordinator", "w", "c", "--out", out])
        try cmd.run()
        XCTAssertThrowsError(try CoordinatorCommand.Keys.parse(["w", "--out", out]).run(), "no silent overwrite")
        let secret = try String(contentsOfFile: out + "/c.secret", encoding: .utf8).split(separator: "\n")
        let pub = try String(contentsOfFile: out + "/c.pub", encoding: .utf8)
        XCTAssertEqual(secret.count, 2)
        XCTAssertEqual(secret[0], "public " + pub.dropLast(), "NAME.secret's public line is NAME.pub")
        XCTAssertTrue(secret[1].hasPrefix("secret ") && secret[1].count == 47)
        let server = try XCTUnwrap(try CurveServerKeys.resolve(
            secretFile: out + "/coordinator.secret", workerKeysFile: out + "/w.pub", clientKeysFile: out + "/c.pub",
            environment: [:]))
        let c = try XCTUnwrap(try CurveClientKeys.resolve(secretFile: out + "/c.secret",
                                                          serverKeyFile: out + "/coordinator.pub", environment: [:]))
        XCTAssertEqual(c.serverKey, server.pair.publicKey)
        XCTAssertEqual(server.roles[c.pair.publicKey], .client)
        cmd = try CoordinatorCommand.Keys.parse(["w", "--out", out, "--force"])
        try cmd.run()
        XCTAssertNotEqual(try CurveKeyList.load(out + "/w.pub", flag: "").keys, server.roles.filter {
            $0.value == .worker
        }.map(\.key), "--force made a new pair")
    }

    /// A client that presents no keys, or a refused one, is told why instead of "no reply".
    func testRefusedClientsAreToldWhy() throws {
        func message(_ keys: CurveClientKeys?) -> String {
            do {
                _ = try CoordinatorClient(endpoint: server.endpoint, timeoutSeconds: 1, keys: keys).status()
                return "answered"
            } catch { return "\(error)" }
        }
        let none = message(nil)
        XCTAssertTrue(none.contains("requires keys"), none)
        let refused = message(keys(strangerPair))
        XCTAssertTrue(refused.contains("refused this client's key") && refused.contains("--client-keys"), refused)
        let wrongServer = message(CurveClientKeys(pair: clientPair, serverKey: strangerPair.publicKey))
        XCTAssertTrue(wrongServer.contains("--server-key"), wrongServer)
    }
}
