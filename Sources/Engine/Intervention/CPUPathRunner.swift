import Foundation

/// A zero-filled buffer of n floats (at least one), for the path's activations.
private func zeroed(_ n: Int) -> UnsafeMutablePointer<Float> {
    let p = UnsafeMutablePointer<Float>.allocate(capacity: max(n, 1))
    p.initialize(repeating: 0, count: max(n, 1))
    return p
}

/// The CPU's `PathRunner`: the single-token path's activations in host memory, products through
/// `CPUBackend` (OpenBLAS, the few-row and int8 kernels), the block's ops from Block.swift.
///
/// Notation (shapes for N rows): D model width, A = H·d head-output width, KV = H_kv·d,
/// F feed-forward width, V vocabulary, n_i prompt length of row i.
final class CPUPathRunner: PathRunner {
    let model: LlamaModel
    let cfg: LlamaConfig
    let backend: Backend
    let layer: Int
    let rows: Int
    let promptLengths: [Int]
    var precision: Precision = .fp32
    let caches: [KVCache]
    /// [N × D] residual stream entering layer ℓ at the last position (Δ cannot change it).
    let residIn: UnsafeMutablePointer<Float>
    /// [N × A] head outputs of layer ℓ at the last position, before Δ.
    let heads0: UnsafeMutablePointer<Float>
    let acts: Activations
    /// The longest prompt: the most positions any row attends over (its cached prefix and itself).
    let maxCtx: Int

    final class Activations {
        /// Saved activations of the last forward, for the backward: one set per layer on the path.
        let layers: [BlockSave]
        let hFinal, hNorm, invFinal: UnsafeMutablePointer<Float>
        let logits: UnsafeMutablePointer<Float>
        // scratch for the backward
        let dh, dxn, dA, dF, dF2, dKV, dKV2, dQ: UnsafeMutablePointer<Float>
        let all: [UnsafeMutablePointer<Float>]
        init(_ cfg: LlamaConfig, count: Int, N: Int, ctx: Int) {
            let D = cfg.dModel, A = cfg.attnDim, KV = cfg.kvDim, F = cfg.ffnDim, V = cfg.vocabSize
            layers = (0..<count).map { _ in BlockSave(cfg, rows: N, probs: N * cfg.nHeads * ctx) }
            let a = zeroed
            hFinal = a(N * D)
            hNorm = a(N * D)
            invFinal = a(N)
            logits = a(N * V)
            dh = a(N * D)
            dxn = a(N * D)
            dA = a(N * A)
            dF = a(N * F)
            dF2 = a(N * F)
            dKV = a(N * KV)
            dKV2 = a(N * KV)
            dQ = a(N * A)
            all = [hFinal, hNorm, invFinal, logits, dh, dxn, dA, dF, dF2, dKV, dKV2, dQ]
        }
        deinit { all.forEach { $0.deallocate() } }
    }

    init(model: LlamaModel, backend: Backend, layer: Int, prefill p: PathPrefill) {
        self.model = model
        self.backend = backend
        self.layer = layer
        cfg = model.config
        rows = p.promptLengths.count
        promptLengths = p.promptLengths
        caches = p.caches
        let N = rows
        let D = cfg.dModel
        let A = cfg.attnDim
        residIn = .allocate(capacity: N * D)
        residIn.initialize(from: p.residIn, count: N * D)
        heads0 = .allocate(capacity: N * A)
        heads0.initialize(from: p.heads0, count: N * A)
        maxCtx = promptLengths.max()!
        acts = Activations(cfg, count: cfg.nLayers - layer, N: N, ctx: maxCtx)
    }

    deinit {
        residIn.deallocate()
        heads0.deallocate()
    }

    // MARK: PathRunner

    func step(
        deltas: UnsafePointer<Float>, loss: TaskLoss, rowWeight: [Float], perRow: UnsafeMutablePointer<Float>,
        grad: UnsafeMutablePointer<Float>?
    ) {
        let N = rows
        // Cross-entropy with a gradient: logits, softmax and dz·W_emb in one pass over W_emb.
        var fusedTargets: [Int]? = nil
        if grad != nil, case .nextToken(let targets) = loss,
            backend.fusesHead(model.output, rows: N, precision: precision)
        {
            fusedTargets = targets
        }
        forward(deltas, logits: lossNeedsLogits(loss) && fusedTargets == nil)
        if let targets = fusedTargets {
            precondition(targets.count == N)
            backend.crossEntropyHead(
                acts.hNorm, N, model.output, targets: targets, rowWeight: rowWeight,
                loss: perRow, dh: acts.dxn)
        } else {
            lossHead(loss, rowWeight: rowWeight, perRow: perRow, gradient: grad != nil)
        }
        if let grad { backward(grad) }
    }

    func logits(deltas: UnsafePointer<Float>) -> [Float] {
        forward(deltas)
        return Array(UnsafeBufferPointer(start: acts.logits, count: rows * cfg.vocabSize))
    }

