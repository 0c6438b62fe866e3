import Foundation

/// Trainable parameters attached to the model's weight products: the fine-tuning baselines
/// (LoRA, IA³). The full-sequence path (`SequencePath`) runs the block's ops through an
/// `AdaptedBackend`, which hands every product of an adapted weight to the adapter, so that the
/// block itself has no second, adapted copy.
public protocol ProductAdapter: AnyObject {
    /// The trainable parameters, flat, and the gradient accumulated by `backward` (same layout).
    var parameters: [Float] { get set }
    var gradient: [Float] { get set }
    /// Whether forwards keep what the backward needs (off for evaluation).
    var recording: Bool { get set }
    /// The parameters as named tensors, for the job's safetensors artefact.
    var tensors: [(name: String, shape: [Int], values: [Float])] { get }
    /// Whether products of `w` are changed.
    func adapts(_ w: Weight) -> Bool
    /// y [m × out] = x Wᵀ was just computed for x [m × in]: change y in place, keep what the
    /// backward needs (x may be overwritten after the call).
    func forward(_ w: Weight, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, rows m: Int)
    /// dx [m × in] (+)= dy W was just computed for the same rows: add the adapter's part of dx
    /// and accumulate the parameters' gradient. (For a weight whose input the adapter scales,
    /// dx holds only this product's dx′ = dy W, to be turned into the gradient at x in place.)
    func backward(_ w: Weight, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, rows m: Int)
    /// Whether the adapter changes the product's input (then `input` gives it).
    func scalesInput(_ w: Weight) -> Bool
    /// The input the product should use instead of x [m × in] (IA³ scales down_proj's), or nil.
    func input(_ w: Weight, x: UnsafePointer<Float>, rows m: Int) -> [Float]?
    /// The output gradient the product's backward should use instead of dy [m × out] (IA³ on
    /// k and v: the gradient before the scaling), or nil; the parameters' part is taken here.
    func outputGradient(_ w: Weight, dy: UnsafePointer<Float>, rows m: Int) -> [Float]?
}

extension ProductAdapter {
    public func scalesInput(_ w: Weight) -> Bool { false }
    public func input(_ w: Weight, x: UnsafePointer<Float>, rows m: Int) -> [Float]? { nil }
    public func outputGradient(_ w: Weight, dy: UnsafePointer<Float>, rows m: Int) -> [Float]? { nil }
}

/// LoRA (Hu et al. 2021): y = x Wᵀ + s·(x Aᵀ) Bᵀ for each target matrix W [out × in], with
/// A [r × in], B [out × r] and s = α / r. Parameters are laid out per layer, per target, A then B
/// (row-major). Initialised as the authors do, A random and B = 0, so training starts at the
/// model itself.
///
/// Backward, for u = x Aᵀ [m × r] and e = dy B [m × r]:
///   dB += s·dyᵀ u;  dA += s·eᵀ x;  dx += s·e A
public final class LoRA: ProductAdapter {
    public enum Target: String, CaseIterable, Sendable { case q, k, v, o, gate, up, down }

    public let rank: Int
    public let alpha: Float
    public var scale: Float { alpha / Float(rank) }
    public let targets: [Target]
    public var parameters: [Float]
    public var gradient: [Float]
    /// Whether forwards keep what the backward needs (off for evaluation).
    public var recording = true
    let backend: Backend

    struct Slot { let a: Int, b: Int, inDim: Int, outDim: Int }
    private var slots: [ObjectIdentifier: Slot] = [:]
    /// The slots in parameter order, with their layer and target (for artefacts and tests).
    public private(set) var layout: [(layer: Int, target: Target, offset: Int, rows: Int, cols: Int)] = []
    /// What each forward left for the backward: x [m × in] and u = x Aᵀ [m × r], per weight.
    private var saved: [ObjectIdentifier: (x: [Float], u: [Float])] = [:]

