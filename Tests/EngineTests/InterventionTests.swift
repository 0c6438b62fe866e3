import Engine
import Foundation
import XCTest

extension XCTestCase {
    /// The ten antonym prompts/targets recorded in parity.json (split seed 0, Q/A format).
    func trainingBatch(_ lm: LanguageModel) throws -> (prompts: [[Int]], targets: [Int], json: [String: Any]) {
        let root = try loadJSON(TestPaths.parity) as! [String: Any]
        let tr = root["training"] as! [String: Any]
        let prompts = (tr["prompts"] as! [String]).map { lm.tokenizer.encode($0) }
        XCTAssertEqual(prompts, tr["prompt_token_ids"] as! [[Int]])
        return (prompts, tr["target_first_token_ids"] as! [Int], tr)
    }
}

final class InterventionTests: XCTestCase {
    /// The single-token path must give the same logits as a whole forward pass with Δ hooked in.
    func testPathLogitsEqualFullForwardWithDelta() throws {
        let lm = try SharedModel.get()
        let (prompts, _, _) = try trainingBatch(lm)
        assertPathEqualsFullForward(lm, prompts: prompts, layers: [0, 4, 29], tolerance: 2e-3)
    }

    /// Loss and gradient at Δ = 0 against the independent PyTorch autograd values.
    func testLossAndGradientAtZeroMatchReference() throws {
        let lm = try SharedModel.get()
        let (prompts, targets, tr) = try trainingBatch(lm)
        let path = InterventionPath(model: lm, layer: tr["layer"] as! Int, prompts: prompts)
        let (loss, grad) = path.lossAndGradient(delta: [Float](repeating: 0, count: lm.config.attnDim), loss: .nextToken(targets: targets))
        let traj = tr["trajectory"] as! [[String: Any]]
        XCTAssertEqual(Double(loss), traj[0]["ce"] as! Double, accuracy: 1e-3)
        let g0 = tr["grad_at_zero"] as! [String: Any]
        let l2 = Double(grad.reduce(0) { $0 + $1 * $1 }.squareRoot())
        XCTAssertEqual(l2, g0["l2"] as! Double, accuracy: 1e-3 * l2)
        for (a, b) in zip(grad.prefix(8), g0["first8"] as! [Double]) { XCTAssertEqual(Double(a), b, accuracy: 2e-4) }
        XCTAssertEqual(grad.indices.max { abs(grad[$0]) < abs(grad[$1]) }, g0["argmax_abs"] as? Int)
    }

    /// Central differences on random coordinates at a random Δ, for both losses.
    func testGradientAgainstFiniteDifferences() throws {
        let lm = try SharedModel.get()
        let (prompts, targets, _) = try trainingBatch(lm)
        let A = lm.config.attnDim
        var rng = SplitMix64(seed: 7)
        let path = InterventionPath(model: lm, layer: 20, prompts: prompts)
        let delta = (0..<A).map { _ in Float(rng.uniform() - 0.5) }
        // opinion-style losses over 2–5 "letters" per row, with random target distributions
        let letters = ["A", "B", "C", "D", "E"].map { lm.tokenizer.encode(" " + $0)[0] }
        let alphabets = prompts.indices.map { Array(letters.prefix(2 + $0 % 4)) }
        let pis: [[Float]] = alphabets.map { a in let r = a.map { _ in Float(rng.uniform() + 0.1) }; let s = r.reduce(0, +); return r.map { $0 / s } }
        for loss in [TaskLoss.nextToken(targets: targets), .restrictedKL(alphabets: alphabets, target: pis)] {
            let (_, grad) = path.lossAndGradient(delta: delta, loss: loss)
            let picks = (0..<20).map { _ in Int(rng.next() % UInt64(A)) }
            let (worst, _) = centralDifferences(at: delta, grad: grad, picks: picks, eps: { _ in 2e-2 }) {
                path.loss(delta: $0, loss: loss)
            }
            XCTAssertLessThan(worst, 0.02, "\(loss)")
        }
    }

