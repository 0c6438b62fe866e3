import CKernels
import Foundation

/// A weight's original GGUF blocks in the memory-mapped file: the source `PackedWeight` is
/// built from at load.
public struct QuantView: @unchecked Sendable {
    public let kind: PackedKind
    public let base: UnsafeRawPointer
    public let rowBytes: Int
    /// Keeps the mapping alive.
    let owner: AnyObject

    public init(kind: PackedKind, base: UnsafeRawPointer, rowBytes: Int, owner: AnyObject) {
        self.kind = kind; self.base = base; self.rowBytes = rowBytes; self.owner = owner
    }
}

/// A weight's blocks repacked once, at load, so that the few-row kernels decode them with as
/// little work as possible: every weight decodes to exactly the fp32 value `Dequant` gives (the
/// same multiply and add, in the same order), in natural column order.
///
/// - Q4_1 / Q4_0: 64 weights (two GGUF blocks) per 48-byte chunk: four fp32s (d₀, m₀, d₁, m₁)
///   then eight 32-bit lanes whose nibble g holds weight 8g + lane. Group g is then one shift
///   and one mask of the whole vector: eight consecutive weights, no shuffles.
/// - Q8_0: 32 weights per 36-byte block: fp32 d, then the 32 signed bytes.
public final class PackedWeight: @unchecked Sendable {
    public let kind: PackedKind
    public let rows: Int, cols: Int
    public let rowBytes: Int
    let base: UnsafeMutableRawPointer
    /// The same weights laid out for the int8 kernel (`ik_pack_q4` / `ik_pack_q8`: 16 rows × 32
    /// columns per chunk), when `rows` is a multiple of 16 and the CPU runs some int8 level (one
    /// layout serves every level).
    public let int8: UnsafeMutableRawPointer?
    var int8Kind: Int32 { kind.int8Kind }

    public init(_ q: QuantView, rows: Int, cols: Int) {
        precondition(cols % 32 == 0)
        kind = q.kind; self.rows = rows; self.cols = cols
        let blocks = cols / 32
        rowBytes = q.kind.packedRowBytes(blocks: blocks)
        base = .allocate(byteCount: max(rows * rowBytes, 1), alignment: 64)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: rows * rowBytes)
        for r in 0..<rows { Self.pack(q, row: r, blocks: blocks, into: base + r * rowBytes) }
        if Int8Kernels.cpu != .none, rows % 16 == 0 {
            let p = UnsafeMutableRawPointer.allocate(byteCount: ik_packed_bytes(q.kind.int8Kind, Int32(rows), Int32(cols)),
                                                     alignment: 64)
            switch q.kind {
            case .q8_0: ik_pack_q8(q.base, q.rowBytes, Int32(rows), Int32(cols), p)
            case .q4_0, .q4_1:
                ik_pack_q4(q.base, q.rowBytes, Int32(q.kind.blockBytes), Int32(q.kind.valuesOffset),
                           q.kind == .q4_1 ? 1 : 0, Int32(rows), Int32(cols), p)
            }
            int8 = p
        } else {
            int8 = nil
        }
    }
    deinit { base.deallocate(); int8?.deallocate() }

    static func pack(_ q: QuantView, row r: Int, blocks: Int, into dst: UnsafeMutableRawPointer) {
        let src = q.base + r * q.rowBytes
        switch q.kind {
        case .q8_0:
            for b in 0..<blocks {
                let blk = src + b * q.kind.blockBytes, out = dst + b * 36
                out.storeBytes(of: halfToFloat(blk.loadUnaligned(as: UInt16.self)), as: Float.self)
                (out + 4).copyMemory(from: blk + 2, byteCount: 32)
            }
        case .q4_1, .q4_0:
            let blockBytes = q.kind.blockBytes, qOff = q.kind.valuesOffset
            for c in 0..<(blocks + 1) / 2 {
                let out = dst + c * 48
                let l = (out + 16).bindMemory(to: UInt32.self, capacity: 8)
                for h in 0..<2 where 2 * c + h < blocks {
                    let blk = src + (2 * c + h) * blockBytes
                    out.storeBytes(of: halfToFloat(blk.loadUnaligned(as: UInt16.self)), toByteOffset: 8 * h, as: Float.self)
                    let m = q.kind == .q4_1 ? halfToFloat(blk.loadUnaligned(fromByteOffset: 2, as: UInt16.self)) : 0
                    out.storeBytes(of: m, toByteOffset: 8 * h + 4, as: Float.self)
                    for j in 0..<16 {
                        // block weight j (low nibble) is chunk weight i = 32h + j; j + 16 (high) is i + 16:
                        // same lane (i mod 8), nibble i/8 and i/8 + 2
                        let byte = UInt32(blk.load(fromByteOffset: qOff + j, as: UInt8.self))
                        let shift = UInt32(4 * ((32 * h + j) >> 3))
                        l[j & 7] |= (byte & 0xF) << shift | (byte >> 4) << (shift + 8)
                    }
                }
            }
        }
    }

    @inline(__always) func row(_ r: Int) -> UnsafeRawPointer { UnsafeRawPointer(base + r * rowBytes) }

    /// Decodes row `r` (all `cols` weights) into `dst`.
    public func decode(row r: Int, into dst: UnsafeMutablePointer<Float>) {
        fk_decode_row(kind.fp32Kind, row(r), Int32(cols), dst)
    }
}

