import Foundation

/// The task loss on the logits of the last prompt position.
public enum TaskLoss: Sendable {
    /// Rule tasks: −log p(target first token), one target id per prompt.
    case nextToken(targets: [Int])
    /// Opinion tasks: KL(p_Δ restricted to row i's answer tokens `alphabets[i]` and renormalised
    /// ‖ π_i), one distribution π_i (over that row's alphabet, summing to 1) per prompt. Rows may
    /// have different numbers of options.
    case restrictedKL(alphabets: [[Int]], target: [[Float]])

    /// The same alphabet for every row.
    public static func restrictedKL(alphabet: [Int], target: [[Float]]) -> TaskLoss {
        .restrictedKL(alphabets: Array(repeating: alphabet, count: target.count), target: target)
    }
}

/// Δ's single-token path, prefix-cached (see docs/design.md, "The single-token path").
///
/// Δ ∈ R^{H·d} is added to the concatenated head outputs of layer ℓ at the last prompt position.
/// Causal attention means nothing before that position sees Δ, so the path runs every prompt
/// once (the full forward) and keeps (a) every layer's K/V of positions 0…n−2, (b) at layer ℓ,
/// the last position's residual input and head outputs. A solver step then runs ONE token per
/// prompt from layer ℓ's o_proj to the logits, all N prompts as one N×· matrix (every projection
/// one GEMM), and back-propagates that path to Δ.
///
/// The numerics of a step live behind `PathRunner`, made by the model's backend: the runner owns
/// the activations between the forward and the backward. This class does no arithmetic on
/// activations: it prefills, lays out the rows' Δs and weights, and reads the results.
///
/// Rows may carry different Δs (N × A): jobs that share the model and the layer can be stacked
/// into one path; each job's gradient is the sum of its rows' gradients.
public final class InterventionPath {
    public let lm: LanguageModel
    public let layer: Int
    public let rows: Int
    public let promptLengths: [Int]
    let cfg: LlamaConfig
    /// How the products of the forward and the backward may round their operands (`.int8`: see
    /// `Precision`); the element-wise ops, attention and norms stay fp32.
    public var precision: Precision {
        get { runner.precision }
        set { runner.precision = newValue }
    }
    /// The logits of the prompts' last position with Δ = 0 (from the prefill), [N × V].
    public let baseLogits: [Float]
    let runner: PathRunner

    /// Prefills `prompts` (token ids) once and hands what Δ cannot change to the backend's runner.
    public init(model lm: LanguageModel, layer: Int, prompts: [[Int]]) {
        let cfg = lm.config
        precondition(layer >= 0 && layer < cfg.nLayers, "layer \(layer) outside 0..<\(cfg.nLayers)")
        precondition(!prompts.isEmpty && prompts.allSatisfy { !$0.isEmpty })
        self.lm = lm
        self.layer = layer
        self.cfg = cfg
        rows = prompts.count
        promptLengths = prompts.map(\.count)
        let caches = prompts.map { lm.model.makeCache(capacity: $0.count) }
        let capture = LastRowCapture(layers: cfg.nLayers, D: cfg.dModel, A: cfg.attnDim, rows: rows, only: layer)
        baseLogits = lm.model.forward(tokens: prompts, caches: caches, hooks: capture)
        runner = lm.model.backend.makePathRunner(
            model: lm.model, layer: layer,
            prefill: PathPrefill(
                caches: caches, promptLengths: promptLengths,
                residIn: capture.resid[layer], heads0: capture.heads[layer]))
    }

    // MARK: public API

    /// Several jobs on one path (DESIGN idea 4): job j owns the rows `jobs[j]` and its own Δ_j.
    /// Returns each job's loss (the mean over its rows) and, when asked, its gradient ∂loss_j/∂Δ_j.
    /// All jobs share every weight read: one GEMM per projection for all rows.
    public func lossesAndGradients(
        deltas: [[Float]], jobs: [Range<Int>], loss: TaskLoss,
        gradient: Bool = true
    ) -> [(loss: Float, grad: [Float])] {
        let A = cfg.attnDim
        let N = rows
        precondition(deltas.count == jobs.count && deltas.allSatisfy { $0.count == A })
        precondition(jobs.reduce(0) { $0 + $1.count } == N, "the jobs' rows must cover the path's rows")
        var D = [Float](repeating: 0, count: N * A)
        var weight = [Float](repeating: 0, count: N)
        for (j, r) in jobs.enumerated() {
            for i in r {
                for c in 0..<A { D[i * A + c] = deltas[j][c] }
                weight[i] = 1 / Float(r.count)
            }
        }
        var perRow = [Float](repeating: 0, count: N)
        var G = [Float](repeating: 0, count: gradient ? N * A : 0)
        D.withUnsafeBufferPointer { d in
            perRow.withUnsafeMutableBufferPointer { l in
                G.withUnsafeMutableBufferPointer { g in
                    runner.step(
                        deltas: d.baseAddress!, loss: loss, rowWeight: weight, perRow: l.baseAddress!,
                        grad: gradient ? g.baseAddress! : nil)
                }
            }
        }
        return jobs.map { r in
            var grad = [Float](repeating: 0, count: gradient ? A : 0)
            if gradient { for i in r { for c in 0..<A { grad[c] += G[i * A + c] } } }
            return (r.reduce(0) { $0 + perRow[$1] } / Float(r.count), grad)
        }
    }

