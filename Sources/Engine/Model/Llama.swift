import Dispatch
import Foundation

/// Hyper-parameters of a decoder, read from GGUF metadata (`<arch>.*` keys). One block serves
/// every family; what differs between families is configuration here (the table in
/// `Architecture`), applied by the shared ops in Block.swift:
///
/// | | llama, mistral | gemma3 |
/// |---|---|---|
/// | embeddings | as stored | × √D |
/// | norms | before attention and MLP | also after each (before the residual add); q, k per head |
/// | MLP | SwiGLU | GeGLU (tanh GELU) |
/// | RoPE | adjacent pairs (the converter permuted W_q, W_k) | halves (i, i + d/2) |
/// | attention | global | sliding window on 5 of every 6 layers, RoPE base 10 000 there |
public struct LlamaConfig: Sendable, Equatable, Codable {
    public enum Activation: String, Sendable, Codable { case silu, geluTanh }
    public enum RopePairs: String, Sendable, Codable { case adjacent, halves }

    public var architecture: String
    public var nLayers: Int
    public var dModel: Int            // D: residual width
    public var nHeads: Int            // H
    public var nKVHeads: Int          // H_kv (grouped-query attention: H / H_kv queries share a K/V head)
    public var headDim: Int           // d
    public var ffnDim: Int            // F
    public var vocabSize: Int         // V
    public var contextLength: Int
    public var rmsEps: Float
    public var ropeTheta: Float
    public var ropeDim: Int
    public var tiedEmbeddings: Bool
    // ---- what differs between families (see the table above)
    public var embedScale: Float = 1
    /// RMSNorm on the attention's and the MLP's outputs before the residual add (Gemma 2/3).
    public var postNorms = false
    /// RMSNorm of each head's q and k over d (Gemma 3).
    public var qkNorm = false
    public var activation = Activation.silu
    public var ropePairs = RopePairs.adjacent
    /// The factor on q·k (1/√d unless the model says otherwise).
    public var attentionScale: Float = 0
    /// Positions a sliding-window layer sees, itself included (0: every layer is global).
    public var slidingWindow = 0
    /// Every `slidingPattern`-th layer is global, the others slide (0: none slide).
    public var slidingPattern = 0
    /// RoPE's base on the sliding layers.
    public var ropeThetaLocal: Float = 10000

    /// Width of the concatenated head outputs (the Δ site): H·d.
    public var attnDim: Int { nHeads * headDim }
    public var kvDim: Int { nKVHeads * headDim }

    /// The positions layer `l` attends over, itself included (nil: all).
    public func window(layer l: Int) -> Int? {
        slidingWindow > 0 && slidingPattern > 0 && (l + 1) % slidingPattern != 0 ? slidingWindow : nil
    }
    /// RoPE's base at layer `l`.
    public func ropeBase(layer l: Int) -> Float { window(layer: l) == nil ? ropeTheta : ropeThetaLocal }

    public init(gguf f: GGUFFile) throws {
        let arch = try f.string("general.architecture")
        architecture = arch
        nLayers = try f.int("\(arch).block_count")
        dModel = try f.int("\(arch).embedding_length")
        nHeads = try f.int("\(arch).attention.head_count")
        nKVHeads = (try? f.int("\(arch).attention.head_count_kv")) ?? nHeads
        headDim = (try? f.int("\(arch).attention.key_length")) ?? (dModel / max(nHeads, 1))
        ffnDim = try f.int("\(arch).feed_forward_length")
        let emb = try f.tensor("token_embd.weight")
        vocabSize = (try? f.int("\(arch).vocab_size")) ?? emb.rows
        contextLength = (try? f.int("\(arch).context_length")) ?? 2048
        rmsEps = Float((try? f.double("\(arch).attention.layer_norm_rms_epsilon")) ?? 1e-5)
        ropeTheta = Float((try? f.double("\(arch).rope.freq_base")) ?? 10000)
        ropeDim = (try? f.int("\(arch).rope.dimension_count")) ?? headDim
        tiedEmbeddings = f.tensors["output.weight"] == nil
        attentionScale = 1 / Float(headDim).squareRoot()
        try Architecture.configure(&self, arch: arch, file: f)
        guard nLayers > 0, dModel > 0, nHeads > 0, nKVHeads > 0, nHeads % nKVHeads == 0,
              headDim > 0, ffnDim > 0, vocabSize > 0, ropeDim <= headDim, ropeDim % 2 == 0 else {
            throw ModelFileError.badMetadata(key: "\(arch).*", expected: "consistent hyper-parameters")
        }
    }
}

