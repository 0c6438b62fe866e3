import Foundation

/// The full-sequence path: every position of every prompt through every layer, with what the
/// backward needs kept, and the backward through all of it (causal attention over all positions
/// with its K/V gradients, RoPE, the norms, the MLP) to the parameters of a `ProductAdapter`.
/// Where the intervention's single-token path (`CPUPathRunner`) needs one position from one
/// layer up, fine-tuning baselines change every position of every layer, so this path keeps all
/// of them. Both are written with the same op pairs (Block.swift).
///
/// The loss is the intervention's: −log p(first target token) at each prompt's last position,
/// the mean over prompts. Shapes: T rows (all prompts' positions, prompt after prompt), D, A, KV,
/// F as in Block.swift; S prompts.
public final class SequencePath {
    public let lm: LanguageModel
    public let prompts: [[Int]]
    let cfg: LlamaConfig
    let backend: AdaptedBackend
    public var adapter: ProductAdapter { backend.adapter }
    let rowStart: [Int]
    let T: Int
    /// Offset of prompt s's attention probabilities (H × n_s × n_s) in a layer's `probs`.
    let probStart: [Int]
    /// What each layer keeps for the backward (T rows each).
    let acts: [BlockSave]
    let hFinal: UnsafeMutablePointer<Float>

    public init(model lm: LanguageModel, prompts: [[Int]], adapter: ProductAdapter) {
        precondition(!prompts.isEmpty && prompts.allSatisfy { !$0.isEmpty })
        self.lm = lm
        self.prompts = prompts
        cfg = lm.config
        backend = AdaptedBackend(lm.model.backend, adapter: adapter)
        var rs: [Int] = []
        var ps: [Int] = []
        var t = 0
        var p = 0
        for s in prompts {
            rs.append(t)
            ps.append(p)
            t += s.count
            p += cfg.nHeads * s.count * s.count
        }
        rowStart = rs
        position = prompts.flatMap { $0.indices }
        probStart = ps
        T = t
        acts = (0..<cfg.nLayers).map { _ in BlockSave(lm.config, rows: t, probs: p) }
        hFinal = .allocate(capacity: t * cfg.dModel)
    }
    deinit { hFinal.deallocate() }

    /// Row r's position in its prompt.
    let position: [Int]
    func lastRow(_ s: Int) -> Int { rowStart[s] + prompts[s].count - 1 }

    // MARK: forward

    /// All rows through all layers; leaves the residual after the last block in `hFinal`.
    func forward() {
        let D = cfg.dModel
        let A = cfg.attnDim
        let KV = cfg.kvDim
        let model = lm.model
        let x = acts[0].hIn
        for (s, ids) in prompts.enumerated() {
            for (j, id) in ids.enumerated() {
                let r = rowStart[s] + j
                for i in 0..<D { x[r * D + i] = model.tokenEmbedding.data[id * D + i] * cfg.embedScale }
            }
        }
        if let soft = adapter as? SoftPrompt {  // the virtual tokens' vectors replace their embeddings
            for s in prompts.indices {
                for (j, r) in soft.rows.enumerated() {
                    for i in 0..<D { x[(rowStart[s] + r) * D + i] = soft.parameters[j * D + i] }
                }
            }
        }
        for l in 0..<cfg.nLayers {
            let blk = model.blocks[l]
            let s = acts[l]
            let rope = model.rope(l)
            let shape = LastTokenAttention.Shape(cfg, layer: l)
            blk.attentionInputForward(
                backend, cfg, h: s.hIn, rows: T, xn: s.xnAttn, invRMS: s.invAttn, q: s.q, k: s.k, v: s.v,
                headNorms: s.headNorms, precision: .fp32)
            for r in 0..<T {
                rope.forward(s.q + r * A, heads: cfg.nHeads, position: position[r])
                rope.forward(s.k + r * KV, heads: cfg.nKVHeads, position: position[r])
            }
            for (p, ids) in prompts.enumerated() {
                let r0 = rowStart[p]
                let n = ids.count
                CausalAttention.forward(
                    shape, backend, q: s.q + r0 * A, k: s.k + r0 * KV, v: s.v + r0 * KV, rows: n, start: 0,
                    scores: s.probs + probStart[p], headStride: n * n, o: s.o + r0 * A)
            }
            blk.attentionOutputForward(
                backend, cfg, o: s.o, rows: T, h: s.hIn, out: s.hMid, post: s.postAttn, precision: .fp32)
            let out = l + 1 < cfg.nLayers ? acts[l + 1].hIn : hFinal
            blk.mlpForward(
                backend, cfg, h: s.hMid, rows: T, out: out, xn: s.xnFfn, invRMS: s.invFfn, g: s.g, u: s.u, m: s.m,
                post: s.postFfn, precision: .fp32, perRows: { $0(0..<T) })
        }
    }

    /// The logits of each prompt's last position [S × V] (checks against the model's forward).
    public func logits() -> [Float] {
        forward()
        let (hn, _) = finalNorm()
        var z = [Float](repeating: 0, count: prompts.count * cfg.vocabSize)
        z.withUnsafeMutableBufferPointer {
            lm.model.backend.linear(hn, prompts.count, lm.model.output, $0.baseAddress!, accumulate: false)
        }
        hn.deallocate()
        return z
    }

    /// rms(h) of each prompt's last row [S × D] (caller deallocates) and 1/rms per prompt.
    func finalNorm() -> (UnsafeMutablePointer<Float>, [Float]) {
        let D = cfg.dModel
        let S = prompts.count
        let hn = UnsafeMutablePointer<Float>.allocate(capacity: S * D)
        for s in 0..<S { (hn + s * D).update(from: hFinal + lastRow(s) * D, count: D) }
        var inv = [Float](repeating: 0, count: S)
        inv.withUnsafeMutableBufferPointer {
            Ops.rmsnorm(hn, lm.model.outputNorm.data, hn, rows: S, dim: D, eps: cfg.rmsEps, invRMS: $0.baseAddress!)
        }
        return (hn, inv)
    }

