import Engine
import Foundation
import XCTest

/// The compact-weight kernels against OpenBLAS on the fp32 copy of the same weights.
final class KernelTests: XCTestCase {
    func compare(_ w: Weight, rows m: Int, file: StaticString = #filePath, line: UInt = #line) {
        guard let q = CPUBackend.packed(w) else { return XCTFail("\(w.name) has no quantised view", file: file, line: line) }
        var rng = SplitMix64(seed: UInt64(m * 31 + w.rows))
        let x = (0..<(m * w.cols)).map { _ in Float(rng.uniform() * 2 - 1) }
        let dy = (0..<(m * w.rows)).map { _ in Float(rng.uniform() * 2 - 1) }
        let blas = CPUBackend(threads: 1)
        for threads in [1, 2] {
            var y1 = [Float](repeating: 0.5, count: m * w.rows), y2 = y1
            QuantGEMM.linear(x, m, q, &y1, accumulate: true, threads: threads)
            blas.gemm(transA: false, transB: true, m: m, n: w.rows, k: w.cols, alpha: 1, a: x, lda: w.cols, b: w.data, ldb: w.cols, beta: 1, c: &y2, ldc: w.rows)
            let e1 = zip(y1, y2).map { abs($0 - $1) / max(1, abs($1)) }.max()!
            XCTAssertLessThan(e1, 1e-4, "\(w.name) forward m=\(m) threads=\(threads)", file: file, line: line)
            var d1 = [Float](repeating: 0, count: m * w.cols), d2 = d1
            QuantGEMM.linearBackward(dy, m, q, &d1, accumulate: false, threads: threads)
            blas.gemm(transA: false, transB: false, m: m, n: w.cols, k: w.rows, alpha: 1, a: dy, lda: w.rows, b: w.data, ldb: w.cols, beta: 0, c: &d2, ldc: w.cols)
            let e2 = zip(d1, d2).map { abs($0 - $1) / max(1, abs($1)) }.max()!
            // the backward sums over all W rows: allow for the longer fp32 sum (summation order differs)
            XCTAssertLessThan(e2, 1e-4 * max(1, (Float(w.rows) / 1000).squareRoot()), "\(w.name) backward m=\(m) threads=\(threads)", file: file, line: line)
        }
    }

    func testQuantisedProductsMatchFP32() throws {
        let lm = try SharedModel.get()
        let b = lm.model.blocks[3]
        for m in [1, 2, 3, 10, 16, 50] {
            compare(b.wq, rows: m)      // Q4_1, 576 × 576
            compare(b.wDown, rows: m)   // Q4_1, 576 × 1536
            compare(b.wk, rows: m)      // Q4_1, 192 × 576
        }
        compare(lm.model.output, rows: 10)  // Q8_0 embedding, 49152 × 576
    }

    /// The repacked copy decodes to exactly the fp32 values of the dequantised file, bit for bit.
    func testPackedRowsDecodeToTheDequantisedValues() throws {
        let lm = try SharedModel.get()
        for w in [lm.model.blocks[7].wq, lm.model.blocks[7].wDown, lm.model.output] {
            let q = try XCTUnwrap(CPUBackend.packed(w))
            var row = [Float](repeating: 0, count: w.cols)
            for r in [0, 1, 17, w.rows - 1] {
                q.decode(row: r, into: &row)
                XCTAssertEqual(row.map(\.bitPattern), (0..<w.cols).map { w.data[r * w.cols + $0].bitPattern }, "\(w.name) row \(r)")
            }
        }
        // Q4_1 with an odd number of blocks per row (96 columns: one and a half packed chunks)
        var bytes: [UInt8] = [], ref: [Float] = []
        for r in 0..<5 {
            for b in 0..<3 {
                let d = Float(r + 1) * 0.013, m = -Float(b) * 0.21
                bytes += GGUFBuilder.le(floatToHalf(d)) + GGUFBuilder.le(floatToHalf(m))
                let qs = (0..<16).map { UInt8((r * 3 + b + $0) % 16) | UInt8((7 * $0 + b) % 16) << 4 }
                bytes += qs
                let dh = halfToFloat(floatToHalf(d)), mh = halfToFloat(floatToHalf(m))
                ref += qs.map { dh * Float($0 & 15) + mh } + qs.map { dh * Float($0 >> 4) + mh }
            }
        }
        var g = GGUFBuilder()
        g.tensors.append(("w", [96, 5], 3, bytes))
        let path = try g.write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let f = try GGUFFile(path: path)
        let info = try f.tensor("w")
        XCTAssertEqual(try Dequant.tensor(f, info), ref)
        let w = Weight(name: "w", rows: 5, cols: 96, values: ref)
        w.quant = QuantView(kind: .q4_1, base: f.rawBytes(info).baseAddress!, rowBytes: 60, owner: f)
        var row = [Float](repeating: 0, count: 96)
        for r in 0..<5 {
            CPUBackend.packed(w)!.decode(row: r, into: &row)
            XCTAssertEqual(row, Array(ref[(r * 96)..<((r + 1) * 96)]))
        }
        compare(w, rows: 3)
        compare(w, rows: 10)
    }

