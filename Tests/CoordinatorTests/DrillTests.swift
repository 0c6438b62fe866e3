import Coordinator
import Foundation
import XCTest

/// The short fault drill (`coordinator drill`, README "Operations"): real coordinator and worker
/// processes, killed and restarted while a synthetic grid runs; nothing may be lost.
final class DrillTests: XCTestCase {
    func binary(_ name: String) throws -> String {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<4 {  // .build/debug/X.xctest[/Contents/MacOS/X]
            let u = dir.appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: u.path) { return u.path }
            dir = dir.deletingLastPathComponent()
        }
        throw XCTSkip("\(name) executable not built next to the test bundle")
    }

    func testShortDrillLosesNothing() throws {
        let dir = NSTemporaryDirectory() + "drill-test-\(UUID().uuidString.prefix(8))"
        var c = FaultDrill.Config(
            coordinatorBinary: try binary("coordinator"), workerBinary: try binary("worker"), directory: dir,
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
        XCTAssertEqual(r.malformed + r.versionMismatch, 300, "every bad frame counted once: \(r.text)")
        XCTAssertEqual(r.recoveries.count, 1)
    }
}
