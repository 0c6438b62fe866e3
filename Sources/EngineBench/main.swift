// engine-bench: the model engine's own speed (no solver). Prints one JSON object:
//   load_ms        mmap + metadata + tokenizer + dequantisation to fp32
//   prefill_tok_s  tokens/s for a batch of 10 prompts of ~8 tokens (one forward call)
//   decode_tok_s   tokens/s of batched greedy decoding (10 sequences, 32 steps)
//   decode1_tok_s  tokens/s decoding a single sequence
//   peak_rss_mb
// Usage: engine-bench [--model NAME_OR_PATH] [--threads N]
import Engine
import Foundation

var model = ModelRegistry.defaultModel
var threads = 1
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    switch a {
    case "--model": model = args.popFirst() ?? model
    case "--threads": threads = Int(args.popFirst() ?? "") ?? threads
    case "-h", "--help":
        print("usage: engine-bench [--model NAME_OR_PATH] [--threads N]"); exit(0)
    default:
        FileHandle.standardError.write(Data("engine-bench: unknown argument \(a)\n".utf8)); exit(2)
    }
}
do {
    let t0 = Date()
    let lm = try LanguageModel(model, backend: CPUBackend(threads: threads), threads: max(threads, 2))
    let loadMs = Date().timeIntervalSince(t0) * 1000
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
        "peak_rss_mb": Double(ru.ru_maxrss) / 1024,
    ]
    print(String(decoding: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), as: UTF8.self))
} catch {
    FileHandle.standardError.write(Data("engine-bench: \(error)\n".utf8)); exit(1)
}
