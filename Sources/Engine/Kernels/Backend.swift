import CBLAS
import CKernels
import Foundation

/// A frozen weight matrix W [rows × cols], row-major (rows = output features, cols = input
/// features, as PyTorch's nn.Linear stores it and GGUF's dims[0] = cols says). The handle is what
/// a backend sees: a device backend keeps its own copy keyed by the handle.
public final class Weight: @unchecked Sendable {
    public let name: String
    public let rows: Int
    public let cols: Int
    public let data: UnsafeMutablePointer<Float>
    /// The original quantised blocks, when the file had them (see `QuantView`): what any backend
    /// may derive its own copies from.
    public var quant: QuantView? {
        didSet { cpu.reset() }
    }
    /// The copies a CPU backend derives from this weight (packed blocks, the int8 Wᵀ). Only
    /// `CPUBackend` builds or reads them; a device backend would keep its own, keyed by the handle.
    let cpu = CPUCopies()

    public init(name: String, rows: Int, cols: Int) {
        self.name = name; self.rows = rows; self.cols = cols
        data = .allocate(capacity: rows * cols)
    }
    public convenience init(name: String, rows: Int, cols: Int, values: [Float]) {
        precondition(values.count == rows * cols)
        self.init(name: name, rows: rows, cols: cols)
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: values.count) }
    }
    deinit { data.deallocate() }
    public var count: Int { rows * cols }
}

/// A weight's CPU-side copies, built once (under a lock) on first use or by `CPUBackend.prepare`.
final class CPUCopies: @unchecked Sendable {
    private let lock = NSLock()
    private var packedBuilt = false
    private var packedStore: PackedWeight?
    private var transposedStore: UnsafeMutableRawPointer?
    deinit { transposedStore?.deallocate() }

    func reset() {
        lock.lock(); defer { lock.unlock() }
        packedBuilt = false; packedStore = nil
        transposedStore?.deallocate(); transposedStore = nil
    }

    func packed(_ w: Weight) -> PackedWeight? {
        lock.lock(); defer { lock.unlock() }
        if !packedBuilt {
            packedStore = w.quant.map { PackedWeight($0, rows: w.rows, cols: w.cols) }
            packedBuilt = true
        }
        return packedStore
    }

    func transposedInt8(_ w: Weight) -> UnsafeMutableRawPointer? {
        guard QuantGEMM.int8Available, w.quant != nil, w.rows % 32 == 0, w.cols % 16 == 0 else { return nil }
        lock.lock(); defer { lock.unlock() }
        if let p = transposedStore { return p }
        let p = UnsafeMutableRawPointer.allocate(byteCount: ik_packed_bytes(Int32(IK_Q8), Int32(w.cols), Int32(w.rows)),
                                                 alignment: 64)
        ik_pack_transposed_q8(w.data, Int32(w.rows), Int32(w.cols), p)
        transposedStore = p
        return p
    }
}

extension Precision {
    /// Whether `int8` products can run on this CPU at all.
    public static var int8Available: Bool { QuantGEMM.int8Available }
    /// The precisions this CPU runs as named (a worker says so in its Hello).
    public static var runnable: [Precision] { allCases.filter { $0.effective == $0 } }
    /// What actually runs on this CPU: `int8` falls back to `fp32` without an int8 kernel level.
    public var effective: Precision { self == .int8 && !Self.int8Available ? .fp32 : self }

    /// The kernels that decide the numbers when this precision runs now, for the evaluation memos'
    /// keys: what runs (`effective`) and the fp32 level, whose levels round differently (at int8
    /// too: a matrix without an int8 layout runs the fp32 kernels). Every int8 level gives the same
    /// bits, so the int8 level is not named.
    public var kernels: String { "\(effective.rawValue)/fp32-\(Fp32Kernels.current.rawValue)" }

    /// What an artefact records as run on `model`: "fp32", "int8", or, when only some weight
    /// matrices have an int8 layout (Gemma's Q5_0/Q4_K/Q6_K have none), "int8 on k of n weight
    /// matrices (…), fp32 on the rest".
    public func ran(on model: LlamaModel) -> String {
        guard effective == .int8 else { return Precision.fp32.rawValue }
        let ws = model.blocks.flatMap { [$0.wq, $0.wk, $0.wv, $0.wo, $0.wGate, $0.wUp, $0.wDown] } + [model.output]
        let quantised = ws.filter { $0.quant != nil }
        if quantised.count == ws.count { return rawValue }
        if quantised.isEmpty { return Precision.fp32.rawValue }
        let kinds = Set(quantised.map { $0.name.split(separator: ".").dropLast().last.map(String.init) ?? $0.name })
        let names = kinds.sorted().joined(separator: ", ")
        return "int8 on \(quantised.count) of \(ws.count) weight matrices (\(names)), fp32 on the rest"
    }
}