    /// The one-pass cross-entropy head (online softmax) against logits from OpenBLAS, an
    /// explicit softmax and dH = dZ · W.
    func testOnePassCrossEntropyHeadMatchesTwoPasses() throws {
        let lm = try SharedModel.get()
        let w = lm.model.output, V = w.rows, D = w.cols, m = 7
        var rng = SplitMix64(seed: 21)
        let h = (0..<(m * D)).map { _ in Float(rng.uniform() * 4 - 2) }
        let targets = (0..<m).map { _ in Int(rng.next() % UInt64(V)) }
        let weight = (0..<m).map { Float($0 + 1) / 10 }
        let blas = CPUBackend(threads: 1)
        var z = [Float](repeating: 0, count: m * V)
        blas.gemm(transA: false, transB: true, m: m, n: V, k: D, alpha: 1, a: h, lda: D, b: w.data, ldb: D, beta: 0, c: &z, ldc: V)
        var refLoss = [Float](repeating: 0, count: m)
        for i in 0..<m {
            let zt = z[i * V + targets[i]]
            refLoss[i] = z.withUnsafeMutableBufferPointer { Ops.softmax($0.baseAddress! + i * V, V) } - zt
            for v in 0..<V { z[i * V + v] *= weight[i] }
            z[i * V + targets[i]] -= weight[i]
        }
        var refDh = [Float](repeating: 0, count: m * D)
        blas.gemm(transA: false, transB: false, m: m, n: D, k: V, alpha: 1, a: z, lda: V, b: w.data, ldb: D, beta: 0, c: &refDh, ldc: D)
        for threads in [1, 2] {
            var loss = [Float](repeating: 0, count: m), dh = [Float](repeating: 0, count: m * D)
            QuantGEMM.crossEntropyHead(h, m, try XCTUnwrap(CPUBackend.packed(w)), targets: targets, rowWeight: weight,
                                       loss: &loss, dh: &dh, threads: threads)
            for i in 0..<m { XCTAssertEqual(loss[i], refLoss[i], accuracy: 1e-4 * max(1, abs(refLoss[i])), "row \(i) threads \(threads)") }
            let norm = refDh.map { $0 * $0 }.reduce(0, +).squareRoot()
            let diff = zip(dh, refDh).map { ($0 - $1) * ($0 - $1) }.reduce(0, +).squareRoot()
            // 49,152-term fp32 sums in another order (and rescaled): ~4e-5 observed; a wrong
            // formula is off by O(1)
            XCTAssertLessThan(diff / norm, 2e-4, "threads \(threads)")
        }
    }

