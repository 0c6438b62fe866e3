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
        }
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
