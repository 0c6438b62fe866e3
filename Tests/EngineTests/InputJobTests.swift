import Foundation
import XCTest
@testable import Engine

/// Jobs that read other jobs' artefacts (`JobSpec.inputs`): a function vector from a stored head
/// ranking, and composition by adding stored Δs.
final class InputJobTests: XCTestCase {
    /// A small pair task as a file, so that the test does not depend on the task registry.
    static func taskFile(_ pairs: [(String, String)]) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("pairs-\(UUID().uuidString).json")
        try JSONSerialization.data(withJSONObject: pairs.map { ["input": $0.0, "output": $0.1] }).write(to: url)
        return url
    }
    static let opposites = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("old", "new"),
                            ("wet", "dry"), ("high", "low"), ("open", "closed"), ("light", "dark"), ("early", "late"),
                            ("hard", "soft"), ("full", "empty")]
    static let capitals = [("cat", "Cat"), ("dog", "Dog"), ("sun", "Sun"), ("tree", "Tree"), ("book", "Book"),
                           ("fish", "Fish"), ("rain", "Rain"), ("milk", "Milk"), ("door", "Door"), ("bird", "Bird"),
                           ("road", "Road"), ("king", "King")]

    func testAFunctionVectorFromAStoredRankingIsTheOneItWouldBuild() throws {
        let lm = try SharedModel.get()
        let task = try Self.taskFile(Self.opposites)
        defer { try? FileManager.default.removeItem(at: task) }
        let jobs = PairTaskJobs(lm: lm)
        var fv = JobSpec(task: task.path, method: .functionVector, seed: 1, trainSize: 5, testSize: 4, shots: 3)
        try fv.set(.fvHeads, 4)
        var rankingSpec = fv
        rankingSpec.method = .fvHeads
        rankingSpec = rankingSpec.normalised
        let ranking = try jobs.run(rankingSpec)
        let alone = try jobs.run(fv)
        var reading = fv
        reading.inputs = [rankingSpec.id]
        let fromInput = try jobs.run(reading, inputs: [(rankingSpec.id, try XCTUnwrap(ranking.artefact))])

        let (t0, _) = try Safetensors.read(try XCTUnwrap(alone.artefact))
        let (t1, md1) = try Safetensors.read(try XCTUnwrap(fromInput.artefact))
        XCTAssertEqual(t1["function_vector"]?.values, t0["function_vector"]?.values, "the same vector")
        XCTAssertEqual(md1["heads"]?.split(separator: ",").count, 4)
        for k in ["exact_match", "few_shot_exact_match", "first_token_accuracy", "top_effect", "fv_norm"] {
            XCTAssertEqual(fromInput.metrics[k], alone.metrics[k], k)
        }
        XCTAssertEqual(fromInput.metrics["ranking_from_input"], 1)
        XCTAssertEqual(alone.metrics["ranking_from_input"], 0)
        XCTAssertEqual(ranking.metrics["top_effect"], alone.metrics["top_effect"])
        XCTAssertEqual(ranking.metrics["clean_p_answer"], alone.metrics["clean_p_answer"])

        // a ranking of another split, or no ranking at all, is refused with what differs
        var other = reading
        other.seed = 2
        XCTAssertThrowsError(try jobs.run(other, inputs: [(rankingSpec.id, ranking.artefact!)])) {
            XCTAssertTrue("\($0)".contains("split seed 1, train size 5"), "\($0)")
        }
        XCTAssertThrowsError(try jobs.run(reading, inputs: [(rankingSpec.id, Data("not safetensors".utf8))])) {
            XCTAssertTrue("\($0)".contains("input \(rankingSpec.id) is not a head ranking"), "\($0)")
        }
        XCTAssertThrowsError(try jobs.run(reading, inputs: [])) {
            XCTAssertTrue("\($0)".contains("not those of the job's inputs"), "\($0)")
        }
    }

    func testAddScoresTheSumOfItsInputsDeltas() throws {
        let lm = try SharedModel.get()
        let a = try Self.taskFile(Self.opposites), b = try Self.taskFile(Self.capitals)
        defer { [a, b].forEach { try? FileManager.default.removeItem(at: $0) } }
        let jobs = PairTaskJobs(lm: lm)
        let learn = { (t: URL, layer: Int) in
            try jobs.run(JobSpec(task: t.path, layer: layer, seed: 3, trainSize: 5, testSize: 2, steps: 8))
        }
        let da = try learn(a, 4), db = try learn(b, 4), elsewhere = try learn(b, 5)
        let deltas = try [da, db].map { try DeltaArtefact(data: XCTUnwrap($0.artefact)).delta }
        let sum = zip(deltas[0], deltas[1]).map { $0 + $1 }
        XCTAssertGreaterThan(sum.filter { $0 != 0 }.count, 0, "something to add")

        var add = JobSpec(task: a.path, method: .add, layer: 4, seed: 3, trainSize: 5, testSize: 6, steps: 8)
        add.inputs = ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"]
        let out = try jobs.run(add, inputs: [(add.inputs[0], da.artefact!), (add.inputs[1], db.artefact!)])
        let art = try DeltaArtefact(data: XCTUnwrap(out.artefact))
        XCTAssertEqual(art.delta, sum)
        XCTAssertEqual(art.metadata.method, "add")
        XCTAssertEqual(art.metadata.extra["inputs"], add.inputs.joined(separator: ","))
        XCTAssertEqual(art.metadata.task, a.path)

        // the scores are those of the sum at the last position on the job's split, and of no Δ
        let split = TaskSplit(pairs: try TaskRegistry().load(a.path), seed: 3, trainSize: 5, testSize: 6)
        lm.evaluationMemo.removeAll()   // decoded afresh, not the job's own remembered answers
        lm.prefixMemo.removeAll()
        let evs = lm.evaluate(prompts: split.test.map { PromptFormat.qa.prompt($0.input) }, pairs: split.test,
                              format: .qa, deltas: [sum, nil], layer: 4, judge: try TaskRegistry().judge(for: a.path))
        XCTAssertEqual(out.metrics["exact_match"], evs[0].exactMatch)
        XCTAssertEqual(out.metrics["first_token_accuracy"], evs[0].firstTokenAccuracy)
        XCTAssertEqual(out.metrics["zero_shot_exact_match"], evs[1].exactMatch)
        XCTAssertEqual(out.metrics["n_test"], 6)

        XCTAssertThrowsError(try jobs.run({ var s = add; s.inputs = ["aaaaaaaaaaaaaaaa"]; return s }(),
                                          inputs: [("aaaaaaaaaaaaaaaa", da.artefact!)])) {
            XCTAssertTrue("\($0)".contains("two or more input jobs"), "\($0)")
        }
        let (i0, i1) = (add.inputs[0], add.inputs[1])
        XCTAssertThrowsError(try jobs.run(add, inputs: [(i0, da.artefact!), (i1, elsewhere.artefact!)])) {
            XCTAssertTrue("\($0)".contains("at layer 5"), "\($0)")
        }
        XCTAssertThrowsError(try jobs.run(add, inputs: [(i0, da.artefact!), (i1, Data([1, 2]))])) {
            XCTAssertTrue("\($0)".contains("is not a Δ artefact"), "\($0)")
        }
    }
}

