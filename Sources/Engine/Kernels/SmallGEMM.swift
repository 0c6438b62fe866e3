import Foundation

/// Products with few activation rows (m ≤ 16) against a large weight: the solver's single-token
/// path (m = N prompts) and decode. OpenBLAS packs the whole weight on every call, which at
/// m = 10 costs more than the product; these kernels stream each weight row once and keep the
/// m activation rows in L1.
public enum SmallGEMM {
    public static let maxRows = 16
    typealias V = SIMD16<Float>

    /// y[m × n] (+)= x[m × k] · Wᵀ, W [n × k]. Rows of W are split over `threads`.
    public static func linear(_ x: UnsafePointer<Float>, _ m: Int, _ w: Weight, _ y: UnsafeMutablePointer<Float>,
                              accumulate: Bool, threads: Int = 1) {
        let n = w.rows, k = w.cols
        precondition(m <= maxRows && k % 16 == 0)
        let work = { (r0: Int, r1: Int) in
            var r = r0
            // four weight rows at a time: each x chunk loaded once feeds four products
            while r + 4 <= r1 {
                let w0 = UnsafeRawPointer(w.data + r * k), w1 = UnsafeRawPointer(w.data + (r + 1) * k)
                let w2 = UnsafeRawPointer(w.data + (r + 2) * k), w3 = UnsafeRawPointer(w.data + (r + 3) * k)
                for i in 0..<m {
                    let xi = UnsafeRawPointer(x + i * k)
                    var a0 = V(), a1 = V(), a2 = V(), a3 = V()
                    var c = 0
                    while c < k {
                        let xv = xi.loadUnaligned(fromByteOffset: 4 * c, as: V.self)
                        a0 += xv * w0.loadUnaligned(fromByteOffset: 4 * c, as: V.self)
                        a1 += xv * w1.loadUnaligned(fromByteOffset: 4 * c, as: V.self)
                        a2 += xv * w2.loadUnaligned(fromByteOffset: 4 * c, as: V.self)
                        a3 += xv * w3.loadUnaligned(fromByteOffset: 4 * c, as: V.self)
                        c += 16
                    }
                    let yi = y + i * n + r
                    if accumulate {
                        yi[0] += a0.sum(); yi[1] += a1.sum(); yi[2] += a2.sum(); yi[3] += a3.sum()
                    } else {
                        yi[0] = a0.sum(); yi[1] = a1.sum(); yi[2] = a2.sum(); yi[3] = a3.sum()
                    }
                }
                r += 4
            }
            while r < r1 {
                let wr = UnsafeRawPointer(w.data + r * k)
                for i in 0..<m {
                    let xi = UnsafeRawPointer(x + i * k)
                    var a = V()
                    var c = 0
                    while c < k {
                        a += xi.loadUnaligned(fromByteOffset: 4 * c, as: V.self) * wr.loadUnaligned(fromByteOffset: 4 * c, as: V.self)
                        c += 16
                    }
                    if accumulate { y[i * n + r] += a.sum() } else { y[i * n + r] = a.sum() }
                }
                r += 1
            }
        }
        if threads <= 1 || n < 256 {
            work(0, n)
        } else {
            let per = ((n + threads - 1) / threads + 3) / 4 * 4
            DispatchQueue.concurrentPerform(iterations: threads) { t in
                let r0 = t * per, r1 = min(n, r0 + per)
                if r0 < r1 { work(r0, r1) }
            }
        }
    }

    /// dx[m × k] (+)= dy[m × n] · W, W [n × k]. Columns of W are split over `threads`.
    public static func linearBackward(_ dy: UnsafePointer<Float>, _ m: Int, _ w: Weight, _ dx: UnsafeMutablePointer<Float>,
                                      accumulate: Bool, threads: Int = 1) {
        let n = w.rows, k = w.cols
        precondition(m <= maxRows && k % 16 == 0)
        let work = { (c0: Int, c1: Int) in
            if !accumulate { for i in 0..<m { (dx + i * k + c0).update(repeating: 0, count: c1 - c0) } }
            // a 64-column strip of dx for all m rows (m × 4 vectors) stays in registers/L1
            var c = c0
            while c < c1 {
                let cw = min(64, c1 - c)
                if cw == 64 {
                    for i in 0..<m {
                        let dxi = UnsafeMutableRawPointer(dx + i * k + c)
                        var s0 = dxi.loadUnaligned(fromByteOffset: 0, as: V.self)
                        var s1 = dxi.loadUnaligned(fromByteOffset: 64, as: V.self)
                        var s2 = dxi.loadUnaligned(fromByteOffset: 128, as: V.self)
                        var s3 = dxi.loadUnaligned(fromByteOffset: 192, as: V.self)
                        let dyi = dy + i * n
                        for r in 0..<n {
                            let a = V(repeating: dyi[r])
                            let wr = UnsafeRawPointer(w.data + r * k + c)
                            s0 += a * wr.loadUnaligned(fromByteOffset: 0, as: V.self)
                            s1 += a * wr.loadUnaligned(fromByteOffset: 64, as: V.self)
                            s2 += a * wr.loadUnaligned(fromByteOffset: 128, as: V.self)
                            s3 += a * wr.loadUnaligned(fromByteOffset: 192, as: V.self)
                        }
                        dxi.storeBytes(of: s0, toByteOffset: 0, as: V.self)
                        dxi.storeBytes(of: s1, toByteOffset: 64, as: V.self)
                        dxi.storeBytes(of: s2, toByteOffset: 128, as: V.self)
                        dxi.storeBytes(of: s3, toByteOffset: 192, as: V.self)
                    }
                } else {
                    for i in 0..<m {
                        for r in 0..<n {
                            let a = dy[i * n + r]
                            for j in c..<(c + cw) { dx[i * k + j] += a * w.data[r * k + j] }
                        }
                    }
                }
                c += cw
            }
        }
        if threads <= 1 || k < 128 {
            work(0, k)
        } else {
            let per = ((k + threads - 1) / threads + 63) / 64 * 64
            DispatchQueue.concurrentPerform(iterations: threads) { t in
                let c0 = t * per, c1 = min(k, c0 + per)
                if c0 < c1 { work(c0, c1) }
            }
        }
    }
}
