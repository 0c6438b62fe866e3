import Foundation

// The transformer block once, as forward/backward pairs with their shapes. The full forward
// (prefill and decoding, `LlamaModel.forward`) and the single-token intervention path
// (`InterventionPath`) both call these; the backward of each op sits next to its forward and
// reads like it reversed. Shapes: N rows, D residual width, A = H·d (heads × head size),
// KV = H_kv·d, F the MLP width.
//
//   h_mid = h_in + post(Attn(rms(h_in)) W_oᵀ)     attentionInput → RoPE → attention → attentionOutput
//   h_out = h_mid + post(MLP(rms(h_mid)))         mlp
//
// `post` is the identity, or an RMSNorm where the family has one (Gemma 3); Attn may normalise
// q and k per head first. Architecture differences enter as configuration of these ops
// (`LlamaConfig`, its table), not as another copy of the block.

/// Where an optional RMSNorm keeps what its backward needs: its input y [N × dim] and 1/rms [N]
/// (nil when no backward follows; y is then only scratch).
typealias NormSave = (y: UnsafeMutablePointer<Float>, inv: UnsafeMutablePointer<Float>?)

/// The per-head q/k norms' saved inputs (before the norm): q [N × A], k [N × KV], and 1/rms per
/// head, [N × H] and [N × H_kv].
struct HeadNormSave {
    let q, k, invQ, invK: UnsafeMutablePointer<Float>
}

/// What one block's backward needs from its forward, for N rows: the op pairs' saved inputs and
/// outputs (zero-filled at first). The single-token path (`CPUPathRunner`) keeps one per layer
/// above ℓ, its k and v the token's own; the full-sequence path (`SequencePath`) one per layer,
/// k and v at every position and m, the MLP's gated output, for adapters on down_proj. `probs`
/// holds the attention probabilities, P floats laid out by the path.
final class BlockSave {
    let hIn, xnAttn, invAttn, q, k, v, probs, o, hMid, xnFfn, invFfn, g, u, m: UnsafeMutablePointer<Float>
    // the families' extra norms (Gemma 3): post-norms' inputs and 1/rms, q/k before their norms
    let yAttn, invPostAttn, yFfn, invPostFfn: UnsafeMutablePointer<Float>
    let headNorms: HeadNormSave
    private let all: [UnsafeMutablePointer<Float>]
    var postAttn: NormSave { (yAttn, invPostAttn) }
    var postFfn: NormSave { (yFfn, invPostFfn) }

    init(_ c: LlamaConfig, rows N: Int, probs P: Int) {
        var made: [UnsafeMutablePointer<Float>] = []
        func a(_ n: Int) -> UnsafeMutablePointer<Float> {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(n, 1))
            p.initialize(repeating: 0, count: max(n, 1))
            made.append(p)
            return p
        }
        let D = c.dModel, A = c.attnDim, KV = c.kvDim, F = c.ffnDim
        hIn = a(N * D); xnAttn = a(N * D); invAttn = a(N); q = a(N * A); k = a(N * KV); v = a(N * KV)
        probs = a(P); o = a(N * A); hMid = a(N * D); xnFfn = a(N * D); invFfn = a(N)
        g = a(N * F); u = a(N * F); m = a(N * F)
        yAttn = a(N * D); invPostAttn = a(N); yFfn = a(N * D); invPostFfn = a(N)
        headNorms = HeadNormSave(q: a(N * A), k: a(N * KV), invQ: a(N * c.nHeads), invK: a(N * c.nKVHeads))
        all = made
    }
    deinit { all.forEach { $0.deallocate() } }
}

extension LlamaBlock {
    // MARK: attention input: x = rms(h), q/k/v = x W_{q,k,v}ᵀ

