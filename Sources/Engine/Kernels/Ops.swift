import Foundation

/// Element-wise kernels on row-major fp32 buffers. Reductions use SIMD16 accumulators (scalar
/// float reductions don't vectorise without reassociation).
public enum Ops {
    @inline(__always)
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD16<Float>(repeating: 0)
        var i = 0
        let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
        while i + 16 <= n {
            // a multiply then an add: `addProduct` is a call to fmaf per lane where the build
            // does not assume FMA (the package assumes no CPU; see README, "Benchmarks")
            acc += ra.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
                * rb.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            i += 16
        }
        var s = acc.sum()
        while i < n { s += a[i] * b[i]; i += 1 }
        return s
    }

    @inline(__always)
    public static func sumSquares(_ a: UnsafePointer<Float>, _ n: Int) -> Float { dot(a, a, n) }

    /// y += α·x
    @inline(__always)
    public static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        let a = SIMD16<Float>(repeating: alpha)
        let rx = UnsafeRawPointer(x), ry = UnsafeMutableRawPointer(y)
        while i + 16 <= n {
            let v = ry.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
                  + a * rx.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            ry.storeBytes(of: v, toByteOffset: 4 * i, as: SIMD16<Float>.self)
            i += 16
        }
        while i < n { y[i] += alpha * x[i]; i += 1 }
    }

    /// y[i] += x[i]
    @inline(__always)
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, _ n: Int) { axpy(1, x, y, n) }

    /// RMSNorm forward, row by row: y = x / rms(x) ⊙ w, rms(x) = sqrt(mean(x²) + ε).
    /// Writes 1/rms per row to `invRMS` when given (the backward needs it).
    public static func rmsnorm(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                               rows: Int, dim: Int, eps: Float, invRMS: UnsafeMutablePointer<Float>? = nil) {
        for r in 0..<rows {
            let xr = x + r * dim, yr = y + r * dim
            let inv = 1 / (sumSquares(xr, dim) / Float(dim) + eps).squareRoot()
            invRMS?[r] = inv
            for i in 0..<dim { yr[i] = xr[i] * inv * w[i] }
        }
    }

    /// RMSNorm backward for one row, y = x·r⊙w with r = 1/rms(x):
    ///   dx = r·(dy⊙w) − r³/D · x · Σ_j (dy⊙w)_j x_j       (accumulated into dx)
    public static func rmsnormBackward(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ dy: UnsafePointer<Float>,
                                       _ dx: UnsafeMutablePointer<Float>, rows: Int, dim: Int, invRMS: UnsafePointer<Float>) {
        for r in 0..<rows {
            let xr = x + r * dim, dyr = dy + r * dim, dxr = dx + r * dim
            let inv = invRMS[r]
            var s: Float = 0
            for i in 0..<dim { s += dyr[i] * w[i] * xr[i] }
            let c = inv * inv * inv * s / Float(dim)
            for i in 0..<dim { dxr[i] += inv * dyr[i] * w[i] - c * xr[i] }
        }
    }

    @inline(__always) public static func silu(_ x: Float) -> Float { x / (1 + expf(-x)) }

    /// SwiGLU forward: h = silu(g) ⊙ u (element-wise over n values; h may alias g).
    public static func swiglu(_ g: UnsafePointer<Float>, _ u: UnsafePointer<Float>, _ h: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        let rg = UnsafeRawPointer(g), ru = UnsafeRawPointer(u), rh = UnsafeMutableRawPointer(h)
        let one = SIMD16<Float>(repeating: 1)
        while i + 16 <= n {
            let gv = rg.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            let uv = ru.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            rh.storeBytes(of: gv / (one + exp16(-gv)) * uv, toByteOffset: 4 * i, as: SIMD16<Float>.self)
            i += 16
        }
        while i < n { h[i] = silu(g[i]) * u[i]; i += 1 }
    }

    /// SwiGLU backward: dg = dh ⊙ u ⊙ σ(g)(1 + g(1 − σ(g))), du = dh ⊙ silu(g) (dg may alias dh).
    public static func swigluBackward(_ g: UnsafePointer<Float>, _ u: UnsafePointer<Float>, _ dh: UnsafePointer<Float>,
                                      _ dg: UnsafeMutablePointer<Float>, _ du: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        let rg = UnsafeRawPointer(g), ru = UnsafeRawPointer(u), rdh = UnsafeRawPointer(dh)
        let rdg = UnsafeMutableRawPointer(dg), rdu = UnsafeMutableRawPointer(du)
        let one = SIMD16<Float>(repeating: 1)
        while i + 16 <= n {
            let gv = rg.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            let uv = ru.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            let d = rdh.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            let sg = one / (one + exp16(-gv))
            rdu.storeBytes(of: d * gv * sg, toByteOffset: 4 * i, as: SIMD16<Float>.self)
            rdg.storeBytes(of: d * uv * sg * (one + gv * (one - sg)), toByteOffset: 4 * i, as: SIMD16<Float>.self)
            i += 16
        }
        while i < n {
            let s = 1 / (1 + expf(-g[i]))
            du[i] = dh[i] * g[i] * s
            dg[i] = dh[i] * u[i] * s * (1 + g[i] * (1 - s))
            i += 1
        }
    }

    /// tanh-GELU as a logistic: 0.5·x·(1 + tanh z) = x·σ(2z), z = √(2/π)(x + 0.044715x³).
    static let geluC: Float = 0.797_884_56, geluA: Float = 0.044_715

    /// GeGLU forward: h = gelu_tanh(g) ⊙ u (element-wise over n values; h may alias g).
    public static func geglu(
        _ g: UnsafePointer<Float>, _ u: UnsafePointer<Float>, _ h: UnsafeMutablePointer<Float>, _ n: Int
    ) {
        var i = 0
        let rg = UnsafeRawPointer(g), ru = UnsafeRawPointer(u), rh = UnsafeMutableRawPointer(h)
        let one = SIMD16<Float>(repeating: 1)
        while i + 16 <= n {
            let x = rg.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            let uv = ru.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            let z2 = 2 * geluC * (x + geluA * x * x * x)
            rh.storeBytes(of: x / (one + exp16(-z2)) * uv, toByteOffset: 4 * i, as: SIMD16<Float>.self)
            i += 16
        }
        while i < n {
            let x = g[i]
            h[i] = x / (1 + expf(-2 * geluC * (x + geluA * x * x * x))) * u[i]
            i += 1
        }
    }

    /// GeGLU backward, s = σ(2z): dg = dh ⊙ u ⊙ (s + x·s(1 − s)·2z′), z′ = √(2/π)(1 + 3·0.044715x²);
    /// du = dh ⊙ gelu_tanh(g) (dg may alias dh).
    public static func gegluBackward(_ g: UnsafePointer<Float>, _ u: UnsafePointer<Float>, _ dh: UnsafePointer<Float>,
                                     _ dg: UnsafeMutablePointer<Float>, _ du: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        let rg = UnsafeRawPointer(g), ru = UnsafeRawPointer(u), rdh = UnsafeRawPointer(dh)
        let rdg = UnsafeMutableRawPointer(dg), rdu = UnsafeMutableRawPointer(du)
        let one = SIMD16<Float>(repeating: 1)
        while i + 16 <= n {
            let x = rg.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            let uv = ru.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            let d = rdh.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            let s = one / (one + exp16(-2 * geluC * (x + geluA * x * x * x)))
            let dz2 = 2 * geluC * (one + 3 * geluA * x * x)
            rdu.storeBytes(of: d * x * s, toByteOffset: 4 * i, as: SIMD16<Float>.self)
            rdg.storeBytes(of: d * uv * (s + x * s * (one - s) * dz2), toByteOffset: 4 * i, as: SIMD16<Float>.self)
            i += 16
        }
        while i < n {
            let x = g[i]
            let s = 1 / (1 + expf(-2 * geluC * (x + geluA * x * x * x)))
            let dz2 = 2 * geluC * (1 + 3 * geluA * x * x)
            du[i] = dh[i] * x * s
            dg[i] = dh[i] * u[i] * (s + x * s * (1 - s) * dz2)
            i += 1
        }
    }

    /// A post-norm's residual add, row by row: out += x / rms(x) ⊙ w (1/rms to `invRMS` when given).
    public static func rmsnormAdd(
        _ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>,
        rows: Int, dim: Int, eps: Float, invRMS: UnsafeMutablePointer<Float>? = nil
    ) {
        for r in 0..<rows {
            let xr = x + r * dim, o = out + r * dim
            let inv = 1 / (sumSquares(xr, dim) / Float(dim) + eps).squareRoot()
            invRMS?[r] = inv
            for i in 0..<dim { o[i] += xr[i] * inv * w[i] }
        }
    }

    /// e^x for 16 lanes: x = k·ln2 + r with |r| ≤ ln2/2, e^r by its degree-6 Taylor polynomial
    /// (relative error < 2e-7), 2^k put straight into the exponent bits. Integer-only rounding
    /// (the 1.5·2²³ trick), since SIMD float→int conversion is scalarised.
    @inline(__always)
    public static func exp16(_ x: SIMD16<Float>) -> SIMD16<Float> {
        let lo = SIMD16<Float>(repeating: -87.3), hi = SIMD16<Float>(repeating: 88.3)
        var v = x.replacing(with: lo, where: x .< lo)
        v = v.replacing(with: hi, where: v .> hi)
        let magic = SIMD16<Float>(repeating: 12_582_912)           // 1.5·2²³
        let t = v * 1.442_695_04 + magic                             // round(x·log2 e) in the low bits
        let k = t - magic
        let r = (v - k * 0.693_145_75) - k * 1.428_606_8e-6          // ln2 = hi + lo
        var p = r * (1.0 / 720) + (1.0 / 120)
        p = p * r + (1.0 / 24); p = p * r + (1.0 / 6); p = p * r + 0.5; p = p * r + 1; p = p * r + 1
        let ki = unsafeBitCast(t, to: SIMD16<Int32>.self) &- unsafeBitCast(magic, to: SIMD16<Int32>.self)
        let scale = unsafeBitCast((ki &+ 127) &<< 23, to: SIMD16<Float>.self)
        return p * scale
    }

    /// In-place softmax of one row; returns log Σ exp (the log-partition).
    @discardableResult
    public static func softmax(_ x: UnsafeMutablePointer<Float>, _ n: Int) -> Float {
        var m = -Float.infinity
        var i = 0
        let raw = UnsafeMutableRawPointer(x)
        if n >= 16 {
            var mv = SIMD16<Float>(repeating: -.infinity)
            while i + 16 <= n {
                let v = raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
                mv = mv.replacing(with: v, where: v .> mv)
                i += 16
            }
            m = mv.max()
        }
        while i < n { if x[i] > m { m = x[i] }; i += 1 }
        var s: Float = 0
        i = 0
        if n >= 16 {
            var acc = SIMD16<Float>(repeating: 0)
            let mv = SIMD16<Float>(repeating: m)
            while i + 16 <= n {
                let e = exp16(raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self) - mv)
                raw.storeBytes(of: e, toByteOffset: 4 * i, as: SIMD16<Float>.self)
                acc += e
                i += 16
            }
            s = acc.sum()
        }
        while i < n { let e = expf(x[i] - m); x[i] = e; s += e; i += 1 }
        let inv = 1 / s
        for j in 0..<n { x[j] *= inv }
        return m + logf(s)
    }

    /// Index of the largest value (first on ties).
    public static func argmax(_ x: UnsafePointer<Float>, _ n: Int) -> Int {
        var best = 0
        var bv = x[0]
        for i in 1..<n where x[i] > bv { bv = x[i]; best = i }
        return best
    }
}