    /// Loss (mean over rows) and its gradient with respect to a single Δ shared by all rows.
    public func lossAndGradient(delta: [Float], loss: TaskLoss) -> (loss: Float, grad: [Float]) {
        let r = lossesAndGradients(deltas: [delta], jobs: [0..<rows], loss: loss)[0]
        return (r.loss, r.grad)
    }

    /// Loss only (mean over rows), no backward.
    public func loss(delta: [Float], loss: TaskLoss) -> Float {
        lossesAndGradients(deltas: [delta], jobs: [0..<rows], loss: loss, gradient: false)[0].loss
    }

    /// Δ shared by every row, as the runner's [N × A].
    func perRow(_ delta: [Float]) -> [Float] {
        let A = cfg.attnDim
        precondition(delta.count == A)
        var D = [Float](repeating: 0, count: rows * A)
        for i in 0..<rows { for j in 0..<A { D[i * A + j] = delta[j] } }
        return D
    }

    /// Logits [N × V] of the path for Δ (for checks against a full forward).
    public func logits(delta: [Float]) -> [Float] {
        perRow(delta).withUnsafeBufferPointer { runner.logits(deltas: $0.baseAddress!) }
    }

    static func softmax(_ zs: [Float]) -> [Float] {
        let m = zs.max()!
        let e = zs.map { expf($0 - m) }
        let sum = e.reduce(0, +)
        return e.map { $0 / sum }
    }

    /// Each row's next-token distribution at Δ = 0 restricted to its `alphabets[i]` and
    /// renormalised, from the prefill's logits (no forward).
    public func restrictedBaseDistributions(alphabets: [[Int]]) -> [[Float]] {
        let V = cfg.vocabSize
        precondition(alphabets.count == rows)
        return (0..<rows).map { i in Self.softmax(alphabets[i].map { baseLogits[i * V + $0] }) }
    }

    /// The same for Δ shared by all rows (opinion evaluation).
    public func restrictedDistributions(delta: [Float], alphabets: [[Int]]) -> [[Float]] {
        precondition(alphabets.count == rows)
        return perRow(delta).withUnsafeBufferPointer {
            runner.restrictedDistributions(deltas: $0.baseAddress!, alphabets: alphabets)
        }
    }
}

/// Captures the residual input and the head outputs of every layer (or of layer `only`) at each
/// sequence's last row: what the intervention path, the function vector and the ICV read.
final class LastRowCapture: ForwardHooks {
    let D: Int, A: Int
    /// resid[ℓ]: [rows × D]; heads[ℓ]: [rows × A] (empty for layers not captured).
    var resid: [[Float]], heads: [[Float]]
    init(layers: Int, D: Int, A: Int, rows: Int, only: Int? = nil) {
        self.D = D
        self.A = A
        let kept = { (l: Int) in only == nil || only == l }
        resid = (0..<layers).map { [Float](repeating: 0, count: kept($0) ? rows * D : 0) }
        heads = (0..<layers).map { [Float](repeating: 0, count: kept($0) ? rows * A : 0) }
    }
    func residual(layer: Int, _ x: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
        guard layer < resid.count, !resid[layer].isEmpty else { return }
        Self.copyLastRows(x, layout, width: D, into: &resid[layer])
    }
    func headOutputs(layer: Int, _ o: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
        guard layer < heads.count, !heads[layer].isEmpty else { return }
        Self.copyLastRows(o, layout, width: A, into: &heads[layer])
    }
    static func copyLastRows(_ x: UnsafePointer<Float>, _ layout: BatchLayout, width: Int, into out: inout [Float]) {
        out.withUnsafeMutableBufferPointer { o in
            for s in 0..<layout.rowCount.count {
                (o.baseAddress! + s * width).update(from: x + layout.lastRow(s) * width, count: width)
            }
        }
    }
}

/// What the prefill leaves for the single-token path: every layer's K/V of each prompt's earlier
/// positions, the prompts' lengths, and at layer ℓ the last position's residual input [N × D]
/// and head outputs before Δ [N × A].
public struct PathPrefill {
    public let caches: [KVCache]
    public let promptLengths: [Int]
    public let residIn: [Float]
    public let heads0: [Float]
}

/// The compute seam at the height a GPU needs: a backend's runner owns the single-token path's
/// activations and runs a whole solver step (the last-token forward from layer ℓ, the loss head,
/// the backward to Δ) behind one call, so that a device backend keeps every intermediate on the
/// device and moves only Δs in and losses and gradients out. `CPUPathRunner` is the CPU's.
public protocol PathRunner: AnyObject {
    /// How the step's products may round their operands (see `Precision`).
    var precision: Precision { get set }
    /// One step for per-row Δs [N × A]: each row's loss into `perRow` [N] (row i weighted by
    /// `rowWeight[i]` in the gradient) and, when `grad` is given, dL/dΔ per row [N × A].
    func step(
        deltas: UnsafePointer<Float>, loss: TaskLoss, rowWeight: [Float], perRow: UnsafeMutablePointer<Float>,
        grad: UnsafeMutablePointer<Float>?)
    /// The path's logits [N × V] for per-row Δs.
    func logits(deltas: UnsafePointer<Float>) -> [Float]
    /// Each row's next-token distribution restricted to `alphabets[i]` and renormalised.
    func restrictedDistributions(deltas: UnsafePointer<Float>, alphabets: [[Int]]) -> [[Float]]
}
