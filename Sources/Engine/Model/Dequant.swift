import Dispatch
import Foundation

/// IEEE half → single, exact for every input (subnormals, inf, NaN included). One vcvtph2ps
/// with the F16C instructions the Engine target is compiled for.
@inlinable @inline(__always)
public func halfToFloat(_ h: UInt16) -> Float { Float(Float16(bitPattern: h)) }

/// Round-to-nearest-even single → half (used by tests and writers).
public func floatToHalf(_ f: Float) -> UInt16 {
    let x = f.bitPattern
    let sign = UInt16((x >> 16) & 0x8000)
    let exp = Int((x >> 23) & 0xFF)
    var mant = x & 0x7F_FFFF
    if exp == 0xFF { return sign | 0x7C00 | (mant != 0 ? 0x200 : 0) }
    var e = exp - 127 + 15
    if e >= 31 { return sign | 0x7C00 }
    if e <= 0 {
        if e < -10 { return sign }
        mant |= 0x80_0000
        let shift = UInt32(14 - e)
        var h = mant >> shift
        let rem = mant & ((1 << shift) - 1), half = UInt32(1) << (shift - 1)
        if rem > half || (rem == half && (h & 1) == 1) { h += 1 }
        return sign | UInt16(h)
    }
    var h = mant >> 13
    let rem = mant & 0x1FFF
    if rem > 0x1000 || (rem == 0x1000 && (h & 1) == 1) { h += 1 }
    if h == 0x400 { h = 0; e += 1; if e >= 31 { return sign | 0x7C00 } }
    return sign | UInt16(e << 10) | UInt16(h)
}