    /// h [N × D] → xn [N × D] (and 1/rms per row in `invRMS` when the backward needs it),
    /// q [N × A], k [N × KV], v [N × KV]: one pass over the three weights; then, where the family
    /// has them, q and k normalised per head in place (their inputs kept in `headNorms`).
    func attentionInputForward(
        _ backend: Backend, _ cfg: LlamaConfig, h: UnsafePointer<Float>, rows N: Int,
        xn: UnsafeMutablePointer<Float>, invRMS: UnsafeMutablePointer<Float>?,
        q: UnsafeMutablePointer<Float>, k: UnsafeMutablePointer<Float>,
        v: UnsafeMutablePointer<Float>, headNorms: HeadNormSave?, precision: Precision
    ) {
        Ops.rmsnorm(h, attnNorm.data, xn, rows: N, dim: cfg.dModel, eps: cfg.rmsEps, invRMS: invRMS)
        backend.linear(xn, N, [(wq, q), (wk, k), (wv, v)], accumulate: false, precision: precision)
        if let qNorm, let kNorm {
            let d = cfg.headDim
            if let s = headNorms {
                s.q.update(from: q, count: N * cfg.attnDim)
                s.k.update(from: k, count: N * cfg.kvDim)
            }
            Ops.rmsnorm(q, qNorm.data, q, rows: N * cfg.nHeads, dim: d, eps: cfg.rmsEps, invRMS: headNorms?.invQ)
            Ops.rmsnorm(k, kNorm.data, k, rows: N * cfg.nKVHeads, dim: d, eps: cfg.rmsEps, invRMS: headNorms?.invK)
        }
    }

    /// dq [N × A], dk, dv [N × KV] → dh [N × D] (accumulated): back through the per-head norms
    /// (dq and dk are overwritten), dx = dq W_q + dk W_k + dv W_v into the scratch `dxn`, then
    /// the RMSNorm backward at h.
    func attentionInputBackward(
        _ backend: Backend, _ cfg: LlamaConfig, h: UnsafePointer<Float>, rows N: Int,
        invRMS: UnsafePointer<Float>, dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
        dv: UnsafePointer<Float>, headNorms: HeadNormSave?, dxn: UnsafeMutablePointer<Float>,
        dh: UnsafeMutablePointer<Float>, precision: Precision
    ) {
        if let qNorm, let kNorm, let s = headNorms {
            let d = cfg.headDim
            let both = [(dq, s.q, qNorm, s.invQ, cfg.nHeads), (dk, s.k, kNorm, s.invK, cfg.nKVHeads)]
            for (g, x, w, inv, heads) in both {
                withUnsafeTemporaryAllocation(of: Float.self, capacity: N * heads * d) { t in
                    let dx = t.baseAddress!
                    dx.initialize(repeating: 0, count: N * heads * d)
                    Ops.rmsnormBackward(x, w.data, g, dx, rows: N * heads, dim: d, invRMS: inv)
                    g.update(from: dx, count: N * heads * d)
                }
            }
        }
        backend.linearBackward(
            [(UnsafePointer(dq), wq), (UnsafePointer(dk), wk), (dv, wv)], N, dxn, accumulate: false,
            precision: precision)
        Ops.rmsnormBackward(h, attnNorm.data, dxn, dh, rows: N, dim: cfg.dModel, invRMS: invRMS)
    }

    // MARK: attention output: out = h + post(o W_oᵀ)

    /// o [N × A], h [N × D] → out [N × D] (`out` may be `h`). With a post-norm, y = o W_oᵀ and
    /// its 1/rms go to `post` for the backward.
    func attentionOutputForward(
        _ backend: Backend, _ cfg: LlamaConfig, o: UnsafePointer<Float>, rows N: Int,
        h: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, post: NormSave, precision: Precision
    ) {
        if out != UnsafeMutablePointer(mutating: h) { out.update(from: h, count: N * cfg.dModel) }
        guard let postAttnNorm else {
            backend.linear(o, N, [(wo, out)], accumulate: true, precision: precision)
            return
        }
        backend.linear(o, N, [(wo, post.y)], accumulate: false, precision: precision)
        Ops.rmsnormAdd(
            post.y, postAttnNorm.data, into: out, rows: N, dim: cfg.dModel, eps: cfg.rmsEps, invRMS: post.inv)
    }