/// The few-row products on packed weights: the threads split the weight rows (`forEachPart`),
/// each share runs one of the C kernels (`fk_*` in CKernels, at the level `Fp32Kernels` names).
public enum QuantGEMM {
    /// One output of a fused forward product: y [m × rows] (+)= x · Wᵀ.
    public struct Output {
        public let q: PackedWeight, y: UnsafeMutablePointer<Float>
        public var rows: Int { q.rows }
        public init(_ q: PackedWeight, _ y: UnsafeMutablePointer<Float>) { self.q = q; self.y = y }
    }
    /// One input of a fused backward product: dx (+)= dy [m × rows] · W.
    public struct Input {
        public let q: PackedWeight, dy: UnsafePointer<Float>
        public var rows: Int { q.rows }
        public init(_ q: PackedWeight, _ dy: UnsafePointer<Float>) { self.q = q; self.dy = dy }
    }

    /// y[m × n] (+)= x[m × k] · Wᵀ for W given by its blocks.
    public static func linear(_ x: UnsafePointer<Float>, _ m: Int, _ q: PackedWeight,
                              _ y: UnsafeMutablePointer<Float>, accumulate: Bool, threads: Int) {
        linear(x, m, cols: q.cols, [Output(q, y)], accumulate: accumulate, threads: threads)
    }

    /// Several products of the same x (q/k/v, gate/up) as one parallel region: the weights' rows
    /// are laid end to end and split between the threads.
    public static func linear(_ x: UnsafePointer<Float>, _ m: Int, cols k: Int, _ outs: [Output],
                              accumulate: Bool, threads: Int) {
        precondition(k % 32 == 0 && outs.allSatisfy { $0.q.cols == k })
        forEachPart(outs.map(\.rows), threads: threads) { _, p, r0, r1 in
            let q = outs[p].q
            fk_linear_rows(q.kind.fp32Kind, q.base, q.rowBytes, Int32(q.rows), Int32(k), x, Int32(m), outs[p].y,
                           accumulate ? 1 : 0, Int32(r0), Int32(r1))
        }
    }

    /// Whether the int8 products run now (`Int8Kernels.current` is not `.none`).
    public static var int8Available: Bool { Int8Kernels.current != .none }

