import Foundation

/// When greedy decoding of a sequence stops.
public struct StopRules: Sendable {
    public var maxNewTokens: Int
    /// Stop after a token whose text contains a newline (the token is kept).
    public var atNewline: Bool
    /// Stop at EOS or any control token (not kept).
    public var atEOS: Bool
    public init(maxNewTokens: Int, atNewline: Bool = true, atEOS: Bool = true) {
        self.maxNewTokens = maxNewTokens; self.atNewline = atNewline; self.atEOS = atEOS
    }
}

public struct Generation: Sendable {
    /// New token ids per prompt (stop tokens excluded for EOS, included for newline).
    public var tokens: [[Int]]
    /// The logits of the first new token per prompt ([V] each), for first-token metrics.
    public var firstArgmax: [Int]
}

extension LanguageModel {
    /// Greedy decoding of a batch of prompts, all sequences stepping together (one GEMM per
    /// projection per step). `prefillHooks` see the prompt pass only — that is where Δ goes.
    public func generate(prompts: [[Int]], stop: StopRules, prefillHooks: ForwardHooks? = nil) -> Generation {
        let V = config.vocabSize
        let caches = prompts.map { model.makeCache(capacity: $0.count + stop.maxNewTokens + 1) }
        var logits = model.forward(tokens: prompts, caches: caches, hooks: prefillHooks)
        var out = [[Int]](repeating: [], count: prompts.count)
        var first = [Int](repeating: 0, count: prompts.count)
        var active = Array(0..<prompts.count)
        var step = 0
        while !active.isEmpty && stop.maxNewTokens > 0 {
            var next: [Int] = []
            var stillActive: [Int] = []
            logits.withUnsafeBufferPointer { lb in
                for (i, s) in active.enumerated() {
                    let id = Ops.argmax(lb.baseAddress! + i * V, V)
                    if step == 0 { first[s] = id }
                    if stop.atEOS && (id == tokenizer.eosID || tokenizer.isControl(id)) { continue }
                    out[s].append(id)
                    if out[s].count >= stop.maxNewTokens { continue }
                    if stop.atNewline && tokenizer.bytes(of: id).contains(10) { continue }
                    next.append(id); stillActive.append(s)
                }
            }
            active = stillActive
            step += 1
            if active.isEmpty { break }
            logits = model.forward(tokens: next.map { [$0] }, caches: active.map { caches[$0] })
        }
        return Generation(tokens: out, firstArgmax: first)
    }
}