    /// dout [N × D] → do [N × A] (written); `dy` [N × D] is scratch for the post-norm's backward.
    func attentionOutputBackward(
        _ backend: Backend, _ cfg: LlamaConfig, dout: UnsafePointer<Float>, rows N: Int, post: NormSave,
        dy: UnsafeMutablePointer<Float>, dO: UnsafeMutablePointer<Float>, precision: Precision
    ) {
        var d = dout
        if let postAttnNorm, let inv = post.inv {
            dy.update(repeating: 0, count: N * cfg.dModel)
            Ops.rmsnormBackward(post.y, postAttnNorm.data, dout, dy, rows: N, dim: cfg.dModel, invRMS: inv)
            d = UnsafePointer(dy)
        }
        backend.linearBackward([(d, wo)], N, dO, accumulate: false, precision: precision)
    }

    // MARK: MLP: out = h + post((act(x W_gᵀ) ⊙ x W_uᵀ) W_downᵀ), x = rms(h)

    /// h [N × D] → out [N × D] (`out` may be `h` itself: the residual is then updated in place).
    /// Keeps xn, 1/rms (when `invRMS` is given), g and u [N × F] for the backward; m [N × F] is
    /// the gated output (it may be `g` when no backward follows); with a post-norm, the down
    /// projection's output and its 1/rms go to `post` (`post.y` may be `xn` when no backward
    /// follows). `perRows` runs the element-wise work over row ranges (split between threads by
    /// the path). act is SiLU (SwiGLU) or tanh-GELU (GeGLU), as the family says.
    func mlpForward(
        _ backend: Backend, _ cfg: LlamaConfig, h: UnsafePointer<Float>, rows N: Int,
        out: UnsafeMutablePointer<Float>, xn: UnsafeMutablePointer<Float>,
        invRMS: UnsafeMutablePointer<Float>?, g: UnsafeMutablePointer<Float>,
        u: UnsafeMutablePointer<Float>, m: UnsafeMutablePointer<Float>, post: NormSave, precision: Precision,
        perRows: ((Range<Int>) -> Void) -> Void, output: ((UnsafeMutablePointer<Float>) -> Void)? = nil
    ) {
        let F = cfg.ffnDim
        Ops.rmsnorm(h, ffnNorm.data, xn, rows: N, dim: cfg.dModel, eps: cfg.rmsEps, invRMS: invRMS)
        backend.linear(xn, N, [(wGate, g), (wUp, u)], accumulate: false, precision: precision)
        switch cfg.activation {
        case .silu: perRows { r in for i in r { Ops.swiglu(g + i * F, u + i * F, m + i * F, F) } }
        case .geluTanh: perRows { r in for i in r { Ops.geglu(g + i * F, u + i * F, m + i * F, F) } }
        }
        if out != UnsafeMutablePointer(mutating: h) { out.update(from: h, count: N * cfg.dModel) }
        if let output {  // the MLP's output apart (in xn, free since gate/up), seen, then added
            backend.linear(m, N, [(wDown, xn)], accumulate: false, precision: precision)
            if let postFfnNorm { Ops.rmsnorm(xn, postFfnNorm.data, xn, rows: N, dim: cfg.dModel, eps: cfg.rmsEps) }
            output(xn)
            Ops.add(xn, into: out, N * cfg.dModel)
            return
        }
        guard let postFfnNorm else {
            backend.linear(m, N, [(wDown, out)], accumulate: true, precision: precision)
            return
        }
        backend.linear(m, N, [(wDown, post.y)], accumulate: false, precision: precision)
        Ops.rmsnormAdd(
            post.y, postFfnNorm.data, into: out, rows: N, dim: cfg.dModel, eps: cfg.rmsEps, invRMS: post.inv)
    }