    func restrictedDistributions(deltas: UnsafePointer<Float>, alphabets: [[Int]]) -> [[Float]] {
        forward(deltas, logits: false)
        return (0..<rows).map { restricted(row: $0, alphabet: alphabets[$0]) }
    }

    func lossNeedsLogits(_ l: TaskLoss) -> Bool { if case .nextToken = l { return true } else { return false } }

    // MARK: forward

    /// Runs the single-token path for per-row Δs (`deltas` [N × A]); leaves the logits [N × V] in
    /// `acts.logits` and everything the backward needs in `acts`.
    func forward(_ deltas: UnsafePointer<Float>, logits wantLogits: Bool = true) {
        let N = rows
        let D = cfg.dModel
        let A = cfg.attnDim
        let KV = cfg.kvDim
        let ctxMax = maxCtx
        var h = acts.layers[0].hIn
        for (k, l) in (layer..<cfg.nLayers).enumerated() {
            let blk = model.blocks[l]
            let s = acts.layers[k]
            let shape = LastTokenAttention.Shape(cfg, layer: l)
            let rope = model.rope(l)
            if k == 0 {
                // ---- layer ℓ: o = heads0 + Δ                            o [N × A]
                for i in 0..<N * A { s.o[i] = heads0[i] + deltas[i] }
                s.hIn.update(from: residIn, count: N * D)
            } else {
                if s.hIn != h { s.hIn.update(from: h, count: N * D) }
                // ---- attention of layer l for the last token, over its cached prefix
                blk.attentionInputForward(
                    backend, cfg, h: s.hIn, rows: N, xn: s.xnAttn, invRMS: s.invAttn,
                    q: s.q, k: s.k, v: s.v, headNorms: s.headNorms, precision: precision)
                forEachRow { i in
                    let p = promptLengths[i] - 1
                    rope.forward(s.q + i * A, heads: cfg.nHeads, position: p)
                    rope.forward(s.k + i * KV, heads: cfg.nKVHeads, position: p)
                    LastTokenAttention.forward(
                        shape, q: s.q + i * A, kSelf: s.k + i * KV, vSelf: s.v + i * KV,
                        kc: caches[i].keys(layer: l), vc: caches[i].values(layer: l),
                        n: promptLengths[i], probs: s.probs + i * cfg.nHeads * ctxMax,
                        probStride: ctxMax, o: s.o + i * A)
                }
            }
            // h_mid = h_in + post(o · W_oᵀ)                                  [N × D]
            blk.attentionOutputForward(
                backend, cfg, o: s.o, rows: N, h: s.hIn, out: s.hMid, post: s.postAttn, precision: precision)
            // ---- MLP: h_out = h_mid + post(MLP(rms(h_mid))); m [N × F] in the scratch dF
            let out = k + 1 < acts.layers.count ? acts.layers[k + 1].hIn : acts.hFinal
            blk.mlpForward(
                backend, cfg, h: s.hMid, rows: N, out: out, xn: s.xnFfn, invRMS: s.invFfn, g: s.g, u: s.u,
                m: acts.dF, post: s.postFfn, precision: precision, perRows: forEachRowRange)
            h = out
        }
        // ---- final norm; logits z = rms(h) W_embᵀ                           z [N × V]
        Ops.rmsnorm(
            acts.hFinal, model.outputNorm.data, acts.hNorm, rows: N, dim: D, eps: cfg.rmsEps, invRMS: acts.invFinal)
        if wantLogits {
            backend.linear(acts.hNorm, N, [(model.output, acts.logits)], accumulate: false, precision: precision)
        }
    }

    // MARK: loss

    /// Per-row loss and dL/dz (or directly dL/dh_norm for the restricted KL), each row's loss
    /// weighted by `rowWeight[i]` (1/N for a plain mean).
    func lossHead(_ loss: TaskLoss, rowWeight: [Float], perRow: UnsafeMutablePointer<Float>, gradient: Bool = true) {
        let N = rows
        let D = cfg.dModel
        let V = cfg.vocabSize
        let W = model.output
        let dhn = acts.dxn
        switch loss {
        case .nextToken(let targets):
            precondition(targets.count == N)
            // dz = w_i (softmax(z) − onehot(t)); dh_norm = dz · W_emb. The rows split between the
            // threads: 49,152 exponentials a row were a serial 1.5% of a 2-thread int8 step.
            let logits = acts.logits
            forEachRow { i in
                let z = logits + i * V
                let t = targets[i]
                let zt = z[t]
                let lse = Ops.softmax(z, V)
                perRow[i] = lse - zt
                let w = rowWeight[i]
                for v in 0..<V { z[v] *= w }
                z[t] -= w
            }
            if gradient {
                backend.linearBackward(
                    [(UnsafePointer(acts.logits), W)], N, dhn, accumulate: false, precision: precision)
            }
        case .restrictedKL(let alphabets, let target):
            precondition(target.count == N && alphabets.count == N)
            dhn.update(repeating: 0, count: N * D)
            for i in 0..<N {
                let alphabet = alphabets[i]
                precondition(alphabet.count == target[i].count && !alphabet.isEmpty)
                let q = restricted(row: i, alphabet: alphabet)
                var kl: Float = 0
                for a in 0..<q.count where q[a] > 0 { kl += q[a] * (logf(q[a]) - logf(max(target[i][a], 1e-12))) }
                perRow[i] = kl
                // dKL/dz_a = q_a (log(q_a/π_a) − KL)
                for (a, id) in alphabet.enumerated() {
                    let dz = rowWeight[i] * q[a] * (logf(max(q[a], 1e-30)) - logf(max(target[i][a], 1e-12)) - kl)
                    Ops.axpy(dz, W.data + id * D, dhn + i * D, D)
                }
            }
        }
    }

