import Foundation
import JobCore
import Protocol
import XCTest
@testable import Coordinator

/// The coordinator's limits: grid size, queue length, bad frames per connection, and where it may
/// listen without keys. Each refusal is answered and counted.
final class LimitsTests: XCTestCase {
    var dir: URL!
    var server: CoordinatorServer?
    let ctx = try! ZContext()
    var sockets: [ZSocket] = []

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("coord-limits-\(UUID().uuidString)")
    }

    override func tearDownWithError() throws {
        sockets.forEach { $0.close() }
        server?.stop()
        try? FileManager.default.removeItem(at: dir)
    }

    func start(maxQueued: Int = 200_000, limits: CoordinatorLimits) throws -> CoordinatorServer {
        let s = try CoordinatorServer(options: .init(
            storeDirectory: dir, bind: "tcp://127.0.0.1:*", pub: "tcp://127.0.0.1:*",
            scheduler: SchedulerConfig(maxQueuedJobs: maxQueued), tickMs: 50, limits: limits))
        try s.start()
        server = s
        return s
    }

    /// A grid of `seeds` jobs of its own (its task is its name: job ids do not name experiments).
    static func grid(_ name: String, seeds: Int) -> String {
        let list = (0..<seeds).map(String.init).joined(separator: ",")
        return #"{"experiment": "\#(name)", "tasks": "\#(name)", "methods": "synthetic", "seeds": [\#(list)]}"#
    }

    func testGridSizeAndQueueLengthAreBounded() throws {
        let srv = try start(maxQueued: 6, limits: CoordinatorLimits(maxGridJobs: 4))
        let c = try CoordinatorClient(endpoint: srv.endpoint, timeoutSeconds: 5)

        let big = try c.submit(gridJSON: Self.grid("big", seeds: 5))
        XCTAssertFalse(big.ok)
        XCTAssertTrue(big.errors.first?.message.contains("5 jobs") == true, "\(big.errors)")
        XCTAssertTrue(big.errors.first?.message.contains("--max-grid-jobs") == true, "\(big.errors)")

        XCTAssertTrue(try c.submit(gridJSON: Self.grid("a", seeds: 4)).ok)
        let dry = try c.submit(gridJSON: Self.grid("b", seeds: 3), dryRun: true)
        XCTAssertFalse(dry.ok, "a dry run tells the refusal too")
        let full = try c.submit(gridJSON: Self.grid("b", seeds: 3))
        XCTAssertFalse(full.ok)
        let why = full.errors.first?.message ?? ""
        XCTAssertTrue(why.contains("holds 4 jobs") && why.contains("add 3") && why.contains("--max-queued-jobs"), why)
        // the same grid again adds nothing to the queue: taken
        XCTAssertTrue(try c.submit(gridJSON: Self.grid("a", seeds: 4)).ok)
        XCTAssertTrue(try c.submit(gridJSON: Self.grid("b", seeds: 2)).ok, "4 + 2 fit in 6")

        let st = try c.status()
        XCTAssertEqual(st.experiments.map(\.experiment).sorted(), ["a", "b"], "nothing of the refused grids queued")
        XCTAssertEqual(st.experiments.map(\.total).reduce(0, +), 6)
        XCTAssertEqual(st.counters["refused_grid_too_large"], 1)
        XCTAssertEqual(st.counters["refused_queue_full"], 1)
    }

    /// Past its budget of bad frames a connection is told once, then ignored for a while; other
    /// peers are served all along, and it is heard again afterwards.
    func testAFloodOfBadFramesBlocksItsConnectionForAWhile() throws {
        let srv = try start(limits: CoordinatorLimits(badFramesPerSecond: 5, blockSeconds: 1))
        var o = ZSocketOptions()
        o.lingerMs = 0
        let peer = try ZSocket(ctx, .dealer, options: o)
        sockets.append(peer)
        try peer.connect(srv.endpoint)
        for i in 0..<20 { try peer.send(Data([0xFF, UInt8(i)]), timeoutMs: 1000) }
        var codes: [Intervene_V1_Error.Code] = []
        while let f = try peer.receive(timeoutMs: 500), case .error(let e) = try Wire.decodeBody(f.last!) {
            codes.append(e.code)
            if e.code == .limit { XCTAssertTrue(e.message.contains("--max-bad-frames"), e.message) }
        }
        XCTAssertEqual(codes, Array(repeating: .malformed, count: 5) + [.limit])

        let c = try CoordinatorClient(endpoint: srv.endpoint, timeoutSeconds: 5)
        var st = try c.status()
        XCTAssertEqual(st.counters["malformed"], 6)
        XCTAssertEqual(st.counters["dropped_blocked_peer"], 14)
        XCTAssertEqual(st.counters["peers_blocked"], 1)

        // blocked: even a good request goes unanswered; after the block it is answered
        try peer.send(Wire.encode(.statusRequest(Intervene_V1_StatusRequest())), timeoutMs: 1000)
        XCTAssertNil(try peer.receive(timeoutMs: 300))
        Thread.sleep(forTimeInterval: 1)
        try peer.send(Wire.encode(.statusRequest(Intervene_V1_StatusRequest())), timeoutMs: 1000)
        guard let f = try peer.receive(timeoutMs: 3000), case .statusReply? = try? Wire.decodeBody(f.last!) else {
            return XCTFail("not heard again after the block")
        }
        st = try c.status()
        XCTAssertEqual(st.counters["dropped_blocked_peer"], 15)
    }

    func testBadFrameLimiterWindowsAndBlocks() {
        var l = BadFrameLimiter(perSecond: 3, blockSeconds: 10)
        let a = Data("a".utf8), b = Data("b".utf8)
        XCTAssertEqual((0..<3).map { _ in l.record(a, now: 100) }, [false, false, false])
        XCTAssertFalse(l.isBlocked(a, now: 100))
        XCTAssertTrue(l.record(a, now: 100.5), "the fourth in a second")
        XCTAssertTrue(l.isBlocked(a, now: 109.9))
        XCTAssertFalse(l.isBlocked(b, now: 100.5), "per connection")
        XCTAssertFalse(l.isBlocked(a, now: 110.5))
        // a slow trickle never blocks
        for t in 0..<20 { XCTAssertFalse(l.record(b, now: 200 + Double(t))) }
        l.prune(now: 1000)
        XCTAssertEqual(l.tracked, 0)
    }

    func testSchedulerRefusesASubmissionPastTheQueueBound() {
        var s = Scheduler(config: SchedulerConfig(maxQueuedJobs: 3))
        func jobs(_ seeds: Range<Int>) -> [SubmittedJob] {
            seeds.map { i in
                let spec = JobSpec(task: "t", method: .synthetic, seed: i, steps: 10)
                return SubmittedJob(id: spec.id, spec: spec, device: .any)
            }
        }
        XCTAssertEqual(s.handle(.submit(experiment: "a", gridJSON: "{}", jobs: jobs(0..<2)), now: 1).reply,
                       .submitted(experiment: "a", new: 2, reused: 0, requeued: 0, total: 2))
        let ds = s.handle(.submit(experiment: "b", gridJSON: "{}", jobs: jobs(1..<4)), now: 2)
        guard case .refused(let name, let why)? = ds.reply else { return XCTFail("not refused: \(ds)") }
        XCTAssertEqual(name, "b")
        XCTAssertTrue(why.contains("holds 2 jobs and this grid would add 2"), why)
        XCTAssertEqual(ds.jobChanges, [])
        XCTAssertNil(s.experiments["b"], "nothing of it was kept")
        XCTAssertNil(s.queueRefusal(jobs(0..<3)), "2 queued + 1 new fit")
    }

    func testWithoutKeysOnlyLoopbackUnlessInsecure() {
        for local in ["tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:5", "ipc:///tmp/x", "inproc://y"] {
            XCTAssertTrue(Exposure.isLocal(local), local)
        }
        for open in ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.0.0.2:5555", "tcp://eth0:5555"] {
            XCTAssertFalse(Exposure.isLocal(open), open)
        }
        let why = Exposure.refusal(["tcp://127.0.0.1:5555", "tcp://0.0.0.0:5556"], keyed: false, insecure: false)
        XCTAssertTrue(why?.contains("tcp://0.0.0.0:5556") == true && why?.contains("--insecure-no-auth") == true,
                      why ?? "not refused")
        XCTAssertNil(Exposure.refusal(["tcp://0.0.0.0:5555"], keyed: true, insecure: false))
        XCTAssertNil(Exposure.refusal(["tcp://0.0.0.0:5555"], keyed: false, insecure: true))
        XCTAssertNil(Exposure.refusal(["tcp://127.0.0.1:5555"], keyed: false, insecure: false))
    }
}