    /// LoRA of rank `rank` on `targets` of every layer in `layers` (default: all), A drawn from
    /// U(−1/√in, 1/√in) with `seed` (Kaiming-uniform with a = √5, as PEFT does), B = 0.
    public init(
        model: LlamaModel, targets: [Target] = [.q, .v], rank: Int = 4, alpha: Float = 8,
        layers: Range<Int>? = nil, seed: UInt64 = 0
    ) {
        precondition(rank > 0 && !targets.isEmpty)
        self.rank = rank
        self.alpha = alpha
        self.targets = targets
        backend = model.backend
        var n = 0
        var rng = SplitMix64(seed: seed)
        var values: [Float] = []
        for l in layers ?? 0..<model.config.nLayers {
            for t in targets {
                let w = Self.weight(model.blocks[l], t)
                let slot = Slot(a: n, b: n + rank * w.cols, inDim: w.cols, outDim: w.rows)
                slots[ObjectIdentifier(w)] = slot
                layout.append((l, t, n, rank, w.cols))
                layout.append((l, t, slot.b, w.rows, rank))
                let bound = 1 / Float(w.cols).squareRoot()
                values += (0..<(rank * w.cols)).map { _ in Float(rng.uniform() * 2 - 1) * bound }
                values += [Float](repeating: 0, count: w.rows * rank)
                n = slot.b + w.rows * rank
            }
        }
        parameters = values
        gradient = [Float](repeating: 0, count: n)
    }

    static func weight(_ b: LlamaBlock, _ t: Target) -> Weight {
        switch t {
        case .q: return b.wq
        case .k: return b.wk
        case .v: return b.wv
        case .o: return b.wo
        case .gate: return b.wGate
        case .up: return b.wUp
        case .down: return b.wDown
        }
    }

    public func adapts(_ w: Weight) -> Bool { slots[ObjectIdentifier(w)] != nil }

    /// "blk.ℓ.<target>.lora_a" [r × in] and "blk.ℓ.<target>.lora_b" [out × r] (targets named as in
    /// `Target`; q and k in the GGUF's row order, whose RoPE pairs are adjacent).
    public var tensors: [(name: String, shape: [Int], values: [Float])] {
        layout.map { slot in
            let part = slot.rows == rank ? "lora_a" : "lora_b"
            return ("blk.\(slot.layer).\(slot.target.rawValue).\(part)", [slot.rows, slot.cols],
                    Array(parameters[slot.offset..<(slot.offset + slot.rows * slot.cols)]))
        }
    }

    public func forward(_ w: Weight, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, rows m: Int) {
        guard let s = slots[ObjectIdentifier(w)] else { return }
        let r = rank
        var u = [Float](repeating: 0, count: m * r)
        parameters.withUnsafeBufferPointer { p in
            u.withUnsafeMutableBufferPointer { ub in
                let A = p.baseAddress! + s.a
                let B = p.baseAddress! + s.b
                // u = x Aᵀ [m × r];  y += s·u Bᵀ
                backend.gemm(
                    transA: false, transB: true, m: m, n: r, k: s.inDim, alpha: 1, a: x, lda: s.inDim,
                    b: A, ldb: s.inDim, beta: 0, c: ub.baseAddress!, ldc: r)
                backend.gemm(
                    transA: false, transB: true, m: m, n: s.outDim, k: r, alpha: scale, a: ub.baseAddress!,
                    lda: r, b: B, ldb: r, beta: 1, c: y, ldc: s.outDim)
            }
        }
        if recording { saved[ObjectIdentifier(w)] = (Array(UnsafeBufferPointer(start: x, count: m * s.inDim)), u) }
    }

    public func backward(_ w: Weight, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, rows m: Int) {
        guard let s = slots[ObjectIdentifier(w)], let (x, u) = saved[ObjectIdentifier(w)] else { return }
        precondition(x.count == m * s.inDim, "backward rows differ from the forward's")
        let r = rank
        var e = [Float](repeating: 0, count: m * r)
        parameters.withUnsafeBufferPointer { p in
            gradient.withUnsafeMutableBufferPointer { g in
                let A = p.baseAddress! + s.a
                let B = p.baseAddress! + s.b
                let dA = g.baseAddress! + s.a
                let dB = g.baseAddress! + s.b
                x.withUnsafeBufferPointer { xb in
                    u.withUnsafeBufferPointer { ub in
                        e.withUnsafeMutableBufferPointer { eb in
                            let e = eb.baseAddress!
                            // dB += s·dyᵀ u [out × r];  e = dy B [m × r]
                            backend.gemm(
                                transA: true, transB: false, m: s.outDim, n: r, k: m, alpha: scale, a: dy,
                                lda: s.outDim, b: ub.baseAddress!, ldb: r, beta: 1, c: dB, ldc: r)
                            backend.gemm(
                                transA: false, transB: false, m: m, n: r, k: s.outDim, alpha: 1, a: dy,
                                lda: s.outDim, b: B, ldb: r, beta: 0, c: e, ldc: r)
                            // dA += s·eᵀ x [r × in];  dx += s·e A [m × in]
                            backend.gemm(
                                transA: true, transB: false, m: r, n: s.inDim, k: m, alpha: scale, a: e, lda: r,
                                b: xb.baseAddress!, ldb: s.inDim, beta: 1, c: dA, ldc: s.inDim)
                            backend.gemm(
                                transA: false, transB: false, m: m, n: s.inDim, k: r, alpha: scale, a: e, lda: r,
                                b: A, ldb: s.inDim, beta: 1, c: dx, ldc: s.inDim)
                        }
                    }
                }
            }
        }
    }
}

