import Foundation

/// SHA-256 (FIPS 180-4), streaming. Used for model identity and Δ artefact names.
public struct SHA256 {
    private var h: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) =
        (0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19)
    private var buffer = [UInt8]()

    private static let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]

    public init() {}

    public mutating func update(_ p: UnsafeRawBufferPointer) {
        var i = 0
        total &+= UInt64(p.count)
        if !buffer.isEmpty {
            while i < p.count && buffer.count < 64 { buffer.append(p[i]); i += 1 }
            if buffer.count == 64 { compress(buffer); buffer.removeAll(keepingCapacity: true) }
        }
        while i + 64 <= p.count {
            compress(UnsafeRawBufferPointer(rebasing: p[i..<(i + 64)]))
            i += 64
        }
        while i < p.count { buffer.append(p[i]); i += 1 }
    }
    private var total: UInt64 = 0

    public mutating func update(_ data: Data) { data.withUnsafeBytes { update($0) } }
    public mutating func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { update($0) } }

    public mutating func finalize() -> [UInt8] {
        let bits = total &* 8
        var pad: [UInt8] = [0x80]
        let rem = (buffer.count + 1) % 64
        pad += [UInt8](repeating: 0, count: rem <= 56 ? 56 - rem : 120 - rem)
        for i in (0..<8).reversed() { pad.append(UInt8(truncatingIfNeeded: bits >> (UInt64(i) * 8))) }
        let keep = total
        update(pad)
        total = keep
        precondition(buffer.isEmpty)
        var out: [UInt8] = []
        for w in [h.0, h.1, h.2, h.3, h.4, h.5, h.6, h.7] {
            out += [UInt8(w >> 24), UInt8(truncatingIfNeeded: w >> 16), UInt8(truncatingIfNeeded: w >> 8), UInt8(truncatingIfNeeded: w)]
        }
        return out
    }

    private mutating func compress<C: Collection>(_ block: C) where C.Element == UInt8, C.Index == Int {
        withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 64) { w in compress(block, w) }
    }

    private mutating func compress<C: Collection>(_ block: C, _ w: UnsafeMutableBufferPointer<UInt32>) where C.Element == UInt8, C.Index == Int {
        let s = block.startIndex
        for t in 0..<16 {
            w[t] = UInt32(block[s + 4 * t]) << 24 | UInt32(block[s + 4 * t + 1]) << 16 | UInt32(block[s + 4 * t + 2]) << 8 | UInt32(block[s + 4 * t + 3])
        }
        @inline(__always) func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }
        for t in 16..<64 {
            let s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3)
            let s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10)
            w[t] = w[t - 16] &+ s0 &+ w[t - 7] &+ s1
        }
        var (a, b, c, d, e, f, g, hh) = h
        for t in 0..<64 {
            let S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)
            let ch = (e & f) ^ (~e & g)
            let t1 = hh &+ S1 &+ ch &+ Self.k[t] &+ w[t]
            let S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)
            let maj = (a & b) ^ (a & c) ^ (b & c)
            let t2 = S0 &+ maj
            hh = g; g = f; f = e; e = d &+ t1; d = c; c = b; b = a; a = t1 &+ t2
        }
        h = (h.0 &+ a, h.1 &+ b, h.2 &+ c, h.3 &+ d, h.4 &+ e, h.5 &+ f, h.6 &+ g, h.7 &+ hh)
    }

    public static func hash(_ data: Data) -> [UInt8] { var s = SHA256(); s.update(data); return s.finalize() }
    public static func hex(_ data: Data) -> String { hash(data).map { String(format: "%02x", $0) }.joined() }
    public static func hex(_ bytes: [UInt8]) -> String { hex(Data(bytes)) }
    public static func hex(_ string: String) -> String { hex(Data(string.utf8)) }

    public struct CannotRead: Error, CustomStringConvertible, Equatable {
        public var path: String
        public var description: String { "cannot read \(path)" }
    }

    /// Hash of a file, read in 4 MiB chunks.
    public static func hex(fileAt path: String) throws -> String {
        guard let fh = FileHandle(forReadingAtPath: path) else { throw CannotRead(path: path) }
        defer { try? fh.close() }
        var s = SHA256()
        while true {
            let chunk = fh.readData(ofLength: 4 << 20)
            if chunk.isEmpty { break }
            s.update(chunk)
        }
        return s.finalize().map { String(format: "%02x", $0) }.joined()
    }
}