    /// dout [N × D] → dh [N × D] (accumulated: `dh` holds dout on entry, the residual path). Uses
    /// the scratches dm, dg [N × F] (dm may be reused as dg), du [N × F] and dxn [N × D].
    func mlpBackward(
        _ backend: Backend, _ cfg: LlamaConfig, h: UnsafePointer<Float>, rows N: Int,
        invRMS: UnsafePointer<Float>, g: UnsafePointer<Float>, u: UnsafePointer<Float>, post: NormSave,
        dh: UnsafeMutablePointer<Float>, dm: UnsafeMutablePointer<Float>, du: UnsafeMutablePointer<Float>,
        dxn: UnsafeMutablePointer<Float>, precision: Precision,
        perRows: ((Range<Int>) -> Void) -> Void
    ) {
        let F = cfg.ffnDim
        var dy = UnsafePointer(dh)
        if let postFfnNorm, let inv = post.inv {  // back through the post-norm first, dxn as scratch
            dxn.update(repeating: 0, count: N * cfg.dModel)
            Ops.rmsnormBackward(post.y, postFfnNorm.data, dh, dxn, rows: N, dim: cfg.dModel, invRMS: inv)
            dy = UnsafePointer(dxn)
        }
        backend.linearBackward([(dy, wDown)], N, dm, accumulate: false, precision: precision)
        perRows { r in  // dg → dm (in place), du
            for i in r {
                switch cfg.activation {
                case .silu: Ops.swigluBackward(g + i * F, u + i * F, dm + i * F, dm + i * F, du + i * F, F)
                case .geluTanh: Ops.gegluBackward(g + i * F, u + i * F, dm + i * F, dm + i * F, du + i * F, F)
                }
            }
        }
        backend.linearBackward(
            [(UnsafePointer(dm), wGate), (UnsafePointer(du), wUp)], N, dxn, accumulate: false,
            precision: precision)
        Ops.rmsnormBackward(h, ffnNorm.data, dxn, dh, rows: N, dim: cfg.dModel, invRMS: invRMS)
    }
}

/// RoPE: rotation pair i of each head, (x[a_i], x[b_i]), turned by p·θ_i with
/// θ_i = base^(−2i/ropeDim). The pairs are adjacent, a_i = 2i (GGUF's Llama layout: the converter
/// permuted W_q and W_k so that this equals the Hugging Face "rotate half" form), or halves,
/// a_i = i, b_i = i + ropeDim/2 (Gemma, whose weights are not permuted). Tables are computed once
/// per base, for up to 8192 positions; later positions compute their angles on the fly.
struct Rope: Sendable {
    let half: Int, headDim: Int, positions: Int, base: Double, ropeDim: Int
    let pairs: LlamaConfig.RopePairs
    let cos: [Float], sin: [Float]  // [positions × half]

    init(_ cfg: LlamaConfig, base: Float) {
        half = cfg.ropeDim / 2
        headDim = cfg.headDim
        ropeDim = cfg.ropeDim
        pairs = cfg.ropePairs
        self.base = Double(base)
        positions = min(cfg.contextLength, 8192)
        var c = [Float](repeating: 0, count: positions * half)
        var s = c
        for p in 0..<positions {
            for i in 0..<half {
                let (ci, si) = Self.angle(p, i, base: self.base, ropeDim: ropeDim)
                c[p * half + i] = ci
                s[p * half + i] = si
            }
        }
        cos = c
        sin = s
    }

    /// cos and sin of p·θ_i (θ_i computed in Double then rounded, as references do in fp32).
    static func angle(_ p: Int, _ i: Int, base: Double, ropeDim: Int) -> (Float, Float) {
        let inv = Float(1.0 / pow(base, Double(2 * i) / Double(ropeDim)))
        let a = Float(p) * inv
        return (Foundation.cos(a), Foundation.sin(a))
    }

