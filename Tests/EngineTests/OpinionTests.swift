import Engine
import JobCore
import Foundation
import XCTest

final class OpinionTests: XCTestCase {
    func testAlignmentOnTheOrdinalScale() {
        let ord = [1.0, 2.0, 3.0, 4.0]
        XCTAssertEqual(OpinionTask.alignment([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], ordinal: ord), 1, accuracy: 1e-9)
        XCTAssertEqual(OpinionTask.alignment([1, 0, 0, 0], [0, 0, 0, 1], ordinal: ord), 0, accuracy: 1e-9)
        // all mass one step apart: W₁ = 1 on a span of 3
        XCTAssertEqual(OpinionTask.alignment([1, 0, 0, 0], [0, 1, 0, 0], ordinal: ord), 2.0 / 3, accuracy: 1e-6)
        // the ordinal positions, not the list order, define the scale
        XCTAssertEqual(OpinionTask.alignment([1, 0, 0], [0, 1, 0], ordinal: [1, 3, 2]), 0, accuracy: 1e-6)
        XCTAssertEqual(OpinionTask.kl([0.5, 0.5], [0.5, 0.5]), 0, accuracy: 1e-9)
    }

    func testLoadSplitAndErrors() throws {
        let qs = (0..<12).map { i in
            ["qkey": "Q\(i)", "question": "Question \(i)?", "options": ["Yes", "No", "Unsure"], "option_ordinal": [1, 2, 3],
             "dist": ["North": [2, 1, 1], "South": i % 3 == 0 ? [1, 1] : [0, 1, 3]]] as [String: Any]
        }
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("opinion-\(UUID().uuidString).json")
        try JSONSerialization.data(withJSONObject: ["questions": qs]).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        let task = try OpinionTask.load(path: url.path)
        XCTAssertEqual(task.groups, ["North", "South"])
        XCTAssertEqual(task.questions[0].dist["North"]!, [0.5, 0.25, 0.25])
        XCTAssertNil(task.questions[0].dist["South"], "a distribution of the wrong length is dropped")
        XCTAssertEqual(OpinionTask.prompt(task.questions[1]), "Question: Question 1?\nA. Yes\nB. No\nC. Unsure\nAnswer:")
        let a = try task.split(group: "North", seed: 3, train: 4, test: 5)
        let b = try task.split(group: "North", seed: 3, train: 4, test: 5)
        XCTAssertEqual(a.train, b.train); XCTAssertEqual(a.test, b.test)
        XCTAssertTrue(Set(a.train.map(\.key)).isDisjoint(with: a.test.map(\.key)))
        XCTAssertEqual(try task.split(group: "South", seed: 0, train: 3, test: 0).test.count, 5, "8 usable questions")
        XCTAssertThrowsError(try task.split(group: "West", seed: 0, train: 2, test: 2)) {
            XCTAssertEqual($0 as? OpinionTaskError, .unknownGroup("West", known: ["North", "South"]))
        }
        XCTAssertThrowsError(try task.split(group: "South", seed: 0, train: 8, test: 1))
        XCTAssertThrowsError(try OpinionTask.load(path: "/nonexistent/q.json"))
    }