    /// The threaded path (rows split between threads, fused q/k/v and gate/up products, partial
    /// sums added at the end) gives the single-threaded loss and gradient up to summation order.
    func testTwoThreadsGiveTheSameLossAndGradient() throws {
        let lm1 = try SharedModel.get()
        let lm2 = try LanguageModel(ModelRegistry.defaultModel, backend: CPUBackend(threads: 2), threads: 2)
        let (prompts, targets, _) = try trainingBatch(lm1)
        var rng = SplitMix64(seed: 11)
        let delta = (0..<lm1.config.attnDim).map { _ in Float(rng.uniform() - 0.5) }
        let r1 = InterventionPath(model: lm1, layer: 4, prompts: prompts).lossAndGradient(delta: delta, loss: .nextToken(targets: targets))
        let r2 = InterventionPath(model: lm2, layer: 4, prompts: prompts).lossAndGradient(delta: delta, loss: .nextToken(targets: targets))
        XCTAssertEqual(r1.loss, r2.loss, accuracy: 1e-4 * max(1, abs(r1.loss)))
        let norm = r1.grad.map { $0 * $0 }.reduce(0, +).squareRoot()
        let diff = zip(r1.grad, r2.grad).map { ($0 - $1) * ($0 - $1) }.reduce(0, +).squareRoot()
        // fp32 sums in another order through 26 layers differ by ~1e-4 relative; a race or a lost
        // partial sum would differ by far more
        XCTAssertLessThan(diff / norm, 1e-3, "gradient differs between 1 and 2 threads")
    }

    /// int8: the threads split every product's outputs (no partial sums), so the result does not
    /// depend on the thread count at all.
    func testInt8IsBitIdenticalOnOneAndTwoThreads() throws {
        guard Precision.int8Available else { throw XCTSkip(TestPaths.noInt8) }
        let lm1 = try SharedModel.get()
        let lm2 = try LanguageModel(ModelRegistry.defaultModel, backend: CPUBackend(threads: 2), threads: 2)
        let (prompts, targets, _) = try trainingBatch(lm1)
        var rng = SplitMix64(seed: 11)
        let delta = (0..<lm1.config.attnDim).map { _ in Float(rng.uniform() - 0.5) }
        let p1 = InterventionPath(model: lm1, layer: 4, prompts: prompts), p2 = InterventionPath(model: lm2, layer: 4, prompts: prompts)
        p1.precision = .int8; p2.precision = .int8
        let q1 = p1.lossAndGradient(delta: delta, loss: .nextToken(targets: targets))
        let q2 = p2.lossAndGradient(delta: delta, loss: .nextToken(targets: targets))
        XCTAssertEqual(q1.loss, q2.loss)
        XCTAssertEqual(q1.grad, q2.grad, "int8 gradient differs between 1 and 2 threads")
    }

    /// The int8 path (`Precision.int8`: forward and backward products rounded) against fp32 at a
    /// random Δ: the loss and its gradient stay close to the exact ones (measured: loss within
    /// 0.3%, cosine 0.9995, norm within 1%).
    func testInt8LossAndGradientStayCloseToFP32() throws {
        guard Precision.int8Available else { throw XCTSkip(TestPaths.noInt8) }
        let lm = try SharedModel.get()
        let (prompts, targets, _) = try trainingBatch(lm)
        var rng = SplitMix64(seed: 5)
        let delta = (0..<lm.config.attnDim).map { _ in Float(rng.uniform() - 0.5) }
        let path = InterventionPath(model: lm, layer: 4, prompts: prompts)
        let exact = path.lossAndGradient(delta: delta, loss: .nextToken(targets: targets))
        path.precision = .int8
        let fast = path.lossAndGradient(delta: delta, loss: .nextToken(targets: targets))
        XCTAssertNotEqual(exact.loss, fast.loss, "int8 must round something (else this test checks nothing)")
        XCTAssertEqual(fast.loss, exact.loss, accuracy: 0.01 * exact.loss)
        let dot = zip(exact.grad, fast.grad).map { $0 * $1 }.reduce(0, +)
        let n1 = exact.grad.map { $0 * $0 }.reduce(0, +).squareRoot(), n2 = fast.grad.map { $0 * $0 }.reduce(0, +).squareRoot()
        XCTAssertGreaterThan(dot / (n1 * n2), 0.99, "gradient direction")
        XCTAssertEqual(n2, n1, accuracy: 0.03 * n1, "gradient norm")
    }

