import Engine
import Foundation
import XCTest

/// The int8 kernel levels (`Int8Kernels`) against each other: every level this CPU runs must give
/// the best level's products bit for bit (the same packed weights, integer sums and float
/// operations), forward, backward and through a whole loss-and-gradient. A binary built here then
/// gives the same Δ on a CPU with only a lower level. The 256-bit AVX-VNNI kernel is checked
/// through its test-only twin (`avxVnniTwin`, the same source with the EVEX-encoded instruction)
/// where the CPU has AVX-512 VNNI, and as itself (VEX-encoded) where the CPU has AVX-VNNI. The
/// aarch64 level (`neonDotprod`) runs on no x86 CPU: `cluster/check-aarch64.sh` holds it and the x86
/// levels to one scalar C reference bit for bit, under qemu (the last test here).
final class KernelLevelTests: XCTestCase {
    override func tearDown() {
        Int8Kernels.current = Int8Kernels.cpu
        super.tearDown()
    }

    /// Every int8 kernel this CPU runs, the twin included, best first.
    func levels() throws -> [Int8Kernels] {
        let levels = Int8Kernels.testable.filter { $0 != .none }
        guard levels.count > 1 else {
            throw XCTSkip(
                "this CPU runs \(levels.count) int8 level(s) (\(Int8Kernels.cpu.rawValue)): nothing to compare")
        }
        return levels
    }

    func testSettingALevelAboveTheCPUsGivesTheCPUs() {
        // numbered above every other level: any CPU's best
        Int8Kernels.current = .neonDotprod
        XCTAssertEqual(Int8Kernels.current, Int8Kernels.cpu)
        XCTAssertFalse(Int8Kernels.neonDotprod.runsHere && Int8Kernels.avx2.runsHere, "x86 and aarch64 never mix")
        // the best x86 level (none on aarch64)
        Int8Kernels.current = .avx512vnni
        XCTAssertEqual(Int8Kernels.current, Int8Kernels.supported.first { $0 != .neonDotprod })
        // a level the CPU does not run: the best one it runs below it
        let below = Int8Kernels.supported.first { ![.neonDotprod, .avx512vnni, .avxVnni].contains($0) }
        Int8Kernels.current = .avxVnni
        XCTAssertEqual(Int8Kernels.current, Int8Kernels.avxVnni.runsHere ? .avxVnni : below)
        Int8Kernels.current = .avxVnniTwin
        let twinElse: Int8Kernels? = Int8Kernels.avxVnni.runsHere ? .avxVnni : below
        XCTAssertEqual(Int8Kernels.current, Int8Kernels.avxVnniTwin.runsHere ? .avxVnniTwin : twinElse)
        XCTAssertFalse(Int8Kernels.supported.contains(.avxVnniTwin), "the twin is for tests only")
        XCTAssertNotEqual(Int8Kernels.cpu, .avxVnniTwin)
        Int8Kernels.current = .none
        XCTAssertEqual(Int8Kernels.current, Int8Kernels.none)
        XCTAssertFalse(Precision.int8Available)
        XCTAssertEqual(Precision.int8.effective, .fp32, "no int8 level: int8 runs as fp32")
    }

    /// The real AVX-VNNI level (VEX-encoded vpdpbusd) is among the compared levels where the CPU
    /// runs it; elsewhere this says why it was not.
    func testTheVEXEncodedAVXVNNILevelIsCompared() throws {
        guard Int8Kernels.avxVnni.runsHere else {
            throw XCTSkip(
                "this CPU lacks AVX-VNNI (CPUID 7.1 EAX bit 4, `avx_vnni` in /proc/cpuinfo): the VEX-encoded "
                    + "avx-vnni level cannot run here"
                    + (Int8Kernels.avxVnniTwin.runsHere ? "; its kernel source is compared as avx-vnni-twin" : ""))
        }
        XCTAssertTrue(try levels().contains(.avxVnni))
        XCTAssertTrue(Int8Kernels.supported.contains(.avxVnni))
        Int8Kernels.current = .avxVnni
        XCTAssertEqual(Int8Kernels.current, .avxVnni)
    }