    /// Δ = 0's restricted distributions come from the prefill's logits; they equal those of the
    /// single-token path run with Δ = 0.
    func testBaseDistributionsEqualTheZeroDeltaPath() throws {
        let lm = try SharedModel.get()
        let q = OpinionQuestion(key: "k", question: "Is the sky blue?", options: ["Yes", "No", "Sometimes"],
                                ordinal: [1, 2, 3], dist: [:])
        let prompts = [q, q].enumerated().map { i, q in lm.tokenizer.encode(OpinionTask.prompt(q) + (i == 0 ? "" : " ")) }
        let alphabets = [OpinionTask.letterTokens(lm.tokenizer, count: 3), OpinionTask.letterTokens(lm.tokenizer, count: 2)]
        let path = InterventionPath(model: lm, layer: 6, prompts: prompts)
        let base = path.restrictedBaseDistributions(alphabets: alphabets)
        let zero = path.restrictedDistributions(delta: [Float](repeating: 0, count: lm.config.attnDim), alphabets: alphabets)
        for (a, b) in zip(base, zero) {
            XCTAssertEqual(a.count, b.count)
            for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: 1e-4) }
            XCTAssertEqual(a.reduce(0, +), 1, accuracy: 1e-5)
        }
    }

    /// A short run on the shared OpinionQA file: the solver lowers the training KL and the test
    /// measures are proper.
    func testShortOpinionRun() throws {
        let path = try TestPaths.sharedFile("data/opinionqa/opinionqa_4groups.json").path
        let lm = try SharedModel.get()
        let task = try OpinionTask.load(path: path)
        XCTAssertEqual(task.questions.count, 684)
        XCTAssertTrue(task.groups.contains("Northeast"))
        let problem = try task.problem(lm: lm, group: "Northeast", layer: 4, seed: 0, train: 4, test: 6, data: path)
        let settings = DeltaSettings(layer: 4, lambda: 0.01, gamma: 0.01, solver: .adam, steps: 8, lr: 0.1, precision: .fp32)
        let r = try DeltaPipeline(lm: lm).run([problem], settings: settings)[0]
        XCTAssertLessThan(r.result.history.last!.loss, r.result.history.first!.loss)
        let m = r.metrics
        XCTAssertEqual(m["n_test"], 6)
        for v in [m["alignment"]!, m["zero_shot_alignment"]!] { XCTAssertTrue(v > 0 && v <= 1, "\(v)") }
        XCTAssertGreaterThanOrEqual(m["zero_shot_kl"]!, 0)
        let byGroup = OpinionTask.alignmentByGroup(m)
        XCTAssertEqual(Set(byGroup.keys), Set(task.groups))
        XCTAssertEqual(Set(OpinionTask.alignmentByGroup(m, prefix: "zero_shot_").keys), Set(task.groups))
        XCTAssertEqual(byGroup["Northeast"]!, m["alignment"]!, accuracy: 1e-12, "the target group's entry is the headline figure")
        // the artefact says what it is
        let md = r.artefact.metadata
        XCTAssertEqual(md.task, "opinion:Northeast")
        XCTAssertEqual(md.extra["data"], path)
        XCTAssertEqual(try DeltaArtefact(data: r.artefact.data), r.artefact)
    }

    /// Opinion tasks in grids: "<file>.json#<group>"; anything else is a pair task.
    func testOpinionAddresses() {
        XCTAssertEqual(OpinionTask.address("d/opinionqa.json#Less than $30,000")?.path, "d/opinionqa.json")
        XCTAssertEqual(OpinionTask.address("d/opinionqa.json#Less than $30,000")?.group, "Less than $30,000")
        XCTAssertEqual(OpinionTask.address("a#b.json#North")?.path, "a#b.json", "the last # splits")
        for t in ["antonym", "d/antonym.json", "d/opinionqa.json#", "notes#North"] { XCTAssertNil(OpinionTask.address(t), t) }
    }

    /// Few-shot demonstrations answer with the group's most frequent letter; the prompting
    /// baselines' distributions (the demonstrations computed once for all questions) equal each
    /// prompt's own forward; `score` is the per-question mean of alignment and KL.
    func testPromptingBaselinesOnOpinionTasks() throws {
        let lm = try SharedModel.get()
        let q = { (text: String, d: [Float]) in
            OpinionQuestion(key: text, question: text, options: ["Yes", "No", "Unsure"], ordinal: [1, 2, 3],
                            dist: ["North": d, "South": [0.2, 0.2, 0.6]])
        }
        let demos = [q("Is it cold?", [0.1, 0.7, 0.2]), q("Is it late?", [0.5, 0.2, 0.3])]
        let tests = [q("Is the sky blue?", [0.6, 0.3, 0.1]), q("Do you like rain?", [0.2, 0.5, 0.3])]
        let prompt = OpinionTask.fewShotPrompt(demos, group: "North", tests[0])
        XCTAssertEqual(prompt, OpinionTask.prompt(demos[0]) + " B\n\n" + OpinionTask.prompt(demos[1]) + " A\n\n"
                           + OpinionTask.prompt(tests[0]))
        let prompts = tests.map { OpinionTask.fewShotPrompt(demos, group: "North", $0) }
        let shared = OpinionTask.distributions(lm, prompts: prompts, letters: [3, 3])
        for (i, p) in prompts.enumerated() {
            let alone = OpinionTask.distributions(lm, prompts: [p], letters: [3])[0]
            XCTAssertEqual(shared[i].reduce(0, +), 1, accuracy: 1e-5)
            for (a, b) in zip(shared[i], alone) { XCTAssertEqual(a, b, accuracy: 1e-4, "prompt \(i)") }
        }
        let m = OpinionTask.score(shared, tests, group: "North", prefix: "zero_shot_")
        let align = zip(shared, tests).map { OpinionTask.alignment($0, $1.dist["North"]!, ordinal: $1.ordinal) }
        let kl = zip(shared, tests).map { OpinionTask.kl($0, $1.dist["North"]!) }
        XCTAssertEqual(m["zero_shot_alignment"]!, align.reduce(0, +) / 2, accuracy: 1e-12)
        XCTAssertEqual(m["zero_shot_kl"]!, kl.reduce(0, +) / 2, accuracy: 1e-12)
        XCTAssertEqual(m["zero_shot_" + OpinionTask.alignmentKey(group: "North")]!, m["zero_shot_alignment"]!)
        XCTAssertNotNil(m["zero_shot_" + OpinionTask.alignmentKey(group: "South")])
    }

    /// An opinion task runs as a job: zero-shot through `PairTaskJobs`, and a method that does not
    /// apply is refused by name.
    func testOpinionJobs() throws {
        let path = try TestPaths.sharedFile("data/opinionqa/opinionqa_4groups.json").path
        let jobs = PairTaskJobs(lm: try SharedModel.get())
        let spec = JobSpec(task: path + "#Northeast", method: .zeroShot, seed: 1, trainSize: 3, testSize: 4)
        let m = try jobs.run(spec).metrics
        XCTAssertEqual(m["n_test"], 4)
        XCTAssertTrue(m["alignment"]! > 0 && m["alignment"]! <= 1)
        var lora = spec
        lora.method = .lora
        XCTAssertThrowsError(try jobs.run(lora)) { XCTAssertTrue("\($0)".contains("does not run on opinion tasks"), "\($0)") }
        var missing = spec
        missing.task = path + "#Atlantis"
        XCTAssertThrowsError(try jobs.run(missing)) { XCTAssertTrue("\($0)".contains("Atlantis"), "\($0)") }
    }
}