    /// `linear(x, m, cols:, outs)` with x rounded to int8 per block of 32 and integer dot
    /// products against the 4- or 8-bit weights (every `outs[p].q.int8` must exist): ~4× the fp32
    /// kernel.
    public static func linearInt8(_ x: UnsafePointer<Float>, _ m: Int, cols k: Int, _ outs: [Output],
                                  accumulate: Bool, threads: Int) {
        precondition(k % 32 == 0 && outs.allSatisfy { $0.q.cols == k && $0.q.int8 != nil && $0.rows % 16 == 0 })
        let nb = k / 32
        let xq = UnsafeMutablePointer<Int8>.allocate(capacity: m * k)
        let xd = UnsafeMutablePointer<Float>.allocate(capacity: 2 * m * nb), xs = xd + m * nb
        defer { xq.deallocate(); xd.deallocate() }
        quantizeRows(x, m, k, xq, xd, xs, threads: threads)
        forEachPart(outs.map(\.rows), threads: threads, granule: 16) { _, p, r0, r1 in
            let o = outs[p]
            ik_linear(o.q.int8, o.q.int8Kind, Int32(k), xq, xd, xs, Int32(m), o.y, Int32(o.rows), Int32(r0 / 16), Int32(r1 / 16),
                      accumulate ? 1 : 0)
        }
    }

    /// `ik_quantize_rows` of x [m × k], the rows split between the threads when there are many
    /// values (the head's backward rounds 10 × 49,152 of them).
    static func quantizeRows(_ x: UnsafePointer<Float>, _ m: Int, _ k: Int, _ xq: UnsafeMutablePointer<Int8>,
                             _ xd: UnsafeMutablePointer<Float>, _ xs: UnsafeMutablePointer<Float>, threads: Int) {
        let nb = k / 32
        guard m * k >= 1 << 16, threads > 1, m > 1 else {
            ik_quantize_rows(x, Int32(m), Int32(k), xq, xd, xs)
            return
        }
        SpinPool.forEachRange(m, threads: threads) { _, r in
            let r0 = r.lowerBound
            ik_quantize_rows(x + r0 * k, Int32(r.count), Int32(k), xq + r0 * k, xd + r0 * nb, xs + r0 * nb)
        }
    }

    /// Packs Wᵀ of the fp32 W [rows × cols] as an 8-bit matrix for the backward product
    /// (`ik_pack_transposed_q8`); `dst` holds `transposedBytes(rows:cols:)` bytes, 64-aligned.
    public static func packTransposedQ8(
        _ w: UnsafePointer<Float>, rows: Int, cols: Int, into dst: UnsafeMutableRawPointer
    ) {
        precondition(rows % 32 == 0 && cols % 16 == 0 && int8Available)
        ik_pack_transposed_q8(w, Int32(rows), Int32(cols), dst)
    }
    public static func transposedBytes(rows: Int, cols: Int) -> Int {
        ik_packed_bytes(Int32(IK_Q8), Int32(cols), Int32(rows))
    }

    /// One input of an int8 backward product: Wᵀ packed by `ik_pack_transposed_q8` (W has `rows`
    /// rows) and dY [m × rows].
    public struct TransposedInput {
        public let transposed: UnsafeMutableRawPointer, dy: UnsafePointer<Float>, rows: Int
        public init(transposed: UnsafeMutableRawPointer, dy: UnsafePointer<Float>, rows: Int) {
            self.transposed = transposed; self.dy = dy; self.rows = rows
        }
    }

    /// dx[m × k] (+)= Σ_p dY_p · W_p as the int8 forward kernel run on each Wᵀ: dY_p rounded to
    /// int8 per block of 32, Wᵀ to int8 per run of 32 rows of W. The threads split dx's columns
    /// (16 at a time), each summing every input over its own columns.
    public static func linearBackwardInt8(_ ins: [TransposedInput], _ m: Int, cols k: Int, _ dx: UnsafeMutablePointer<Float>,
                                          accumulate: Bool, threads: Int) {
        precondition(k % 16 == 0 && ins.allSatisfy { $0.rows % 32 == 0 })
        let total = ins.reduce(0) { $0 + $1.rows }
        let xq = UnsafeMutablePointer<Int8>.allocate(capacity: m * total)
        let xd = UnsafeMutablePointer<Float>.allocate(capacity: 2 * m * (total / 32)), xs = xd + m * (total / 32)
        defer { xq.deallocate(); xd.deallocate() }
        var offsets = [Int](), o = 0
        for p in ins {
            offsets.append(o)
            quantizeRows(p.dy, m, p.rows, xq + m * o, xd + m * o / 32, xs + m * o / 32, threads: threads)
            o += p.rows
        }
        forEachPart([k], threads: threads, granule: 16) { _, _, c0, c1 in
            for (p, input) in ins.enumerated() {
                let o = offsets[p]
                ik_linear(input.transposed, Int32(IK_Q8), Int32(input.rows), xq + m * o, xd + m * o / 32, xs + m * o / 32,
                          Int32(m), dx, Int32(k), Int32(c0 / 16), Int32(c1 / 16), accumulate || p > 0 ? 1 : 0)
            }
        }
    }