    /// The int8 product (`Precision.int8`) on x whose every block of 32 is integers in [−127, 127]
    /// reaching ±127: the rounding to int8 is then exact (scale 1), so the product must equal the
    /// fp32 one up to fp32 summation order. Then on random x: the rounding's error is small.
    func compareInt8(_ ws: [Weight], rows m: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        guard QuantGEMM.int8Available else { throw XCTSkip(TestPaths.noInt8) }
        let k = ws[0].cols
        let qs = try ws.map { try XCTUnwrap(CPUBackend.packed($0)?.int8 != nil ? CPUBackend.packed($0) : nil, "\($0.name) has no int8 copy", file: file, line: line) }
        var rng = SplitMix64(seed: UInt64(m * 131 + k))
        var xi = (0..<(m * k)).map { _ in Float(Int(rng.next() % 255) - 127) }
        for b in 0..<(m * k / 32) { xi[32 * b + Int(rng.next() % 32)] = rng.next() % 2 == 0 ? 127 : -127 }
        let xr = (0..<(m * k)).map { _ in Float(rng.uniform() * 2 - 1) }
        let blas = CPUBackend(threads: 1)
        for (x, exact) in [(xi, true), (xr, false)] {
            for threads in [1, 2] {
                var ys = ws.map { [Float](repeating: 0.25, count: m * $0.rows) }
                var refs = ys
                for (j, w) in ws.enumerated() {
                    blas.gemm(transA: false, transB: true, m: m, n: w.rows, k: k, alpha: 1, a: x, lda: k, b: w.data, ldb: k,
                              beta: 1, c: &refs[j], ldc: w.rows)
                }
                let ptrs = ys.map { y -> UnsafeMutablePointer<Float> in
                    let p = UnsafeMutablePointer<Float>.allocate(capacity: y.count); p.update(from: y, count: y.count); return p }
                defer { ptrs.forEach { $0.deallocate() } }
                QuantGEMM.linearInt8(x, m, cols: k, zip(qs, ptrs).map { .init($0, $1) }, accumulate: true, threads: threads)
                for j in ws.indices { ys[j] = Array(UnsafeBufferPointer(start: ptrs[j], count: ys[j].count)) }
                for (j, w) in ws.enumerated() {
                    let scale = refs[j].map(abs).max()!
                    let err = zip(ys[j], refs[j]).map { abs($0 - $1) }.max()! / scale
                    // exact inputs: fp32 rounding only; random inputs: int8 rounding, ~0.4% of a block's max per input
                    XCTAssertLessThan(err, exact ? 2e-6 : 1e-2, "\(w.name) m=\(m) threads=\(threads) exact=\(exact)", file: file, line: line)
                }
            }
        }
    }

    /// At every int8 level this CPU runs, the test-only twin included (`KernelLevelTests` checks
    /// the levels agree bit for bit).
    func testInt8ProductsMatchFP32() throws {
        defer { Int8Kernels.current = Int8Kernels.cpu }
        for level in Int8Kernels.testable where level != .none {
            Int8Kernels.current = level
            try int8ProductsMatchFP32()
        }
    }

    func int8ProductsMatchFP32() throws {
        let lm = try SharedModel.get()
        let b = lm.model.blocks[3]
        for m in [1, 10, 13, 25] {
            try compareInt8([b.wq, b.wk, b.wv], rows: m)      // fused, Q4_1 576 × 576 and 192 × 576
            try compareInt8([b.wDown], rows: m)               // Q4_1, 576 × 1536
        }
        try compareInt8([lm.model.output], rows: 10)           // Q8_0 embedding, 49152 × 576
    }

    func testInt8BackwardMatchesFP32() throws {
        defer { Int8Kernels.current = Int8Kernels.cpu }
        for level in Int8Kernels.testable where level != .none {
            Int8Kernels.current = level
            try int8BackwardMatchesFP32()
        }
    }

    func int8BackwardMatchesFP32() throws {
        guard QuantGEMM.int8Available else { throw XCTSkip(TestPaths.noInt8) }
        let (w, file) = try integerQ8Weight(rows: 64, cols: 96, seed: 17)
        defer { try? FileManager.default.removeItem(atPath: file) }
        for m in [1, 10, 13] { try compareInt8Backward([w], rows: m, exactWeights: true) }
        let lm = try SharedModel.get()
        let b = lm.model.blocks[3]
        for m in [1, 10, 13, 70] {
            try compareInt8Backward([b.wq, b.wk, b.wv], rows: m)  // fused, Q4_1 576 × 576 and 192 × 576
            try compareInt8Backward([b.wGate, b.wUp], rows: m)    // fused, Q4_1 1536 × 576
            try compareInt8Backward([b.wDown], rows: m)           // Q4_1 576 × 1536: dx 1536 wide
        }
        try compareInt8Backward([lm.model.output], rows: 10)      // Q8_0 embedding: 49,152-term sums
    }

