// engine-bench: the model engine's own speed (no solver). Prints one JSON object:
//   load_ms        mmap + metadata + tokenizer + dequantisation to fp32
//   prefill_tok_s  tokens/s for a batch of 10 prompts of ~8 tokens (one forward call)
//   decode_tok_s   tokens/s of batched greedy decoding (10 sequences, 32 steps)
//   decode1_tok_s  tokens/s decoding a single sequence
//   peak_rss_mb
// With --kernels: the few-row products alone instead (m = 10 rows, the solver's shape) on the
// model's own weights: µs and GFLOP/s per matrix, forward (y = x·Wᵀ) and backward (dx = dy·W),
// and `step_kernels_ms`, their sum over one solver step at layer 4 (26 layers and the head);
// where the CPU has an int8 level (AVX2, AVX-VNNI, AVX-512 VNNI or aarch64's NEON dot product;
// $INTERVENE_INT8_KERNELS lowers it), also the int8 forward and backward (`*_fwd_int8_*`, `*_bwd_int8_*`,
// the transposed copy's one-off build `*_pack_t8_ms`) and `step_kernels_int8_ms`.
// Both print the kernel levels that ran: `fp32_kernels` (avx2 | baseline; $INTERVENE_FP32_KERNELS
// lowers it) and `int8_kernels` (avx512-vnni | avx-vnni | avx2 | neon-dotprod | none;
// avx-vnni-twin, tests only).
// Usage: engine-bench [--model NAME_OR_PATH] [--threads N] [--kernels]
import Engine
import Foundation

var model = ModelRegistry.defaultModel
var threads = 1
var kernels = false
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    switch a {
    case "--model": model = args.popFirst() ?? model
    case "--threads": threads = Int(args.popFirst() ?? "") ?? threads
    case "--kernels": kernels = true
    case "-h", "--help":
        print("usage: engine-bench [--model NAME_OR_PATH] [--threads N] [--kernels]"); exit(0)
    default:
        FileHandle.standardError.write(Data("engine-bench: unknown argument \(a)\n".utf8)); exit(2)
    }
}
do {
    let t0 = Date()
    let lm = try LanguageModel(model, backend: CPUBackend(threads: threads), threads: max(threads, 2))
    let loadMs = Date().timeIntervalSince(t0) * 1000
    if kernels {
        let m = 10
        let blk = lm.model.blocks[5]
        var out: [String: Any] = ["threads": threads, "rows": m, "fp32_kernels": Fp32Kernels.current.rawValue,
                                  "int8_kernels": Int8Kernels.current.rawValue]
        var stepS = 0.0, stepInt8S = 0.0
        // (name, matrix, how many of it one layer has); the head once per step
        for (name, w, perLayer) in [("q", blk.wq, 1), ("k", blk.wk, 2), ("o", blk.wo, 1), ("gate", blk.wGate, 2),
                                    ("down", blk.wDown, 1), ("head", lm.model.output, 0)] {
            guard let q = CPUBackend.packed(w) else { continue }
            let size = m * max(w.rows, w.cols)
            let x = UnsafeMutablePointer<Float>.allocate(capacity: size), y = UnsafeMutablePointer<Float>.allocate(capacity: size)
            defer { x.deallocate(); y.deallocate() }
            for i in 0..<size { x[i] = Float(i % 97) / 97 - 0.5 }
            let reps = max(3, 20_000_000 / (w.rows * w.cols))
            func best(_ body: () -> Void) -> Double {
                var b = Double.infinity
                for _ in 0..<3 { let t = Date(); for _ in 0..<reps { body() }; b = min(b, Date().timeIntervalSince(t) / Double(reps)) }
                return b
            }
            let f = best { QuantGEMM.linear(x, m, q, y, accumulate: false, threads: threads) }
            let b = best { QuantGEMM.linearBackward(x, m, q, y, accumulate: false, threads: threads) }
            let flop = 2.0 * Double(m * w.rows * w.cols)
            out["\(name)_fwd_us"] = f * 1e6; out["\(name)_fwd_gflops"] = flop / f / 1e9
            out["\(name)_bwd_us"] = b * 1e6; out["\(name)_bwd_gflops"] = flop / b / 1e9
            let times = perLayer == 0 ? 1 : Double(perLayer * (lm.config.nLayers - 4))
            stepS += times * (f + b)
            var f8 = f, b8 = b
            if q.int8 != nil {
                f8 = best { QuantGEMM.linearInt8(x, m, cols: w.cols, [.init(q, y)], accumulate: false, threads: threads) }
                out["\(name)_fwd_int8_us"] = f8 * 1e6; out["\(name)_fwd_int8_gflops"] = flop / f8 / 1e9
            }
            let tp = Date()
            if let t = CPUBackend.transposedInt8(w) {
                out["\(name)_pack_t8_ms"] = Date().timeIntervalSince(tp) * 1000
                let ins = [QuantGEMM.TransposedInput(transposed: t, dy: x, rows: w.rows)]
                b8 = best { QuantGEMM.linearBackwardInt8(ins, m, cols: w.cols, y, accumulate: false, threads: threads) }
                out["\(name)_bwd_int8_us"] = b8 * 1e6; out["\(name)_bwd_int8_gflops"] = flop / b8 / 1e9
            }
            stepInt8S += times * (f8 + b8)
        }
        out["step_kernels_ms"] = stepS * 1000
        if QuantGEMM.int8Available { out["step_kernels_int8_ms"] = stepInt8S * 1000 }
        print(String(decoding: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), as: UTF8.self))
        exit(0)
    }
    let words = ["hot", "simultaneous", "pedestrian", "frivolous", "swift", "dense", "eternal", "decent", "escalate", "obedience"]
    let prompts = words.map { lm.tokenizer.encode("Q: What is the opposite of \($0)?\nA:") }
    let nTok = prompts.map(\.count).reduce(0, +)
    func time(_ reps: Int, _ body: () -> Void) -> Double {
        body()   // warm-up
        let t = Date()
        for _ in 0..<reps { body() }
        return Date().timeIntervalSince(t) / Double(reps)
    }
    let prefill = time(5) { _ = lm.model.forward(tokens: prompts, caches: prompts.map { lm.model.makeCache(capacity: $0.count) }) }
    let steps = 32
    let stop = StopRules(maxNewTokens: steps, atNewline: false, atEOS: false)
    let gen10 = time(2) { _ = lm.generate(prompts: prompts, stop: stop) }
    let gen1 = time(2) { _ = lm.generate(prompts: [prompts[0]], stop: stop) }
    var ru = rusage(); getrusage(RUSAGE_SELF.rawValue, &ru)
    let out: [String: Any] = [
        "model": lm.name, "threads": threads, "backend": lm.model.backend.name,
        "load_ms": loadMs, "prefill_tokens": nTok, "prefill_ms": prefill * 1000, "prefill_tok_s": Double(nTok) / prefill,
        // decoding time = generation − its prefill
        "decode_tok_s": Double(10 * steps) / max(gen10 - prefill, 1e-9),
        "decode1_tok_s": Double(steps) / max(gen1 - prefill / 10, 1e-9),
        "peak_rss_mb": Double(ru.ru_maxrss) / 1024, "fp32_kernels": Fp32Kernels.current.rawValue,
    ]
    print(String(decoding: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), as: UTF8.self))
} catch {
    FileHandle.standardError.write(Data("engine-bench: \(error)\n".utf8)); exit(1)
}