/// Stopping the decoding of answers already decided wrong is a speed-up only.
final class DecidedAnswerTests: XCTestCase {
    /// Every item's exact match, first token and judge verdict are those of decoding to the end,
    /// on tasks with a lexicon judge, with non-ASCII answers and with none, with Δ and without.
    func testStoppingDecidedAnswersChangesNoMetric() throws {
        let lm = try SharedModel.get()
        let registry = TaskRegistry()
        var stopped = 0, right = 0
        let capitals = try InputJobTests.taskFile(InputJobTests.capitals)   // no lexicon: exact match judges
        defer { try? FileManager.default.removeItem(at: capitals) }
        for task in ["antonym", "english-french", "synonym", capitals.path] {
            let split = TaskSplit(pairs: try registry.load(task), seed: 2, trainSize: 2, testSize: 60)
            var rng = SplitMix64(seed: 9)
            let delta = (0..<lm.config.attnDim).map { _ in Float(rng.uniform() - 0.5) * 2 }
            // 0-shot prompts with a random Δ and without; 2-shot prompts, which answer some right
            let run = { (stop: Bool, shots: Bool) in
                lm.evaluate(prompts: split.test.map { shots ? PromptFormat.qa.fewShot(split.train, $0.input)
                                                          : PromptFormat.qa.prompt($0.input) },
                            pairs: split.test, format: .qa, deltas: shots ? [nil] : [delta, nil], layer: 4,
                            judge: try registry.judge(for: task), stopDecided: stop)
            }
            let full = try run(false, false) + run(false, true), fast = try run(true, false) + run(true, true)
            for (f, s) in zip(full, fast) {
                XCTAssertEqual(f.items.map(\.exact), s.items.map(\.exact), task)
                XCTAssertEqual(f.items.map(\.firstToken), s.items.map(\.firstToken), task)
                XCTAssertEqual(f.items.map(\.judged), s.items.map(\.judged), task)
                stopped += zip(f.items, s.items).filter { $0.prediction != $1.prediction }.count
                right += f.items.filter { $0.exact || $0.judged }.count
                for (a, b) in zip(f.items, s.items) where a.prediction != b.prediction {
                    XCTAssertFalse(a.exact || a.judged, "only answers decided wrong are cut short")
                }
            }
        }
        XCTAssertGreaterThan(stopped, 0, "some answers must be decided early (else this test checks nothing)")
        XCTAssertGreaterThan(right, 0, "and some must score, so that both verdicts are compared")
        print("decided early: \(stopped) answers; scoring in some metric: \(right)")
    }

    func testAnswerKeysKeepLettersAndDigitsInOrder() {
        XCTAssertEqual(String(decoding: LanguageModel.answerKey(" \"Café-Noir\", 42."), as: UTF8.self), "cafenoir42")
        XCTAssertEqual(LanguageModel.answerKey("e\u{301}"), LanguageModel.answerKey("é"))
    }
}
