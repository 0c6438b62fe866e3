import Coordinator
import Foundation
import XCTest

/// The short fault drill (`coordinator drill`, README "Operations"): real coordinator and worker
/// processes, killed and restarted while a synthetic grid runs; nothing may be lost. Keys are on:
/// every process presents CurveZMQ keys, and intruders without them get nothing through.
final class DrillTests: XCTestCase {
    func testShortDrillLosesNothing() throws {
        let dir = NSTemporaryDirectory() + "drill-test-\(UUID().uuidString.prefix(8))"
        var c = FaultDrill.Config(
            coordinatorBinary: try builtExecutable("coordinator"), workerBinary: try builtExecutable("worker"),
            directory: dir,
            port: 20000 + Int(ProcessInfo.processInfo.processIdentifier % 20000))
        c.jobs = 16
        c.workers = 2
        c.workerKills = 4
        c.coordinatorKills = 1
        c.stalls = 1
        c.floodFrames = 300
        c.interval = 1
        c.stepMs = 10
        c.lease = 2
        c.timeout = 120
        let r = try FaultDrill(c).run { _ in }
        if r.ok { try? FileManager.default.removeItem(atPath: dir) }
        XCTAssertTrue(r.ok, r.text + "\n(logs in \(dir))")
        XCTAssertEqual(r.done, 16, r.text)
        XCTAssertEqual(r.coordinatorKills, 1, "the faults ran (else this checks little): \(r.text)")
        XCTAssertGreaterThanOrEqual(r.workerKills, 1, r.text)
        XCTAssertEqual(r.malformed + r.versionMismatch + r.droppedBlocked, 300,
                       "every bad frame counted once: \(r.text)")
        XCTAssertEqual(r.peersBlocked, 1, "the flood's connection was blocked past its budget: \(r.text)")
        XCTAssertEqual(r.recoveries.count, 1)
        XCTAssertTrue(r.keys)
        XCTAssertEqual(r.intruderMessages, 6, "the intruders ran: \(r.text)")
        XCTAssertEqual(r.intruderAnswers, 0, r.text)
        XCTAssertGreaterThanOrEqual(r.handshakesFailed, 2, r.text)
        XCTAssertEqual(r.forbidden, 1, "the result forged with a client key: \(r.text)")
    }
}
