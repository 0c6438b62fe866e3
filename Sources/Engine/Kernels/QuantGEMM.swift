import Dispatch
import Foundation

/// A weight's original GGUF blocks, kept (memory-mapped) beside its fp32 copy. Products with few
/// activation rows read these instead: 0.625 bytes per weight for Q4_1 and 1.06 for Q8_0 against
/// 4 for fp32, and those products are bound by memory traffic. Each block is dequantised once
/// into an L1-resident strip and used for every activation row, so the arithmetic is the same
/// fp32 arithmetic on the same values as the fp32 path.
public struct QuantView: @unchecked Sendable {
    public let type: GGMLType
    public let base: UnsafeRawPointer
    public let rowBytes: Int
    /// Keeps the mapping alive.
    let owner: AnyObject

    public init(type: GGMLType, base: UnsafeRawPointer, rowBytes: Int, owner: AnyObject) {
        self.type = type; self.base = base; self.rowBytes = rowBytes; self.owner = owner
    }

    public static func supports(_ t: GGMLType) -> Bool { t == .q4_1 || t == .q8_0 || t == .q4_0 }
}

public enum QuantGEMM {
    typealias V = SIMD16<Float>
    typealias W8 = SIMD8<Float>

    /// Within every 16-element chunk, the kernels hold element P(L) = 4·(L mod 4) + L/4 at lane L:
    /// the order in which 16 bytes, read as four 32-bit words, come apart with per-lane shifts and
    /// no shuffles. P is its own inverse. Activations are put into this order once per call.
    @inline(__always) static func perm(_ l: Int) -> Int { 4 * (l & 3) + (l >> 2) }

    /// Reorders (or restores, P being an involution) every 16-chunk of `count` values.
    static func permute(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        var c = 0
        while c < count {
            for l in 0..<16 { dst[c + l] = src[c + perm(l)] }
            c += 16
        }
    }

    @inline(__always) static func spread(_ p: UnsafeRawPointer) -> SIMD16<UInt32> {
        let v = p.loadUnaligned(as: SIMD4<UInt32>.self)
        let v8 = SIMD8(lowHalf: v, highHalf: v)
        return SIMD16(lowHalf: v8, highHalf: v8)
    }
    /// Small non-negative integers (< 2²³) to float exactly, with integer ops only.
    @inline(__always) static func toFloat(_ u: SIMD16<UInt32>) -> V {
        unsafeBitCast(u | 0x4B00_0000, to: V.self) - V(repeating: 8_388_608)
    }
    /// Signed integers (|i| < 2²²) to float exactly.
    @inline(__always) static func toFloat(_ i: SIMD16<Int32>) -> V {
        unsafeBitCast(i &+ 0x4B40_0000, to: V.self) - V(repeating: 12_582_912)
    }

