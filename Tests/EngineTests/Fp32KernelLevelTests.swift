import Engine
import Foundation
import XCTest

/// The fp32 kernel levels (`Fp32Kernels`: the C few-row products, AVX2 + FMA or baseline), each
/// forced in turn: every level's products against a straightforward double-precision sum over the
/// dequantised weights, within the worst-case fp32 rounding bound of the kernels' summation
/// order; then a whole model's logits and an intervention's loss and gradient across levels.
final class Fp32KernelLevelTests: XCTestCase {
    override func tearDown() {
        Fp32Kernels.current = Fp32Kernels.cpu
        super.tearDown()
    }

    /// γ(n) = n·u / (1 − n·u), u = 2⁻²⁴: the bound on the relative error of a sum of products
    /// computed with at most n roundings in sequence, relative to Σ |terms|.
    func gamma(_ n: Int) -> Double {
        let u: Double = 1 / 16_777_216
        return Double(n) * u / (1 - Double(n) * u)
    }

    /// ‖a − b‖ / ‖b‖.
    func relativeDifference(_ a: [Float], _ b: [Double]) -> Double {
        var d = 0.0, n = 0.0
        for (x, y) in zip(a, b) {
            d += (Double(x) - y) * (Double(x) - y)
            n += y * y
        }
        return (d / n).squareRoot()
    }

