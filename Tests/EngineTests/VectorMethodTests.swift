import Engine
import JobCore
import Foundation
import XCTest

/// The function vector and the in-context vector against their definitions, on hand-built cases
/// where the answer is known or computed another way.
final class VectorMethodTests: XCTestCase {
    static let train = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("old", "new")]
        .map { TaskPair(input: $0.0, output: $0.1) }

    /// Replaces head `head`'s output at layer `layer` at each sequence's last row by `value`.
    final class ReplaceHead: ForwardHooks {
        let layer: Int, head: Int, d: Int
        let value: [Float]
        init(layer: Int, head: Int, d: Int, value: [Float]) {
            self.layer = layer
            self.head = head
            self.d = d
            self.value = value
        }
        func residual(layer: Int, _ x: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {}
        func headOutputs(layer: Int, _ o: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
            guard layer == self.layer else { return }
            let A = value.count
            for s in 0..<layout.rowCount.count {
                for c in (head * d)..<((head + 1) * d) { o[layout.lastRow(s) * A + c] = value[c] }
            }
        }
    }

    func softmaxAt(_ logits: [Float], _ token: Int) -> Float {
        let m = logits.max()!
        return expf(logits[token] - m) / logits.reduce(0) { $0 + expf($1 - m) }
    }

    /// Clean prompt i asks pair i after the others; its corrupted twin shows the same inputs with
    /// every output moved to another input.
    func testICLPromptsAndTheirCorruptedTwins() throws {
        let f = PromptFormat.qa
        let p = FunctionVector.prompts(train: Self.train, format: f, seed: 3)
        XCTAssertEqual(p.clean.count, 5)
        XCTAssertEqual(p.answers, Self.train.map(\.output))
        let truth = Dictionary(uniqueKeysWithValues: Self.train.map { ($0.input, $0.output) })
        for (i, (clean, bad)) in zip(p.clean, p.corrupted).enumerated() {
            XCTAssertTrue(clean.hasSuffix(f.prompt(Self.train[i].input)))
            XCTAssertTrue(bad.hasSuffix(f.prompt(Self.train[i].input)))
            // demonstrations: "Q: x\nA: y" blocks before the query
            let demos = { (s: String) in
                s.components(separatedBy: "\n\n").dropLast().map { block -> (String, String) in
                    let lines = block.components(separatedBy: "\n")
                    return (String(lines[0].dropFirst(3)), String(lines[1].dropFirst(3)))
                }
            }
            let good = demos(clean), wrong = demos(bad)
            XCTAssertEqual(good.count, 4)
            XCTAssertFalse(good.contains { $0.0 == Self.train[i].input }, "the query is not among its demonstrations")
            XCTAssertTrue(good.allSatisfy { truth[$0.0] == $0.1 })
            XCTAssertEqual(wrong.map(\.0), good.map(\.0), "the same inputs in the same order")
            XCTAssertTrue(wrong.allSatisfy { truth[$0.0] != $0.1 }, "no output left in place: \(wrong)")
            XCTAssertEqual(Set(wrong.map(\.1)), Set(good.map(\.1)), "the outputs shuffled among them")
        }
        XCTAssertNotEqual(FunctionVector.prompts(train: Self.train, format: f, seed: 4).clean, p.clean)
    }

    /// ā is the mean of each prompt's head outputs at its last position, each prompt run alone.
    func testHeadMeansAreMeansOfLastPositionOutputs() throws {
        let lm = try SharedModel.get()
        let cfg = lm.config
        let prompts = FunctionVector.prompts(train: Self.train, format: .qa, seed: 0).clean.prefix(3)
            .map { lm.tokenizer.encode($0) }
        let means = FunctionVector.headMeans(lm, prompts: prompts)
        for l in [0, cfg.nLayers / 2, cfg.nLayers - 1] {
            var sum = [Float](repeating: 0, count: cfg.attnDim)
            for p in prompts {
                let cap = LastHeads(layer: l, A: cfg.attnDim)
                _ = lm.model.forward(tokens: [p], caches: [lm.model.makeCache(capacity: p.count)], hooks: cap)
                for c in 0..<cfg.attnDim { sum[c] += cap.value[c] / Float(prompts.count) }
            }
            let worst = zip(sum, means[l]).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(worst, 1e-3, "layer \(l)")
            XCTAssertGreaterThan(means[l].map(abs).max()!, 1e-3, "layer \(l): the means are not all ~0")
        }
    }

    final class LastHeads: ForwardHooks {
        let layer: Int
        var value: [Float]
        init(layer: Int, A: Int) {
            self.layer = layer
            value = [Float](repeating: 0, count: A)
        }
        func residual(layer: Int, _ x: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {}
        func headOutputs(layer: Int, _ o: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
            guard layer == self.layer else { return }
            for c in 0..<value.count { value[c] = o[layout.lastRow(0) * value.count + c] }
        }
    }

    /// AIE[ℓ,h] from the prefix-cached path equals p(answer) with the head replaced in a full
    /// forward of each prompt, minus p(answer) without, averaged.
    func testIndirectEffectsMatchFullForwardsWithTheHeadReplaced() throws {
        let lm = try SharedModel.get()
        let cfg = lm.config
        let p = FunctionVector.prompts(train: Self.train, format: .qa, seed: 1)
        let clean = p.clean.map { lm.tokenizer.encode($0) }
        let bad = Array(p.corrupted.prefix(3)).map { lm.tokenizer.encode($0) }
        let answers = p.answers.prefix(3).map { lm.tokenizer.encode(" " + $0, bos: false)[0] }
        let means = FunctionVector.headMeans(lm, prompts: clean)
        let layers = [0, 7, cfg.nLayers - 1]
        let effects = FunctionVector.indirectEffects(lm, prompts: bad, answers: answers, means: means, layers: layers)
        var largest: Float = 0
        for l in layers {
            for h in [0, cfg.nHeads / 2, cfg.nHeads - 1] {
                var expected: Float = 0
                for (i, ids) in bad.enumerated() {
                    let run = { (hooks: ForwardHooks?) in
                        lm.model.forward(tokens: [ids], caches: [lm.model.makeCache(capacity: ids.count)], hooks: hooks)
                    }
                    let patched = run(ReplaceHead(layer: l, head: h, d: cfg.headDim, value: means[l]))
                    expected += (softmaxAt(patched, answers[i]) - softmaxAt(run(nil), answers[i])) / Float(bad.count)
                }
                let got = effects[l * cfg.nHeads + h]
                XCTAssertEqual(got, expected, accuracy: 1e-5 + 1e-3 * abs(expected), "head \(l).\(h)")
                largest = max(largest, abs(expected))
            }
        }
        XCTAssertGreaterThan(largest, 1e-6, "some head must move p(answer)")
        let other = (0..<cfg.nLayers).filter { !layers.contains($0) }
        XCTAssertTrue(other.allSatisfy { l in (0..<cfg.nHeads).allSatisfy { effects[l * cfg.nHeads + $0] == 0 } })
    }

    /// FV = Σ W_O^ℓ·(ā in h's slot) over the chosen heads, by the backend's product; the top heads
    /// are the largest effects, ties to the lower index.
    func testVectorIsTheSumOfProjectedHeadMeansOfTheTopHeads() throws {
        let lm = try SharedModel.get()
        let cfg = lm.config
        var rng = SplitMix64(seed: 5)
        let means = (0..<cfg.nLayers).map { _ in (0..<cfg.attnDim).map { _ in Float(rng.uniform() - 0.5) } }
        let heads = [(layer: 2, head: 1), (layer: 9, head: cfg.nHeads - 1)]
        let fv = FunctionVector.vector(lm, means: means, heads: heads)
        var expected = [Float](repeating: 0, count: cfg.dModel)
        for (l, h) in heads {
            var slot = [Float](repeating: 0, count: cfg.attnDim)
            for c in (h * cfg.headDim)..<((h + 1) * cfg.headDim) { slot[c] = means[l][c] }
            expected.withUnsafeMutableBufferPointer { y in
                lm.model.backend.linear(slot, 1, lm.model.blocks[l].wo, y.baseAddress!, accumulate: true)
            }
        }
        XCTAssertLessThan(zip(fv, expected).map { abs($0 - $1) }.max()!, 1e-4)
        XCTAssertGreaterThan(fv.map(abs).max()!, 1e-2)

        var effects = [Float](repeating: 0, count: 12)
        effects[7] = 0.5; effects[2] = 0.5; effects[10] = 0.9; effects[0] = -1
        let top = FunctionVector.topHeads(effects, heads: 4, k: 3)
        XCTAssertEqual(top.map { "\($0.layer).\($0.head)" }, ["2.2", "0.2", "1.3"])
    }

    /// The direction of differences d_i = μ + a_i·u (Σ a_i = 0) is u, pointing along μ, plus μ;
    /// with no variation it is μ.
    func testICVDirectionIsTheFirstPrincipalComponentPlusTheMean() throws {
        let p = 6
        let u: [Float] = [3, 0, 4, 0, 0, 0].map { $0 / 5 }
        let mu: [Float] = [-1, 2, -0.5, 0, 1, 0.25]  // μ·u = −1 < 0: the component's sign flips to −u
        let a: [Float] = [2, -1, 0.5, -1.5, 0]
        let d = a.map { ai in (0..<p).map { mu[$0] + ai * u[$0] } }
        let v = InContextVector.direction(differences: d)
        for j in 0..<p { XCTAssertEqual(v[j], -u[j] + mu[j], accuracy: 1e-5, "coordinate \(j)") }
        XCTAssertEqual(InContextVector.direction(differences: [mu, mu]), mu)
    }

    /// The shift keeps each row's norm, turns it towards v, and is the identity at α = 0.
    func testICVShiftKeepsTheNormAndTurnsTowardsV() throws {
        var rng = SplitMix64(seed: 9)
        let D = 16
        let v = (0..<D).map { _ in Float(rng.normal()) }
        let icv = InContextVector(directions: [v, v.map { -$0 }])
        let x0 = (0..<(3 * D)).map { _ in Float(rng.normal()) }
        let layout = BatchLayout(rowStart: [0, 1, 2], rowCount: [1, 1, 1], startPos: [0, 0, 0])
        func cos(_ a: ArraySlice<Float>, _ b: [Float]) -> Float {
            zip(a, b).reduce(0) { $0 + $1.0 * $1.1 }
                / (a.reduce(0) { $0 + $1 * $1 }.squareRoot() * b.reduce(0) { $0 + $1 * $1 }.squareRoot())
        }
        var x = x0
        x.withUnsafeMutableBufferPointer { ICVHook(icv, alpha: 0).mlpOutput(layer: 0, $0.baseAddress!, layout) }
        XCTAssertLessThan(zip(x, x0).map { abs($0 - $1) }.max()!, 1e-5, "α = 0 changes nothing")
        x = x0
        x.withUnsafeMutableBufferPointer { ICVHook(icv, alpha: 0.3).mlpOutput(layer: 0, $0.baseAddress!, layout) }
        for r in 0..<3 {
            let a = x0[(r * D)..<((r + 1) * D)], b = x[(r * D)..<((r + 1) * D)]
            XCTAssertEqual(b.reduce(0) { $0 + $1 * $1 }, a.reduce(0) { $0 + $1 * $1 }, accuracy: 1e-3, "row \(r) norm")
            XCTAssertGreaterThan(cos(b, v), cos(a, v), "row \(r) turned towards v")
        }
        // block 1's direction is −v
        x = x0
        x.withUnsafeMutableBufferPointer { ICVHook(icv, alpha: 0.3).mlpOutput(layer: 1, $0.baseAddress!, layout) }
        XCTAssertLessThan(cos(x[0..<D], v), cos(x0[0..<D], v))
        // the residual stream and the head outputs are left alone
        x = x0
        x.withUnsafeMutableBufferPointer {
            ICVHook(icv, alpha: 0.3).residual(layer: 1, $0.baseAddress!, layout)
            ICVHook(icv, alpha: 0.3).headOutputs(layer: 1, $0.baseAddress!, layout)
        }
        XCTAssertEqual(x, x0)
    }

    /// Sees every MLP output and changes nothing.
    final class WatchMLP: ForwardHooks {
        var seen = Set<Int>()
        func residual(layer: Int, _ x: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {}
        func headOutputs(layer: Int, _ o: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {}
        var seesMLPOutputs: Bool { true }
        func mlpOutput(layer: Int, _ m: UnsafeMutablePointer<Float>, _ layout: BatchLayout) { seen.insert(layer) }
    }

    /// Keeping the MLP output apart for a hook (the ICV's site) computes the same forward as the
    /// fused residual add, on both families (Gemma 3's MLP output is post-normed first).
    func testTheMLPOutputSiteLeavesTheForwardAsItIs() throws {
        for lm in [try SharedModel.get(), try SharedGemma.get()] {
            let prompts = ["Q: hot\nA:", "The capital of France is"].map { lm.tokenizer.encode($0) }
            let run = { (hooks: ForwardHooks?) in
                lm.model.forward(tokens: prompts, caches: prompts.map { lm.model.makeCache(capacity: $0.count) },
                                 hooks: hooks)
            }
            let watch = WatchMLP()
            let a = run(nil), b = run(watch)
            XCTAssertEqual(watch.seen, Set(0..<lm.config.nLayers), lm.config.architecture)
            let scale = a.map(abs).max()!
            XCTAssertLessThan(zip(a, b).map { abs($0 - $1) }.max()! / scale, 1e-5, lm.config.architecture)
        }
    }

    /// Latent states of texts run together equal those of each text run alone, and the ICV built
    /// from them has one direction per block.
    func testLatentStatesDoNotDependOnTheBatch() throws {
        let lm = try SharedModel.get()
        let both = InContextVector.latentStates(lm, texts: ["hot", "a longer text"])
        let alone = [InContextVector.latentStates(lm, texts: ["hot"])[0],
                     InContextVector.latentStates(lm, texts: ["a longer text"])[0]]
        XCTAssertEqual(both[0].count, lm.config.nLayers * lm.config.dModel)
        for i in 0..<2 {  // the stream reaches |x| ~ 10³ here: relative to the largest
            let scale = alone[i].map(abs).max()!
            XCTAssertLessThan(zip(both[i], alone[i]).map { abs($0 - $1) }.max()! / scale, 1e-5, "text \(i)")
        }
        let icv = InContextVector(lm, train: Array(Self.train.prefix(3)))
        XCTAssertEqual(icv.directions.count, lm.config.nLayers)
        XCTAssertTrue(icv.directions.allSatisfy { $0.count == lm.config.dModel && $0.contains { $0 != 0 } })
    }
}

/// A job whose outcome is no longer wanted stops within a step: the solver's and the
/// fine-tuning loop's checks throw `JobCancelled` instead of running every step.
final class CancellationTests: XCTestCase {
    func testCancelledJobsStopWithinAStep() throws {
        let lm = try SharedModel.get()
        let data = (0..<12).map { TaskPair(input: "w\($0)", output: "v\($0)") }
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("cancel-\(UUID().uuidString).json")
        try JSONSerialization.data(withJSONObject: data.map { ["input": $0.input, "output": $0.output] }).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        for method in [JobMethod.intervention, .lora] {
            let checks = LockedBox(0)
            var jobs = PairTaskJobs(lm: lm)
            jobs.shouldStop = { checks.mutate { $0 += 1; return $0 > 3 } }
            var steps = 0
            let spec = JobSpec(task: url.path, method: method, trainSize: 4, testSize: 2, steps: 500)
            XCTAssertThrowsError(try jobs.run(spec) { phase, _, _, _ in if phase == "solve" { steps += 1 } }) {
                XCTAssertTrue($0 is JobCancelled, "\(method): \($0)")
            }
            XCTAssertLessThanOrEqual(steps, 5, "\(method): stopped at once, not after 500 steps")
        }
    }
}

/// Where a function vector is undefined the job says why instead of running.
final class FunctionVectorRefusalTests: XCTestCase {
    func testPostNormFamiliesAndTooFewPairsAreRefused() throws {
        let data = (0..<12).map { ["input": "w\($0)", "output": "v\($0)"] }
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("fv-\(UUID().uuidString).json")
        try JSONSerialization.data(withJSONObject: data).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        let gemma = JobSpec(task: url.path, method: .functionVector, trainSize: 4, testSize: 2)
        XCTAssertThrowsError(try PairTaskJobs(lm: try SharedGemma.get()).run(gemma)) {
            XCTAssertTrue("\($0)".contains("normalises o_proj's output"), "\($0)")
        }
        let two = JobSpec(task: url.path, method: .functionVector, trainSize: 2, testSize: 2)
        XCTAssertThrowsError(try PairTaskJobs(lm: try SharedModel.get()).run(two)) {
            XCTAssertTrue("\($0)".contains("train_size ≥ 3"), "\($0)")
        }
    }
}