    /// The whole model's forward at int8 (`eval.int8`): the logits move a little, the greedy
    /// choices nearly never; a many-row batch (OpenBLAS at fp32) as well as a few-row one.
    func testInt8ForwardStaysCloseToFP32() throws {
        guard Precision.int8Available else { throw XCTSkip(TestPaths.noInt8) }
        let lm = try SharedModel.get()
        let (prompts, _, _) = try trainingBatch(lm)
        for copies in [1, 8] {   // 10 and 80 sequences (the fp32 side takes OpenBLAS from 65 rows)
            let batch = Array((0..<copies).map { _ in prompts }.joined())
            let run = { (p: Precision) in
                lm.model.forward(tokens: batch, caches: batch.map { lm.model.makeCache(capacity: $0.count) },
                                 precision: p)
            }
            let exact = run(.fp32), fast = run(.int8)
            XCTAssertNotEqual(exact, fast, "int8 must round something (else this test checks nothing)")
            let V = lm.config.vocabSize
            var same = 0, worst: Float = 0
            for i in 0..<batch.count {
                let e = Array(exact[(i * V)..<((i + 1) * V)]), f = Array(fast[(i * V)..<((i + 1) * V)])
                if e.indices.max(by: { e[$0] < e[$1] }) == f.indices.max(by: { f[$0] < f[$1] }) { same += 1 }
                let scale = e.map(abs).max()!
                worst = max(worst, zip(e, f).map { abs($0 - $1) }.max()! / scale)
            }
            XCTAssertGreaterThanOrEqual(same, batch.count - copies, "greedy choices of \(batch.count) rows")
            // measured: 0.062 (the rounding of 30 layers' inputs adds up; the solver's path runs
            // only the layers from Δ's up)
            XCTAssertLessThan(worst, 0.1, "largest logit change relative to the row's largest logit")
        }
    }

    /// Decoding Δ variants with a shared prefix gives what separate full runs give.
    func testVariantGenerationEqualsSeparateRuns() throws {
        let lm = try SharedModel.get()
        let (prompts, _, _) = try trainingBatch(lm)
        let delta = (0..<lm.config.attnDim).map { Float(($0 % 5) - 2) * 0.3 }
        let stop = StopRules(maxNewTokens: 6, atNewline: false)
        let both = lm.generate(prompts: prompts + [[12762, 42]], variants: [delta, nil], layer: 4, stop: stop)
        let withDelta = lm.generate(prompts: prompts + [[12762, 42]], stop: stop, prefillHooks: DeltaHook(layer: 4, delta: delta))
        let without = lm.generate(prompts: prompts + [[12762, 42]], stop: stop)
        XCTAssertEqual(both[0].tokens, withDelta.tokens)
        XCTAssertEqual(both[0].firstArgmax, withDelta.firstArgmax)
        XCTAssertEqual(both[1].tokens, without.tokens)
        XCTAssertNotEqual(both[0].tokens, both[1].tokens, "Δ should change some continuation")
    }

    /// Per-prompt decoding budgets: each sequence stops at its own budget (every variant of a
    /// prompt at that prompt's), and what it decodes is the start of an unlimited run.
    func testPerPromptBudgets() throws {
        let lm = try SharedModel.get()
        let (prompts, _, _) = try trainingBatch(lm)
        let budgets = prompts.indices.map { $0 % 4 }          // 0, 1, 2, 3, 0, …
        let delta = (0..<lm.config.attnDim).map { Float(($0 % 5) - 2) * 0.3 }
        let full = lm.generate(prompts: prompts, variants: [delta, nil], layer: 4, stop: StopRules(maxNewTokens: 3, atNewline: false))
        let cut = lm.generate(prompts: prompts, variants: [delta, nil], layer: 4, stop: StopRules(perPrompt: budgets, atNewline: false))
        for v in 0..<2 {
            for (i, b) in budgets.enumerated() {
                XCTAssertEqual(cut[v].tokens[i], Array(full[v].tokens[i].prefix(b)), "variant \(v) prompt \(i)")
            }
        }
    }