    /// softmax over `alphabet` of row i's logits, from the last forward's final hidden state.
    func restricted(row i: Int, alphabet: [Int]) -> [Float] {
        let D = cfg.dModel
        let W = model.output
        return InterventionPath.softmax(alphabet.map { Ops.dot(acts.hNorm + i * D, W.data + $0 * D, D) })
    }

    // MARK: backward

    /// Back-propagates dL/dh_norm (in `acts.dxn`) to dL/dΔ per row, written to `grad` [N × A].
    /// Each block of the forward, reversed.
    func backward(_ grad: UnsafeMutablePointer<Float>) {
        let N = rows
        let D = cfg.dModel
        let A = cfg.attnDim
        let KV = cfg.kvDim
        let ctxMax = maxCtx
        let dh = acts.dh
        let dxn = acts.dxn
        // final norm: dh = rmsnorm_backward(h_final, dh_norm)
        dh.update(repeating: 0, count: N * D)
        Ops.rmsnormBackward(acts.hFinal, model.outputNorm.data, dxn, dh, rows: N, dim: D, invRMS: acts.invFinal)
        for (k, l) in (layer..<cfg.nLayers).enumerated().reversed() {
            let blk = model.blocks[l]
            let s = acts.layers[k]
            let shape = LastTokenAttention.Shape(cfg, layer: l)
            let rope = model.rope(l)
            // ---- MLP backward: dh_mid = dh_out + MLP′ᵀ dh_out
            blk.mlpBackward(
                backend, cfg, h: s.hMid, rows: N, invRMS: s.invFfn, g: s.g, u: s.u, post: s.postFfn, dh: dh,
                dm: acts.dF, du: acts.dF2, dxn: dxn, precision: precision, perRows: forEachRowRange)
            // ---- o_proj backward. h_mid = h_in + post(o W_oᵀ)  →  do = post′ᵀ(dh_mid) W_o; at layer ℓ dΔ_i = do_i
            let dO = k == 0 ? grad : acts.dA
            blk.attentionOutputBackward(
                backend, cfg, dout: dh, rows: N, post: s.postAttn, dy: dxn, dO: dO, precision: precision)
            if k == 0 { return }
            // ---- attention backward, per row (only the token's own q, k, v depend on Δ), then RoPE's
            let dQ = acts.dQ
            let dK = acts.dKV
            let dV = acts.dKV2
            dK.update(repeating: 0, count: N * KV)
            dV.update(repeating: 0, count: N * KV)
            forEachRow { i in
                var dp = [Float](repeating: 0, count: ctxMax)
                dp.withUnsafeMutableBufferPointer { dpb in
                    LastTokenAttention.backward(
                        shape, dO: dO + i * A, q: s.q + i * A, kSelf: s.k + i * KV,
                        vSelf: s.v + i * KV, kc: caches[i].keys(layer: l),
                        vc: caches[i].values(layer: l), n: promptLengths[i],
                        probs: s.probs + i * cfg.nHeads * ctxMax, probStride: ctxMax,
                        dq: dQ + i * A, dkSelf: dK + i * KV, dvSelf: dV + i * KV,
                        dp: dpb.baseAddress!)
                }
                let p = promptLengths[i] - 1
                rope.backward(dQ + i * A, heads: cfg.nHeads, position: p)
                rope.backward(dK + i * KV, heads: cfg.nKVHeads, position: p)
            }
            // ---- q/k norms, q/k/v and the attention norm: dh_in = dh_mid + …
            blk.attentionInputBackward(
                backend, cfg, h: s.hIn, rows: N, invRMS: s.invAttn, dq: dQ, dk: dK, dv: dV,
                headNorms: s.headNorms, dxn: dxn, dh: dh, precision: precision)
        }
    }

    /// Runs `body(i)` for every row, the rows split between the backend's threads (the per-row
    /// attention and SwiGLU work between two products; each row writes only its own slices).
    func forEachRow(_ body: (Int) -> Void) {
        forEachRowRange { r in for i in r { body(i) } }
    }

    /// The rows in one range per thread (the ops' `perRows`).
    func forEachRowRange(_ body: (Range<Int>) -> Void) {
        SpinPool.forEachRange(rows, threads: backend.threads) { _, r in body(r) }
    }
}

extension CPUBackend {
    public func makePathRunner(model: LlamaModel, layer: Int, prefill: PathPrefill) -> PathRunner {
        CPUPathRunner(model: model, backend: self, layer: layer, prefill: prefill)
    }
}
