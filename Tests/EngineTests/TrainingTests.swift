import Engine
import JobCore
import Foundation
import XCTest

/// The full-sequence path (fine-tuning baselines): its forward against the model's, and its
/// backward against central differences, on both families.
final class TrainingTests: XCTestCase {
    func batch(_ lm: LanguageModel) -> (prompts: [[Int]], targets: [Int]) {
        let pairs = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow")]
        return (
            pairs.map { lm.tokenizer.encode("Q: \($0.0)\nA:") },
            pairs.map { lm.tokenizer.encode(" " + $0.1, bos: false)[0] }
        )
    }

    /// The grid's names for LoRA's targets are the engine's, in the same order.
    func testLoRATargetNamesAreTheEngines() {
        XCTAssertEqual(Tunable.loraTargets.choices, LoRA.Target.allCases.map(\.rawValue))
        XCTAssertEqual(Tunable.loraTargets.names(of: Tunable.loraTargets.defaultValue), ["q", "k", "v", "o"])
    }

    /// With B = 0 (LoRA's start) the path is the model: its last-position logits equal a forward's.
    func checkForward(_ lm: LanguageModel) throws {
        let (prompts, _) = batch(lm)
        let lora = LoRA(model: lm.model, targets: LoRA.Target.allCases, rank: 4, seed: 1)
        let path = SequencePath(model: lm, prompts: prompts, adapter: lora)
        let ours = path.logits()
        let ref = lm.model.forward(tokens: prompts, caches: prompts.map { lm.model.makeCache(capacity: $0.count) })
        let worst = zip(ours, ref).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(worst, 2e-3, "\(lm.config.architecture)")
    }

    /// Central differences on random coordinates of A and B, at random A and B, every target.
    func checkGradient(_ lm: LanguageModel, layers: Range<Int>, probes: Int) throws {
        let (prompts, targets) = batch(lm)
        let lora = LoRA(model: lm.model, targets: LoRA.Target.allCases, rank: 4, layers: layers, seed: 2)
        var rng = SplitMix64(seed: 3)
        lora.parameters = lora.parameters.map { _ in Float(rng.uniform() - 0.5) * 0.2 }
        let path = SequencePath(model: lm, prompts: prompts, adapter: lora)
        path.loss(targets: targets)
        let grad = lora.gradient
        let theta = lora.parameters
        XCTAssertGreaterThan(grad.map(abs).max()!, 1e-3, "the loss must depend on the adapter")
        // probe the largest-gradient coordinate of every slot (A and B of each target and layer)
        // and random others
        var picks: [Int] = lora.layout.map { slot in
            (slot.offset..<(slot.offset + slot.rows * slot.cols)).max { abs(grad[$0]) < abs(grad[$1]) }!
        }
        picks += (0..<probes).map { _ in Int(rng.next() % UInt64(theta.count)) }
        let (worst, largest) = centralDifferences(at: theta, grad: grad, picks: picks) {
            lora.parameters = $0
            return path.loss(targets: targets, gradient: false)
        }
        lora.parameters = theta
        XCTAssertGreaterThan(largest, 1e-2, "the probed differences must not all be ~0")
        XCTAssertLessThan(
            worst, 0.03, "\(lm.config.architecture): worst relative error over \(picks.count) coordinates")
    }

    /// Loss and gradients of a fixed LoRA (v_proj and o_proj of every layer) against PyTorch +
    /// PEFT on the same GGUF (Fixtures/make_lora_parity.py wrote the fixture).
    func testLoRALossAndGradientMatchPEFT() throws {
        let lm = try SharedModel.get()
        let url = TestPaths.packageRoot.appendingPathComponent("Tests/EngineTests/Fixtures/lora-parity.json")
        let root = try loadJSON(url) as! [String: Any]
        let prompts = root["prompts"] as! [[Int]]
        let targets = root["targets"] as! [Int]
        let lora = LoRA(model: lm.model, targets: [.v, .o], rank: 4, alpha: 8)
        for slot in lora.layout {
            let k = Double(slot.layer + (slot.target == .o ? 100 : 0))
            let isA = slot.rows == lora.rank
            for i in 0..<slot.rows {
                for j in 0..<slot.cols {
                    let (i, j) = (Double(i), Double(j))
                    lora.parameters[slot.offset + Int(i) * slot.cols + Int(j)] =
                        Float(isA ? 0.02 * sin(1 + 7 * i + 0.37 * j + k) : 0.02 * cos(2 + 3 * i + 0.11 * j + k))
                }
            }
        }
        let path = SequencePath(model: lm, prompts: prompts, adapter: lora)
        let loss = path.loss(targets: targets)
        XCTAssertEqual(Double(loss), root["loss"] as! Double, accuracy: 1e-3)
        let want = root["gradients"] as! [String: [String: Any]]
        var checked = 0
        for slot in lora.layout {
            let key = "\(slot.layer).\(slot.target.rawValue).\(slot.rows == lora.rank ? "A" : "B")"
            let w = try XCTUnwrap(want[key], key)
            let g = Array(lora.gradient[slot.offset..<(slot.offset + slot.rows * slot.cols)])
            let l2 = Double(g.reduce(0) { $0 + $1 * $1 }.squareRoot())
            let wl2 = w["l2"] as! Double
            XCTAssertEqual(l2, wl2, accuracy: 2e-3 * wl2 + 1e-7, key)
            for (a, b) in zip(g.prefix(4), w["first4"] as! [Double]) {
                XCTAssertEqual(Double(a), b, accuracy: 2e-3 * wl2 + 1e-7, key)
            }
            if wl2 > 1e-5 { XCTAssertEqual(g.indices.max { abs(g[$0]) < abs(g[$1]) }, w["argmax_abs"] as? Int, key) }
            checked += 1
        }
        XCTAssertEqual(checked, 120)
    }