    /// dx[m × k] (+)= dy[m × n] · W.
    public static func linearBackward(_ dy: UnsafePointer<Float>, _ m: Int, _ q: PackedWeight,
                                      _ dx: UnsafeMutablePointer<Float>, accumulate: Bool, threads: Int) {
        linearBackward([Input(q, dy)], m, cols: q.cols, dx, accumulate: accumulate, threads: threads)
    }

    /// dx[m × k] (+)= Σ_p dy_p · W_p as one parallel region (q/k/v, gate/up): each thread sums
    /// its share of the rows into its own partial dx; the partials are added at the end.
    public static func linearBackward(_ ins: [Input], _ m: Int, cols k: Int, _ dxOut: UnsafeMutablePointer<Float>,
                                      accumulate: Bool, threads: Int) {
        precondition(k % 32 == 0 && ins.allSatisfy { $0.q.cols == k })
        let total = ins.reduce(0) { $0 + $1.rows }
        let t = threadCount(rows: total, threads: threads)
        let partial = UnsafeMutablePointer<Float>.allocate(capacity: t * m * k)
        defer { partial.deallocate() }
        partial.update(repeating: 0, count: t * m * k)
        forEachPart(ins.map(\.rows), threads: t) { ti, p, r0, r1 in
            let q = ins[p].q
            fk_backward_rows(q.kind.fp32Kind, q.base, q.rowBytes, Int32(q.rows), Int32(k), ins[p].dy, Int32(m),
                             partial + ti * m * k, Int32(r0), Int32(r1))
        }
        for ti in 1..<t { Ops.add(partial + ti * m * k, into: partial, m * k) }
        if accumulate { Ops.add(partial, into: dxOut, m * k) } else { dxOut.update(from: partial, count: m * k) }
    }

    /// How many threads `forEachPart` uses for `rows` weight rows: one below 256 rows.
    static func threadCount(rows: Int, threads: Int) -> Int { threads > 1 && rows >= 256 ? threads : 1 }

    /// Splits the rows of several matrices, laid end to end, into `threads` contiguous shares
    /// (multiples of `granule`, which must divide every matrix's rows when it is over 4) and calls
    /// `body(thread, part, r0, r1)` for each piece of a share that falls in one matrix, on the
    /// shared spin pool.
    static func forEachPart(_ rows: [Int], threads: Int, granule: Int = 4, _ body: (Int, Int, Int, Int) -> Void) {
        let total = rows.reduce(0, +)
        let t = threadCount(rows: total, threads: threads)
        let per = ((total + t - 1) / t + granule - 1) / granule * granule
        func share(_ ti: Int) {
            let s0 = ti * per, s1 = min(total, s0 + per)
            var base = 0
            for (p, n) in rows.enumerated() {
                let a = max(s0, base), b = min(s1, base + n)
                if a < b { body(ti, p, a - base, b - base) }
                base += n
            }
        }
        if t == 1 { share(0) } else { SpinPool.shared(threads: t).run(t, share) }
    }
}