/// Dequantisation of the `WeightFormat`s to fp32 (the block layouts are listed there).
public enum Dequant {
    /// Dequantises `count` elements (a whole number of blocks) of format `format` from `src` to `dst`.
    public static func run(_ format: WeightFormat, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        switch format {
        case .f32:
            dst.update(from: src.assumingMemoryBound(to: Float.self), count: count)
            // (the mapping is page-aligned and tensor data 32-byte aligned, so the bound is valid)
        case .f16:
            for i in 0..<count { dst[i] = halfToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        case .bf16:
            for i in 0..<count { dst[i] = Float(bitPattern: UInt32(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16) }
        case .q8_0:
            for b in 0..<count / 32 {
                let blk = src + b * 34
                let d = halfToFloat(blk.loadUnaligned(as: UInt16.self))
                let q = (blk + 2).assumingMemoryBound(to: Int8.self)
                let o = dst + b * 32
                for j in 0..<32 { o[j] = d * Float(q[j]) }
            }
        case .q4_0:
            for b in 0..<count / 32 {
                let blk = src + b * 18
                let d = halfToFloat(blk.loadUnaligned(as: UInt16.self))
                let q = (blk + 2).assumingMemoryBound(to: UInt8.self)
                let o = dst + b * 32
                for j in 0..<16 {
                    o[j] = d * Float(Int(q[j] & 0x0F) - 8)
                    o[j + 16] = d * Float(Int(q[j] >> 4) - 8)
                }
            }
        case .q4_1:
            for b in 0..<count / 32 {
                let blk = src + b * 20
                let d = halfToFloat(blk.loadUnaligned(as: UInt16.self))
                let m = halfToFloat(blk.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
                let q = (blk + 4).assumingMemoryBound(to: UInt8.self)
                let o = dst + b * 32
                for j in 0..<16 {
                    o[j] = d * Float(q[j] & 0x0F) + m
                    o[j + 16] = d * Float(q[j] >> 4) + m
                }
            }
        case .q5_0:
            for b in 0..<count / 32 {
                let blk = src + b * 22
                let d = halfToFloat(blk.loadUnaligned(as: UInt16.self))
                let high = blk.loadUnaligned(fromByteOffset: 2, as: UInt32.self)  // bit i: element i's fifth bit
                let q = (blk + 6).assumingMemoryBound(to: UInt8.self)
                let o = dst + b * 32
                for j in 0..<16 {
                    let lo = Int(q[j] & 0x0F) | Int((high >> UInt32(j)) & 1) << 4
                    let hi = Int(q[j] >> 4) | Int((high >> UInt32(j + 16)) & 1) << 4
                    o[j] = d * Float(lo - 16)
                    o[j + 16] = d * Float(hi - 16)
                }
            }
        case .q4_K:
            for b in 0..<count / 256 {
                let blk = src + b * 144
                let d = halfToFloat(blk.loadUnaligned(as: UInt16.self))
                let dmin = halfToFloat(blk.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
                let packed = (blk + 4).assumingMemoryBound(to: UInt8.self)  // 12 bytes
                let q = (blk + 16).assumingMemoryBound(to: UInt8.self)      // 128 bytes
                let o = dst + b * 256
                // Sub-blocks s = 0…7 of 32 elements; each 64 elements share 32 bytes of nibbles:
                // sub-block 2c in the low nibbles, 2c+1 in the high ones.
                for c in 0..<4 {
                    let (s0, m0) = scaleMinK4(2 * c, packed)
                    let (s1, m1) = scaleMinK4(2 * c + 1, packed)
                    let d0 = d * Float(s0), d1 = d * Float(s1)
                    let n0 = dmin * Float(m0), n1 = dmin * Float(m1)
                    let qc = q + 32 * c
                    let oc = o + 64 * c
                    for l in 0..<32 {
                        oc[l] = d0 * Float(qc[l] & 0x0F) - n0
                        oc[l + 32] = d1 * Float(qc[l] >> 4) - n1
                    }
                }
            }
        case .q6_K:
            for b in 0..<count / 256 {
                let blk = src + b * 210
                let low = blk.assumingMemoryBound(to: UInt8.self)            // 128 bytes
                let high = (blk + 128).assumingMemoryBound(to: UInt8.self)   // 64 bytes
                let scales = (blk + 192).assumingMemoryBound(to: Int8.self)  // 16 int8
                let d = halfToFloat(blk.loadUnaligned(fromByteOffset: 208, as: UInt16.self))
                let o = dst + b * 256
                // Two halves of 128 elements; in half h, element 32k + l (k = 0…3, l = 0…31) takes
                // its low 4 bits from byte l (+32 for odd k) of the half's 64 low bytes (low nibble
                // for k < 2, high for k ≥ 2) and its top 2 bits from bits 2k…2k+1 of the half's
                // high byte l; its scale is scales[8h + 2k + l/16].
                for h in 0..<2 {
                    let ql = low + 64 * h, qh = high + 32 * h, sc = scales + 8 * h
                    let oh = o + 128 * h
                    for l in 0..<32 {
                        let top = Int(qh[l])
                        let v0 = Int(ql[l] & 0x0F) | (top & 3) << 4
                        let v1 = Int(ql[l + 32] & 0x0F) | (top >> 2 & 3) << 4
                        let v2 = Int(ql[l] >> 4) | (top >> 4 & 3) << 4
                        let v3 = Int(ql[l + 32] >> 4) | (top >> 6 & 3) << 4
                        let s = l / 16
                        oh[l] = d * Float(sc[s]) * Float(v0 - 32)
                        oh[l + 32] = d * Float(sc[s + 2]) * Float(v1 - 32)
                        oh[l + 64] = d * Float(sc[s + 4]) * Float(v2 - 32)
                        oh[l + 96] = d * Float(sc[s + 6]) * Float(v3 - 32)
                    }
                }
            }
        }
    }

    /// Q4_K's 6-bit scale and min of sub-block `s` (0…7) from its 12 packed bytes: sub-blocks 0–3
    /// keep theirs in the low 6 bits of bytes s and s+4; sub-blocks 4–7 in the nibbles of byte
    /// s+4 (scale low, min high) with their top 2 bits in the top bits of bytes s−4 and s.
    @inline(__always)
    static func scaleMinK4(_ s: Int, _ p: UnsafePointer<UInt8>) -> (scale: UInt8, min: UInt8) {
        if s < 4 { return (p[s] & 63, p[s + 4] & 63) }
        return ((p[s + 4] & 0x0F) | (p[s - 4] >> 6) << 4, (p[s + 4] >> 4) | (p[s] >> 6) << 4)
    }

    /// Dequantises a whole tensor to a new fp32 buffer, splitting the work over `threads`.
    public static func tensor(_ file: GGUFFile, _ info: GGUFTensorInfo, threads: Int = 1) throws -> [Float] {
        let format = try WeightFormat.of(info)
        let n = info.elementCount
        let (be, bb) = info.type.blockLayout!
        let blocks = n / be
        let src = file.rawBytes(info).baseAddress!
        var out = [Float](repeating: 0, count: n)
        out.withUnsafeMutableBufferPointer { dst in
            let d = dst.baseAddress!
            let chunks = threads > 1 && blocks >= 4096 ? threads * 4 : 1
            let per = (blocks + chunks - 1) / chunks
            DispatchQueue.concurrentPerform(iterations: chunks) { c in
                let b0 = c * per, b1 = min(blocks, b0 + per)
                guard b0 < b1 else { return }
                run(format, src + b0 * bb, d + b0 * be, count: (b1 - b0) * be)
            }
        }
        return out
    }
}