    func testForwardEqualsTheModel() throws {
        try checkForward(try SharedModel.get())
        try checkForward(try SharedGemma.get())
    }

    func testGradientAgainstFiniteDifferencesSmolLM() throws {
        try checkGradient(try SharedModel.get(), layers: 28..<30, probes: 8)
    }

    func testGradientAgainstFiniteDifferencesGemma() throws {
        try checkGradient(try SharedGemma.get(), layers: 5..<6, probes: 4)
    }

    /// The `lora` job kind end to end: it trains (the loss falls), its parameters stay out of Δ's
    /// axes, and the adapted model is evaluated like every method; a zero learning rate leaves the
    /// model as it is (B stays 0), so it scores as the 0-shot job does.
    func testLoRAJobTrainsAndEvaluates() throws {
        let lm = try SharedModel.get()
        var spec = JobSpec(task: "antonym", method: .lora, seed: 2, testSize: 8, steps: 6)
        try spec.set(.loraLR, 0.005)
        let outcome = try PairTaskJobs(lm: lm).run(spec)
        let m = outcome.metrics
        XCTAssertLessThan(try XCTUnwrap(m["final_loss"]), try XCTUnwrap(m["initial_loss"]) * 0.8)
        // the artefact: every A and B, named, with what made them
        let (tensors, md) = try Safetensors.read(try XCTUnwrap(outcome.artefact))
        XCTAssertEqual(tensors.count, 30 * 4 * 2)
        XCTAssertEqual(tensors["blk.7.k.lora_b"]?.shape, [192, 4])
        XCTAssertEqual(md["method"], "lora")
        XCTAssertEqual(md["lora.lr"], "0.005")
        XCTAssertEqual(md["model_sha256"], try lm.sha256())
        XCTAssertEqual(m["n_test"], 8)
        // q and o: A [4 × 576], B [576 × 4]; k and v: A [4 × 576], B [192 × 4]; 30 layers
        XCTAssertEqual(m["parameters"], Double(30 * (2 * (4 * 576 + 576 * 4) + 2 * (4 * 576 + 192 * 4))))
        XCTAssertNotNil(m["exact_match"])
        var still = spec
        try still.set(.loraLR, 1e-7)
        still.steps = 1
        let a = try PairTaskJobs(lm: lm).run(still).metrics
        let zeroShot = JobSpec(task: "antonym", method: .zeroShot, seed: 2, testSize: 8)
        let zero = try PairTaskJobs(lm: lm).run(zeroShot).metrics
        XCTAssertEqual(a["exact_match"], zero["exact_match"])
        XCTAssertEqual(a["first_token_accuracy"], zero["first_token_accuracy"])
        XCTAssertFalse(JobMethod.lora.learnsDelta)
        XCTAssertFalse(JobMethod.ia3.learnsDelta)
        var ia3 = JobSpec(task: "antonym", method: .ia3, seed: 2, testSize: 4, steps: 4)
        try ia3.set(.ia3LR, 0.02)
        let i = try PairTaskJobs(lm: lm).run(ia3).metrics
        XCTAssertLessThan(try XCTUnwrap(i["final_loss"]), try XCTUnwrap(i["initial_loss"]))
        XCTAssertEqual(i["parameters"], Double(30 * (2 * 192 + 1536)))
        XCTAssertNotEqual(spec.id, JobSpec(task: "antonym", method: .lora, seed: 2, testSize: 8, steps: 6).id,
                          "lora.lr is part of a lora job's id")
    }