    func testProxIsExactAndProducesZeros() {
        let p = SparseGroupLasso(gamma: 0.1, lambda: 0.5, heads: 3, headDim: 2)
        var v: [Float] = [0.05, -0.08, 1.0, -2.0, 0.3, 0.2]
        p.prox(&v, step: 1)
        // head 0: everything under γ → 0; head 2: soft threshold (0.2, 0.1), norm 0.2236 < λ → 0
        XCTAssertEqual(Array(v[0..<2]), [0, 0])
        XCTAssertEqual(Array(v[4..<6]), [0, 0])
        // head 1: (0.9, −1.9) shrunk by 1 − 0.5/‖·‖
        let n = (0.9 * 0.9 + 1.9 * 1.9 as Float).squareRoot()
        XCTAssertEqual(v[2], 0.9 * (1 - 0.5 / n), accuracy: 1e-6)
        XCTAssertEqual(v[3], -1.9 * (1 - 0.5 / n), accuracy: 1e-6)
        XCTAssertEqual(p.nonzeros(v), 2); XCTAssertEqual(p.activeHeads(v), 1)
        // optimality: the prox minimises ½‖x − v‖² + penalty(x) — no random perturbation does better
        var rng = SplitMix64(seed: 1)
        let v0: [Float] = (0..<6).map { _ in Float(rng.uniform() * 2 - 1) }
        var x = v0
        p.prox(&x, step: 0.7)
        func obj(_ x: [Float]) -> Float { zip(x, v0).reduce(0) { $0 + 0.5 * ($1.0 - $1.1) * ($1.0 - $1.1) } + 0.7 * p.value(x) }
        for _ in 0..<500 {
            let y = x.map { $0 + Float(rng.uniform() - 0.5) * 0.02 }
            XCTAssertGreaterThanOrEqual(obj(y), obj(x) - 1e-6)
        }
    }

    func testSolverIsDeterministicAndDecreasesTheObjective() throws {
        let lm = try SharedModel.get()
        let (prompts, targets, _) = try trainingBatch(lm)
        let path = InterventionPath(model: lm, layer: 4, prompts: prompts)
        let pen = SparseGroupLasso(gamma: 0.01, lambda: 0.01, heads: lm.config.nHeads, headDim: lm.config.headDim)
        for method in SolverMethod.allCases {
            let opts = SolverOptions(method: method, steps: 10, lr: 0.1)
            let a = Solver.solve(path: path, loss: .nextToken(targets: targets), penalty: pen, options: opts)
            let b = Solver.solve(path: path, loss: .nextToken(targets: targets), penalty: pen, options: opts)
            XCTAssertEqual(a.delta, b.delta, "\(method) must be deterministic")
            XCTAssertLessThan(a.final.objective, a.history[0].objective * 0.95, "\(method)")
            XCTAssertEqual(a.final.nonzeros, pen.nonzeros(a.delta))
        }
    }