    /// Dequantises columns [c0, c1) (multiples of 32) of row `r` into `dst`, in the P order.
    @inline(__always)
    static func dequantRow(_ q: QuantView, _ r: Int, _ c0: Int, _ c1: Int, _ dst: UnsafeMutablePointer<Float>) {
        let row = q.base + r * q.rowBytes
        let d = UnsafeMutableRawPointer(dst)
        let mask = SIMD16<UInt32>(repeating: 0xF)
        let shiftLo = SIMD16<UInt32>(0, 0, 0, 0, 8, 8, 8, 8, 16, 16, 16, 16, 24, 24, 24, 24)
        let shiftHi = shiftLo &+ 4
        let shiftS8 = SIMD16<Int32>(24, 24, 24, 24, 16, 16, 16, 16, 8, 8, 8, 8, 0, 0, 0, 0)
        switch q.type {
        case .q4_1:
            var b = c0 / 32, o = 0
            while b < c1 / 32 {
                let blk = row + b * 20
                let sc = V(repeating: halfToFloat(blk.loadUnaligned(as: UInt16.self)))
                let mn = V(repeating: halfToFloat(blk.loadUnaligned(fromByteOffset: 2, as: UInt16.self)))
                let w = spread(blk + 4)
                d.storeBytes(of: toFloat((w &>> shiftLo) & mask) * sc + mn, toByteOffset: o, as: V.self)
                d.storeBytes(of: toFloat((w &>> shiftHi) & mask) * sc + mn, toByteOffset: o + 64, as: V.self)
                b += 1; o += 128
            }
        case .q4_0:
            var b = c0 / 32, o = 0
            let eight = V(repeating: 8)
            while b < c1 / 32 {
                let blk = row + b * 18
                let sc = V(repeating: halfToFloat(blk.loadUnaligned(as: UInt16.self)))
                let w = spread(blk + 2)
                d.storeBytes(of: (toFloat((w &>> shiftLo) & mask) - eight) * sc, toByteOffset: o, as: V.self)
                d.storeBytes(of: (toFloat((w &>> shiftHi) & mask) - eight) * sc, toByteOffset: o + 64, as: V.self)
                b += 1; o += 128
            }
        case .q8_0:
            var b = c0 / 32, o = 0
            while b < c1 / 32 {
                let blk = row + b * 34
                let sc = V(repeating: halfToFloat(blk.loadUnaligned(as: UInt16.self)))
                // byte k of each word: shift it to the top, then arithmetic-shift down (sign extends)
                let w0 = unsafeBitCast(spread(blk + 2), to: SIMD16<Int32>.self)
                let w1 = unsafeBitCast(spread(blk + 18), to: SIMD16<Int32>.self)
                d.storeBytes(of: toFloat((w0 &<< shiftS8) &>> 24) * sc, toByteOffset: o, as: V.self)
                d.storeBytes(of: toFloat((w1 &<< shiftS8) &>> 24) * sc, toByteOffset: o + 64, as: V.self)
                b += 1; o += 128
            }
        default:
            preconditionFailure("QuantGEMM: unsupported type \(q.type)")
        }
    }