extension QuantGEMM {
    /// The next-token cross-entropy head in ONE pass over the output matrix W [V × D] (decoded
    /// once, where the two-pass form decodes it for the logits and again for the gradient):
    ///
    ///   z_i = h_i · Wᵀ                              (logits, never stored)
    ///   loss_i = log Σ_v exp(z_iv) − z_i,t_i
    ///   dh_i = w_i · (Σ_v softmax(z_i)_v W_v − W_t_i)
    ///
    /// Online softmax: each thread keeps, per row, the running max M_i, S_i = Σ exp(z − M_i) and
    /// G_i = Σ exp(z − M_i) W_v, rescaling S and G when M grows; the threads' states are merged at
    /// the end. `h` [m × D], `loss` [m], `dh` [m × D] (overwritten).
    public static func crossEntropyHead(_ h: UnsafePointer<Float>, _ m: Int, _ q: PackedWeight, targets: [Int],
                                        rowWeight: [Float], loss: UnsafeMutablePointer<Float>,
                                        dh: UnsafeMutablePointer<Float>, threads: Int) {
        let k = q.cols, V = q.rows
        precondition(targets.count == m && rowWeight.count == m && targets.allSatisfy { $0 >= 0 && $0 < V })
        let t = threadCount(rows: V, threads: threads)
        // per thread: M [m], S [m], G [m × k]
        let M = UnsafeMutablePointer<Float>.allocate(capacity: t * m), S = UnsafeMutablePointer<Float>.allocate(capacity: t * m)
        let G = UnsafeMutablePointer<Float>.allocate(capacity: t * m * k)
        defer { M.deallocate(); S.deallocate(); G.deallocate() }
        M.update(repeating: -.infinity, count: t * m); S.update(repeating: 0, count: t * m)
        G.update(repeating: 0, count: t * m * k)
        forEachPart([V], threads: t) { ti, _, r0, r1 in
            fk_head_rows(q.kind.fp32Kind, q.base, q.rowBytes, Int32(k), h, Int32(m), Int32(r0), Int32(r1),
                         M + ti * m, S + ti * m, G + ti * m * k)
        }
        let wt = UnsafeMutablePointer<Float>.allocate(capacity: k)
        defer { wt.deallocate() }
        for i in 0..<m {
            // merge the threads' states under the overall max
            var mx = -Float.infinity
            for ti in 0..<t { mx = max(mx, M[ti * m + i]) }
            var s: Float = 0
            let g = dh + i * k
            g.update(repeating: 0, count: k)
            for ti in 0..<t where S[ti * m + i] > 0 {
                let c = expf(M[ti * m + i] - mx)
                s += c * S[ti * m + i]
                Ops.axpy(c, G + (ti * m + i) * k, g, k)
            }
            q.decode(row: targets[i], into: wt)
            let zt = Ops.dot(h + i * k, wt, k)
            loss[i] = mx + logf(s) - zt
            // dh_i = w_i (G_i / S_i − W_t)
            let a = rowWeight[i] / s
            for c in 0..<k { g[c] = a * g[c] - rowWeight[i] * wt[c] }
        }
    }
}

/// The int8 products' instruction set, chosen at run time: the best this CPU has unless lowered
/// by `$INTERVENE_INT8_KERNELS` (avx-vnni | avx2 | none) or by setting `current` (tests,
/// benchmarks). The levels give bit-identical products (one packed layout, the same integer sums
/// and the same float operations in the same order), so a result does not depend on which one ran.
/// x86-64 CPUs run the AVX levels, aarch64 CPUs `neonDotprod`; neither runs the other's.
public enum Int8Kernels: String, CaseIterable, Sendable {
    /// No int8 kernel: `Precision.int8` runs as fp32.
    case none
    /// AVX2 + FMA: vpmaddubsw + vpmaddwd (Haswell and later, Zen 1 and later).
    case avx2
    /// AVX2 + FMA + AVX-VNNI: 256-bit vpdpbusd, VEX-encoded (Alder Lake and later client CPUs,
    /// Zen 5 clients: AVX-VNNI without AVX-512).
    case avxVnni = "avx-vnni"
    /// AVX-512 F/BW/VL + VNNI: 512-bit vpdpbusd (Ice Lake and later, Zen 4 and later).
    case avx512vnni = "avx512-vnni"
    /// Tests only: `avxVnni`'s kernel source compiled with the EVEX-encoded 256-bit vpdpbusd of
    /// AVX-512 VL + VNNI, so that CPUs with AVX-512 VNNI but no AVX-VNNI (which cannot run the VEX
    /// encoding) check the 256-bit algorithm bit for bit. Never `cpu`, never in `supported`;
    /// only an explicit `current = .avxVnniTwin` or `$INTERVENE_INT8_KERNELS=avx-vnni-twin` picks it.
    case avxVnniTwin = "avx-vnni-twin"
    /// aarch64: NEON with the ARMv8.2 dot product (sdot; Cortex-A55/A75 and later, Neoverse N1 and
    /// later, Apple M1 and later). Numbered above the x86 levels, so setting it gives any CPU its
    /// best level. Checked bit for bit against the x86 levels' scalar reference under qemu
    /// (`cluster/check-aarch64.sh`); this Swift package has not been built for aarch64 yet.
    case neonDotprod = "neon-dotprod"