    /// Runs `body` with position p's cos and sin rows [half].
    func rows<R>(_ p: Int, _ body: (UnsafePointer<Float>, UnsafePointer<Float>) -> R) -> R {
        if p < positions {
            return cos.withUnsafeBufferPointer { cb in
                sin.withUnsafeBufferPointer { sb in body(cb.baseAddress! + p * half, sb.baseAddress! + p * half) }
            }
        }
        let t = (0..<half).map { Self.angle(p, $0, base: base, ropeDim: ropeDim) }
        let c = t.map(\.0), s = t.map(\.1)
        return c.withUnsafeBufferPointer { cb in
            s.withUnsafeBufferPointer { sb in body(cb.baseAddress!, sb.baseAddress!) }
        }
    }

    /// The element offsets of rotation pair i.
    @inline(__always) func pair(_ i: Int) -> (Int, Int) { pairs == .adjacent ? (2 * i, 2 * i + 1) : (i, i + half) }

    /// x [heads × d] (one row) at position p, in place.
    func forward(_ x: UnsafeMutablePointer<Float>, heads: Int, position p: Int) {
        rows(p) { cr, sr in
            for h in 0..<heads {
                let v = x + h * headDim
                for i in 0..<half {
                    let (ia, ib) = pair(i)
                    let a = v[ia]
                    let b = v[ib]
                    v[ia] = a * cr[i] - b * sr[i]
                    v[ib] = a * sr[i] + b * cr[i]
                }
            }
        }
    }

    /// dx [heads × d] at position p, in place: the rotation's transpose (turned back by −p·θ_i).
    func backward(_ dx: UnsafeMutablePointer<Float>, heads: Int, position p: Int) {
        rows(p) { cr, sr in
            for h in 0..<heads {
                let v = dx + h * headDim
                for i in 0..<half {
                    let (ia, ib) = pair(i)
                    let da = v[ia]
                    let db = v[ib]
                    v[ia] = da * cr[i] + db * sr[i]
                    v[ib] = -da * sr[i] + db * cr[i]
                }
            }
        }
    }
}

/// Attention of one token (a prompt's last, or a decoding step's) over a cached prefix of n − 1
/// positions and itself, for every head; grouped-query heads share their K/V head. On a
/// sliding-window layer the token sees only the last `window` positions, itself included. Used
/// by the intervention path (forward and backward) and by decoding.
enum LastTokenAttention {
    struct Shape {
        let heads: Int, kvHeads: Int, headDim: Int
        let scale: Float
        /// Positions seen, itself included (nil: all).
        let window: Int?
        var group: Int { heads / kvHeads }
        var A: Int { heads * headDim }
        var KV: Int { kvHeads * headDim }
        init(_ cfg: LlamaConfig, layer: Int) {
            heads = cfg.nHeads
            kvHeads = cfg.nKVHeads
            headDim = cfg.headDim
            scale = cfg.attentionScale
            window = cfg.window(layer: layer)
        }
        /// The first position a token at position p sees.
        func first(_ p: Int) -> Int { window.map { max(0, p - $0 + 1) } ?? 0 }
    }