/// The architectures this engine runs, by `general.architecture`, and what each sets beyond
/// the shared hyper-parameters. Anything not listed is refused rather than run silently wrong
/// (Granite, say: llama-shaped, but with multipliers this engine does not apply).
public enum Architecture {
    public static let supported = ["llama", "mistral", "gemma3"]

    static func configure(_ c: inout LlamaConfig, arch: String, file f: GGUFFile) throws {
        switch arch {
        case "llama", "mistral":
            break
        case "gemma3":
            c.embedScale = Float(c.dModel).squareRoot()
            c.postNorms = true
            c.qkNorm = true
            c.activation = .geluTanh
            c.ropePairs = .halves
            // q·k is scaled by query_pre_attn_scalar^(−1/2); the GGUF has no key for it, and
            // Gemma 3 sets it to the head size (256 for 270M and 1B).
            let preAttn = (try? f.double("gemma3.attention.query_pre_attn_scalar")) ?? Double(c.headDim)
            c.attentionScale = Float(1 / preAttn.squareRoot())
            c.slidingWindow = (try? f.int("gemma3.attention.sliding_window")) ?? 0
            c.slidingPattern = 6      // five sliding layers, then one global (not in the GGUF)
            c.ropeThetaLocal = 10000  // the sliding layers' base (not in the GGUF)
            if let type = f.metadata["gemma3.rope.scaling.type"]?.string, type != "none" {
                throw ModelFileError.badMetadata(
                    key: "gemma3.rope.scaling.type",
                    expected: "absent or none (got \(type): RoPE scaling is not implemented)")
            }
        default:
            throw ModelFileError.badMetadata(
                key: "general.architecture", expected: "one of \(supported.joined(separator: ", ")) (got \(arch))")
        }
    }
}

/// The weights of one transformer block (names as in the Llama paper / GGUF).
public struct LlamaBlock: Sendable {
    public let attnNorm: Weight   // [1 × D]
    public let wq: Weight         // [H·d × D]
    public let wk: Weight         // [H_kv·d × D]
    public let wv: Weight         // [H_kv·d × D]
    public let wo: Weight         // [D × H·d]    o_proj: its INPUT is the Δ site
    public let ffnNorm: Weight    // [1 × D]
    public let wGate: Weight      // [F × D]
    public let wUp: Weight        // [F × D]
    public let wDown: Weight      // [D × F]
    // Gemma 3 only (nil elsewhere):
    public var postAttnNorm: Weight? = nil  // [1 × D] on o_proj's output
    public var postFfnNorm: Weight? = nil   // [1 × D] on down_proj's output
    public var qNorm: Weight? = nil         // [1 × d] per head of q
    public var kNorm: Weight? = nil         // [1 × d] per head of k
}

/// Per-sequence key/value cache: for each layer K and V as rows = positions, K stored after RoPE.
/// A cache may start from a `base`: positions 0..<base.length are read from that cache (shared,
/// never written: k-shot demonstrations every prompt of a batch starts with), the rest are this
/// cache's own rows, position p at row p − base.length. Without a base every position is its own.
public final class KVCache: @unchecked Sendable {
    public let layers: Int
    public let kvDim: Int
    /// The shared positions this cache continues, or nil.
    public let base: KVCache?
    /// Positions held by `base` (its length when this cache was made).
    public let baseLength: Int
    /// Room for own positions.
    public private(set) var capacity: Int
    /// Positions in all, `baseLength` of them in the base.
    public var length: Int
    /// Own rows [capacity × H_kv·d] per layer.
    var k: [UnsafeMutablePointer<Float>]
    var v: [UnsafeMutablePointer<Float>]

    public convenience init(layers: Int, kvDim: Int, capacity: Int) {
        self.init(layers: layers, kvDim: kvDim, capacity: capacity, base: nil)
    }

    /// A cache continuing `base`'s positions (not copied) with room for `capacity` more.
    public convenience init(continuing base: KVCache, capacity: Int) {
        precondition(base.base == nil, "a base cannot have a base itself")
        self.init(layers: base.layers, kvDim: base.kvDim, capacity: capacity, base: base)
    }