    /// A random GGUF weight of the given kind (2 = Q4_0, 3 = Q4_1, 8 = Q8_0) and its file, to
    /// remove afterwards.
    func randomWeight(type: UInt32, rows: Int, cols: Int, seed: UInt64) throws -> (Weight, String) {
        var rng = SplitMix64(seed: seed)
        var bytes: [UInt8] = []
        for _ in 0..<rows {
            for _ in 0..<(cols / 32) {
                bytes += GGUFBuilder.le(floatToHalf(Float(rng.uniform() * 0.1 + 0.01)))
                if type == 3 { bytes += GGUFBuilder.le(floatToHalf(Float(rng.uniform() * 0.2 - 0.1))) }
                bytes += (0..<(type == 8 ? 32 : 16)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            }
        }
        var g = GGUFBuilder()
        g.tensors.append(("w", [UInt64(cols), UInt64(rows)], type, bytes))
        let path = try g.write()
        let f = try GGUFFile(path: path)
        let info = try f.tensor("w")
        let w = Weight(name: "w\(type) \(rows)×\(cols)", rows: rows, cols: cols, values: try Dequant.tensor(f, info))
        let kind: PackedKind = type == 8 ? .q8_0 : type == 3 ? .q4_1 : .q4_0
        w.quant = QuantView(kind: kind, base: f.rawBytes(info).baseAddress!, rowBytes: bytes.count / rows, owner: f)
        return (w, path)
    }

    /// y (+)= x · Wᵀ and dx (+)= dy · W at the current level, threads 1 and 2, against double sums.
    func checkProducts(_ w: Weight, rows m: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let q = try XCTUnwrap(CPUBackend.packed(w), file: file, line: line)
        let (n, k) = (w.rows, w.cols)
        var rng = SplitMix64(seed: UInt64(m * 7 + n + k))
        let x = (0..<(m * k)).map { _ in Float(rng.uniform() * 2 - 1) }
        let dy = (0..<(m * n)).map { _ in Float(rng.uniform() * 2 - 1) }
        let level = Fp32Kernels.current.rawValue
        for threads in [1, 2] {
            var y = [Float](repeating: 0.5, count: m * n)
            QuantGEMM.linear(x, m, q, &y, accumulate: true, threads: threads)
            for i in 0..<m {
                for r in 0..<n {
                    var s = 0.5, mag = 0.5
                    for c in 0..<k {
                        let t = Double(x[i * k + c]) * Double(w.data[r * k + c])
                        s += t; mag += abs(t)
                    }
                    // per lane k/8 multiply-adds (a product rounded too at baseline), the 3-level
                    // lane tree, the accumulate: fewer than k/8 + 6 roundings in sequence
                    XCTAssertLessThanOrEqual(abs(Double(y[i * n + r]) - s), gamma(k / 8 + 6) * mag,
                                             "\(w.name) forward \(level) m=\(m) threads=\(threads) y[\(i), \(r)]",
                                             file: file, line: line)
                }
            }
            var dx = [Float](repeating: 0.25, count: m * k)
            QuantGEMM.linearBackward(dy, m, q, &dx, accumulate: true, threads: threads)
            for i in 0..<m {
                for c in 0..<k {
                    var s = 0.25, mag = 0.25
                    for r in 0..<n {
                        let t = Double(dy[i * n + r]) * Double(w.data[r * k + c])
                        s += t; mag += abs(t)
                    }
                    // one multiply-add per weight row, the threads' partials added, the accumulate
                    XCTAssertLessThanOrEqual(abs(Double(dx[i * k + c]) - s), gamma(n + 5) * mag,
                                             "\(w.name) backward \(level) m=\(m) threads=\(threads) dx[\(i), \(c)]",
                                             file: file, line: line)
                }
            }
        }
    }

    func testSettingALevelAboveTheCPUsGivesTheCPUs() {
        Fp32Kernels.current = .avx2
        XCTAssertEqual(Fp32Kernels.current, Fp32Kernels.cpu)
        Fp32Kernels.current = .baseline
        XCTAssertEqual(Fp32Kernels.current, .baseline, "every CPU runs the baseline")
        XCTAssertEqual(Fp32Kernels.supported.last, .baseline)
    }

    /// Every level this CPU runs: the model's own matrices (Q4_1 576 × 576, 192 × 576 and
    /// 576 × 1536) and small Q4_0 / Q4_1 / Q8_0 ones whose row counts are not multiples of 4 (a
    /// last strip of 1–3 rows) and whose 4-bit rows end in half a packed chunk (96 columns); 1–11
    /// activation rows cover the pairs and the lone row.
    func testEveryLevelsProductsMatchDoubleSums() throws {
        let lm = try SharedModel.get()
        let b = lm.model.blocks[3]
        var files: [String] = []
        defer { files.forEach { try? FileManager.default.removeItem(atPath: $0) } }
        var small: [Weight] = []
        for (type, rows, cols) in [(UInt32(3), 7, 96), (2, 13, 64), (8, 10, 160), (3, 4, 32)] {
            let (w, path) = try randomWeight(type: type, rows: rows, cols: cols, seed: UInt64(rows * cols))
            small.append(w); files.append(path)
        }
        for level in Fp32Kernels.supported {
            Fp32Kernels.current = level
            XCTAssertEqual(Fp32Kernels.current, level)
            for w in small {
                for m in [1, 2, 3, 4, 11] { try checkProducts(w, rows: m) }
            }
            for w in [b.wq, b.wk, b.wDown] {
                for m in [1, 3, 10] { try checkProducts(w, rows: m) }
            }
        }
    }

    /// A row's forward product is the same, bit for bit, alone (m = 1), paired (m = 2) or as the
    /// lone row after a pair (m = 3): one summation order for all, so a sequence's logits do not
    /// depend on its batch.
    func testARowsProductDoesNotDependOnItsBatch() throws {
        let lm = try SharedModel.get()
        let w = lm.model.blocks[3].wq, k = w.cols, n = w.rows
        let q = try XCTUnwrap(CPUBackend.packed(w))
        var rng = SplitMix64(seed: 12)
        let x = (0..<(3 * k)).map { _ in Float(rng.uniform() * 2 - 1) }
        for level in Fp32Kernels.supported {
            Fp32Kernels.current = level
            var batch = [Float](repeating: 0, count: 3 * n)
            QuantGEMM.linear(x, 3, q, &batch, accumulate: false, threads: 1)
            for i in 0..<3 {
                var alone = [Float](repeating: 0, count: n)
                x.withUnsafeBufferPointer {
                    QuantGEMM.linear($0.baseAddress! + i * k, 1, q, &alone, accumulate: false, threads: 1)
                }
                XCTAssertEqual(alone.map(\.bitPattern), batch[(i * n)..<((i + 1) * n)].map(\.bitPattern),
                               "row \(i) at \(level.rawValue)")
            }
        }
    }

    /// The one-pass cross-entropy head at every level against a double-precision softmax.
    func testEveryLevelsHeadMatchesDoubleSoftmax() throws {
        let lm = try SharedModel.get()
        let w = lm.model.output, V = w.rows, D = w.cols, m = 3
        var rng = SplitMix64(seed: 5)
        let h = (0..<(m * D)).map { _ in Float(rng.uniform() * 4 - 2) }
        let targets = (0..<m).map { _ in Int(rng.next() % UInt64(V)) }
        let weight: [Float] = [1, 0.5, 0.25]
        var refLoss = [Double](repeating: 0, count: m), refDh = [Double](repeating: 0, count: m * D)
        for i in 0..<m {
            var z = [Double](repeating: 0, count: V)
            for v in 0..<V {
                var s = 0.0
                for c in 0..<D { s += Double(h[i * D + c]) * Double(w.data[v * D + c]) }
                z[v] = s
            }
            let mx = z.max()!
            let e = z.map { exp($0 - mx) }
            let sum = e.reduce(0, +)
            refLoss[i] = mx + log(sum) - z[targets[i]]
            for v in 0..<V {
                let p = e[v] / sum - (v == targets[i] ? 1 : 0)
                for c in 0..<D { refDh[i * D + c] += Double(weight[i]) * p * Double(w.data[v * D + c]) }
            }
        }
        let q = try XCTUnwrap(CPUBackend.packed(w))
        for level in Fp32Kernels.supported {
            Fp32Kernels.current = level
            for threads in [1, 2] {
                var loss = [Float](repeating: 0, count: m), dh = [Float](repeating: 0, count: m * D)
                QuantGEMM.crossEntropyHead(h, m, q, targets: targets, rowWeight: weight, loss: &loss, dh: &dh,
                                           threads: threads)
                for i in 0..<m {
                    // 49,152 logits through exp (≤ 2e-7 relative) and fp32 sums: ~1e-6 seen
                    XCTAssertEqual(Double(loss[i]), refLoss[i], accuracy: 1e-5 * max(1, abs(refLoss[i])),
                                   "\(level.rawValue) threads \(threads) row \(i)")
                }
                // one thread: each G_i one sequential fp32 sum over 49,152 rows, 4.7e-5 seen at
                // both levels (2 threads: 2e-5); a wrong index or rescaling is off by O(1)
                XCTAssertLessThan(relativeDifference(dh, refDh), 2e-4, "\(level.rawValue) threads \(threads)")
            }
        }
    }

    func levels() throws -> [Fp32Kernels] {
        let levels = Fp32Kernels.supported
        guard levels.count > 1 else {
            throw XCTSkip("this CPU runs only the \(Fp32Kernels.cpu.rawValue) fp32 level: nothing to compare")
        }
        return levels
    }

    /// A whole forward (8 tokens: every product on the few-row kernels, the head included) at each
    /// level: the logits agree to fp32 rounding, and differ in their last bits (fused against
    /// separate multiply-adds), which shows the forced level ran.
    func testLogitsAgreeAcrossLevels() throws {
        let levels = try levels()
        let lm = try SharedModel.get()
        let ids = lm.tokenizer.encode("Q: What is the opposite of hot?\nA:")
        XCTAssertLessThanOrEqual(ids.count, CPUBackend.smallRows)
        var logits: [[Float]] = []
        for level in levels {
            Fp32Kernels.current = level
            logits.append(lm.model.forward(tokens: [ids], caches: [lm.model.makeCache(capacity: ids.count)]))
        }
        let V = lm.config.vocabSize
        let last = { (l: [Float]) in Array(l[(l.count - V)...]) }
        let scale = Double(last(logits[0]).map(abs).max()!)
        for (i, l) in logits.enumerated().dropFirst() {
            let diff = zip(l, logits[0]).map { abs(Double($0) - Double($1)) }.max()!
            // 30 layers of fp32 rounding differences: ~1e-5 of the largest logit seen
            XCTAssertLessThan(diff / scale, 1e-4, "\(levels[i].rawValue) against \(levels[0].rawValue)")
            XCTAssertNotEqual(l.map(\.bitPattern), logits[0].map(\.bitPattern), "\(levels[i].rawValue) did not run")
            let top = { (l: [Float]) in l.indices.max { l[$0] < l[$1] }! }
            XCTAssertEqual(top(last(l)), top(last(logits[0])), "greedy token at \(levels[i].rawValue)")
        }
    }

    /// An fp32 loss and gradient through 26 layers and the one-pass head at each level.
    func testFP32GradientAgreesAcrossLevels() throws {
        let levels = try levels()
        let lm = try SharedModel.get()
        let (prompts, targets, _) = try trainingBatch(lm)
        var rng = SplitMix64(seed: 8)
        let delta = (0..<lm.config.attnDim).map { _ in Float(rng.uniform() - 0.5) }
        var results: [(Float, [Float])] = []
        for level in levels {
            Fp32Kernels.current = level
            let path = InterventionPath(model: lm, layer: 4, prompts: prompts)
            path.precision = .fp32
            let r = path.lossAndGradient(delta: delta, loss: .nextToken(targets: targets))
            results.append((r.loss, r.grad))
        }
        for (i, r) in results.enumerated().dropFirst() {
            XCTAssertEqual(r.0, results[0].0, accuracy: 1e-5 * max(1, abs(results[0].0)), "loss at \(levels[i].rawValue)")
            // ~1e-6 seen; a wrong product is off by O(1)
            XCTAssertLessThan(relativeDifference(r.1, results[0].1.map(Double.init)), 1e-4,
                              "gradient at \(levels[i].rawValue)")
        }
    }
}