    /// q [A], kSelf, vSelf [KV], cached kc, vc [n−1 × KV] → o [A] = Σ_t p_t v_t with
    /// p = softmax(scale · q·k_t) over the n positions; p [H × probStride] is kept for the backward.
    /// With a base segment (`kb`, `vb`: [nb × KV], a `KVCache`'s base), positions t < nb are read
    /// there and kc, vc hold positions nb…n−2; the sums run in the same order either way.
    static func forward(
        _ s: Shape, q: UnsafePointer<Float>, kSelf: UnsafePointer<Float>, vSelf: UnsafePointer<Float>,
        kc: UnsafePointer<Float>, vc: UnsafePointer<Float>, n: Int,
        probs: UnsafeMutablePointer<Float>, probStride: Int, o: UnsafeMutablePointer<Float>,
        kb: UnsafePointer<Float>? = nil, vb: UnsafePointer<Float>? = nil, nb: Int = 0
    ) {
        let hd = s.headDim
        let KV = s.KV
        let scale = s.scale
        let t0 = s.first(n - 1)
        let inBase = t0..<max(t0, min(nb, n - 1)), own = max(t0, nb)..<(n - 1)
        for hh in 0..<s.heads {
            let g = hh / s.group
            let qv = q + hh * hd
            let pr = probs + hh * probStride
            // scores over the cached positions seen, then the token itself (unseen ones: p = 0)
            for t in 0..<t0 { pr[t] = 0 }
            for t in inBase { pr[t] = scale * Ops.dot(qv, kb! + t * KV + g * hd, hd) }
            for t in own { pr[t] = scale * Ops.dot(qv, kc + (t - nb) * KV + g * hd, hd) }
            pr[n - 1] = scale * Ops.dot(qv, kSelf + g * hd, hd)
            Ops.softmax(pr + t0, n - t0)
            let ov = o + hh * hd
            ov.update(repeating: 0, count: hd)
            for t in inBase { Ops.axpy(pr[t], vb! + t * KV + g * hd, ov, hd) }
            for t in own { Ops.axpy(pr[t], vc + (t - nb) * KV + g * hd, ov, hd) }
            Ops.axpy(pr[n - 1], vSelf + g * hd, ov, hd)
        }
    }

    /// do [A] → dq [A] (written), dkSelf, dvSelf [KV] (accumulated); the cached prefix gets no
    /// gradient (Δ cannot reach it). `dp` is scratch of n floats.
    static func backward(
        _ s: Shape, dO: UnsafePointer<Float>, q: UnsafePointer<Float>, kSelf: UnsafePointer<Float>,
        vSelf: UnsafePointer<Float>, kc: UnsafePointer<Float>, vc: UnsafePointer<Float>, n: Int,
        probs: UnsafePointer<Float>, probStride: Int, dq: UnsafeMutablePointer<Float>,
        dkSelf: UnsafeMutablePointer<Float>, dvSelf: UnsafeMutablePointer<Float>,
        dp: UnsafeMutablePointer<Float>
    ) {
        let hd = s.headDim
        let KV = s.KV
        let scale = s.scale
        let t0 = s.first(n - 1)
        for hh in 0..<s.heads {
            let g = hh / s.group
            let pr = probs + hh * probStride
            let dov = dO + hh * hd
            let vS = vSelf + g * hd
            let kS = kSelf + g * hd
            // o = Σ_t p_t v_t: dp_t = do · v_t; dv_self += p_self do
            var pdp: Float = 0
            for t in t0..<(n - 1) {
                dp[t] = Ops.dot(dov, vc + t * KV + g * hd, hd)
                pdp += pr[t] * dp[t]
            }
            dp[n - 1] = Ops.dot(dov, vS, hd)
            pdp += pr[n - 1] * dp[n - 1]
            Ops.axpy(pr[n - 1], dov, dvSelf + g * hd, hd)
            // softmax: ds_t = p_t (dp_t − Σ p dp); scores = scale q·k_t
            let dqh = dq + hh * hd
            dqh.update(repeating: 0, count: hd)
            for t in t0..<(n - 1) { Ops.axpy(scale * pr[t] * (dp[t] - pdp), kc + t * KV + g * hd, dqh, hd) }
            let dsSelf = scale * pr[n - 1] * (dp[n - 1] - pdp)
            Ops.axpy(dsSelf, kS, dqh, hd)
            Ops.axpy(dsSelf, q + hh * hd, dkSelf + g * hd, hd)
        }
    }
}

