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
        switch kind {
        case .q4_1: QuantGEMM.decodeRow(DecodeQ4_1.self, row(r), cols, dst)
        case .q4_0: QuantGEMM.decodeRow(DecodeQ4_0.self, row(r), cols, dst)
        case .q8_0: QuantGEMM.decodeRow(DecodeQ8_0.self, row(r), cols, dst)
        }
    }
}

/// Decodes the 32 weights at columns [col, col + 32) of a packed row (col a multiple of 32) into
/// `dst`: one GGUF block, so the scale and offset are loaded once and every shift is a constant.
protocol Decode32 {
    static func decode32(_ row: UnsafeRawPointer, _ col: Int, _ dst: UnsafeMutableRawPointer)
}

/// Small non-negative integers (< 2³¹) to float.
@inline(__always) func intToFloat(_ u: SIMD8<UInt32>) -> SIMD8<Float> {
    SIMD8<Float>(unsafeBitCast(u, to: SIMD8<Int32>.self))
}

enum DecodeQ4_1: Decode32 {
    @inline(__always) static func decode32(_ row: UnsafeRawPointer, _ col: Int, _ dst: UnsafeMutableRawPointer) {
        let chunk = row + (col >> 6) * 48, h = (col >> 5) & 1
        let v = chunk.loadUnaligned(fromByteOffset: 16, as: SIMD8<UInt32>.self) &>> UInt32(truncatingIfNeeded: 16 * h)
        let d = SIMD8<Float>(repeating: chunk.load(fromByteOffset: 8 * h, as: Float.self))
        let m = SIMD8<Float>(repeating: chunk.load(fromByteOffset: 8 * h + 4, as: Float.self))
        let f: UInt32 = 0xF
        // d·q + m, as Dequant computes it (no fused multiply-add)
        dst.storeBytes(of: d * intToFloat(v & f) + m, as: SIMD8<Float>.self)
        dst.storeBytes(of: d * intToFloat((v &>> 4) & f) + m, toByteOffset: 32, as: SIMD8<Float>.self)
        dst.storeBytes(of: d * intToFloat((v &>> 8) & f) + m, toByteOffset: 64, as: SIMD8<Float>.self)
        dst.storeBytes(of: d * intToFloat((v &>> 12) & f) + m, toByteOffset: 96, as: SIMD8<Float>.self)
    }
}

enum DecodeQ4_0: Decode32 {
    @inline(__always) static func decode32(_ row: UnsafeRawPointer, _ col: Int, _ dst: UnsafeMutableRawPointer) {
        let chunk = row + (col >> 6) * 48, h = (col >> 5) & 1
        let v = chunk.loadUnaligned(fromByteOffset: 16, as: SIMD8<UInt32>.self) &>> UInt32(truncatingIfNeeded: 16 * h)
        let d = SIMD8<Float>(repeating: chunk.load(fromByteOffset: 8 * h, as: Float.self))
        let f: UInt32 = 0xF, eight = SIMD8<Float>(repeating: 8)
        // d·(q − 8)
        dst.storeBytes(of: d * (intToFloat(v & f) - eight), as: SIMD8<Float>.self)
        dst.storeBytes(of: d * (intToFloat((v &>> 4) & f) - eight), toByteOffset: 32, as: SIMD8<Float>.self)
        dst.storeBytes(of: d * (intToFloat((v &>> 8) & f) - eight), toByteOffset: 64, as: SIMD8<Float>.self)
        dst.storeBytes(of: d * (intToFloat((v &>> 12) & f) - eight), toByteOffset: 96, as: SIMD8<Float>.self)
    }
}

enum DecodeQ8_0: Decode32 {
    @inline(__always) static func decode32(_ row: UnsafeRawPointer, _ col: Int, _ dst: UnsafeMutableRawPointer) {
        let blk = row + (col >> 5) * 36
        let d = SIMD8<Float>(repeating: blk.load(as: Float.self))
        for g in 0..<4 {    // d·q
            let q = SIMD8<Int32>(truncatingIfNeeded: blk.loadUnaligned(fromByteOffset: 4 + 8 * g, as: SIMD8<Int8>.self))
            dst.storeBytes(of: d * SIMD8<Float>(q), toByteOffset: 32 * g, as: SIMD8<Float>.self)
        }
    }
}