    /// A Q8_0 weight with d = 1 and integer entries in [−127, 127] whose every run of 32 down a
    /// column reaches ±127: rounding Wᵀ to int8 per such run is exact (scale 1).
    func integerQ8Weight(rows: Int, cols: Int, seed: UInt64) throws -> (Weight, String) {
        var rng = SplitMix64(seed: seed)
        var q = (0..<(rows * cols)).map { _ in Int8(Int(rng.next() % 255) - 127) }
        for b in 0..<(rows / 32) {
            for c in 0..<cols { q[(32 * b + Int(rng.next() % 32)) * cols + c] = rng.next() % 2 == 0 ? 127 : -127 }
        }
        var bytes: [UInt8] = []
        for r in 0..<rows {
            for b in 0..<(cols / 32) { bytes += GGUFBuilder.le(floatToHalf(1)) + (0..<32).map { UInt8(bitPattern: q[r * cols + 32 * b + $0]) } }
        }
        var g = GGUFBuilder()
        g.tensors.append(("w", [UInt64(cols), UInt64(rows)], 8, bytes))
        let path = try g.write()
        let f = try GGUFFile(path: path)
        let info = try f.tensor("w")
        let w = Weight(name: "w", rows: rows, cols: cols, values: try Dequant.tensor(f, info))
        XCTAssertEqual(Array(UnsafeBufferPointer(start: w.data, count: rows * cols)), q.map(Float.init))
        w.quant = QuantView(kind: .q8_0, base: f.rawBytes(info).baseAddress!, rowBytes: cols / 32 * 34, owner: f)
        return (w, path)
    }

    /// The int8 backward, dx (+)= Σ_p dy_p · W_p with dy_p rounded to int8 per block of 32 and
    /// W_pᵀ per run of 32 rows: on integer dy reaching ±127 per block (and, with `exactWeights`,
    /// weights that round exactly too) it must equal the fp32 product up to summation order; on
    /// random dy the rounding error stays small.
    func compareInt8Backward(_ ws: [Weight], rows m: Int, exactWeights: Bool = false,
                             file: StaticString = #filePath, line: UInt = #line) throws {
        guard QuantGEMM.int8Available else { throw XCTSkip(TestPaths.noInt8) }
        let k = ws[0].cols
        XCTAssertTrue(ws.allSatisfy { CPUBackend.transposedInt8($0) != nil }, "no transposed int8 copy", file: file, line: line)
        var rng = SplitMix64(seed: UInt64(m * 71 + k))
        let blas = CPUBackend(threads: 1)
        for exactInputs in [true, false] {
            let dys: [[Float]] = ws.map { w in
                if !exactInputs { return (0..<(m * w.rows)).map { _ in Float(rng.uniform() * 2 - 1) } }
                var d = (0..<(m * w.rows)).map { _ in Float(Int(rng.next() % 255) - 127) }
                for b in 0..<(m * w.rows / 32) { d[32 * b + Int(rng.next() % 32)] = rng.next() % 2 == 0 ? 127 : -127 }
                return d
            }
            var ref = [Float](repeating: 0.25, count: m * k)
            for (w, dy) in zip(ws, dys) {
                blas.gemm(transA: false, transB: false, m: m, n: k, k: w.rows, alpha: 1, a: dy, lda: w.rows, b: w.data, ldb: k,
                          beta: 1, c: &ref, ldc: k)
            }
            let scale = ref.map(abs).max()!
            for threads in [1, 2] {
                for precision in [Precision.int8, .fp32] {
                    var dx = [Float](repeating: 0.25, count: m * k)
                    let ptrs = dys.map { d -> UnsafeMutablePointer<Float> in
                        let p = UnsafeMutablePointer<Float>.allocate(capacity: d.count); p.update(from: d, count: d.count); return p }
                    defer { ptrs.forEach { $0.deallocate() } }
                    CPUBackend(threads: threads).linearBackward(zip(ptrs, ws).map { (UnsafePointer($0), $1) }, m, &dx,
                                                                accumulate: true, precision: precision)
                    let err = zip(dx, ref).map { abs($0 - $1) }.max()! / scale
                    // fp32, or nothing rounded: summation order only (up to 49,152 terms: ≤ 6e-6
                    // seen; 0 for the integer weight). Rounded inputs: ≤ 5e-3 seen; rounded
                    // Q4_1 weights (4 bits to 8 along the other axis): ≤ 8e-3 seen. A wrong
                    // index or scale is off by O(1)
                    let exact = precision == .fp32 || (exactInputs && exactWeights)
                    // random inputs at int8 must show rounding (else the fp32 fallback ran)
                    if precision == .int8 && !exactInputs { XCTAssertGreaterThan(err, 1e-5, "int8 did not run", file: file, line: line) }
                    XCTAssertLessThan(err, exact ? 2e-5 : 2e-2, "\(ws.map(\.name)) m=\(m) threads=\(threads) \(precision) exactInputs=\(exactInputs)",
                                      file: file, line: line)
                }
            }
        }
    }

