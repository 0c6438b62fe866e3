import Engine
import Foundation
import Protocol
@testable import Worker
import XCTest

/// The `worker` executable as a child process against a fake coordinator (loopback ROUTER):
/// synthetic-crash exits with status 3 mid-job; SIGTERM mid-job delivers the result, then leaves.
final class WorkerProcessTests: XCTestCase {
    var ctx: ZContext!
    var router: ZSocket!
    var seq = EnvelopeSequencer()

    override func setUpWithError() throws {
        ctx = try ZContext()
        var o = ZSocketOptions(); o.lingerMs = 0
        router = try ZSocket(ctx, .router, options: o)
        try router.bind("tcp://127.0.0.1:*")
    }

    var logPath: String?

    override func tearDown() {
        router?.close()
        // Keep the worker's stderr only when the test failed.
        if let logPath, (testRun?.totalFailureCount ?? 1) == 0 { try? FileManager.default.removeItem(atPath: logPath) }
    }

    func workerBinary() throws -> URL {
        if let p = ProcessInfo.processInfo.environment["INTERVENE_WORKER_BIN"] { return URL(fileURLWithPath: p) }
        return URL(fileURLWithPath: try builtExecutable("worker"))
    }

    func launch() throws -> Process {
        let p = Process()
        p.executableURL = try workerBinary()
        p.arguments = ["--connect", router.lastEndpoint, "--cpu", "--id", "proc-worker"]
        var env = ProcessInfo.processInfo.environment
        env["INTERVENE_SYNTHETIC_STEP_MS"] = "5"
        p.environment = env
        let logPath = NSTemporaryDirectory() + "worker-proc-test-\(name.filter { $0.isLetter })-\(ProcessInfo.processInfo.processIdentifier).log"
        FileManager.default.createFile(atPath: logPath, contents: nil)
        self.logPath = logPath
        p.standardError = FileHandle(forWritingAtPath: logPath)
        try p.run()
        return p
    }

    func expect<T>(_ what: String, timeoutMs: Int = 8_000, _ match: (Data, EnvelopeBody) -> T?) throws -> (Data, T) {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while Date() < deadline {
            guard let f = try router.receive(timeoutMs: 50) else { continue }
            if let t = match(f[0], try Wire.decode(f[f.count - 1]).body!) { return (f[0], t) }
        }
        throw NSError(domain: "test", code: 1, userInfo: [NSLocalizedDescriptionKey: "timed out waiting for \(what)"])
    }

    func wait(_ p: Process, seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while p.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        return !p.isRunning
    }

    func job(_ method: JobMethod, steps: Int) -> EnvelopeBody {
        var a = Intervene_V1_JobAssignment()
        a.jobID = "pj-\(method)"; a.attempt = 1; a.leaseMs = 400; a.experiment = "proc"
        a.params = Intervene_V1_JobParams(JobSpec(model: "none", task: "toy", method: method, steps: steps))
        return .job(a)
    }

    func testSyntheticCrashExitsWithStatus3MidJob() throws {
        let p = try launch()
        defer { if p.isRunning { p.terminate() } }
        let (peer, _) = try expect("ready") { _, b in if case .ready = b { return true }; return nil }
        try router.send([peer, seq.encode(job(.syntheticCrash, steps: 40))], timeoutMs: 1_000)
        _ = try expect("heartbeat") { _, b in if case .heartbeat = b { return true }; return nil }
        XCTAssertTrue(wait(p, seconds: 10), "worker did not exit")
        XCTAssertEqual(p.terminationStatus, 3)
    }

    func testSigtermMidJobDeliversTheResultThenLeaves() throws {
        let p = try launch()
        defer { if p.isRunning { p.terminate() } }
        let (peer, _) = try expect("ready") { _, b in if case .ready = b { return true }; return nil }
        try router.send([peer, seq.encode(job(.synthetic, steps: 100))], timeoutMs: 1_000)   // ~0.5 s
        _ = try expect("heartbeat") { _, b in if case .heartbeat = b { return true }; return nil }
        kill(p.processIdentifier, SIGTERM)
        let (p2, r) = try expect("result") { _, b -> Intervene_V1_Result? in if case let .result(r) = b { return r }; return nil }
        XCTAssertEqual(r.metrics["steps"], 100)
        var ack = Intervene_V1_Ack(); ack.kind = .result; ack.jobID = r.jobID; ack.attempt = r.attempt
        try router.send([p2, seq.encode(.ack(ack))], timeoutMs: 1_000)
        _ = try expect("goodbye") { _, b in if case .goodbye = b { return true }; return nil }
        XCTAssertTrue(wait(p, seconds: 10), "worker did not exit")
        XCTAssertEqual(p.terminationStatus, 0)
    }
}

/// A product executable built beside the test bundle (.build/debug/X.xctest[/Contents/MacOS/X]),
/// else a skip that says so.
func builtExecutable(_ name: String) throws -> String {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for _ in 0..<4 {
        let u = dir.appendingPathComponent(name)
        if FileManager.default.isExecutableFile(atPath: u.path) { return u.path }
        dir = dir.deletingLastPathComponent()
    }
    throw XCTSkip("\(name) executable not built next to the test bundle")
}
