import Foundation

// The transformer block once, as forward/backward pairs with their shapes. The full forward
// (prefill and decoding, `LlamaModel.forward`) and the single-token intervention path
// (`InterventionPath`) both call these; the backward of each op sits next to its forward and
// reads like it reversed. Shapes: N rows, D residual width, A = H·d (heads × head size),
// KV = H_kv·d, F the MLP width.
//
//   h_mid = h_in + Attn(rms(h_in)) W_oᵀ          attentionInput → RoPE → attention → (o_proj)
//   h_out = h_mid + MLP(rms(h_mid))              mlp
//
// Architecture differences enter as configuration of these ops (`LlamaConfig`), not as another
// copy of the block.

extension LlamaBlock {
    // MARK: attention input: x = rms(h), q/k/v = x W_{q,k,v}ᵀ

    /// h [N × D] → xn [N × D] (and 1/rms per row in `invRMS` when the backward needs it),
    /// q [N × A], k [N × KV], v [N × KV]: one pass over the three weights.
    func attentionInputForward(
        _ backend: Backend, _ cfg: LlamaConfig, h: UnsafePointer<Float>, rows N: Int,
        xn: UnsafeMutablePointer<Float>, invRMS: UnsafeMutablePointer<Float>?,
        q: UnsafeMutablePointer<Float>, k: UnsafeMutablePointer<Float>,
        v: UnsafeMutablePointer<Float>, precision: Precision
    ) {
        Ops.rmsnorm(h, attnNorm.data, xn, rows: N, dim: cfg.dModel, eps: cfg.rmsEps, invRMS: invRMS)
        backend.linear(xn, N, [(wq, q), (wk, k), (wv, v)], accumulate: false, precision: precision)
    }

    /// dq [N × A], dk, dv [N × KV] → dh [N × D] (accumulated): dx = dq W_q + dk W_k + dv W_v into
    /// the scratch `dxn`, then the RMSNorm backward at h.
    func attentionInputBackward(
        _ backend: Backend, _ cfg: LlamaConfig, h: UnsafePointer<Float>, rows N: Int,
        invRMS: UnsafePointer<Float>, dq: UnsafePointer<Float>, dk: UnsafePointer<Float>,
        dv: UnsafePointer<Float>, dxn: UnsafeMutablePointer<Float>,
        dh: UnsafeMutablePointer<Float>, precision: Precision
    ) {
        backend.linearBackward([(dq, wq), (dk, wk), (dv, wv)], N, dxn, accumulate: false, precision: precision)
        Ops.rmsnormBackward(h, attnNorm.data, dxn, dh, rows: N, dim: cfg.dModel, invRMS: invRMS)
    }

    // MARK: MLP: out = h + (silu(x W_gᵀ) ⊙ x W_uᵀ) W_downᵀ, x = rms(h)

    /// h [N × D] → out [N × D] (`out` may be `h` itself: the residual is then updated in place).
    /// Keeps xn, 1/rms (when `invRMS` is given), g and u [N × F] for the backward; m [N × F] is
    /// the SwiGLU output (it may be `g` when no backward follows). `perRows` runs the element-wise
    /// work over row ranges (split between threads by the path).
    func mlpForward(
        _ backend: Backend, _ cfg: LlamaConfig, h: UnsafePointer<Float>, rows N: Int,
        out: UnsafeMutablePointer<Float>, xn: UnsafeMutablePointer<Float>,
        invRMS: UnsafeMutablePointer<Float>?, g: UnsafeMutablePointer<Float>,
        u: UnsafeMutablePointer<Float>, m: UnsafeMutablePointer<Float>, precision: Precision,
        perRows: ((Range<Int>) -> Void) -> Void
    ) {
        let F = cfg.ffnDim
        Ops.rmsnorm(h, ffnNorm.data, xn, rows: N, dim: cfg.dModel, eps: cfg.rmsEps, invRMS: invRMS)
        backend.linear(xn, N, [(wGate, g), (wUp, u)], accumulate: false, precision: precision)
        perRows { r in for i in r { Ops.swiglu(g + i * F, u + i * F, m + i * F, F) } }
        if out != UnsafeMutablePointer(mutating: h) { out.update(from: h, count: N * cfg.dModel) }
        backend.linear(m, N, [(wDown, out)], accumulate: true, precision: precision)
    }