    /// The twin (the 256-bit kernel source with the EVEX encoding) is compared where the CPU runs it.
    func testTheAVXVNNITwinIsCompared() throws {
        guard Int8Kernels.avxVnniTwin.runsHere else {
            throw XCTSkip(
                "this CPU lacks AVX-512 VL + VNNI (`avx512vl`, `avx512_vnni`): the avx-vnni-twin level cannot run"
                    + (Int8Kernels.avxVnni.runsHere ? "; the 256-bit kernel is compared as avx-vnni itself" : ""))
        }
        XCTAssertTrue(try levels().contains(.avxVnniTwin))
        Int8Kernels.current = .avxVnniTwin
        XCTAssertEqual(Int8Kernels.current, .avxVnniTwin)
    }

    /// Forward products, every tile height (1…13 rows crosses both levels' tile sizes), 4- and
    /// 8-bit weights, then the backward through the transposed 8-bit copies.
    func testEveryLevelGivesTheSameProductsBitForBit() throws {
        let levels = try levels()
        let lm = try SharedModel.get()
        let b = lm.model.blocks[3]
        let forward = [[b.wq, b.wk, b.wv], [b.wDown], [lm.model.output]]
        var rng = SplitMix64(seed: 99)
        for ws in forward {
            let k = ws[0].cols
            let qs = try ws.map { try XCTUnwrap(CPUBackend.packed($0)) }
            for m in [1, 3, 4, 5, 12, 13] {
                var x = (0..<(m * k)).map { _ in Float(rng.uniform() * 4 - 2) }
                // a block of subnormals (1/d overflows): it must round to zeros at every level
                for j in 0..<32 { x[32 + j] = Float(j % 3) * 1e-40 }
                var results: [[[UInt32]]] = []
                for level in levels {
                    Int8Kernels.current = level
                    XCTAssertEqual(Int8Kernels.current, level)
                    let ptrs = ws.map { w -> UnsafeMutablePointer<Float> in
                        let p = UnsafeMutablePointer<Float>.allocate(capacity: m * w.rows)
                        p.initialize(repeating: 0.25, count: m * w.rows)
                        return p
                    }
                    defer { ptrs.forEach { $0.deallocate() } }
                    QuantGEMM.linearInt8(
                        x, m, cols: k, zip(qs, ptrs).map { .init($0, $1) }, accumulate: true, threads: 2)
                    results.append(
                        zip(ws, ptrs).map { w, p in UnsafeBufferPointer(start: p, count: m * w.rows).map(\.bitPattern) }
                    )
                }
                for (i, r) in results.enumerated().dropFirst() {
                    XCTAssertEqual(
                        r, results[0],
                        "\(ws.map(\.name)) m=\(m): \(levels[i].rawValue) differs from \(levels[0].rawValue)")
                }
            }
        }
        for ws in [[b.wq, b.wk, b.wv], [b.wGate, b.wUp], [b.wDown]] {
            let k = ws[0].cols
            for m in [1, 5, 10] {
                let dys = ws.map { w in (0..<(m * w.rows)).map { _ in Float(rng.uniform() * 2 - 1) } }
                var results: [[UInt32]] = []
                for level in levels {
                    Int8Kernels.current = level
                    let ins = try zip(ws, dys).map { w, dy in
                        QuantGEMM.TransposedInput(
                            transposed: try XCTUnwrap(CPUBackend.transposedInt8(w)),
                            dy: dy.withUnsafeBufferPointer { $0.baseAddress! }, rows: w.rows)
                    }
                    var dx = [Float](repeating: 0.5, count: m * k)
                    withExtendedLifetime(dys) {
                        dx.withUnsafeMutableBufferPointer {
                            QuantGEMM.linearBackwardInt8(ins, m, cols: k, $0.baseAddress!, accumulate: true, threads: 2)
                        }
                    }
                    results.append(dx.map(\.bitPattern))
                }
                for (i, r) in results.enumerated().dropFirst() {
                    XCTAssertEqual(r, results[0], "backward \(ws.map(\.name)) m=\(m): \(levels[i].rawValue) differs")
                }
            }
        }
    }

