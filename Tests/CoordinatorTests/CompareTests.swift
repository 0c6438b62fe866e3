import Coordinator
import Foundation
import JobCore
import XCTest

/// `coordinator compare`'s statistics on jobs with known metrics.
final class CompareTests: XCTestCase {
    func job(
        _ task: String, _ seed: Int, _ em: Double, method: JobMethod = .intervention,
        solver: SolverMethod? = .adam, lambda: Double = 0.01, state: JobState = .done,
        objective: Double? = nil
    ) -> JobView {
        var s = JobSpec(task: "data/\(task).json", method: method, lambda: lambda, seed: seed, solver: solver)
        s.testSize = 100
        var metrics = ["exact_match": em]
        if let objective { metrics["final_objective"] = objective }
        return JobView(id: s.id, spec: s, state: state, metrics: metrics)
    }

    func testPairedDifferencesBySeedAndTheSuiteMean() throws {
        // arm A (adam): task a seeds 0,1,2 = 0.1, 0.2, 0.3; task b = 0.5, 0.5
        // arm B (fista): task a = 0.2, 0.4, 0.3 (diffs +0.1, +0.2, 0); task b = 0.6, 0.3 (+0.1, −0.2)
        var jobs = [job("a", 0, 0.1), job("a", 1, 0.2), job("a", 2, 0.3), job("b", 0, 0.5), job("b", 1, 0.5)]
        jobs += [
            job("a", 0, 0.2, solver: .fista, objective: 1), job("a", 1, 0.4, solver: .fista, objective: 3),
            job("a", 2, 0.3, solver: .fista), job("b", 0, 0.6, solver: .fista), job("b", 1, 0.3, solver: .fista),
        ]
        jobs.append(job("b", 2, 0.9, solver: .fista, state: .running))  // not done: left out
        jobs.append(job("c", 0, 0.9, solver: .fista))  // only one arm has c: not in the suite
        let c = try Comparison.make(jobs, metric: "exact_match")
        XCTAssertEqual(c.arms.map(\.label), ["intervention solver=adam", "intervention solver=fista"])
        XCTAssertEqual(c.baseline, 0)
        XCTAssertEqual(c.tasks, ["a", "b", "c"])
        XCTAssertEqual(c.suite, [0, 1])
        XCTAssertEqual(c.notDone, 1)
        let a = try XCTUnwrap(c.cells[0][0])
        XCTAssertEqual(a.mean, 0.2, accuracy: 1e-12)
        XCTAssertEqual(a.std, 0.1, accuracy: 1e-12)
        XCTAssertEqual(a.n, 3)
        let pa = try XCTUnwrap(c.paired[0][1])
        let pb = try XCTUnwrap(c.paired[1][1])
        XCTAssertEqual(pa.mean, 0.1, accuracy: 1e-12)
        XCTAssertEqual(pa.se, 0.1 / 3.0.squareRoot(), accuracy: 1e-12)  // sd of (0.1, 0.2, 0) = 0.1
        XCTAssertEqual(pb.mean, -0.05, accuracy: 1e-12)
        XCTAssertEqual(pb.se, (0.045).squareRoot() / 2.0.squareRoot(), accuracy: 1e-12)  // sd of (0.1, −0.2)
        XCTAssertNil(c.paired[0][0], "the baseline has no difference from itself")
        let suite = try XCTUnwrap(c.suitePaired[1])
        XCTAssertEqual(suite.mean, 0.025, accuracy: 1e-12)
        XCTAssertEqual(suite.se, (pa.se * pa.se + pb.se * pb.se).squareRoot() / 2, accuracy: 1e-12)
        XCTAssertEqual(try XCTUnwrap(c.suiteMean[0]), 0.35, accuracy: 1e-12)  // (0.2 + 0.5) / 2
        XCTAssertEqual(try XCTUnwrap(c.extras["final_objective"]?[1]), 2, accuracy: 1e-12)

        let text = Render.comparison(c, markdown: false)
        XCTAssertTrue(text.contains("+0.100 ± 0.058"), text)
        XCTAssertTrue(text.contains("−0.050 b"), "worst task named: \(text)")
        let md = Render.comparison(c, markdown: true)
        XCTAssertTrue(md.contains("| a | 0.200 ± 0.100 | **0.300 ± 0.100** (+0.100 ± 0.058) |"), md)
        let json = try JSONValue.parse(Render.comparisonJSON(c))
        guard case .number(let d, _)? = json["suite"]?["diff"]?["intervention solver=fista"] else {
            return XCTFail("no suite.diff in \(json.canonical)")
        }
        XCTAssertEqual(d, 0.025, accuracy: 1e-12)
    }

    func testBaselineByLabelAndClearErrors() throws {
        let jobs = [
            job("a", 0, 0.1), job("a", 0, 0.3, solver: .fista), job("a", 0, 0.2, method: .fewShot, solver: nil),
        ]
        let c = try Comparison.make(jobs, metric: "exact_match", baseline: "fista")
        XCTAssertEqual(c.arms[c.baseline].label, "intervention solver=fista")
        XCTAssertEqual(c.arms[2].label, "few-shot", "few-shot has no solver: its label leaves it out")
        XCTAssertThrowsError(try Comparison.make(jobs, metric: "exact_match", baseline: "intervention")) {
            XCTAssertTrue("\($0)".contains("matches 2 arms"), "\($0)")
        }
        XCTAssertThrowsError(try Comparison.make(jobs, metric: "judge")) {
            XCTAssertTrue("\($0)".contains("exact_match"), "names the metrics there are: \($0)")
        }
        XCTAssertThrowsError(try Comparison.make([job("a", 0, 0.1, state: .queued)], metric: "exact_match"))
    }

    /// Rows are model × task × test size: jobs that differ there are never paired or merged.
    func testRowsKeepModelsAndTestSizesApart() throws {
        var jobs = [job("a", 0, 0.1), job("a", 0, 0.3, solver: .fista)]
        var other = JobSpec(model: "other.gguf", task: "data/a.json", method: .intervention, seed: 0, solver: .adam)
        other.testSize = 100
        jobs.append(JobView(id: other.id, spec: other, state: .done, metrics: ["exact_match": 0.9]))
        let c = try Comparison.make(jobs, metric: "exact_match")
        XCTAssertEqual(c.tasks.count, 2, "\(c.tasks)")
        XCTAssertTrue(c.tasks.contains { $0.contains("other.gguf") }, "\(c.tasks)")
        let i = try XCTUnwrap(c.tasks.firstIndex { !$0.contains("other.gguf") })
        XCTAssertEqual(try XCTUnwrap(c.cells[i][0]).mean, 0.1, accuracy: 1e-12, "not merged")
    }
}