    /// dout [N × D] → dh [N × D] (accumulated: `dh` holds dout on entry, the residual path). Uses
    /// the scratches dm, dg [N × F] (dm may be reused as dg), du [N × F] and dxn [N × D].
    func mlpBackward(
        _ backend: Backend, _ cfg: LlamaConfig, h: UnsafePointer<Float>, rows N: Int,
        invRMS: UnsafePointer<Float>, g: UnsafePointer<Float>, u: UnsafePointer<Float>,
        dh: UnsafeMutablePointer<Float>, dm: UnsafeMutablePointer<Float>, du: UnsafeMutablePointer<Float>,
        dxn: UnsafeMutablePointer<Float>, precision: Precision,
        perRows: ((Range<Int>) -> Void) -> Void
    ) {
        let F = cfg.ffnDim
        backend.linearBackward([(UnsafePointer(dh), wDown)], N, dm, accumulate: false, precision: precision)
        perRows { r in  // dg → dm (in place), du
            for i in r { Ops.swigluBackward(g + i * F, u + i * F, dm + i * F, dm + i * F, du + i * F, F) }
        }
        backend.linearBackward(
            [(UnsafePointer(dm), wGate), (UnsafePointer(du), wUp)], N, dxn, accumulate: false,
            precision: precision)
        Ops.rmsnormBackward(h, ffnNorm.data, dxn, dh, rows: N, dim: cfg.dModel, invRMS: invRMS)
    }
}

/// RoPE in GGUF's layout: rotation pairs are adjacent, (x[2i], x[2i+1]) turned by p·θ_i with
/// θ_i = base^(−2i/ropeDim). (The converter permuted W_q and W_k so this equals the Hugging Face
/// "rotate half" form.) Tables are computed once per model.
struct Rope: Sendable {
    let half: Int, headDim: Int, positions: Int
    let cos: [Float], sin: [Float]  // [positions × half]

    init(_ cfg: LlamaConfig) {
        half = cfg.ropeDim / 2
        headDim = cfg.headDim
        positions = cfg.contextLength
        var c = [Float](repeating: 0, count: positions * half)
        var s = c
        for p in 0..<positions {
            for i in 0..<half {
                // computed in Double then rounded, as references do in fp32
                let inv = Float(1.0 / pow(Double(cfg.ropeTheta), Double(2 * i) / Double(cfg.ropeDim)))
                let a = Float(p) * inv
                c[p * half + i] = Foundation.cos(a)
                s[p * half + i] = Foundation.sin(a)
            }
        }
        cos = c
        sin = s
    }

    /// x [heads × d] (one row) at position p, in place.
    func forward(_ x: UnsafeMutablePointer<Float>, heads: Int, position p: Int) {
        precondition(p < positions, "position \(p) beyond the model's context length \(positions)")
        cos.withUnsafeBufferPointer { cb in
            sin.withUnsafeBufferPointer { sb in
                let cr = cb.baseAddress! + p * half
                let sr = sb.baseAddress! + p * half
                for h in 0..<heads {
                    let v = x + h * headDim
                    for i in 0..<half {
                        let a = v[2 * i]
                        let b = v[2 * i + 1]
                        v[2 * i] = a * cr[i] - b * sr[i]
                        v[2 * i + 1] = a * sr[i] + b * cr[i]
                    }
                }
            }
        }
    }

    /// dx [heads × d] at position p, in place: the rotation's transpose (turned back by −p·θ_i).
    func backward(_ dx: UnsafeMutablePointer<Float>, heads: Int, position p: Int) {
        cos.withUnsafeBufferPointer { cb in
            sin.withUnsafeBufferPointer { sb in
                let cr = cb.baseAddress! + p * half
                let sr = sb.baseAddress! + p * half
                for h in 0..<heads {
                    let v = dx + h * headDim
                    for i in 0..<half {
                        let da = v[2 * i]
                        let db = v[2 * i + 1]
                        v[2 * i] = da * cr[i] + db * sr[i]
                        v[2 * i + 1] = -da * sr[i] + db * cr[i]
                    }
                }
            }
        }
    }
}

/// Attention of one token (a prompt's last, or a decoding step's) over a cached prefix of n − 1
/// positions and itself, for every head; grouped-query heads share their K/V head. Used by the
/// intervention path (forward and backward) and by decoding.
enum LastTokenAttention {
    struct Shape {
        let heads: Int, kvHeads: Int, headDim: Int
        var group: Int { heads / kvHeads }
        var A: Int { heads * headDim }
        var KV: Int { kvHeads * headDim }
        var scale: Float { 1 / Float(headDim).squareRoot() }
        init(_ cfg: LlamaConfig) {
            heads = cfg.nHeads
            kvHeads = cfg.nKVHeads
            headDim = cfg.headDim
        }
    }