    /// The transposed 8-bit copy itself, packed at each level from the same fp32 W.
    func testTransposedPackingIsTheSameAtEveryLevel() throws {
        let levels = try levels()
        let rows = 64
        let cols = 48
        var rng = SplitMix64(seed: 3)
        var w = (0..<(rows * cols)).map { _ in Float(rng.uniform() * 2 - 1) }
        for c in 0..<cols { w[5 * cols + c] = 0 }  // a zero run start
        for r in 32..<64 { w[r * cols + 7] = 0 }  // an all-zero run of 32 (scale 0)
        var packs: [[UInt8]] = []
        let n = QuantGEMM.transposedBytes(rows: rows, cols: cols)
        for level in levels {
            Int8Kernels.current = level
            let p = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 64)
            defer { p.deallocate() }
            w.withUnsafeBufferPointer { QuantGEMM.packTransposedQ8($0.baseAddress!, rows: rows, cols: cols, into: p) }
            packs.append(Array(UnsafeRawBufferPointer(start: p, count: n)))
        }
        for (i, p) in packs.enumerated().dropFirst() {
            XCTAssertEqual(p, packs[0], "\(levels[i].rawValue) packs differently")
        }
    }

    /// A whole int8 loss and gradient through 26 layers: identical at every level.
    func testInt8GradientIsTheSameAtEveryLevel() throws {
        let levels = try levels()
        let lm = try SharedModel.get()
        let (prompts, targets, _) = try trainingBatch(lm)
        var rng = SplitMix64(seed: 8)
        let delta = (0..<lm.config.attnDim).map { _ in Float(rng.uniform() - 0.5) }
        var results: [(Float, [Float])] = []
        for level in levels {
            Int8Kernels.current = level
            let path = InterventionPath(model: lm, layer: 4, prompts: prompts)
            path.precision = .int8
            let r = path.lossAndGradient(delta: delta, loss: .nextToken(targets: targets))
            results.append((r.loss, r.grad))
        }
        for (i, r) in results.enumerated().dropFirst() {
            XCTAssertEqual(r.0.bitPattern, results[0].0.bitPattern, "loss at \(levels[i].rawValue)")
            XCTAssertEqual(r.1.map(\.bitPattern), results[0].1.map(\.bitPattern), "gradient at \(levels[i].rawValue)")
        }
    }

    /// `cluster/check-aarch64.sh`: every int8 level, the x86 ones natively and aarch64's
    /// `neonDotprod` under qemu (-cpu max, and -cpu cortex-a57, which lacks the dot product and
    /// must run none), held bit for bit to one scalar C reference (Tests/CKernelsCheck/int8_check.c).
    /// Skips with the script's reason where qemu or the aarch64 cross compiler is missing.
    func testEveryLevelMatchesTheScalarReferenceX86AndAarch64UnderQEMU() throws {
        let script = TestPaths.packageRoot.appendingPathComponent("cluster/check-aarch64.sh")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [script.path]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        if process.terminationStatus == 0,
            let skipped = output.split(separator: "\n").first(where: { $0.hasPrefix("skipped:") })
        {
            throw XCTSkip("cluster/check-aarch64.sh \(skipped)")
        }
        XCTAssertEqual(process.terminationStatus, 0, "cluster/check-aarch64.sh failed:\n\(output)")
        XCTAssertTrue(output.contains("check-aarch64: ok"), output)
    }
}
