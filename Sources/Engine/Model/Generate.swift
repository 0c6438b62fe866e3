import Foundation
import JobCore

/// When greedy decoding of a sequence stops.
public struct StopRules: Sendable {
    public var maxNewTokens: Int
    /// Per-prompt budgets (each ≤ `maxNewTokens`), or nil for `maxNewTokens` everywhere. With
    /// variants, every variant of prompt p gets budget p.
    public var perPrompt: [Int]?
    /// Stop after a token whose text contains a newline (the token is kept).
    public var atNewline: Bool
    /// Stop at EOS or any control token (not kept).
    public var atEOS: Bool
    /// Stop a sequence once this says its tokens so far decide what it is decoded for (called
    /// with the sequence's index and its new tokens, after each token is kept).
    public var decided: (@Sendable (_ sequence: Int, _ tokens: [Int]) -> Bool)? = nil
    public init(maxNewTokens: Int, atNewline: Bool = true, atEOS: Bool = true) {
        self.maxNewTokens = maxNewTokens; self.atNewline = atNewline; self.atEOS = atEOS
    }
    /// A budget per prompt; `maxNewTokens` is their maximum.
    public init(perPrompt: [Int], atNewline: Bool = true, atEOS: Bool = true) {
        self.init(maxNewTokens: perPrompt.max() ?? 0, atNewline: atNewline, atEOS: atEOS)
        self.perPrompt = perPrompt
    }
    func budget(sequence s: Int) -> Int {
        guard let p = perPrompt, !p.isEmpty else { return maxNewTokens }
        return p[s % p.count]
    }
}

public struct Generation: Sendable {
    /// New token ids per prompt (stop tokens excluded for EOS, included for newline).
    public var tokens: [[Int]]
    /// The first new token's id per prompt (the argmax of the prompt pass's logits, whatever the
    /// stop rules then did), for first-token accuracy.
    public var firstArgmax: [Int]
}

extension LanguageModel {
    /// Greedy decoding of a batch of prompts, all sequences stepping together (one GEMM per
    /// projection per step). `prefillHooks` see the prompt pass only — that is where Δ goes;
    /// `decodeHooks` every decoding step (an in-context vector's shift).
    public func generate(prompts: [[Int]], stop: StopRules, prefillHooks: ForwardHooks? = nil,
                         decodeHooks: ForwardHooks? = nil) -> Generation {
        let caches = prompts.map { model.makeCache(capacity: $0.count + stop.maxNewTokens + 1) }
        let logits = model.forward(tokens: prompts, caches: caches, hooks: prefillHooks)
        let (out, first) = decode(caches: caches, logits: logits, stop: stop, hooks: decodeHooks)
        return Generation(tokens: out, firstArgmax: first)
    }

    /// Decoding from `logits` (one row per cache, the prompt pass's last position) until each
    /// sequence meets its stop rule, each token chosen by `choose(sequence, logits, V)` (default:
    /// the argmax), each step run with `hooks`. Returns the new tokens and the first token chosen
    /// per sequence.
    func decode(caches: [KVCache], logits first: [Float], stop: StopRules, hooks: ForwardHooks? = nil,
                using backend: Backend? = nil, precision: Precision = .fp32,
                choose: (Int, UnsafePointer<Float>, Int) -> Int = { _, z, V in Ops.argmax(z, V) })
        -> (tokens: [[Int]], first: [Int])
    {
        let V = config.vocabSize, S = caches.count
        var logits = first
        var out = [[Int]](repeating: [], count: S)
        var firstIDs = [Int](repeating: 0, count: S)
        var active = Array(0..<S)
        var step = 0
        while !active.isEmpty && stop.maxNewTokens > 0 {
            var next: [Int] = [], still: [Int] = []
            logits.withUnsafeBufferPointer { lb in
                for (i, s) in active.enumerated() {
                    let id = choose(s, lb.baseAddress! + i * V, V)
                    if step == 0 { firstIDs[s] = id }
                    if stop.budget(sequence: s) <= 0 { continue }     // a zero budget: first id only
                    if stop.atEOS && (id == tokenizer.eosID || tokenizer.isControl(id)) { continue }
                    out[s].append(id)
                    if out[s].count >= stop.budget(sequence: s) { continue }
                    if stop.atNewline && tokenizer.bytes(of: id).contains(10) { continue }
                    if let d = stop.decided, d(s, out[s]) { continue }
                    next.append(id); still.append(s)
                }
            }
            active = still
            step += 1
            if active.isEmpty { break }
            let t = Date()
            logits = model.forward(tokens: next.map { [$0] }, caches: active.map { caches[$0] }, hooks: hooks,
                                   using: backend, precision: precision)
            evaluationClock.add(.decode, since: t, rows: next.count)
        }
        return (out, firstIDs)
    }
}