    /// Tail averaging returns something other than the last iterate, and its final prox still
    /// gives exact zeros.
    func testAveragedAdamReturnsTheProxOfTheTailMean() throws {
        let lm = try SharedModel.get()
        let (prompts, targets, _) = try trainingBatch(lm)
        let path = InterventionPath(model: lm, layer: 4, prompts: prompts)
        let pen = SparseGroupLasso(gamma: 0.05, lambda: 0.05, heads: lm.config.nHeads, headDim: lm.config.headDim)
        let last = Solver.solve(path: path, loss: .nextToken(targets: targets), penalty: pen,
                                options: SolverOptions(method: .adam, steps: 12, lr: 0.1))
        let avg = Solver.solve(path: path, loss: .nextToken(targets: targets), penalty: pen,
                               options: SolverOptions(method: .adamAveraged, steps: 12, lr: 0.1))
        XCTAssertEqual(Array(last.history.prefix(12).map(\.loss)), Array(avg.history.prefix(12).map(\.loss)),
                       "the same trajectory")
        XCTAssertNotEqual(last.delta, avg.delta)
        XCTAssertLessThan(pen.nonzeros(avg.delta), avg.delta.count, "exact zeros")
        XCTAssertEqual(path.precision, .fp32, "the solver does not leave its precision on the path")
        path.precision = SolverOptions().precision   // the loss the solver reports is at its own precision
        XCTAssertEqual(avg.final.loss, path.loss(delta: avg.delta, loss: .nextToken(targets: targets)), accuracy: 1e-5)
    }

    /// A job with bad parameters fails with a message that says what is wrong, before any work.
    func testExperimentRefusesBadJobsClearly() throws {
        let lm = try SharedModel.get()
        let exp = PairTaskJobs(lm: lm)
        func message(_ spec: JobSpec) -> String {
            do { _ = try exp.run(spec); return "no error" } catch { return "\(error)" }
        }
        XCTAssertTrue(message(JobSpec(task: "antonym", layer: 30)).contains("layer 30 is outside 0…29"))
        XCTAssertTrue(message(JobSpec(task: "no-such-task")).contains("antonym"), "lists the known tasks")
        XCTAssertTrue(message(JobSpec(task: "antonym", method: .synthetic)).contains("not an engine method"))
        XCTAssertTrue(message(JobSpec(task: "/nonexistent/pairs.json")).contains("/nonexistent/pairs.json"))
    }

    func testJobPromptTemplates() throws {
        let lm = try SharedModel.get()
        let exp = PairTaskJobs(lm: lm)
        XCTAssertEqual(try exp.format(for: JobSpec(task: "t")), .qa)
        let f = try exp.format(for: JobSpec(task: "t", promptTemplate: "{input} =>", targetTemplate: " {output}."))
        XCTAssertEqual(f.prompt("hot"), "hot =>")
        XCTAssertEqual(f.targetText("cold"), " cold.")
        XCTAssertEqual(f.fewShot([TaskPair(input: "up", output: "down")], "hot"), "up => down.\n\nhot =>")
        XCTAssertThrowsError(try exp.format(for: JobSpec(task: "t", promptTemplate: "no placeholder")))
    }

    /// Jobs fused on one path get the losses and gradients they would get alone.
    func testFusedJobsMatchSeparateJobs() throws {
        let lm = try SharedModel.get()
        let (prompts, targets, _) = try trainingBatch(lm)
        let A = lm.config.attnDim
        let d1 = (0..<A).map { Float(($0 % 7) - 3) * 0.05 }, d2 = (0..<A).map { Float(($0 % 5) - 2) * 0.07 }
        let a = InterventionPath(model: lm, layer: 20, prompts: Array(prompts[0..<6]))
        let b = InterventionPath(model: lm, layer: 20, prompts: Array(prompts[6..<10]))
        let both = InterventionPath(model: lm, layer: 20, prompts: prompts)
        let ra = a.lossAndGradient(delta: d1, loss: .nextToken(targets: Array(targets[0..<6])))
        let rb = b.lossAndGradient(delta: d2, loss: .nextToken(targets: Array(targets[6..<10])))
        let fused = both.lossesAndGradients(deltas: [d1, d2], jobs: [0..<6, 6..<10], loss: .nextToken(targets: targets))
        for (alone, f) in [(ra, fused[0]), (rb, fused[1])] {
            XCTAssertEqual(f.loss, alone.loss, accuracy: 1e-5 * max(1, abs(alone.loss)))
            for c in 0..<A { XCTAssertEqual(f.grad[c], alone.grad[c], accuracy: 1e-5 + 1e-4 * abs(alone.grad[c])) }
        }
        // a single job through the fused solver is the single-job solver
        let pen = SparseGroupLasso(gamma: 0.01, lambda: 0.01, heads: lm.config.nHeads, headDim: lm.config.headDim)
        let opts = SolverOptions(method: .adam, steps: 3, lr: 0.1)
        let one = Solver.solve(path: a, loss: .nextToken(targets: Array(targets[0..<6])), penalty: pen, options: opts)
        let viaJobs = Solver.solveJobs(path: a, jobs: [0..<6], loss: .nextToken(targets: Array(targets[0..<6])), penalty: pen, options: opts)
        XCTAssertEqual(one.delta, viaJobs[0].delta)
    }

