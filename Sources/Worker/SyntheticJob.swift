import Engine
import Foundation

/// The built-in test job kind: no model, a few milliseconds per step, deterministic from the job's
/// parameters. It solves the method's objective on a toy problem — a D = 32 vector split in 4
/// "heads" of 8, least squares on random data with a sparse, head-sparse truth, minimised by the
/// same proximal step (γ‖Δ‖₁ soft threshold, then λ Σ_h ‖Δ_h‖₂ group shrink) — so metrics move
/// the way real ones do.
///
/// Methods: "synthetic" runs normally; "synthetic-fail" throws a deterministic `JobError` halfway;
/// "synthetic-crash" calls `exit(3)` halfway (for failure tests). Any other "synthetic-*" is an
/// unknown method (deterministic failure).
public final class SyntheticJobRunner: JobRunner {
    public static let heads = 4
    public static let headSize = 8
    public static var dim: Int { heads * headSize }

    /// Sleep per step (seconds), so jobs take a realistic, CPU-free while.
    public let stepDelay: TimeInterval

    public init(stepDelay: TimeInterval? = nil) {
        if let d = stepDelay {
            self.stepDelay = d
        } else if let s = ProcessInfo.processInfo.environment["INTERVENE_SYNTHETIC_STEP_MS"], let ms = Double(s) {
            self.stepDelay = ms / 1000
        } else {
            self.stepDelay = 0.002
        }
    }