    private init(layers: Int, kvDim: Int, capacity: Int, base: KVCache?) {
        self.layers = layers; self.kvDim = kvDim; self.capacity = max(capacity, 1)
        self.base = base; baseLength = base?.length ?? 0; length = baseLength
        k = (0..<layers).map { _ in .allocate(capacity: max(capacity, 1) * kvDim) }
        v = (0..<layers).map { _ in .allocate(capacity: max(capacity, 1) * kvDim) }
    }
    deinit { k.forEach { $0.deallocate() }; v.forEach { $0.deallocate() } }

    /// Room for `n` positions in all.
    func reserve(_ n: Int) {
        guard n - baseLength > capacity else { return }
        let cap = max(n - baseLength, capacity * 2), own = length - baseLength
        for l in 0..<layers {
            let nk = UnsafeMutablePointer<Float>.allocate(capacity: cap * kvDim)
            let nv = UnsafeMutablePointer<Float>.allocate(capacity: cap * kvDim)
            nk.update(from: k[l], count: own * kvDim); nv.update(from: v[l], count: own * kvDim)
            k[l].deallocate(); v[l].deallocate()
            k[l] = nk; v[l] = nv
        }
        capacity = cap
    }

    /// A copy of this cache's positions with room for `extra` more; the base, if any, is shared.
    func copy(extra: Int) -> KVCache {
        let c = KVCache(layers: layers, kvDim: kvDim, capacity: length - baseLength + extra, base: base)
        for l in 0..<layers {
            c.k[l].update(from: k[l], count: (length - baseLength) * kvDim)
            c.v[l].update(from: v[l], count: (length - baseLength) * kvDim)
        }
        c.length = length
        return c
    }

    /// Bytes of this cache's own rows (its base's not counted).
    var ownBytes: Int { 2 * layers * capacity * kvDim * MemoryLayout<Float>.size }

    /// Where position `p`'s K row of layer `l` is kept.
    func keyRow(_ l: Int, _ p: Int) -> UnsafeMutablePointer<Float> {
        p < baseLength ? base!.k[l] + p * kvDim : k[l] + (p - baseLength) * kvDim
    }
    func valueRow(_ l: Int, _ p: Int) -> UnsafeMutablePointer<Float> {
        p < baseLength ? base!.v[l] + p * kvDim : v[l] + (p - baseLength) * kvDim
    }

    /// K and V of a cache without a base: [length × H_kv·d] each, contiguous.
    public func keys(layer: Int) -> UnsafePointer<Float> {
        precondition(base == nil, "a cache with a base has no contiguous keys"); return UnsafePointer(k[layer])
    }
    public func values(layer: Int) -> UnsafePointer<Float> {
        precondition(base == nil, "a cache with a base has no contiguous values"); return UnsafePointer(v[layer])
    }
}

/// Rows of one forward call: sequence `s` contributes `tokens[s]` at positions cache[s].length…
public struct BatchLayout {
    /// First row of each sequence in the flattened [T × ·] activations.
    public let rowStart: [Int]
    public let rowCount: [Int]
    /// Position of each sequence's first row.
    public let startPos: [Int]
    public var totalRows: Int { (rowStart.last ?? 0) + (rowCount.last ?? 0) }
    public init(rowStart: [Int], rowCount: [Int], startPos: [Int]) {
        self.rowStart = rowStart
        self.rowCount = rowCount
        self.startPos = startPos
    }
    /// Row index of the last token of sequence s.
    public func lastRow(_ s: Int) -> Int { rowStart[s] + rowCount[s] - 1 }
}

/// What a forward pass lets a caller see or change, per layer. All buffers are [T × width] rows
/// of the batch (see `BatchLayout`).
public protocol ForwardHooks: AnyObject {
    /// The residual stream entering layer `layer` (read-only use expected).
    func residual(layer: Int, _ x: UnsafeMutablePointer<Float>, _ layout: BatchLayout)
    /// The concatenated head outputs of layer `layer` (the input of o_proj, [T × H·d]): the Δ site.
    /// May be modified in place.
    func headOutputs(layer: Int, _ o: UnsafeMutablePointer<Float>, _ layout: BatchLayout)
    /// Whether `mlpOutput` is wanted (the forward then keeps each MLP's output apart before adding it).
    var seesMLPOutputs: Bool { get }
    /// Layer `layer`'s MLP output [T × D] (after its post-norm, where the family has one), before
    /// the residual add. May be modified in place.
    func mlpOutput(layer: Int, _ m: UnsafeMutablePointer<Float>, _ layout: BatchLayout)
}