/// IA³ (Liu et al. 2022): learned scalings of k_proj's and v_proj's outputs and of down_proj's
/// input, one vector per layer each (l_k, l_v [KV], l_ff [F]), initialised to 1 (the model itself).
///   forward: k = l_k ⊙ (x W_kᵀ), v likewise;  down_proj(l_ff ⊙ m)
///   backward: dl_k = Σ_rows dk ⊙ (x W_kᵀ), dk′ = l_k ⊙ dk;  dl_ff = Σ_rows m ⊙ dm′, dm = l_ff ⊙ dm′
/// Parameters laid out per layer: l_k, l_v, l_ff.
public final class IA3: ProductAdapter {
    public var parameters: [Float]
    public var gradient: [Float]
    public var recording = true
    enum Role { case output, input }
    private var slots: [ObjectIdentifier: (offset: Int, count: Int, role: Role)] = [:]
    private var names: [(name: String, offset: Int, count: Int)] = []
    /// The unscaled output (k, v) or the unscaled input (down_proj's), per weight, for the backward.
    private var saved: [ObjectIdentifier: [Float]] = [:]

    public init(model: LlamaModel, layers: Range<Int>? = nil) {
        var n = 0
        for l in layers ?? 0..<model.config.nLayers {
            let b = model.blocks[l]
            for (w, role, name) in [(b.wk, Role.output, "l_k"), (b.wv, .output, "l_v"), (b.wDown, .input, "l_ff")] {
                let count = role == .output ? w.rows : w.cols
                slots[ObjectIdentifier(w)] = (n, count, role)
                names.append(("blk.\(l).\(name)", n, count))
                n += count
            }
        }
        parameters = [Float](repeating: 1, count: n)
        gradient = [Float](repeating: 0, count: n)
    }

    /// "blk.ℓ.l_k", "blk.ℓ.l_v" [KV] and "blk.ℓ.l_ff" [F].
    public var tensors: [(name: String, shape: [Int], values: [Float])] {
        names.map { ($0.name, [$0.count], Array(parameters[$0.offset..<($0.offset + $0.count)])) }
    }

    public func adapts(_ w: Weight) -> Bool { slots[ObjectIdentifier(w)] != nil }
    public func scalesInput(_ w: Weight) -> Bool { slots[ObjectIdentifier(w)]?.role == .input }

    public func input(_ w: Weight, x: UnsafePointer<Float>, rows m: Int) -> [Float]? {
        guard let s = slots[ObjectIdentifier(w)], s.role == .input else { return nil }
        let original = Array(UnsafeBufferPointer(start: x, count: m * s.count))
        if recording { saved[ObjectIdentifier(w)] = original }
        var out = original
        for r in 0..<m { for c in 0..<s.count { out[r * s.count + c] *= parameters[s.offset + c] } }
        return out
    }

    public func forward(_ w: Weight, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, rows m: Int) {
        guard let s = slots[ObjectIdentifier(w)], s.role == .output else { return }
        if recording { saved[ObjectIdentifier(w)] = Array(UnsafeBufferPointer(start: y, count: m * s.count)) }
        for r in 0..<m { for c in 0..<s.count { y[r * s.count + c] *= parameters[s.offset + c] } }
    }