/// Causal attention of n new rows at positions p0 … p0+n−1 over the cache's positions 0 … p0+n−1
/// (the new rows' own keys and values already written there), per head as two products: the
/// prefill's op, and with its backward the full-sequence training path's (`SequencePath`).
enum CausalAttention {
    /// q [n × A] (row stride A), k, v cache [ctx × KV] → o [n × A]. `scores` holds head h's
    /// probabilities [n × ctx] at `scores + h·headStride` (0: every head reuses one buffer; n·ctx:
    /// all kept for the backward).
    static func forward(_ s: LastTokenAttention.Shape, _ backend: Backend, q: UnsafePointer<Float>,
                        k: UnsafePointer<Float>, v: UnsafePointer<Float>, rows n: Int, start p0: Int,
                        scores all: UnsafeMutablePointer<Float>, headStride: Int = 0, o: UnsafeMutablePointer<Float>) {
        let hd = s.headDim, A = s.A, KV = s.KV, ctx = p0 + n
        for h in 0..<s.heads {
            let kvh = h / s.group
            let scores = all + h * headStride
            // S[n × ctx] = Q_h · K_hᵀ · scale
            backend.gemm(transA: false, transB: true, m: n, n: ctx, k: hd, alpha: s.scale,
                         a: q + h * hd, lda: A, b: k + kvh * hd, ldb: KV, beta: 0, c: scores, ldc: ctx)
            for i in 0..<n {   // causal mask: row i sees positions first(p0+i)…p0+i
                let row = scores + i * ctx
                let visible = p0 + i + 1
                let lo = s.first(p0 + i)
                Ops.softmax(row + lo, visible - lo)
                for j in 0..<lo { row[j] = 0 }
                for j in visible..<ctx { row[j] = 0 }
            }
            // O_h[n × d] = P · V_h
            backend.gemm(transA: false, transB: false, m: n, n: hd, k: ctx, alpha: 1,
                         a: scores, lda: ctx, b: v + kvh * hd, ldb: KV, beta: 0, c: o + h * hd, ldc: A)
        }
    }

    /// The backward of `forward` for a whole sequence (p0 = 0, ctx = n), the probabilities kept
    /// per head (`probs + h·n·n`): dO [n × A] → dq [n × A] (written), dk, dv [n × KV]
    /// (accumulated: grouped heads add into their K/V head). `dS` is scratch of n·n floats.
    ///   dP = dO_h V_hᵀ;  dS = P ⊙ (dP − rowsum(P ⊙ dP));  dQ_h = scale·dS K_h;
    ///   dK_h += scale·dSᵀ Q_h;  dV_h += Pᵀ dO_h
    static func backward(_ s: LastTokenAttention.Shape, _ backend: Backend, dO: UnsafePointer<Float>,
                         q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, rows n: Int,
                         probs: UnsafePointer<Float>, dq: UnsafeMutablePointer<Float>,
                         dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                         dS: UnsafeMutablePointer<Float>) {
        let hd = s.headDim, A = s.A, KV = s.KV
        for h in 0..<s.heads {
            let kvh = h / s.group
            let P = probs + h * n * n
            backend.gemm(transA: false, transB: true, m: n, n: n, k: hd, alpha: 1,
                         a: dO + h * hd, lda: A, b: v + kvh * hd, ldb: KV, beta: 0, c: dS, ldc: n)
            for i in 0..<n {
                let p = P + i * n, d = dS + i * n
                let pdp = Ops.dot(p, d, i + 1)
                for j in 0...i { d[j] = p[j] * (d[j] - pdp) }
                for j in (i + 1)..<n { d[j] = 0 }
            }
            backend.gemm(transA: false, transB: false, m: n, n: hd, k: n, alpha: s.scale,
                         a: dS, lda: n, b: k + kvh * hd, ldb: KV, beta: 0, c: dq + h * hd, ldc: A)
            backend.gemm(transA: true, transB: false, m: n, n: hd, k: n, alpha: s.scale,
                         a: dS, lda: n, b: q + h * hd, ldb: A, beta: 1, c: dk + kvh * hd, ldc: KV)
            backend.gemm(transA: true, transB: false, m: n, n: hd, k: n, alpha: 1,
                         a: P, lda: n, b: dO + h * hd, ldb: A, beta: 1, c: dv + kvh * hd, ldc: KV)
        }
    }
}