    // MARK: loss and backward

    /// The mean first-target-token loss over the prompts and, when asked, its gradient with
    /// respect to the adapter's parameters (in `adapter.gradient`, overwritten).
    @discardableResult
    public func loss(targets: [Int], gradient: Bool = true) -> Float {
        precondition(targets.count == prompts.count)
        let D = cfg.dModel
        let S = prompts.count
        let V = cfg.vocabSize
        forward()
        let (hn, inv) = finalNorm()
        defer { hn.deallocate() }
        var z = [Float](repeating: 0, count: S * V)
        var total: Float = 0
        z.withUnsafeMutableBufferPointer { zb in
            let z = zb.baseAddress!
            lm.model.backend.linear(hn, S, lm.model.output, z, accumulate: false)
            for s in 0..<S {  // dz = (softmax(z) − onehot(t)) / S
                let row = z + s * V
                let zt = row[targets[s]]
                total += Ops.softmax(row, V) - zt
                for i in 0..<V { row[i] /= Float(S) }
                row[targets[s]] -= 1 / Float(S)
            }
        }
        guard gradient else { return total / Float(S) }
        adapter.gradient = [Float](repeating: 0, count: adapter.parameters.count)
        // dh at the last rows: back through the head and the final norm (the rows before get none)
        let dh = UnsafeMutablePointer<Float>.allocate(capacity: T * D)
        dh.initialize(repeating: 0, count: T * D)
        defer { dh.deallocate() }
        let dhn = UnsafeMutablePointer<Float>.allocate(capacity: S * D)
        defer { dhn.deallocate() }
        z.withUnsafeBufferPointer {
            lm.model.backend.linearBackward($0.baseAddress!, S, lm.model.output, dhn, accumulate: false)
        }
        let last = UnsafeMutablePointer<Float>.allocate(capacity: S * D)
        defer { last.deallocate() }
        for s in 0..<S { (last + s * D).update(from: hFinal + lastRow(s) * D, count: D) }
        let dLast = UnsafeMutablePointer<Float>.allocate(capacity: S * D)
        defer { dLast.deallocate() }
        dLast.initialize(repeating: 0, count: S * D)
        inv.withUnsafeBufferPointer {
            Ops.rmsnormBackward(last, lm.model.outputNorm.data, dhn, dLast, rows: S, dim: D, invRMS: $0.baseAddress!)
        }
        for s in 0..<S { (dh + lastRow(s) * D).update(from: dLast + s * D, count: D) }
        backward(dh)
        return total / Float(S)
    }

    /// Each block of `forward`, reversed: dh [T × D] (the gradient at the residual after the last
    /// block) down to the first block's input, the adapter collecting its gradient on the way.
    func backward(_ dh: UnsafeMutablePointer<Float>) {
        let D = cfg.dModel
        let A = cfg.attnDim
        let KV = cfg.kvDim
        let F = cfg.ffnDim
        let model = lm.model
        let longest = prompts.map(\.count).max()!
        func a(_ n: Int) -> UnsafeMutablePointer<Float> { .allocate(capacity: max(n, 1)) }
        let dxn = a(T * D)
        let dO = a(T * A)
        let dQ = a(T * A)
        let dK = a(T * KV)
        let dV = a(T * KV)
        let dF = a(T * F)
        let dF2 = a(T * F)
        let dS = a(longest * longest)
        defer { [dxn, dO, dQ, dK, dV, dF, dF2, dS].forEach { $0.deallocate() } }
        for l in (0..<cfg.nLayers).reversed() {
            let blk = model.blocks[l]
            let s = acts[l]
            let rope = model.rope(l)
            let shape = LastTokenAttention.Shape(cfg, layer: l)
            blk.mlpBackward(
                backend, cfg, h: s.hMid, rows: T, invRMS: s.invFfn, g: s.g, u: s.u, post: s.postFfn, dh: dh, dm: dF,
                du: dF2, dxn: dxn, precision: .fp32, perRows: { $0(0..<T) })
            blk.attentionOutputBackward(
                backend, cfg, dout: dh, rows: T, post: s.postAttn, dy: dxn, dO: dO, precision: .fp32)
            dK.initialize(repeating: 0, count: T * KV)
            dV.initialize(repeating: 0, count: T * KV)
            for (p, ids) in prompts.enumerated() {
                let r0 = rowStart[p]
                CausalAttention.backward(
                    shape, backend, dO: dO + r0 * A, q: s.q + r0 * A, k: s.k + r0 * KV, v: s.v + r0 * KV,
                    rows: ids.count, probs: s.probs + probStart[p], dq: dQ + r0 * A, dk: dK + r0 * KV,
                    dv: dV + r0 * KV, dS: dS)
            }
            for r in 0..<T {
                rope.backward(dQ + r * A, heads: cfg.nHeads, position: position[r])
                rope.backward(dK + r * KV, heads: cfg.nKVHeads, position: position[r])
            }
            blk.attentionInputBackward(
                backend, cfg, h: s.hIn, rows: T, invRMS: s.invAttn, dq: dQ, dk: dK, dv: dV,
                headNorms: s.headNorms, dxn: dxn, dh: dh, precision: .fp32)
        }
        if let soft = adapter as? SoftPrompt {  // dh now holds the gradient at layer 0's input
            for s in prompts.indices {
                for (j, r) in soft.rows.enumerated() {
                    for i in 0..<D { soft.gradient[j * D + i] += dh[(rowStart[s] + r) * D + i] }
                }
            }
        }
    }
}