    /// IA³ on both families: central differences at random scalings near 1, on every kind of
    /// vector (k, v: outputs; down_proj: input).
    func checkIA3(_ lm: LanguageModel, layers: Range<Int>) throws {
        let (prompts, targets) = batch(lm)
        let ia3 = IA3(model: lm.model, layers: layers)
        var rng = SplitMix64(seed: 5)
        ia3.parameters = ia3.parameters.map { _ in 1 + Float(rng.uniform() - 0.5) * 0.4 }
        let path = SequencePath(model: lm, prompts: prompts, adapter: ia3)
        path.loss(targets: targets)
        let grad = ia3.gradient, theta = ia3.parameters
        let KV = lm.config.kvDim, F = lm.config.ffnDim, per = 2 * KV + F
        var picks: [Int] = []
        for l in 0..<layers.count {  // the largest of each vector, and one at random
            for (o, n) in [(0, KV), (KV, KV), (2 * KV, F)] {
                let r = (l * per + o)..<(l * per + o + n)
                picks.append(r.max { abs(grad[$0]) < abs(grad[$1]) }!)
                picks.append(r.lowerBound + Int(rng.next() % UInt64(n)))
            }
        }
        let (worst, largest) = centralDifferences(at: theta, grad: grad, picks: picks) {
            ia3.parameters = $0
            return path.loss(targets: targets, gradient: false)
        }
        ia3.parameters = theta
        XCTAssertGreaterThan(largest, 1e-2, "the probed differences must not all be ~0")
        XCTAssertLessThan(worst, 0.03, "\(lm.config.architecture): worst relative error, \(picks.count) coordinates")
    }

    func testIA3GradientAgainstFiniteDifferences() throws {
        try checkIA3(try SharedModel.get(), layers: 27..<30)
        try checkIA3(try SharedGemma.get(), layers: 16..<18)
    }

    /// At its start (every scaling 1) IA³ is the model itself.
    func testIA3StartsAtTheModel() throws {
        let lm = try SharedModel.get()
        let (prompts, _) = batch(lm)
        let ours = SequencePath(model: lm, prompts: prompts, adapter: IA3(model: lm.model)).logits()
        let ref = lm.model.forward(tokens: prompts, caches: prompts.map { lm.model.makeCache(capacity: $0.count) })
        XCTAssertLessThan(zip(ours, ref).map { abs($0 - $1) }.max()!, 2e-3)
    }

    /// A soft prompt initialised from a description of k tokens, with k virtual tokens, is that
    /// description: the full-sequence path and the generation hook both give the logits of the
    /// prompts with the description's tokens written in.
    func testSoftPromptAtItsStartIsItsDescription() throws {
        for lm in [try SharedModel.get(), try SharedGemma.get()] {
            let (prompts, _) = batch(lm)
            let text = "the opposite word"
            let desc = lm.tokenizer.encode(text, bos: false)
            let soft = SoftPrompt(model: lm, count: desc.count, description: text)
            let virtual = prompts.map(soft.insert)
            let real = prompts.map { Array($0.prefix(soft.offset)) + desc + $0.dropFirst(soft.offset) }
            let want = lm.model.forward(tokens: real, caches: real.map { lm.model.makeCache(capacity: $0.count) })
            let path = SequencePath(model: lm, prompts: virtual, adapter: soft).logits()
            let hooked = lm.model.forward(
                tokens: virtual, caches: virtual.map { lm.model.makeCache(capacity: $0.count) },
                hooks: SoftPromptHook(soft))
            XCTAssertLessThan(zip(path, want).map { abs($0 - $1) }.max()!, 2e-3, lm.config.architecture)
            XCTAssertLessThan(zip(hooked, want).map { abs($0 - $1) }.max()!, 1e-4, lm.config.architecture)
        }
    }

    /// Central differences on the soft prompt's vectors (the gradient at layer 0's input rows).
    func testSoftPromptGradientAgainstFiniteDifferences() throws {
        for lm in [try SharedModel.get(), try SharedGemma.get()] {
            let (prompts, targets) = batch(lm)
            let soft = SoftPrompt(model: lm, count: 3, description: "opposites")
            let path = SequencePath(model: lm, prompts: prompts.map(soft.insert), adapter: soft)
            path.loss(targets: targets)
            let grad = soft.gradient, theta = soft.parameters
            var rng = SplitMix64(seed: 9)
            let D = lm.config.dModel
            var picks = (0..<3).map { j in (j * D..<(j + 1) * D).max { abs(grad[$0]) < abs(grad[$1]) }! }
            picks += (0..<4).map { _ in Int(rng.next() % UInt64(theta.count)) }
            let (worst, largest) = centralDifferences(
                at: theta, grad: grad, picks: picks, eps: { max(1e-2, abs($0) * 1e-2) }
            ) {
                soft.parameters = $0
                return path.loss(targets: targets, gradient: false)
            }
            soft.parameters = theta
            XCTAssertGreaterThan(largest, 1e-2, lm.config.architecture)
            XCTAssertLessThan(worst, 0.03, lm.config.architecture)
        }
    }
}