extension LanguageModel {
    /// Greedy decoding of several variants of the same prompts, each variant with its own Δ at
    /// layer `layer` (nil = none). Δ reaches only each prompt's last position, so every position
    /// before it is computed once for all variants; the last token and the decoding then run per
    /// variant. Returns one `Generation` per variant. `using` runs the model on
    /// another backend (a fine-tuned model's `AdaptedBackend`); `lastPosition` hooks see the
    /// prompts' last position too, after Δ (a function vector's site). `precision` as `forward`'s.
    public func generate(prompts: [[Int]], variants: [[Float]?], layer: Int, stop: StopRules,
                         using backend: Backend? = nil, lastPosition: ForwardHooks? = nil,
                         precision: Precision = .fp32) -> [Generation] {
        precondition(prompts.allSatisfy { !$0.isEmpty })
        // 1–2. every position but the prompts' last, remembered for the base model (`PrefixMemo`)
        let memoKey = backend == nil ? PrefixMemo.key(prompts, precision: precision) : nil
        let kept = memoKey.flatMap { prefixMemo[$0] }
        let prefixCaches = kept ?? promptPrefixes(prompts, extra: stop.maxNewTokens + 1, using: backend,
                                                  precision: precision)
        if let memoKey, kept == nil { prefixMemo[memoKey] = prefixCaches.map { $0.copy(extra: 0) } }
        // 3. then each variant on its own: the last token and the decoding, its prompts in one batch.
        //    A variant's answers depend on nothing else decoded beside it, so the unsteered one is
        //    exactly a zero-shot evaluation's (`evaluate` reuses those). The last variant takes
        //    the prefix caches themselves (unless the memo holds them), the others copies.
        return variants.enumerated().map { vi, delta in
            let caches = vi == variants.count - 1 && kept == nil
                ? prefixCaches : prefixCaches.map { $0.copy(extra: stop.maxNewTokens + 1) }
            let hooks = HookChain([delta.map { DeltaHook(layer: layer, delta: $0) }, lastPosition])
            let t = Date()
            let logits = model.forward(tokens: prompts.map { [$0.last!] }, caches: caches, hooks: hooks,
                                       using: backend, precision: precision)
            evaluationClock.add(.last, since: t, rows: prompts.count)
            // 4. decode the variant's sequences together
            let (out, first) = decode(caches: caches, logits: logits, stop: stop, using: backend, precision: precision)
            return Generation(tokens: out, firstArgmax: first)
        }
    }
}

extension LanguageModel {
    /// Each prompt's positions but its last in its own cache (room for `extra` more): the tokens
    /// every prompt starts with (k-shot demonstrations, "Q:") computed once into a base that every
    /// cache continues (`KVCache(continuing:)`, not copied), then each
    /// prompt's own tokens, all prompts in one batch.
    func promptPrefixes(_ prompts: [[Int]], extra: Int, using backend: Backend?, precision: Precision) -> [KVCache] {
        let t = Date()
        let shared = sharedPrefix(prompts, using: backend, precision: precision)
        // rows run: the shared positions once, then each prompt's own but its last
        defer {
            evaluationClock.add(.prompt, since: t, rows: prompts.reduce(0) { $0 + $1.count - 1 }
                                - (prompts.count - 1) * (shared?.length ?? 0))
        }
        let caches = prompts.map { p in
            shared.map { KVCache(continuing: $0, capacity: p.count - $0.length + extra) }
                ?? model.makeCache(capacity: p.count + extra)
        }
        let withRest = prompts.indices.filter { prompts[$0].count - 1 > caches[$0].length }
        if !withRest.isEmpty {
            _ = model.forward(tokens: withRest.map { Array(prompts[$0][caches[$0].length..<(prompts[$0].count - 1)]) },
                              caches: withRest.map { caches[$0] }, using: backend, precision: precision)
        }
        return caches
    }
}