/// Where a kernel's column loop puts one more decoded block per 32 columns: nowhere, or the
/// next strip's row. Interleaving the next strip's decoding with this strip's multiply-adds
/// lets the integer and add ports work while the FMA ports are busy.
protocol ColumnSink { func put(_ byteOffset: Int) }
struct NoSink: ColumnSink { @inline(__always) func put(_ byteOffset: Int) {} }
struct DecodeSink<D: Decode32>: ColumnSink {
    let src: UnsafeRawPointer, dst: UnsafeMutableRawPointer
    @inline(__always) func put(_ byteOffset: Int) { D.decode32(src, byteOffset >> 2, dst + byteOffset) }
}

public enum QuantGEMM {
    typealias V = SIMD16<Float>
    typealias W8 = SIMD8<Float>

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
            let o = outs[p]
            switch o.q.kind {
            case .q4_1: linearRows(DecodeQ4_1.self, x, m, o.q, cols: k, o.y, accumulate: accumulate, r0, r1)
            case .q4_0: linearRows(DecodeQ4_0.self, x, m, o.q, cols: k, o.y, accumulate: accumulate, r0, r1)
            case .q8_0: linearRows(DecodeQ8_0.self, x, m, o.q, cols: k, o.y, accumulate: accumulate, r0, r1)
            }
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
        ik_quantize_rows(x, Int32(m), Int32(k), xq, xd, xs)
        forEachPart(outs.map(\.rows), threads: threads, granule: 16) { _, p, r0, r1 in
            let o = outs[p]
            ik_linear(o.q.int8, o.q.int8Kind, Int32(k), xq, xd, xs, Int32(m), o.y, Int32(o.rows), Int32(r0 / 16), Int32(r1 / 16),
                      accumulate ? 1 : 0)
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
        for p in ins { offsets.append(o); ik_quantize_rows(p.dy, Int32(m), Int32(p.rows), xq + m * o, xd + m * o / 32, xs + m * o / 32); o += p.rows }
        forEachPart([k], threads: threads, granule: 16) { _, _, c0, c1 in
            for (p, input) in ins.enumerated() {
                let o = offsets[p]
                ik_linear(input.transposed, Int32(IK_Q8), Int32(input.rows), xq + m * o, xd + m * o / 32, xs + m * o / 32,
                          Int32(m), dx, Int32(k), Int32(c0 / 16), Int32(c1 / 16), accumulate || p > 0 ? 1 : 0)
            }
        }
    }

    static func decodeRow<D: Decode32>(_: D.Type, _ src: UnsafeRawPointer, _ k: Int, _ dst: UnsafeMutablePointer<Float>) {
        let sink = DecodeSink<D>(src: src, dst: UnsafeMutableRawPointer(dst))
        var c = 0
        while c < 4 * k { sink.put(c); c += 128 }
    }

    /// Walks weight rows [r0, r1) four at a time through a double-buffered strip: while `body`
    /// multiplies strip s, it decodes up to four rows of strip s + 1 through the sink it is given
    /// (one row per activation-row pair); rows it did not reach are decoded afterwards.
    /// `body(firstRow, count, strip, next)` returns how many rows of the next strip it decoded
    /// (`next(j)` is the sink for its row j, nil past the last row).
    @inline(__always)
    static func forEachStrip<D: Decode32>(_: D.Type, _ q: PackedWeight, _ r0: Int, _ r1: Int, _ k: Int,
                                         _ body: (Int, Int, UnsafeMutablePointer<Float>, (Int) -> DecodeSink<D>?) -> Int) {
        let buf = UnsafeMutablePointer<Float>.allocate(capacity: 8 * k)
        defer { buf.deallocate() }
        var cur = buf, nxt = buf + 4 * k
        var r = r0, nr = min(4, r1 - r0)
        for j in 0..<max(nr, 0) { decodeRow(D.self, q.row(r + j), k, cur + j * k) }
        while r < r1 {
            let rn = r + nr, nrn = max(0, min(4, r1 - rn))
            let next = nxt
            let used = body(r, nr, cur) { j in
                j < nrn ? DecodeSink<D>(src: q.row(rn + j), dst: UnsafeMutableRawPointer(next + j * k)) : nil
            }
            for j in used..<nrn { decodeRow(D.self, q.row(rn + j), k, nxt + j * k) }
            swap(&cur, &nxt)
            r = rn; nr = nrn
        }
    }