extension ForwardHooks {
    public var seesMLPOutputs: Bool { false }
    public func mlpOutput(layer: Int, _ m: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {}
}

/// A Llama decoder: fp32 weights dequantised from GGUF, batched prefill and decode with a KV cache.
public final class LlamaModel: @unchecked Sendable {
    public let config: LlamaConfig
    public let blocks: [LlamaBlock]
    public let tokenEmbedding: Weight  // [V × D]
    public let outputNorm: Weight      // [1 × D]
    public let output: Weight          // [V × D] (the embedding itself when tied)
    public let backend: Backend
    /// RoPE's tables and op pair, per layer (layers with the same base share their tables).
    let ropes: [Rope]
    func rope(_ layer: Int) -> Rope { ropes[layer] }

    /// Reads every tensor, dequantising to fp32 with `threads` threads.
    public init(gguf f: GGUFFile, backend: Backend, threads: Int = 1) throws {
        let cfg = try LlamaConfig(gguf: f)
        config = cfg
        self.backend = backend
        func load(_ name: String, _ rows: Int, _ cols: Int) throws -> Weight {
            let info = try f.tensor(name)
            guard info.rows == rows, info.columns == cols else {
                throw ModelFileError.badShape(tensor: name, expected: [cols, rows], found: info.dims)
            }
            let format = try WeightFormat.of(info)
            let w = Weight(name: name, rows: rows, cols: cols)
            if let kind = format.packed, cols % 32 == 0 {
                w.quant = QuantView(kind: kind, base: f.rawBytes(info).baseAddress!, rowBytes: cols / 32 * kind.blockBytes,
                                    owner: f)
                backend.prepare(w)
            }
            let (be, bb) = info.type.blockLayout!
            let blocks = info.elementCount / be
            let chunks = threads > 1 && blocks >= 8192 ? threads : 1
            let per = (blocks + chunks - 1) / chunks
            let src = f.rawBytes(info).baseAddress!
            DispatchQueue.concurrentPerform(iterations: chunks) { c in
                let b0 = c * per, b1 = min(blocks, b0 + per)
                guard b0 < b1 else { return }
                Dequant.run(format, src + b0 * bb, w.data + b0 * be, count: (b1 - b0) * be)
            }
            if let failure { throw failure }
            return w
        }
        let D = cfg.dModel, A = cfg.attnDim, KV = cfg.kvDim, F = cfg.ffnDim
        // Layers are independent: dequantise them in parallel.
        var loaded = [LlamaBlock?](repeating: nil, count: cfg.nLayers)
        var failure: Error?
        let lock = NSLock()
        DispatchQueue.concurrentPerform(iterations: cfg.nLayers) { l in
            do {
                var b = LlamaBlock(
                    attnNorm: try load("blk.\(l).attn_norm.weight", 1, D),
                    wq: try load("blk.\(l).attn_q.weight", A, D),
                    wk: try load("blk.\(l).attn_k.weight", KV, D),
                    wv: try load("blk.\(l).attn_v.weight", KV, D),
                    wo: try load("blk.\(l).attn_output.weight", D, A),
                    ffnNorm: try load("blk.\(l).ffn_norm.weight", 1, D),
                    wGate: try load("blk.\(l).ffn_gate.weight", F, D),
                    wUp: try load("blk.\(l).ffn_up.weight", F, D),
                    wDown: try load("blk.\(l).ffn_down.weight", D, F))
                if cfg.postNorms {
                    b.postAttnNorm = try load("blk.\(l).post_attention_norm.weight", 1, D)
                    b.postFfnNorm = try load("blk.\(l).post_ffw_norm.weight", 1, D)
                }
                if cfg.qkNorm {
                    b.qNorm = try load("blk.\(l).attn_q_norm.weight", 1, cfg.headDim)
                    b.kNorm = try load("blk.\(l).attn_k_norm.weight", 1, cfg.headDim)
                }
                lock.lock(); loaded[l] = b; lock.unlock()
            } catch { lock.lock(); failure = error; lock.unlock() }
        }
        if let failure { throw failure }
        blocks = loaded.map { $0! }
        tokenEmbedding = try load("token_embd.weight", cfg.vocabSize, D)
        outputNorm = try load("output_norm.weight", 1, D)
        output = cfg.tiedEmbeddings ? tokenEmbedding : try load("output.weight", cfg.vocabSize, D)

        let global = Rope(cfg, base: cfg.ropeTheta)
        let local = cfg.slidingWindow > 0 ? Rope(cfg, base: cfg.ropeThetaLocal) : global
        ropes = (0..<cfg.nLayers).map { cfg.window(layer: $0) == nil ? global : local }
    }