/// The prompt positions (all but each prompt's last) of recent evaluation batches on the base
/// model, by the prompts' token ids and the kernels that run (`Precision.kernels`): an
/// evaluation of the same test split (a zero-shot job, then intervention jobs at other layers, λ
/// or γ) starts from copies of them, the same numbers it would compute
/// (`LanguageModel.prefixMemo`). The most recent 96 MB are kept (a k-shot batch's shared base
/// counted once); a batch over half of that is not.
public enum PrefixMemo {
    /// 96 MB of caches at most.
    static func make() -> RecentMemo<[KVCache]> {
        RecentMemo(budget: 96 << 20) { caches in
            // each cache's own rows, and each base once
            var bases = Set<ObjectIdentifier>()
            return caches.reduce(0) { sum, c in
                sum + c.ownBytes + (c.base.map { bases.insert(ObjectIdentifier($0)).inserted ? $0.ownBytes : 0 } ?? 0)
            }
        }
    }

    static func key(_ prompts: [[Int]], precision: Precision) -> String {
        let ids = prompts.map { $0.map(String.init).joined(separator: ",") }.joined(separator: ";")
        return SHA256.hex("prefix 2 \(precision.kernels) " + ids)
    }
}

extension LanguageModel {
    /// The positions every prompt starts with (each prompt keeps at least its last token for
    /// itself: k-shot demonstrations, "Q:"), computed once into a cache that each prompt's
    /// cache continues (`KVCache(continuing:)`); nil when the prompts share nothing or there is one prompt.
    func sharedPrefix(_ prompts: [[Int]], using backend: Backend? = nil, precision: Precision = .fp32) -> KVCache? {
        var common = prompts[0].count - 1
        for p in prompts.dropFirst() {
            common = min(common, p.count - 1)
            var j = 0
            while j < common && p[j] == prompts[0][j] { j += 1 }
            common = j
        }
        guard common > 0 && prompts.count > 1 else { return nil }
        let shared = model.makeCache(capacity: common)
        _ = model.forward(tokens: [Array(prompts[0][0..<common])], caches: [shared], using: backend,
                          precision: precision)
        return shared
    }
}

/// Where greedy decoding's time goes, summed since `reset()`: the prompt positions before each
/// prompt's last (`prompt`: the shared base once, then each prompt's own), the prompts' last
/// positions (`last`: once per Δ variant) and the decoding steps (`decode`), each with the rows
/// (token positions) it ran through the model. Thread-safe.
public final class EvaluationClock: @unchecked Sendable {
    public enum Part: String, CaseIterable, Sendable { case prompt, last, decode }
    public struct Reading: Sendable, Equatable { public var ms = 0.0, rows = 0 }
    private var readings: [Part: Reading] = [:]
    private let lock = NSLock()

    func add(_ part: Part, since start: Date, rows: Int) {
        let ms = Date().timeIntervalSince(start) * 1000
        lock.lock(); defer { lock.unlock() }
        readings[part, default: Reading()].ms += ms
        readings[part, default: Reading()].rows += rows
    }
    public subscript(part: Part) -> Reading {
        lock.lock(); defer { lock.unlock() }
        return readings[part] ?? Reading()
    }
    public func reset() { lock.lock(); readings = [:]; lock.unlock() }
}

/// Several hooks run in order at each site (nil entries skipped).
final class HookChain: ForwardHooks {
    let hooks: [ForwardHooks]
    init(_ hooks: [ForwardHooks?]) { self.hooks = hooks.compactMap { $0 } }
    func residual(layer: Int, _ x: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
        for h in hooks { h.residual(layer: layer, x, layout) }
    }
    func headOutputs(layer: Int, _ o: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
        for h in hooks { h.headOutputs(layer: layer, o, layout) }
    }
    var seesMLPOutputs: Bool { hooks.contains { $0.seesMLPOutputs } }
    func mlpOutput(layer: Int, _ m: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
        for h in hooks { h.mlpOutput(layer: layer, m, layout) }
    }
}