    /// y[i, r…r+3] for two activation rows: 8 accumulators of 8 lanes.
    @inline(__always)
    static func pairForward<S: ColumnSink>(_ xa: UnsafeRawPointer, _ xb: UnsafeRawPointer, _ strip: UnsafeMutablePointer<Float>,
                                           _ k: Int, _ ya: UnsafeMutablePointer<Float>, _ yb: UnsafeMutablePointer<Float>,
                                           _ accumulate: Bool, _ sink: S) {
        let w0 = UnsafeRawPointer(strip), w1 = UnsafeRawPointer(strip + k)
        let w2 = UnsafeRawPointer(strip + 2 * k), w3 = UnsafeRawPointer(strip + 3 * k)
        var a0 = W8(), a1 = W8(), a2 = W8(), a3 = W8(), b0 = W8(), b1 = W8(), b2 = W8(), b3 = W8()
        @inline(__always) func eight(_ c: Int) {
            let u = xa.loadUnaligned(fromByteOffset: c, as: W8.self)
            let v = xb.loadUnaligned(fromByteOffset: c, as: W8.self)
            let p0 = w0.loadUnaligned(fromByteOffset: c, as: W8.self)
            a0.addProduct(u, p0); b0.addProduct(v, p0)
            let p1 = w1.loadUnaligned(fromByteOffset: c, as: W8.self)
            a1.addProduct(u, p1); b1.addProduct(v, p1)
            let p2 = w2.loadUnaligned(fromByteOffset: c, as: W8.self)
            a2.addProduct(u, p2); b2.addProduct(v, p2)
            let p3 = w3.loadUnaligned(fromByteOffset: c, as: W8.self)
            a3.addProduct(u, p3); b3.addProduct(v, p3)
        }
        var c = 0
        while c < 4 * k {       // 32 columns per pass, k a multiple of 32
            eight(c); eight(c + 32); eight(c + 64); eight(c + 96)
            sink.put(c)
            c += 128
        }
        if accumulate {
            ya[0] += a0.sum(); ya[1] += a1.sum(); ya[2] += a2.sum(); ya[3] += a3.sum()
            yb[0] += b0.sum(); yb[1] += b1.sum(); yb[2] += b2.sum(); yb[3] += b3.sum()
        } else {
            ya[0] = a0.sum(); ya[1] = a1.sum(); ya[2] = a2.sum(); ya[3] = a3.sum()
            yb[0] = b0.sum(); yb[1] = b1.sum(); yb[2] = b2.sum(); yb[3] = b3.sum()
        }
    }