    /// y[m × n] (+)= x[m × k] · Wᵀ for W given by its blocks. Rows of W split over `threads`.
    public static func linear(_ x: UnsafePointer<Float>, _ m: Int, _ q: QuantView, rows n: Int, cols k: Int,
                              _ y: UnsafeMutablePointer<Float>, accumulate: Bool, threads: Int) {
        precondition(k % 32 == 0)
        let xp = UnsafeMutablePointer<Float>.allocate(capacity: m * k)
        defer { xp.deallocate() }
        permute(x, xp, count: m * k)
        let x = UnsafePointer(xp)
        let work = { (r0: Int, r1: Int) in
            forEachStrip(q, r0, r1, k) { r, nr, strip in
                if nr == 4 {
                    let w0 = UnsafeRawPointer(strip), w1 = UnsafeRawPointer(strip + k)
                    let w2 = UnsafeRawPointer(strip + 2 * k), w3 = UnsafeRawPointer(strip + 3 * k)
                    // two activation rows × four weight rows per pass: 8 accumulators of 8 lanes
                    var i = 0
                    while i + 2 <= m {
                        let xa = UnsafeRawPointer(x + i * k), xb = UnsafeRawPointer(x + (i + 1) * k)
                        var a0 = W8(), a1 = W8(), a2 = W8(), a3 = W8(), b0 = W8(), b1 = W8(), b2 = W8(), b3 = W8()
                        var c = 0
                        while c < 4 * k {
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
                            c += 32
                        }
                        let ya = y + i * n + r, yb = y + (i + 1) * n + r
                        if accumulate {
                            ya[0] += a0.sum(); ya[1] += a1.sum(); ya[2] += a2.sum(); ya[3] += a3.sum()
                            yb[0] += b0.sum(); yb[1] += b1.sum(); yb[2] += b2.sum(); yb[3] += b3.sum()
                        } else {
                            ya[0] = a0.sum(); ya[1] = a1.sum(); ya[2] = a2.sum(); ya[3] = a3.sum()
                            yb[0] = b0.sum(); yb[1] = b1.sum(); yb[2] = b2.sum(); yb[3] = b3.sum()
                        }
                        i += 2
                    }
                    while i < m {
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
                        i += 1
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
            }
        }
        parallelRows(n, threads, work)
    }

    /// dx[m × k] (+)= dy[m × n] · W. Rows of W split over `threads`, each with its own partial dx.
    public static func linearBackward(_ dy: UnsafePointer<Float>, _ m: Int, _ q: QuantView, rows n: Int, cols k: Int,
                                      _ dx: UnsafeMutablePointer<Float>, accumulate: Bool, threads: Int) {
        precondition(k % 32 == 0)
        let t = threads > 1 && n >= 256 ? threads : 1
        let partial = UnsafeMutablePointer<Float>.allocate(capacity: max(t - 1, 1) * m * k)
        let dxp = UnsafeMutablePointer<Float>.allocate(capacity: m * k)
        defer { partial.deallocate(); dxp.deallocate() }
        let accumulateInto = accumulate, dxOut = dx
        let dx = dxp, accumulate = false
        let per = ((n + t - 1) / t + 3) / 4 * 4
        DispatchQueue.concurrentPerform(iterations: t) { ti in
            let r0 = ti * per, r1 = min(n, r0 + per)
            let out = ti == 0 ? dx : partial + (ti - 1) * m * k
            if ti > 0 || !accumulate { out.update(repeating: 0, count: m * k) }
            guard r0 < r1 else { return }
            forEachStrip(q, r0, r1, k) { r, nr, strip in
                if nr == 4 {
                    let w0 = UnsafeRawPointer(strip), w1 = UnsafeRawPointer(strip + k)
                    let w2 = UnsafeRawPointer(strip + 2 * k), w3 = UnsafeRawPointer(strip + 3 * k)
                    var i = 0
                    while i + 2 <= m {
                        let g = dy + i * n + r, h = dy + (i + 1) * n + r
                        let g0 = W8(repeating: g[0]), g1 = W8(repeating: g[1]), g2 = W8(repeating: g[2]), g3 = W8(repeating: g[3])
                        let h0 = W8(repeating: h[0]), h1 = W8(repeating: h[1]), h2 = W8(repeating: h[2]), h3 = W8(repeating: h[3])
                        let oa = UnsafeMutableRawPointer(out + i * k), ob = UnsafeMutableRawPointer(out + (i + 1) * k)
                        var c = 0
                        while c < 4 * k {
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
                            c += 32
                        }
                        i += 2
                    }
                    while i < m {
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
                        i += 1
                    }
                } else {
                    for j in 0..<nr {
                        for i in 0..<m { Ops.axpy(dy[i * n + r + j], strip + j * k, out + i * k, k) }
                    }
                }
            }
        }
        for ti in 1..<max(t, 1) { Ops.add(partial + (ti - 1) * m * k, into: dx, m * k) }
        if accumulateInto {
            permute(dx, partial, count: m * k)
            Ops.add(partial, into: dxOut, m * k)
        } else {
            permute(dx, dxOut, count: m * k)
        }
    }

    /// Walks weight rows [r0, r1) four at a time, dequantising each group into an L1-resident
    /// strip (P order) that `body(firstRow, count, strip)` then uses for every activation row.
    @inline(__always)
    static func forEachStrip(_ q: QuantView, _ r0: Int, _ r1: Int, _ k: Int,
                             _ body: (Int, Int, UnsafeMutablePointer<Float>) -> Void) {
        let strip = UnsafeMutablePointer<Float>.allocate(capacity: 4 * k)
        defer { strip.deallocate() }
        var r = r0
        while r < r1 {
            let nr = min(4, r1 - r)
            for j in 0..<nr { dequantRow(q, r + j, 0, k, strip + j * k) }
            body(r, nr, strip)
            r += nr
        }
    }

    static func parallelRows(_ n: Int, _ threads: Int, _ work: (Int, Int) -> Void) {
        if threads <= 1 || n < 256 { work(0, n); return }
        let per = ((n + threads - 1) / threads + 3) / 4 * 4
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            let r0 = t * per, r1 = min(n, r0 + per)
            if r0 < r1 { work(r0, r1) }
        }
    }
}