    public func outputGradient(_ w: Weight, dy: UnsafePointer<Float>, rows m: Int) -> [Float]? {
        guard let s = slots[ObjectIdentifier(w)], s.role == .output, let y0 = saved[ObjectIdentifier(w)] else {
            return nil
        }
        var out = [Float](repeating: 0, count: m * s.count)
        for r in 0..<m {
            for c in 0..<s.count {
                let i = r * s.count + c
                gradient[s.offset + c] += dy[i] * y0[i]
                out[i] = dy[i] * parameters[s.offset + c]
            }
        }
        return out
    }

    public func backward(_ w: Weight, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, rows m: Int) {
        guard let s = slots[ObjectIdentifier(w)], s.role == .input, let x = saved[ObjectIdentifier(w)] else { return }
        for r in 0..<m {
            for c in 0..<s.count {
                let i = r * s.count + c
                gradient[s.offset + c] += x[i] * dx[i]
                dx[i] *= parameters[s.offset + c]
            }
        }
    }
}

/// A soft prompt (prompt tuning, Lester et al. 2021): `count` virtual tokens right after the BOS
/// (or first), whose input vectors (the residual stream entering layer 0) are the trained
/// parameters [count × D], initialised from the (scaled) embeddings of a task description's
/// tokens, repeated to fill. Prompts carry placeholder ids at those positions (`insert`); the
/// full-sequence path and `SoftPromptHook` put the vectors there. It changes no product.
public final class SoftPrompt: ProductAdapter {
    public let count: Int
    public let width: Int
    /// Where the virtual tokens go: after the BOS when the tokenizer adds one.
    public let offset: Int
    public var parameters: [Float]
    public var gradient: [Float]
    public var recording = true
    static let placeholder = 0

    public init(model lm: LanguageModel, count: Int = 8, description: String) {
        precondition(count > 0)
        self.count = count
        width = lm.config.dModel
        offset = lm.tokenizer.addBOS && lm.tokenizer.bosID != nil ? 1 : 0
        var ids = lm.tokenizer.encode(description, bos: false)
        if ids.isEmpty { ids = [lm.tokenizer.bosID ?? 0] }
        let D = width, emb = lm.model.tokenEmbedding.data, scale = lm.config.embedScale
        parameters = (0..<count).flatMap { j in (0..<D).map { emb[ids[j % ids.count] * D + $0] * scale } }
        gradient = [Float](repeating: 0, count: count * D)
    }

    /// The prompt with `count` placeholders at `offset`.
    public func insert(_ ids: [Int]) -> [Int] {
        Array(ids.prefix(offset)) + [Int](repeating: Self.placeholder, count: count) + ids.dropFirst(offset)
    }
    /// The rows of a prompt (from `insert`) that are virtual.
    public var rows: Range<Int> { offset..<(offset + count) }

    public var tensors: [(name: String, shape: [Int], values: [Float])] {
        [("soft_prompt", [count, width], parameters)]
    }
    public func adapts(_ w: Weight) -> Bool { false }
    public func forward(_ w: Weight, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, rows m: Int) {}
    public func backward(_ w: Weight, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, rows m: Int) {}
}