    /// Rows [r0, r1) of one forward product.
    @inline(__always)
    static func linearRows<D: Decode32>(_: D.Type, _ x: UnsafePointer<Float>, _ m: Int, _ q: PackedWeight, cols k: Int,
                                       _ y: UnsafeMutablePointer<Float>, accumulate: Bool, _ r0: Int, _ r1: Int) {
        let n = q.rows
        forEachStrip(D.self, q, r0, r1, k) { r, nr, strip, next in
            if nr == 4 {
                var i = 0
                while i + 2 <= m {
                    let xa = UnsafeRawPointer(x + i * k), xb = UnsafeRawPointer(x + (i + 1) * k)
                    // No interleaved decoding here: with 8 accumulators the decoder's registers
                    // spill (measured: 60 GFLOP/s with it, 72 without, m = 10, 1 thread).
                    pairForward(xa, xb, strip, k, y + i * n + r, y + (i + 1) * n + r, accumulate, NoSink())
                    i += 2
                }
                if i < m {
                    let w0 = UnsafeRawPointer(strip), w1 = UnsafeRawPointer(strip + k)
                    let w2 = UnsafeRawPointer(strip + 2 * k), w3 = UnsafeRawPointer(strip + 3 * k)
                    let xi = UnsafeRawPointer(x + i * k)
                    var a0 = V(), a1 = V(), a2 = V(), a3 = V()
                    var c = 0
                    while c < 4 * k {
                        let xv = xi.loadUnaligned(fromByteOffset: c, as: V.self)
                        a0.addProduct(xv, w0.loadUnaligned(fromByteOffset: c, as: V.self))
                        a1.addProduct(xv, w1.loadUnaligned(fromByteOffset: c, as: V.self))
                        a2.addProduct(xv, w2.loadUnaligned(fromByteOffset: c, as: V.self))
                        a3.addProduct(xv, w3.loadUnaligned(fromByteOffset: c, as: V.self))
                        c += 64
                    }
                    let yi = y + i * n + r
                    if accumulate { yi[0] += a0.sum(); yi[1] += a1.sum(); yi[2] += a2.sum(); yi[3] += a3.sum() }
                    else { yi[0] = a0.sum(); yi[1] = a1.sum(); yi[2] = a2.sum(); yi[3] = a3.sum() }
                }
            } else {
                for j in 0..<nr {
                    let wr = strip + j * k
                    for i in 0..<m {
                        let s = Ops.dot(x + i * k, wr, k)
                        if accumulate { y[i * n + r + j] += s } else { y[i * n + r + j] = s }
                    }
                }
            }
            return 0      // the next strip is decoded after this one
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
            let i = ins[p], out = partial + ti * m * k
            switch i.q.kind {
            case .q4_1: backwardRows(DecodeQ4_1.self, i.dy, m, i.q, cols: k, out, r0, r1)
            case .q4_0: backwardRows(DecodeQ4_0.self, i.dy, m, i.q, cols: k, out, r0, r1)
            case .q8_0: backwardRows(DecodeQ8_0.self, i.dy, m, i.q, cols: k, out, r0, r1)
            }
        }
        for ti in 1..<t { Ops.add(partial + ti * m * k, into: partial, m * k) }
        if accumulate { Ops.add(partial, into: dxOut, m * k) } else { dxOut.update(from: partial, count: m * k) }
    }

    /// out[i…i+1, :] += dy[i…i+1, r…r+3] · W[r…r+3, :], and one block of the next strip decoded
    /// per 32 columns (72 GFLOP/s against 69 without, m = 10, 1 thread).
    @inline(__always)
    static func pairBackward<S: ColumnSink>(_ g: UnsafePointer<Float>, _ h: UnsafePointer<Float>, _ strip: UnsafeMutablePointer<Float>,
                                            _ k: Int, _ oa: UnsafeMutableRawPointer, _ ob: UnsafeMutableRawPointer, _ sink: S) {
        let w0 = UnsafeRawPointer(strip), w1 = UnsafeRawPointer(strip + k)
        let w2 = UnsafeRawPointer(strip + 2 * k), w3 = UnsafeRawPointer(strip + 3 * k)
        let g0 = W8(repeating: g[0]), g1 = W8(repeating: g[1]), g2 = W8(repeating: g[2]), g3 = W8(repeating: g[3])
        let h0 = W8(repeating: h[0]), h1 = W8(repeating: h[1]), h2 = W8(repeating: h[2]), h3 = W8(repeating: h[3])
        @inline(__always) func eight(_ c: Int) {
            var a = oa.loadUnaligned(fromByteOffset: c, as: W8.self)
            var b = ob.loadUnaligned(fromByteOffset: c, as: W8.self)
            let p0 = w0.loadUnaligned(fromByteOffset: c, as: W8.self)
            a.addProduct(g0, p0); b.addProduct(h0, p0)
            let p1 = w1.loadUnaligned(fromByteOffset: c, as: W8.self)
            a.addProduct(g1, p1); b.addProduct(h1, p1)
            let p2 = w2.loadUnaligned(fromByteOffset: c, as: W8.self)
            a.addProduct(g2, p2); b.addProduct(h2, p2)
            let p3 = w3.loadUnaligned(fromByteOffset: c, as: W8.self)
            a.addProduct(g3, p3); b.addProduct(h3, p3)
            oa.storeBytes(of: a, toByteOffset: c, as: W8.self)
            ob.storeBytes(of: b, toByteOffset: c, as: W8.self)
        }
        var c = 0
        while c < 4 * k {       // 32 columns per pass, k a multiple of 32
            eight(c); eight(c + 32); eight(c + 64); eight(c + 96)
            sink.put(c)
            c += 128
        }
    }