/// The compute seam. The model and the intervention path call only these ops on activations
/// (row-major [rows × features] fp32 buffers); `CPUBackend` implements them with OpenBLAS and
/// vectorised Swift. A CUDA backend would implement the same ops on device-resident buffers.
public protocol Backend: AnyObject, Sendable {
    var name: String { get }
    /// Builds what this backend derives from a weight (packed copies, a device upload) now, at
    /// load, so that no solver step pays for it.
    func prepare(_ w: Weight)
    /// The runner of the single-token intervention path on this backend (see `PathRunner`).
    func makePathRunner(model: LlamaModel, layer: Int, prefill: PathPrefill) -> PathRunner
    /// CPU threads the backend may use (also for the element-wise work around its products).
    var threads: Int { get }
    /// Y[m × n] (+)= X[m × k] · Wᵀ, W [n × k].            (forward of a linear layer)
    func linear(_ x: UnsafePointer<Float>, _ m: Int, _ w: Weight, _ y: UnsafeMutablePointer<Float>, accumulate: Bool)
    /// dX[m × k] (+)= dY[m × n] · W, W [n × k].            (backward of a linear layer w.r.t. X)
    func linearBackward(_ dy: UnsafePointer<Float>, _ m: Int, _ w: Weight, _ dx: UnsafeMutablePointer<Float>, accumulate: Bool)
    /// Several products of one X, Y_p[m × n_p] (+)= X · W_pᵀ (q/k/v, gate/up): one pass where the
    /// backend can; `precision` says whether X may be rounded (see `Precision`).
    func linear(_ x: UnsafePointer<Float>, _ m: Int, _ outs: [(Weight, UnsafeMutablePointer<Float>)],
                accumulate: Bool, precision: Precision)
    /// dX[m × k] (+)= Σ_p dY_p · W_p: the backward of the fused forward above; at `int8`, dY_p
    /// is rounded as X is in the forward and W_p is read from its 8-bit transposed copy.
    func linearBackward(_ ins: [(UnsafePointer<Float>, Weight)], _ m: Int, _ dx: UnsafeMutablePointer<Float>,
                        accumulate: Bool, precision: Precision)
    /// Whether `crossEntropyHead` can run for this output matrix and row count, and is the faster
    /// way for a forward at `precision`.
    func fusesHead(_ w: Weight, rows m: Int, precision: Precision) -> Bool
    /// Next-token cross-entropy on z = H · Wᵀ and its gradient dH in one pass over W (no logits
    /// stored): loss_i = logsumexp(z_i) − z_i,t_i, dH_i = w_i (softmax(z_i) W − W_t_i).
    func crossEntropyHead(_ h: UnsafePointer<Float>, _ m: Int, _ w: Weight, targets: [Int], rowWeight: [Float],
                          loss: UnsafeMutablePointer<Float>, dh: UnsafeMutablePointer<Float>)
    /// C[m × n] = α·op(A)·op(B) + β·C, general strided matrix product (attention uses it).
    func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
              a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
              beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int)
}

/// OpenBLAS (cblas) for every product; element-wise ops live in `Ops` (plain Swift, vectorised).
public final class CPUBackend: Backend, @unchecked Sendable {
    public let name: String
    public let threads: Int

    public init(threads: Int = 1) {
        self.threads = max(1, threads)
        name = "cpu (OpenBLAS, \(self.threads) thread\(self.threads == 1 ? "" : "s"))"
    }

    /// OpenBLAS's thread count is one setting for the whole process. Constructing a backend leaves
    /// it alone; each backend sets its own count before its BLAS calls (only when it differs), so
    /// two backends with different counts in one process each run with theirs.
    private static let blasLock = NSLock()
    nonisolated(unsafe) private static var blasThreads: Int32 = -1
    private func useBLASThreads() {
        let t = Int32(threads)
        Self.blasLock.lock(); defer { Self.blasLock.unlock() }
        if Self.blasThreads != t { openblas_set_num_threads(t); Self.blasThreads = t }
    }

    /// The weight's blocks repacked for the few-row (and int8) kernels, or nil when the file did
    /// not quantise it: built once, at `prepare` (model load) or on first use.
    public static func packed(_ w: Weight) -> PackedWeight? { w.cpu.packed(w) }
    /// Wᵀ for the int8 backward (`ik_pack_transposed_q8`: each run of 32 entries of a column of W
    /// rounded to 8 bits), built from the fp32 data on first use and kept; nil when no int8 kernel level runs
    /// here, the shape does not tile (rows % 32, cols % 16), or the file did not quantise W.
    public static func transposedInt8(_ w: Weight) -> UnsafeMutableRawPointer? { w.cpu.transposedInt8(w) }

    public func prepare(_ w: Weight) { _ = Self.packed(w) }

    /// The fused product's outputs on the weights' packed copies (each looked up once), or nil when
    /// one weight has none or another width.
    static func packedOutputs(_ outs: [(Weight, UnsafeMutablePointer<Float>)], cols k: Int) -> [QuantGEMM.Output]? {
        var r: [QuantGEMM.Output] = []
        for (w, y) in outs {
            guard w.cols == k, let p = packed(w) else { return nil }
            r.append(.init(p, y))
        }
        return r
    }