    public func makeCache(capacity: Int) -> KVCache {
        KVCache(layers: config.nLayers, kvDim: config.kvDim, capacity: capacity)
    }

    /// Runs `tokens[s]` (appended to `caches[s]`) through the whole model for all sequences at
    /// once; every projection is one GEMM over all rows. Returns the logits of the last new token of
    /// each sequence, [S × V] row-major, or all rows when `allLogits`.
    /// `using` runs the products on another backend (an `AdaptedBackend` for a fine-tuned model);
    /// `precision` `.int8` rounds the products' inputs as the solver's int8 products do (see
    /// `Precision`; attention stays fp32).
    public func forward(tokens: [[Int]], caches: [KVCache], hooks: ForwardHooks? = nil, allLogits: Bool = false,
                        using other: Backend? = nil, precision: Precision = .fp32) -> [Float] {
        precondition(tokens.count == caches.count)
        let backend = other ?? self.backend
        let cfg = config
        let D = cfg.dModel, A = cfg.attnDim, KV = cfg.kvDim, F = cfg.ffnDim
        var rowStart: [Int] = [], rowCount: [Int] = [], startPos: [Int] = []
        var T = 0
        for (s, t) in tokens.enumerated() {
            precondition(!t.isEmpty, "sequence \(s) has no tokens")
            precondition(caches[s].length >= caches[s].baseLength, "sequence \(s) would write into its shared base")
            rowStart.append(T); rowCount.append(t.count); startPos.append(caches[s].length)
            caches[s].reserve(caches[s].length + t.count)
            T += t.count
        }
        let layout = BatchLayout(rowStart: rowStart, rowCount: rowCount, startPos: startPos)
        var rowPos = [Int](repeating: 0, count: T), rowSeq = [Int](repeating: 0, count: T)
        for s in 0..<tokens.count { for j in 0..<rowCount[s] { rowPos[rowStart[s] + j] = startPos[s] + j; rowSeq[rowStart[s] + j] = s } }

        let x = UnsafeMutablePointer<Float>.allocate(capacity: T * D)       // residual stream
        let xn = UnsafeMutablePointer<Float>.allocate(capacity: T * D)      // normed
        let q = UnsafeMutablePointer<Float>.allocate(capacity: T * A)
        let kNew = UnsafeMutablePointer<Float>.allocate(capacity: T * KV)
        let vNew = UnsafeMutablePointer<Float>.allocate(capacity: T * KV)
        let o = UnsafeMutablePointer<Float>.allocate(capacity: T * A)       // head outputs (Δ site)
        let g = UnsafeMutablePointer<Float>.allocate(capacity: T * F)
        let u = UnsafeMutablePointer<Float>.allocate(capacity: T * F)
        // one head's scores [n × ctx] for the sequence with the most (new rows × context), or a
        // decoding row's scores for every head [H × ctx]
        // (the sequences with one new token run on the threads, each thread with its own scores)
        let singles = (0..<tokens.count).filter { rowCount[$0] == 1 }
        let singleThreads = min(backend.threads, singles.count)
        let singleStride = cfg.nHeads * (singles.map { startPos[$0] + 1 }.max() ?? 1)
        let scoreCount = max(zip(startPos, rowCount).map { ($0 + $1) * max($1, cfg.nHeads) }.max() ?? 1,
                             singleThreads * singleStride)
        let scores = UnsafeMutablePointer<Float>.allocate(capacity: scoreCount)
        // K and V of the longest sequence with several rows and a base cache, gathered per layer
        let gatherCount = (0..<tokens.count).filter { rowCount[$0] > 1 && caches[$0].base != nil }
            .map { (startPos[$0] + rowCount[$0]) * KV }.max() ?? 0
        let gatherK = UnsafeMutablePointer<Float>.allocate(capacity: max(gatherCount, 1))
        let gatherV = UnsafeMutablePointer<Float>.allocate(capacity: max(gatherCount, 1))
        func gathered(_ c: KVCache, layer l: Int, count: Int)
            -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>)
        {
            gatherK.update(from: c.base!.k[l], count: c.baseLength * KV)
            gatherV.update(from: c.base!.v[l], count: c.baseLength * KV)
            (gatherK + c.baseLength * KV).update(from: c.k[l], count: (count - c.baseLength) * KV)
            (gatherV + c.baseLength * KV).update(from: c.v[l], count: (count - c.baseLength) * KV)
            return (gatherK, gatherV)
        }
        defer { [x, xn, q, kNew, vNew, o, g, u, scores, gatherK, gatherV].forEach { $0.deallocate() } }

