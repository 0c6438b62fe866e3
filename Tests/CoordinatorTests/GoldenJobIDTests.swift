import Foundation
import XCTest

@testable import Coordinator

/// Job ids are the store's keys: a resubmitted grid reuses a finished job only if its id is the
/// same. These ids were written by the code as it stood before the job types moved to JobCore
/// (commit "Test: golden job ids"); any change to the canonical form fails here, byte for byte.
final class GoldenJobIDTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let fixture = root.appendingPathComponent("Tests/CoordinatorTests/Fixtures/golden-job-ids.json")

    /// Every shipped grid, plus a test grid that sets every field to a non-default value.
    static func grids() throws -> [(name: String, url: URL)] {
        let dir = root.appendingPathComponent("cluster/grids")
        let shipped = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".json") }
            .sorted()
        return shipped.map { ("cluster/grids/" + $0, dir.appendingPathComponent($0)) }
            + [
                (
                    "golden-variety-grid.json",
                    root.appendingPathComponent("Tests/CoordinatorTests/Fixtures/golden-variety-grid.json")
                )
            ]
    }

    /// name → [[id, canonical JSON]] in expansion order.
    static func current() throws -> [String: [[String]]] {
        var out: [String: [[String]]] = [:]
        for (name, url) in try grids() {
            out[name] = try Grid.parse(contentsOf: url).expand().map { [$0.id, $0.spec.canonicalJSON] }
        }
        return out
    }

    func testEveryGridKeepsItsJobIDs() throws {
        let now = try Self.current()
        if ProcessInfo.processInfo.environment["INTERVENE_WRITE_GOLDEN_IDS"] == "1" {
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
            try enc.encode(now).write(to: Self.fixture)
            throw XCTSkip("wrote \(Self.fixture.path); this run checked nothing")
        }
        let golden = try JSONDecoder().decode([String: [[String]]].self, from: Data(contentsOf: Self.fixture))
        XCTAssertEqual(
            Set(golden.keys), Set(now.keys),
            "a grid was added or removed: regenerate the golden file only if its ids are new")
        var checked = 0
        for (name, jobs) in golden {
            guard let mine = now[name] else { continue }
            XCTAssertEqual(mine.count, jobs.count, "\(name): job count")
            for (a, b) in zip(mine, jobs) {
                XCTAssertEqual(a[1], b[1], "\(name): canonical form changed")
                XCTAssertEqual(a[0], b[0], "\(name): job id changed for \(b[1])")
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 500, "the golden file covers the shipped grids and the variety grid")
    }
}