    init(level: Int32) {
        switch level {
        case Int32(IK_NEON_DOTPROD): self = .neonDotprod
        case Int32(IK_AVX512_VNNI): self = .avx512vnni
        case Int32(IK_AVX_VNNI): self = .avxVnni
        case Int32(IK_AVX_VNNI_TWIN): self = .avxVnniTwin
        case Int32(IK_AVX2_LEVEL): self = .avx2
        default: self = .none
        }
    }
    var level: Int32 {
        switch self {
        case .none: return Int32(IK_NONE)
        case .avx2: return Int32(IK_AVX2_LEVEL)
        case .avxVnni: return Int32(IK_AVX_VNNI)
        case .avx512vnni: return Int32(IK_AVX512_VNNI)
        case .avxVnniTwin: return Int32(IK_AVX_VNNI_TWIN)
        case .neonDotprod: return Int32(IK_NEON_DOTPROD)
        }
    }

    /// Whether this CPU runs the level (a CPU with AVX-512 VNNI may lack AVX-VNNI; x86-64 never
    /// runs `neonDotprod`, aarch64 only it).
    public var runsHere: Bool { ik_level_runs(level) != 0 }
    /// The best level this CPU runs.
    public static var cpu: Int8Kernels { Int8Kernels(level: ik_cpu_level()) }
    /// The level in use. Setting a level this CPU does not run gives the best one it runs below it
    /// (for `avxVnniTwin`: `avxVnni` or below; on aarch64 any x86 level gives `none`).
    public static var current: Int8Kernels {
        get { Int8Kernels(level: ik_level()) }
        set { _ = ik_set_level(newValue.level) }
    }
    /// Every production level this CPU runs, best first (not the test-only twin).
    public static var supported: [Int8Kernels] {
        [.neonDotprod, .avx512vnni, .avxVnni, .avx2, .none].filter(\.runsHere)
    }
    /// `supported` plus the test-only twin where it runs (after `avxVnni`'s place): every kernel
    /// this CPU can check.
    public static var testable: [Int8Kernels] {
        [.neonDotprod, .avx512vnni, .avxVnni, .avxVnniTwin, .avx2, .none].filter(\.runsHere)
    }
}

/// The fp32 products' instruction set (`fk_*` in CKernels), chosen at run time: AVX2 + FMA where
/// the CPU has it, unless lowered by `$INTERVENE_FP32_KERNELS=baseline` or by setting `current`
/// (tests, benchmarks). The levels sum in the same order; they differ only in rounding (fused
/// multiply-adds at `avx2`, a multiply then an add at `baseline`), so a product agrees across
/// levels to a few fp32 ulps of its terms, not bit for bit.
public enum Fp32Kernels: String, CaseIterable, Sendable {
    /// Any CPU: SSE2 on x86-64, NEON on aarch64, 8-float vectors as two registers.
    case baseline
    /// AVX2 + FMA (Haswell and later, Zen 1 and later).
    case avx2

    init(level: Int32) { self = level == Int32(FK_AVX2) ? .avx2 : .baseline }
    var level: Int32 { self == .avx2 ? Int32(FK_AVX2) : Int32(FK_BASELINE) }

    /// The best level this CPU runs.
    public static var cpu: Fp32Kernels { Fp32Kernels(level: fk_cpu_level()) }
    /// The level in use; setting a level above the CPU's gives the CPU's.
    public static var current: Fp32Kernels {
        get { Fp32Kernels(level: fk_level()) }
        set { _ = fk_set_level(newValue.level) }
    }
    /// Every level this CPU runs, best first.
    public static var supported: [Fp32Kernels] { allCases.filter { $0.level <= cpu.level }.reversed() }
}