    func testSafetensorsRoundTrip() throws {
        let d: [Float] = [1, -2.5, 0, 3e-7]
        let data = Safetensors.write(tensors: [("delta", [4], d)], metadata: ["task": "antonym", "layer": "4"])
        let (t, md) = try Safetensors.read(data)
        XCTAssertEqual(t["delta"]?.values, d)
        XCTAssertEqual(t["delta"]?.shape, [4])
        XCTAssertEqual(md["task"], "antonym")
        let hlen = data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        XCTAssertEqual((8 + Int(hlen)) % 8, 0)
        XCTAssertThrowsError(try Safetensors.read(Data([1, 2, 3])))
    }
}

/// Tunable parameters reach the engine.
final class TunableTests: XCTestCase {
    /// `eval.delta_scale` reaches the evaluation: at 0 the "with Δ" decoding is the 0-shot decoding.
    func testScaleZeroEvaluatesLikeZeroShotAndIsRecorded() throws {
        let lm = try SharedModel.get()
        var spec = JobSpec(task: "antonym", layer: 4, seed: 1, testSize: 12, steps: 5, precision: .fp32)
        try spec.set(.deltaScale, 0)
        let out = try PairTaskJobs(lm: lm).run(spec)
        let m = out.metrics
        XCTAssertEqual(m["exact_match"], m["zero_shot_exact_match"])
        XCTAssertEqual(m["first_token_accuracy"], m["zero_shot_first_token_accuracy"])
        let art = try DeltaArtefact(data: try XCTUnwrap(out.artefact))
        XCTAssertGreaterThan(art.delta.map(abs).max() ?? 0, 0, "the artefact keeps the learned Δ, not 0·Δ")
        XCTAssertEqual(art.metadata.extra["eval.delta_scale"], "0.0")
        // the same job at scale 1 does change the answers (else the equality above proves nothing)
        try spec.set(.deltaScale, 1)
        let unscaled = try PairTaskJobs(lm: lm).run(spec)
        XCTAssertNotEqual(unscaled.metrics["first_token_accuracy"], unscaled.metrics["zero_shot_first_token_accuracy"])
        XCTAssertNil(try DeltaArtefact(data: try XCTUnwrap(unscaled.artefact)).metadata.extra["eval.delta_scale"])
    }

    /// `solver.tolerance` stops the solver once the objective settles.
    func testToleranceStopsTheSolverEarly() throws {
        let lm = try SharedModel.get()
        // γ = λ = 0.01: the objective settles within 50 steps there (measured)
        var spec = JobSpec(task: "antonym", layer: 4, lambda: 0.01, gamma: 0.01, seed: 0, testSize: 2, steps: 50,
                           precision: .fp32)
        let full = try DeltaArtefact(data: try XCTUnwrap(try PairTaskJobs(lm: lm).run(spec).artefact))
        XCTAssertEqual(full.metadata.steps, 50)
        try spec.set(.tolerance, 0.05)
        let early = try DeltaArtefact(data: try XCTUnwrap(try PairTaskJobs(lm: lm).run(spec).artefact))
        XCTAssertLessThan(early.metadata.steps, 50)
        XCTAssertGreaterThanOrEqual(early.metadata.steps, 10, "convergence is judged over 10 steps")
    }
}