    public func run(_ spec: JobSpec, inputs: JobInputs, progress: JobProgress?) throws -> JobOutcome {
        let mode: Mode
        switch spec.method {
        case .synthetic: mode = .normal
        case .syntheticFail: mode = .fail
        case .syntheticCrash: mode = .crash
        case .intervention, .zeroShot, .fewShot, .lora, .ia3, .softPrompt, .functionVector, .icv, .add, .fvHeads:
            throw JobError.deterministic("\(spec.method.rawValue) is not a synthetic method (synthetic, synthetic-fail, synthetic-crash)")
        }
        guard spec.steps >= 1 else { throw JobError.deterministic("steps must be ≥ 1, got \(spec.steps)") }
        guard spec.trainSize >= 1 else { throw JobError.deterministic("train_size must be ≥ 1, got \(spec.trainSize)") }
        guard spec.testSize >= 0 else { throw JobError.deterministic("test_size must be ≥ 0, got \(spec.testSize)") }
        guard spec.lr > 0, spec.lr.isFinite else { throw JobError.deterministic("lr must be > 0, got \(spec.lr)") }
        guard spec.lambda >= 0, spec.gamma >= 0 else { throw JobError.deterministic("lambda and gamma must be ≥ 0") }

        let start = Date()
        let D = Self.dim, H = Self.heads, d = Self.headSize
        var rng = SplitMix64(seed: UInt64(bitPattern: Int64(spec.seed)) ^ fnv1a(spec.task) ^ fnv1a(spec.model))

        // Truth: two active heads, a few nonzeros each.
        var truth = [Double](repeating: 0, count: D)
        let activeHeads = [Int(rng.next() % UInt64(H)), Int(rng.next() % UInt64(H))]
        for h in activeHeads { for j in 0..<3 { truth[h * d + Int(rng.next() % UInt64(d))] = (j % 2 == 0 ? 1 : -1) * (1 + rng.uniform()) } }

        func sample(_ n: Int) -> (x: [Double], y: [Double]) {
            var x = [Double](repeating: 0, count: n * D), y = [Double](repeating: 0, count: n)
            for i in 0..<n {
                var s = 0.0
                for j in 0..<D { let v = rng.normal(); x[i * D + j] = v; s += v * truth[j] }
                y[i] = s + 0.1 * rng.normal()
            }
            return (x, y)
        }
        let nTrain = spec.trainSize * 8
        let nTest = min(spec.testSize, 5000)
        let train = sample(nTrain), test = sample(nTest)

        var w = [Double](repeating: 0, count: D)
        var grad = [Double](repeating: 0, count: D)
        var loss = 0.0
        func lossAndGrad() -> Double {
            for j in 0..<D { grad[j] = 0 }
            var l = 0.0
            for i in 0..<nTrain {
                var p = 0.0
                for j in 0..<D { p += train.x[i * D + j] * w[j] }
                let r = p - train.y[i]
                l += 0.5 * r * r
                for j in 0..<D { grad[j] += r * train.x[i * D + j] }
            }
            for j in 0..<D { grad[j] /= Double(nTrain) }
            return l / Double(nTrain)
        }
        func penalty() -> Double {
            var l1 = 0.0, group = 0.0
            for h in 0..<H {
                var s = 0.0
                for j in h * d..<(h + 1) * d { l1 += abs(w[j]); s += w[j] * w[j] }
                group += s.squareRoot()
            }
            return spec.gamma * l1 + spec.lambda * group
        }
        func nonzero() -> Int { w.filter { $0 != 0 }.count }
        func activeHeadCount() -> Int { (0..<H).filter { h in (h * d..<(h + 1) * d).contains { w[$0] != 0 } }.count }

        for step in 1...spec.steps {
            loss = lossAndGrad()
            // Proximal step: gradient, soft threshold (γ), group shrink (λ).
            let t1 = spec.lr * spec.gamma, t2 = spec.lr * spec.lambda
            for j in 0..<D {
                let v = w[j] - spec.lr * grad[j]
                w[j] = v > t1 ? v - t1 : (v < -t1 ? v + t1 : 0)
            }
            for h in 0..<H {
                var s = 0.0
                for j in h * d..<(h + 1) * d { s += w[j] * w[j] }
                let n = s.squareRoot()
                let scale = n > t2 ? 1 - t2 / n : 0
                for j in h * d..<(h + 1) * d { w[j] *= scale }
            }
            guard loss.isFinite, w.allSatisfy(\.isFinite) else {
                throw JobError.deterministic("synthetic solver diverged at step \(step) (lr \(spec.lr) too large)")
            }
            progress?.progress(step: step, total: spec.steps,
                               metrics: ["loss": loss + penalty(), "task_loss": loss, "nonzero": Double(nonzero())])
            if step == max(1, spec.steps / 2) {
                if mode == .fail { throw JobError.deterministic("synthetic-fail: deliberate failure at step \(step)") }
                if mode == .crash {
                    FileHandle.standardError.write(Data("synthetic-crash: exiting with status 3 at step \(step)\n".utf8))
                    exit(3)
                }
            }
            if stepDelay > 0 { Thread.sleep(forTimeInterval: stepDelay) }
        }
        loss = lossAndGrad()

        var hits = 0
        for i in 0..<nTest {
            var p = 0.0
            for j in 0..<D { p += test.x[i * D + j] * w[j] }
            if abs(p - test.y[i]) < 0.25 { hits += 1 }
        }
        let metrics: [String: Double] = [
            "final_loss": loss + penalty(),
            "task_loss": loss,
            "nonzero": Double(nonzero()),
            "active_heads": Double(activeHeadCount()),
            "exact_match": nTest > 0 ? Double(hits) / Double(nTest) : 0,
            "n_test": Double(nTest),
            "train_size": Double(spec.trainSize),
            "steps": Double(spec.steps),
            "wall_seconds": Date().timeIntervalSince(start),
        ]
        let meta = DeltaMetadata(model: spec.model, modelSHA256: "", task: spec.task, method: spec.method.rawValue,
                                 layer: spec.layer, heads: Self.heads, headDim: Self.headSize, seed: spec.seed,
                                 lambda: spec.lambda, gamma: spec.gamma, steps: spec.steps, lr: spec.lr,
                                 solver: "synthetic-prox-gradient", precision: "fp64", trainSize: spec.trainSize,
                                 finalLoss: Float(loss + penalty()), extra: ["format": "synthetic"])
        return JobOutcome(metrics: metrics, artefact: DeltaArtefact(delta: w.map(Float.init), metadata: meta).data)
    }

    enum Mode { case normal, fail, crash }
}

/// FNV-1a, stable across processes (unlike Hasher).
func fnv1a(_ s: String) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
    return h
}