    /// Rows [r0, r1) of one backward product, accumulated into `out`.
    @inline(__always)
    static func backwardRows<D: Decode32>(_: D.Type, _ dy: UnsafePointer<Float>, _ m: Int, _ q: PackedWeight, cols k: Int,
                                         _ out: UnsafeMutablePointer<Float>, _ r0: Int, _ r1: Int) {
        let n = q.rows
        forEachStrip(D.self, q, r0, r1, k) { r, nr, strip, next in
            var used = 0
            if nr == 4 {
                var i = 0
                while i + 2 <= m {
                    let g = dy + i * n + r, h = dy + (i + 1) * n + r
                    let oa = UnsafeMutableRawPointer(out + i * k), ob = UnsafeMutableRawPointer(out + (i + 1) * k)
                    if let sink = next(used) { pairBackward(g, h, strip, k, oa, ob, sink); used += 1 }
                    else { pairBackward(g, h, strip, k, oa, ob, NoSink()) }
                    i += 2
                }
                if i < m {
                    let w0 = UnsafeRawPointer(strip), w1 = UnsafeRawPointer(strip + k)
                    let w2 = UnsafeRawPointer(strip + 2 * k), w3 = UnsafeRawPointer(strip + 3 * k)
                    let g = dy + i * n + r
                    let g0 = V(repeating: g[0]), g1 = V(repeating: g[1]), g2 = V(repeating: g[2]), g3 = V(repeating: g[3])
                    let o = UnsafeMutableRawPointer(out + i * k)
                    var c = 0
                    while c < 4 * k {
                        var acc = o.loadUnaligned(fromByteOffset: c, as: V.self)
                        acc.addProduct(g0, w0.loadUnaligned(fromByteOffset: c, as: V.self))
                        acc.addProduct(g1, w1.loadUnaligned(fromByteOffset: c, as: V.self))
                        acc.addProduct(g2, w2.loadUnaligned(fromByteOffset: c, as: V.self))
                        acc.addProduct(g3, w3.loadUnaligned(fromByteOffset: c, as: V.self))
                        o.storeBytes(of: acc, toByteOffset: c, as: V.self)
                        c += 64
                    }
                }
            } else {
                for j in 0..<nr {
                    for i in 0..<m { Ops.axpy(dy[i * n + r + j], strip + j * k, out + i * k, k) }
                }
            }
            return used
        }
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
            switch q.kind {
            case .q4_1: headRows(DecodeQ4_1.self, h, m, q, r0, r1, M + ti * m, S + ti * m, G + ti * m * k)
            case .q4_0: headRows(DecodeQ4_0.self, h, m, q, r0, r1, M + ti * m, S + ti * m, G + ti * m * k)
            case .q8_0: headRows(DecodeQ8_0.self, h, m, q, r0, r1, M + ti * m, S + ti * m, G + ti * m * k)
            }
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

    /// Vocabulary rows [r0, r1) of the one-pass head, into one thread's (M, S, G).
    @inline(__always)
    static func headRows<D: Decode32>(_: D.Type, _ h: UnsafePointer<Float>, _ m: Int, _ q: PackedWeight, _ r0: Int, _ r1: Int,
                                     _ M: UnsafeMutablePointer<Float>, _ S: UnsafeMutablePointer<Float>, _ G: UnsafeMutablePointer<Float>) {
        let k = q.cols
        // z (then exp(z − M)) for the strip's ≤ 4 rows, 4 per activation row, padded to SIMD16
        let zCount = (4 * m + 15) / 16 * 16
        let z = UnsafeMutablePointer<Float>.allocate(capacity: zCount)
        defer { z.deallocate() }
        z.update(repeating: 0, count: zCount)
        forEachStrip(D.self, q, r0, r1, k) { r, nr, strip, next in
            var used = 0
            // ---- forward: z[i, j] = h_i · W_{r+j}
            var i = 0
            if nr == 4 {
                while i + 2 <= m {
                    let xa = UnsafeRawPointer(h + i * k), xb = UnsafeRawPointer(h + (i + 1) * k)
                    pairForward(xa, xb, strip, k, z + 4 * i, z + 4 * (i + 1), false, NoSink())
                    i += 2
                }
            }
            while i < m {
                for j in 0..<4 { z[4 * i + j] = j < nr ? Ops.dot(h + i * k, strip + j * k, k) : -.infinity }
                i += 1
            }
            // ---- running max and rescale, then e = exp(z − M)
            for i in 0..<m {
                let zi = z + 4 * i
                let mx = max(max(zi[0], zi[1]), max(zi[2], zi[3]))
                if mx > M[i] {
                    let c = expf(M[i] - mx)          // 0 on the first strip (M = −∞)
                    S[i] *= c
                    let g = G + i * k
                    for col in 0..<k { g[col] *= c }
                    M[i] = mx
                }
                for j in 0..<4 { zi[j] -= M[i] }
            }
            var o = 0
            while o < zCount {
                let e = Ops.exp16(UnsafeRawPointer(z).loadUnaligned(fromByteOffset: 4 * o, as: SIMD16<Float>.self))
                UnsafeMutableRawPointer(z).storeBytes(of: e, toByteOffset: 4 * o, as: SIMD16<Float>.self)
                o += 16
            }
            for i in 0..<m { S[i] += z[4 * i] + z[4 * i + 1] + z[4 * i + 2] + z[4 * i + 3] }
            // ---- backward: G_i += Σ_j e[i, j] W_{r+j}
            i = 0
            if nr == 4 {
                while i + 2 <= m {
                    let oa = UnsafeMutableRawPointer(G + i * k), ob = UnsafeMutableRawPointer(G + (i + 1) * k)
                    if let sink = next(used) { pairBackward(z + 4 * i, z + 4 * (i + 1), strip, k, oa, ob, sink); used += 1 }
                    else { pairBackward(z + 4 * i, z + 4 * (i + 1), strip, k, oa, ob, NoSink()) }
                    i += 2
                }
            }
            while i < m {
                for j in 0..<nr { Ops.axpy(z[4 * i + j], strip + j * k, G + i * k, k) }
                i += 1
            }
            return used
        }
    }
}

/// The int8 products' instruction set, chosen at run time: the best this CPU has unless lowered
/// by `$INTERVENE_INT8_KERNELS` (avx2 | none) or by setting `current` (tests, benchmarks). The
/// levels give bit-identical products (one packed layout, the same integer sums and the same
/// float operations in the same order), so a result does not depend on which one ran.
public enum Int8Kernels: String, CaseIterable, Sendable {
    /// No int8 kernel: `Precision.int8` runs as fp32.
    case none
    /// AVX2 + FMA: vpmaddubsw + vpmaddwd (Haswell and later, Zen 1 and later).
    case avx2
    /// AVX-512 F/BW/VL + VNNI: vpdpbusd (Ice Lake and later, Zen 4 and later).
    case avx512vnni = "avx512-vnni"

    init(level: Int32) {
        switch level {
        case Int32(IK_AVX512_VNNI): self = .avx512vnni
        case Int32(IK_AVX2_LEVEL): self = .avx2
        default: self = .none
        }
    }
    var level: Int32 {
        switch self {
        case .none: return Int32(IK_NONE)
        case .avx2: return Int32(IK_AVX2_LEVEL)
        case .avx512vnni: return Int32(IK_AVX512_VNNI)
        }
    }

    /// The best level this CPU runs.
    public static var cpu: Int8Kernels { Int8Kernels(level: ik_cpu_level()) }
    /// The level in use; setting a level above the CPU's gives the CPU's.
    public static var current: Int8Kernels {
        get { Int8Kernels(level: ik_level()) }
        set { _ = ik_set_level(newValue.level) }
    }
    /// Every level this CPU runs, best first.
    public static var supported: [Int8Kernels] {
        allCases.filter { $0.level <= cpu.level }.sorted { $0.level > $1.level }
    }
}