    /// q [A], kSelf, vSelf [KV], cached kc, vc [n−1 × KV] → o [A] = Σ_t p_t v_t with
    /// p = softmax(scale · q·k_t) over the n positions; p [H × probStride] is kept for the backward.
    static func forward(
        _ s: Shape, q: UnsafePointer<Float>, kSelf: UnsafePointer<Float>, vSelf: UnsafePointer<Float>,
        kc: UnsafePointer<Float>, vc: UnsafePointer<Float>, n: Int,
        probs: UnsafeMutablePointer<Float>, probStride: Int, o: UnsafeMutablePointer<Float>
    ) {
        let hd = s.headDim
        let KV = s.KV
        let scale = s.scale
        for hh in 0..<s.heads {
            let g = hh / s.group
            let qv = q + hh * hd
            let pr = probs + hh * probStride
            // scores over the n−1 cached positions, then the token itself
            for t in 0..<(n - 1) { pr[t] = scale * Ops.dot(qv, kc + t * KV + g * hd, hd) }
            pr[n - 1] = scale * Ops.dot(qv, kSelf + g * hd, hd)
            Ops.softmax(pr, n)
            let ov = o + hh * hd
            ov.update(repeating: 0, count: hd)
            for t in 0..<(n - 1) { Ops.axpy(pr[t], vc + t * KV + g * hd, ov, hd) }
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
        for hh in 0..<s.heads {
            let g = hh / s.group
            let pr = probs + hh * probStride
            let dov = dO + hh * hd
            let vS = vSelf + g * hd
            let kS = kSelf + g * hd
            // o = Σ_t p_t v_t: dp_t = do · v_t; dv_self += p_self do
            var pdp: Float = 0
            for t in 0..<(n - 1) {
                dp[t] = Ops.dot(dov, vc + t * KV + g * hd, hd)
                pdp += pr[t] * dp[t]
            }
            dp[n - 1] = Ops.dot(dov, vS, hd)
            pdp += pr[n - 1] * dp[n - 1]
            Ops.axpy(pr[n - 1], dov, dvSelf + g * hd, hd)
            // softmax: ds_t = p_t (dp_t − Σ p dp); scores = scale q·k_t
            let dqh = dq + hh * hd
            dqh.update(repeating: 0, count: hd)
            for t in 0..<(n - 1) { Ops.axpy(scale * pr[t] * (dp[t] - pdp), kc + t * KV + g * hd, dqh, hd) }
            let dsSelf = scale * pr[n - 1] * (dp[n - 1] - pdp)
            Ops.axpy(dsSelf, kS, dqh, hd)
            Ops.axpy(dsSelf, q + hh * hd, dkSelf + g * hd, hd)
        }
    }
}

/// Causal attention of n new rows at positions p0 … p0+n−1 over the cache's positions 0 … p0+n−1
/// (the new rows' own keys and values already written there), per head as two products: the
/// prefill's op. (Its backward is still to write: a full-sequence backward starts here.)
enum CausalAttention {
    /// q [n × A] (row stride A), k, v cache [ctx × KV] → o [n × A]; `scores` holds one head's
    /// [n × ctx] at a time.
    static func forward(_ s: LastTokenAttention.Shape, _ backend: Backend, q: UnsafePointer<Float>,
                        k: UnsafePointer<Float>, v: UnsafePointer<Float>, rows n: Int, start p0: Int,
                        scores: UnsafeMutablePointer<Float>, o: UnsafeMutablePointer<Float>) {
        let hd = s.headDim, A = s.A, KV = s.KV, ctx = p0 + n
        for h in 0..<s.heads {
            let kvh = h / s.group
            // S[n × ctx] = Q_h · K_hᵀ · scale
            backend.gemm(transA: false, transB: true, m: n, n: ctx, k: hd, alpha: s.scale,
                         a: q + h * hd, lda: A, b: k + kvh * hd, ldb: KV, beta: 0, c: scores, ldc: ctx)
            for i in 0..<n {   // causal mask: row i sees positions 0…p0+i
                let row = scores + i * ctx
                let visible = p0 + i + 1
                for j in visible..<ctx { row[j] = -.infinity }
                Ops.softmax(row, visible)
                for j in visible..<ctx { row[j] = 0 }
            }
            // O_h[n × d] = P · V_h
            backend.gemm(transA: false, transB: false, m: n, n: hd, k: ctx, alpha: 1,
                         a: scores, lda: ctx, b: v + kvh * hd, ldb: KV, beta: 0, c: o + h * hd, ldc: A)
        }
    }
}