/// Puts a soft prompt's vectors into the residual stream entering layer 0 of a prompt pass (the
/// sequences' first rows, positions `rows`); decoding steps start past them and are untouched.
public final class SoftPromptHook: ForwardHooks {
    let prompt: SoftPrompt
    public init(_ prompt: SoftPrompt) { self.prompt = prompt }
    public func residual(layer: Int, _ x: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
        guard layer == 0 else { return }
        let D = prompt.width
        for s in 0..<layout.rowCount.count
        where layout.startPos[s] == 0 && layout.rowCount[s] >= prompt.rows.upperBound {
            prompt.parameters.withUnsafeBufferPointer { p in
                for (j, r) in prompt.rows.enumerated() {
                    (x + (layout.rowStart[s] + r) * D).update(from: p.baseAddress! + j * D, count: D)
                }
            }
        }
    }
    public func headOutputs(layer: Int, _ o: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {}
}

/// A backend that runs `base`'s products and hands those of adapted weights to `adapter`
/// (forward after the product, backward after dx = dy W). Everything else is `base`'s.
public final class AdaptedBackend: Backend, @unchecked Sendable {
    public let base: Backend
    public let adapter: ProductAdapter
    public init(_ base: Backend, adapter: ProductAdapter) {
        self.base = base
        self.adapter = adapter
    }
    public var name: String { base.name + " + adapter" }
    public var threads: Int { base.threads }
    public func prepare(_ w: Weight) { base.prepare(w) }
    public func makePathRunner(model: LlamaModel, layer: Int, prefill: PathPrefill) -> PathRunner {
        base.makePathRunner(model: model, layer: layer, prefill: prefill)
    }
    public func linear(
        _ x: UnsafePointer<Float>, _ m: Int, _ w: Weight, _ y: UnsafeMutablePointer<Float>,
        accumulate: Bool
    ) {
        linear(x, m, [(w, y)], accumulate: accumulate, precision: .fp32)
    }
    public func linearBackward(
        _ dy: UnsafePointer<Float>, _ m: Int, _ w: Weight, _ dx: UnsafeMutablePointer<Float>,
        accumulate: Bool
    ) {
        linearBackward([(dy, w)], m, dx, accumulate: accumulate, precision: .fp32)
    }
    public func linear(
        _ x: UnsafePointer<Float>, _ m: Int, _ outs: [(Weight, UnsafeMutablePointer<Float>)],
        accumulate: Bool, precision: Precision
    ) {
        var shared: [(Weight, UnsafeMutablePointer<Float>)] = []
        for (w, y) in outs {
            guard adapter.adapts(w), adapter.scalesInput(w), let scaled = adapter.input(w, x: x, rows: m) else {
                shared.append((w, y))
                continue
            }
            scaled.withUnsafeBufferPointer { sx in
                base.linear(sx.baseAddress!, m, [(w, y)], accumulate: accumulate, precision: precision)
                adapter.forward(w, x: sx.baseAddress!, y: y, rows: m)
            }
        }
        if !shared.isEmpty { base.linear(x, m, shared, accumulate: accumulate, precision: precision) }
        for (w, y) in shared where adapter.adapts(w) { adapter.forward(w, x: x, y: y, rows: m) }
    }
    public func linearBackward(
        _ ins: [(UnsafePointer<Float>, Weight)], _ m: Int, _ dx: UnsafeMutablePointer<Float>,
        accumulate: Bool, precision: Precision
    ) {
        // the output gradients the products see (IA³ scales k's and v's), owned for the call
        let owned: [UnsafeMutablePointer<Float>?] = ins.map { dy, w in
            guard adapter.adapts(w), let r = adapter.outputGradient(w, dy: dy, rows: m) else { return nil }
            let p = UnsafeMutablePointer<Float>.allocate(capacity: r.count)
            p.initialize(from: r, count: r.count)
            return p
        }
        defer { owned.forEach { $0?.deallocate() } }
        let all = zip(ins, owned).map { input, mine in (mine.map { UnsafePointer($0) } ?? input.0, input.1) }
        let plain = all.filter { !(adapter.adapts($0.1) && adapter.scalesInput($0.1)) }
        if !plain.isEmpty {
            base.linearBackward(plain, m, dx, accumulate: accumulate, precision: precision)
        } else if !accumulate, let w = all.first?.1 {
            dx.update(repeating: 0, count: m * w.cols)
        }
        for (dy, w) in plain where adapter.adapts(w) { adapter.backward(w, dy: dy, dx: dx, rows: m) }
        // a product whose input the adapter scales: its dx′ alone, turned into dx by the adapter
        for (dy, w) in all where adapter.adapts(w) && adapter.scalesInput(w) {
            var part = [Float](repeating: 0, count: m * w.cols)
            part.withUnsafeMutableBufferPointer { p in
                base.linearBackward([(dy, w)], m, p.baseAddress!, accumulate: false, precision: precision)
                adapter.backward(w, dy: dy, dx: p.baseAddress!, rows: m)
                Ops.add(p.baseAddress!, into: dx, m * w.cols)
            }
        }
    }
    public func fusesHead(_ w: Weight, rows m: Int, precision: Precision) -> Bool {
        !adapter.adapts(w) && base.fusesHead(w, rows: m, precision: precision)
    }
    public func crossEntropyHead(
        _ h: UnsafePointer<Float>, _ m: Int, _ w: Weight, targets: [Int], rowWeight: [Float],
        loss: UnsafeMutablePointer<Float>, dh: UnsafeMutablePointer<Float>
    ) {
        base.crossEntropyHead(h, m, w, targets: targets, rowWeight: rowWeight, loss: loss, dh: dh)
    }
    public func gemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        base.gemm(
            transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
            beta: beta, c: c, ldc: ldc)
    }
}