    /// The same for a fused backward's inputs.
    static func packedInputs(_ ins: [(UnsafePointer<Float>, Weight)], cols k: Int) -> [QuantGEMM.Input]? {
        var r: [QuantGEMM.Input] = []
        for (dy, w) in ins {
            guard w.cols == k, let p = packed(w) else { return nil }
            r.append(.init(p, dy))
        }
        return r
    }

    /// Few rows: stream the compact blocks. Many rows: OpenBLAS on the fp32 copy. 64 covers five
    /// fused 10-prompt jobs (measured, 2 threads: 177 ms per fused step against 200 ms with
    /// OpenBLAS for those 50 rows).
    public static let smallRows = 64

    public func linear(_ x: UnsafePointer<Float>, _ m: Int, _ w: Weight, _ y: UnsafeMutablePointer<Float>, accumulate: Bool) {
        guard m > 0 else { return }
        if m <= Self.smallRows, let q = Self.packed(w) {
            QuantGEMM.linear(x, m, q, y, accumulate: accumulate, threads: threads); return
        }
        useBLASThreads()
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(w.rows), Int32(w.cols),
                    1, x, Int32(w.cols), w.data, Int32(w.cols), accumulate ? 1 : 0, y, Int32(w.rows))
    }

    public func linearBackward(_ dy: UnsafePointer<Float>, _ m: Int, _ w: Weight, _ dx: UnsafeMutablePointer<Float>, accumulate: Bool) {
        guard m > 0 else { return }
        if m <= Self.smallRows, let q = Self.packed(w) {
            QuantGEMM.linearBackward(dy, m, q, dx, accumulate: accumulate, threads: threads); return
        }
        useBLASThreads()
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(w.cols), Int32(w.rows),
                    1, dy, Int32(w.rows), w.data, Int32(w.cols), accumulate ? 1 : 0, dx, Int32(w.cols))
    }

    public func linear(_ x: UnsafePointer<Float>, _ m: Int, _ outs: [(Weight, UnsafeMutablePointer<Float>)],
                       accumulate: Bool, precision: Precision) {
        guard m > 0, !outs.isEmpty else { return }
        let k = outs[0].0.cols
        let kernelOuts = Self.packedOutputs(outs, cols: k)
        if precision == .int8, let ko = kernelOuts, ko.allSatisfy({ $0.q.int8 != nil }) {
            QuantGEMM.linearInt8(x, m, cols: k, ko, accumulate: accumulate, threads: threads)
            return
        }
        if m <= Self.smallRows, let ko = kernelOuts {
            QuantGEMM.linear(x, m, cols: k, ko, accumulate: accumulate, threads: threads)
            return
        }
        for (w, y) in outs { linear(x, m, w, y, accumulate: accumulate) }
    }

    public func linearBackward(_ ins: [(UnsafePointer<Float>, Weight)], _ m: Int, _ dx: UnsafeMutablePointer<Float>,
                               accumulate: Bool, precision: Precision) {
        guard m > 0, !ins.isEmpty else { return }
        let k = ins[0].1.cols
        // int8 at any row count: 10 fused seeds (100 rows, 2 threads) step in 164 ms against
        // 284 ms with OpenBLAS's fp32 backward
        if precision == .int8, ins.allSatisfy({ $0.1.cols == k && $0.1.quant != nil }) {
            let ts = ins.map { (Self.transposedInt8($0.1), $0.0, $0.1.rows) }
            if ts.allSatisfy({ $0.0 != nil }) {
                QuantGEMM.linearBackwardInt8(ts.map { .init(transposed: $0.0!, dy: $0.1, rows: $0.2) }, m, cols: k, dx,
                                             accumulate: accumulate, threads: threads)
                return
            }
        }
        if m <= Self.smallRows, let ki = Self.packedInputs(ins, cols: k) {
            QuantGEMM.linearBackward(ki, m, cols: k, dx, accumulate: accumulate, threads: threads)
            return
        }
        for (p, (dy, w)) in ins.enumerated() { linearBackward(dy, m, w, dx, accumulate: accumulate || p > 0) }
    }

    /// At int8, logits from the int8 kernel and then the int8 backward beat the fp32 one-pass head
    /// (measured, 10 rows, 1 thread: 3.3 + 4.3 ms against 19 ms).
    public func fusesHead(_ w: Weight, rows m: Int, precision: Precision) -> Bool {
        guard m <= Self.smallRows, let p = Self.packed(w) else { return false }
        return !(precision == .int8 && p.int8 != nil)
    }

    public func crossEntropyHead(_ h: UnsafePointer<Float>, _ m: Int, _ w: Weight, targets: [Int], rowWeight: [Float],
                                 loss: UnsafeMutablePointer<Float>, dh: UnsafeMutablePointer<Float>) {
        guard m <= Self.smallRows, let p = Self.packed(w) else {
            preconditionFailure("crossEntropyHead runs only where fusesHead says so")
        }
        QuantGEMM.crossEntropyHead(h, m, p, targets: targets, rowWeight: rowWeight, loss: loss, dh: dh,
                                   threads: threads)
    }

    public func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                     a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        useBLASThreads()
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}
