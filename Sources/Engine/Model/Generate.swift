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

/// Adds a per-sequence Δ (nil = none) at layer ℓ to each sequence's last row.
final class PerSequenceDelta: ForwardHooks {
    let layer: Int
    let deltas: [[Float]?]
    init(layer: Int, deltas: [[Float]?]) { self.layer = layer; self.deltas = deltas }
    func residual(layer: Int, _ x: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {}
    func headOutputs(layer: Int, _ o: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
        guard layer == self.layer else { return }
        for s in 0..<layout.rowCount.count {
            guard let d = deltas[s] else { continue }
            d.withUnsafeBufferPointer { Ops.add($0.baseAddress!, into: o + layout.lastRow(s) * d.count, d.count) }
        }
    }
}

extension KVCache {
    /// A copy holding the first `length` positions.
    func copy(extra: Int) -> KVCache {
        let c = KVCache(layers: layers, kvDim: kvDim, capacity: length + extra)
        for l in 0..<layers {
            c.k[l].update(from: k[l], count: length * kvDim)
            c.v[l].update(from: v[l], count: length * kvDim)
        }
        c.length = length
        return c
    }
}

extension LanguageModel {
    /// Greedy decoding of several variants of the same prompts, each variant with its own Δ at
    /// layer `layer` (nil = none). Δ reaches only each prompt's last position, so every position
    /// before it is computed once for all variants; the last token and the decoding then run for
    /// all variants in one batch. Returns one `Generation` per variant.
    public func generate(prompts: [[Int]], variants: [[Float]?], layer: Int, stop: StopRules) -> [Generation] {
        precondition(prompts.allSatisfy { !$0.isEmpty })
        let V = config.vocabSize, P = prompts.count
        // 1. the shared prefixes (all but the last token), where a prompt has one
        let withPrefix = (0..<P).filter { prompts[$0].count > 1 }
        let prefixCaches = prompts.map { model.makeCache(capacity: $0.count + stop.maxNewTokens + 1) }
        if !withPrefix.isEmpty {
            _ = model.forward(tokens: withPrefix.map { Array(prompts[$0].dropLast()) }, caches: withPrefix.map { prefixCaches[$0] })
        }
        // 2. one sequence per (variant, prompt); the first variant takes the prefix cache itself
        var caches: [KVCache] = []
        var deltas: [[Float]?] = []
        for (vi, d) in variants.enumerated() {
            for p in 0..<P {
                caches.append(vi == variants.count - 1 ? prefixCaches[p] : prefixCaches[p].copy(extra: stop.maxNewTokens + 1))
                deltas.append(d)
            }
        }
        let S = caches.count
        var logits = model.forward(tokens: (0..<S).map { [prompts[$0 % P].last!] }, caches: caches,
                                   hooks: PerSequenceDelta(layer: layer, deltas: deltas))
        // 3. decode all sequences together
        var out = [[Int]](repeating: [], count: S)
        var first = [Int](repeating: 0, count: S)
        var active = Array(0..<S)
        var step = 0
        while !active.isEmpty && stop.maxNewTokens > 0 {
            var next: [Int] = [], still: [Int] = []
            logits.withUnsafeBufferPointer { lb in
                for (i, s) in active.enumerated() {
                    let id = Ops.argmax(lb.baseAddress! + i * V, V)
                    if step == 0 { first[s] = id }
                    if stop.atEOS && (id == tokenizer.eosID || tokenizer.isControl(id)) { continue }
                    out[s].append(id)
                    if out[s].count >= stop.maxNewTokens { continue }
                    if stop.atNewline && tokenizer.bytes(of: id).contains(10) { continue }
                    next.append(id); still.append(s)
                }
            }
            active = still
            step += 1
            if active.isEmpty { break }
            logits = model.forward(tokens: next.map { [$0] }, caches: active.map { caches[$0] })
        }
        return (0..<variants.count).map { vi in
            Generation(tokens: Array(out[(vi * P)..<((vi + 1) * P)]), firstArgmax: Array(first[(vi * P)..<((vi + 1) * P)]))
        }
    }
}