        // x = embedding rows
        for r in 0..<T {
            let id = tokens[rowSeq[r]][r - rowStart[rowSeq[r]]]
            precondition(id >= 0 && id < cfg.vocabSize, "token id \(id) outside the vocabulary")
            (x + r * D).update(from: tokenEmbedding.data + id * D, count: D)
            if cfg.embedScale != 1 { for i in 0..<D { x[r * D + i] *= cfg.embedScale } }
        }
        for l in 0..<cfg.nLayers {
            let blk = blocks[l]
            let shape = LastTokenAttention.Shape(cfg, layer: l)
            let rope = ropes[l]
            hooks?.residual(layer: l, x, layout)
            // ---- attention
            blk.attentionInputForward(backend, cfg, h: x, rows: T, xn: xn, invRMS: nil, q: q, k: kNew, v: vNew,
                                      headNorms: nil, precision: precision)
            for r in 0..<T {
                rope.forward(q + r * A, heads: cfg.nHeads, position: rowPos[r])
                rope.forward(kNew + r * KV, heads: cfg.nKVHeads, position: rowPos[r])
            }
            for s in 0..<tokens.count {
                let c = caches[s], p0 = startPos[s], n = rowCount[s], r0 = rowStart[s]
                c.keyRow(l, p0).update(from: kNew + r0 * KV, count: n * KV)
                c.valueRow(l, p0).update(from: vNew + r0 * KV, count: n * KV)
            }
            // one new token (decoding; a prompt's last position): the intervention path's op, the
            // sequences split between the threads (each reads and writes only its own rows)
            SpinPool.forEachRange(singles.count, threads: backend.threads) { ti, range in
                for s in singles[range] {
                    let c = caches[s], r0 = rowStart[s], ctx = startPos[s] + 1
                    LastTokenAttention.forward(shape, q: q + r0 * A, kSelf: kNew + r0 * KV, vSelf: vNew + r0 * KV,
                                               kc: c.k[l], vc: c.v[l], n: ctx, probs: scores + ti * singleStride,
                                               probStride: ctx, o: o + r0 * A, kb: c.base?.k[l], vb: c.base?.v[l],
                                               nb: c.baseLength)
                }
            }
            for s in 0..<tokens.count where rowCount[s] > 1 {
                let c = caches[s], p0 = startPos[s], n = rowCount[s], r0 = rowStart[s]
                // a cache with a base: its positions gathered into one block (the same products)
                let (k, v) = c.base == nil ? (c.k[l], c.v[l]) : gathered(c, layer: l, count: p0 + n)
                CausalAttention.forward(shape, backend, q: q + r0 * A, k: k, v: v, rows: n, start: p0,
                                        scores: scores, o: o + r0 * A)
            }
            hooks?.headOutputs(layer: l, o, layout)
            // x += o · W_oᵀ (post-normed where the family says), xn as the scratch
            blk.attentionOutputForward(backend, cfg, o: o, rows: T, h: x, out: x, post: (xn, nil), precision: precision)
            // ---- MLP, the residual updated in place (xn holds the normed input, then the output)
            blk.mlpForward(backend, cfg, h: x, rows: T, out: x, xn: xn, invRMS: nil, g: g, u: u, m: g,
                           post: (xn, nil), precision: precision, perRows: { $0(0..<T) },
                           output: hooks?.seesMLPOutputs == true ? { hooks?.mlpOutput(layer: l, $0, layout) } : nil)
        }
        for s in 0..<tokens.count { caches[s].length += rowCount[s] }
        hooks?.residual(layer: cfg.nLayers, x, layout)

        // ---- final norm and output head, on the rows whose logits are wanted
        let rows: [Int] = allLogits ? Array(0..<T) : (0..<tokens.count).map { layout.lastRow($0) }
        for (i, r) in rows.enumerated() { (xn + i * D).update(from: x + r * D, count: D) }
        Ops.rmsnorm(xn, outputNorm.data, xn, rows: rows.count, dim: D, eps: cfg.rmsEps)
        var logits = [Float](repeating: 0, count: rows.count * cfg.vocabSize)
        logits.withUnsafeMutableBufferPointer {
            backend.linear(xn, rows.count, [(output, $0.baseAddress!)], accumulate: false, precision: precision)
        }
        return logits
    }
}