    func testQ4_0BlocksThroughTheKernel() throws {
        // a 7 × 64 Q4_0 weight built by hand (d = 0.5, nibble pattern per row); 16 × 64 for int8
        for rows in [7, 16] { try q4_0(rows: rows) }
    }

    func q4_0(rows: Int) throws {
        var bytes: [UInt8] = []
        var ref: [Float] = []
        for r in 0..<rows {
            for _ in 0..<2 {
                bytes += GGUFBuilder.le(floatToHalf(0.5))
                let qs = (0..<16).map { UInt8((r + $0) % 16) | UInt8((15 - $0) % 16) << 4 }
                bytes += qs
                ref += qs.map { Float(Int($0 & 15) - 8) * 0.5 } + qs.map { Float(Int($0 >> 4) - 8) * 0.5 }
            }
        }
        var g = GGUFBuilder()
        g.tensors.append(("w", [64, UInt64(rows)], 2, bytes))
        let path = try g.write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let f = try GGUFFile(path: path)
        let info = try f.tensor("w")
        XCTAssertEqual(try Dequant.tensor(f, info), ref)
        let w = Weight(name: "w", rows: rows, cols: 64, values: ref)
        w.quant = QuantView(kind: .q4_0, base: f.rawBytes(info).baseAddress!, rowBytes: 36, owner: f)
        compare(w, rows: 3)
        if rows % 16 == 0 { try compareInt8([w], rows: 3) }
    }
}

final class OpsTests: XCTestCase {
    func testVectorExpAndSoftmax() {
        var worst: Float = 0
        var x: Float = -87
        while x < 88 {
            let v = SIMD16<Float>((0..<16).map { x + Float($0) * 0.0137 })
            let e = Ops.exp16(v)
            for l in 0..<16 { worst = max(worst, abs(e[l] - expf(v[l])) / expf(v[l])) }
            x += 0.219
        }
        XCTAssertLessThan(worst, 1e-6)
        var rng = SplitMix64(seed: 3)
        var row = (0..<1000).map { _ in Float(rng.uniform() * 40 - 20) }
        let ref = row.map { expf($0 - row.max()!) }
        let lse = Ops.softmax(&row, row.count)
        let z = ref.reduce(0, +)
        for (a, b) in zip(row, ref) { XCTAssertEqual(a, b / z, accuracy: 1e-6 * max(1, b / z)) }
        XCTAssertEqual(row.reduce(0, +), 1, accuracy: 1e-5)
        XCTAssertFalse(lse.isNaN)
    }

    func testSwiGLUVectorPathMatchesScalarFormula() {
        var rng = SplitMix64(seed: 9)
        let n = 16 * 7 + 5
        let g = (0..<n).map { _ in Float(rng.uniform() * 60 - 30) }
        let u = (0..<n).map { _ in Float(rng.uniform() * 4 - 2) }
        let dh = (0..<n).map { _ in Float(rng.uniform() * 2 - 1) }
        var h = [Float](repeating: 0, count: n), dg = h, du = h
        Ops.swiglu(g, u, &h, n)
        Ops.swigluBackward(g, u, dh, &dg, &du, n)
        for i in 0..<n {
            let s = 1 / (1 + expf(-g[i]))
            XCTAssertEqual(h[i], g[i] * s * u[i], accuracy: 1e-5 * max(1, abs(h[i])))
            XCTAssertEqual(du[i], dh[i] * g[i] * s, accuracy: 1e-5 * max(1, abs(du[i])))
            XCTAssertEqual(dg[i], dh[i] * u[i] * s * (1 + g[i] * (1 - s)), accuracy: 1e-5 * max(1, abs(dg[i])))
        }
    }
}
