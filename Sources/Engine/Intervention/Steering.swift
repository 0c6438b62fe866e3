import Foundation
import JobCore

/// Where a Δ is added while generating with it. A Δ is learned at the prompt's last position
/// (`last`, the default and what its artefact records); `all` adds it at every prompt position and
/// every generated one; `generated` only where generated tokens are read back in;
/// `last+generated` at the prompt's last position and every generated one.
public enum DeltaPositions: String, NamedChoice, CaseIterable {
    case last
    case all
    case generated
    case lastAndGenerated = "last+generated"

    /// In the prompt pass: which rows of sequence `s` get Δ.
    func promptRows(_ layout: BatchLayout, _ s: Int) -> Range<Int> {
        switch self {
        case .last, .lastAndGenerated: return layout.lastRow(s)..<(layout.lastRow(s) + 1)
        case .all: return layout.rowStart[s]..<(layout.rowStart[s] + layout.rowCount[s])
        case .generated: return 0..<0
        }
    }
    /// In a decoding step (one generated token per sequence).
    var atGeneratedTokens: Bool { self != .last }
}

/// Learned Δs applied at use time: every artefact checked against the model, those for the same
/// layer summed (composition at use time), each sum added at its own layer, scaled by the initialiser's `scale`.
public struct Steering: Sendable {
    /// Δ at the head outputs (o_proj's input) of each layer, at `positions`.
    public var byLayer: [Int: [Float]]
    public var positions: DeltaPositions
    /// Vectors added to the residual stream leaving block ℓ, at every position (llama.cpp's
    /// control vectors; see `asControlVector`).
    public var blockOutputs: [Int: [Float]] = [:]

    public struct LoadError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Checks each artefact against `lm`: its model fingerprint (sha256), layer, head count and
    /// head size must be the model's, and its position policy one this build applies. The errors
    /// name the artefact's value and the model's.
    public init(
        artefacts: [(name: String, artefact: DeltaArtefact)], model lm: LanguageModel, scale: Float = 1,
        positions: DeltaPositions = .last
    ) throws {
        let cfg = lm.config
        let sha = try lm.sha256()
        var sums: [Int: [Float]] = [:]
        for (name, a) in artefacts {
            let m = a.metadata
            func fail(_ what: String) -> LoadError { LoadError(description: "\(name): \(what)") }
            if !m.modelSHA256.isEmpty && m.modelSHA256 != sha {
                throw fail(
                    "learned on model \(m.model) (sha256 \(m.modelSHA256.prefix(12))…), but the model loaded is "
                        + "\(lm.name) (sha256 \(sha.prefix(12))…); load that model with --model, or learn Δ on this one"
                )
            }
            guard m.layer >= 0 && m.layer < cfg.nLayers else {
                throw fail("layer \(m.layer) is outside this model's 0…\(cfg.nLayers - 1)")
            }
            guard m.heads == cfg.nHeads && m.headDim == cfg.headDim else {
                throw fail(
                    "Δ is for \(m.heads) heads × \(m.headDim), this model has \(cfg.nHeads) heads × \(cfg.headDim)")
            }
            guard a.delta.count == cfg.attnDim else {
                throw fail("Δ has \(a.delta.count) values, this model's heads need \(cfg.attnDim)")
            }
            guard DeltaPositions(rawValue: m.positions) == .last else {
                throw fail("Δ was learned at positions \"\(m.positions)\"; this build learns and records only \"last\"")
            }
            var s = sums[m.layer] ?? [Float](repeating: 0, count: cfg.attnDim)
            for i in 0..<s.count { s[i] += a.delta[i] }
            sums[m.layer] = s
        }
        byLayer = sums.mapValues { $0.map { $0 * scale } }
        self.positions = positions
    }

    /// What a llama.cpp control vector can express of this steering: W_O·Δ added to the residual
    /// stream leaving block ℓ, at every position (it has no o_proj-input site and no position
    /// policy). Exact for `positions: .all` up to where the MLP of block ℓ sees the change: there
    /// it does not.
    public func asControlVector(_ lm: LanguageModel) -> Steering {
        var s = self
        s.byLayer = [:]
        s.positions = .all
        s.blockOutputs = Dictionary(
            uniqueKeysWithValues: byLayer.map { ($0.key, DeltaExport.outputProjection(lm, layer: $0.key, $0.value)) })
        return s
    }

    /// The hooks of a prompt pass (for a forward of whole prompts, as `worker inspect` runs).
    public var promptHooks: ForwardHooks { hook(decoding: false) }

    /// The hooks of one prompt pass (`decoding` false) or one decoding step.
    func hook(decoding: Bool) -> SteeringHook { SteeringHook(steering: self, decoding: decoding) }
}

final class SteeringHook: ForwardHooks {
    let steering: Steering
    let decoding: Bool
    init(steering: Steering, decoding: Bool) {
        self.steering = steering
        self.decoding = decoding
    }
    func residual(layer: Int, _ x: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
        // the stream entering block l is the one leaving block l − 1
        guard let v = steering.blockOutputs[layer - 1] else { return }
        for r in 0..<layout.totalRows {
            v.withUnsafeBufferPointer { Ops.add($0.baseAddress!, into: x + r * v.count, v.count) }
        }
    }
    func headOutputs(layer: Int, _ o: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
        guard let d = steering.byLayer[layer] else { return }
        for s in 0..<layout.rowCount.count {
            let rows =
                decoding
                ? (steering.positions.atGeneratedTokens
                    ? layout.rowStart[s]..<(layout.rowStart[s] + layout.rowCount[s]) : 0..<0)
                : steering.positions.promptRows(layout, s)
            for r in rows { d.withUnsafeBufferPointer { Ops.add($0.baseAddress!, into: o + r * d.count, d.count) } }
        }
    }
}

/// How the next token is chosen: greedy (temperature 0) or sampled from the softmax at
/// `temperature`, restricted to the smallest set of tokens whose probability reaches `topP`;
/// seeded, so a run repeats exactly.
public struct Sampling: Sendable {
    public var temperature: Float
    public var topP: Float
    public var seed: UInt64
    public init(temperature: Float = 0, topP: Float = 1, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topP = topP
        self.seed = seed
    }
    public static let greedy = Sampling()

    /// One token from the logits `z[0..<V]`.
    func choose(_ z: UnsafePointer<Float>, _ V: Int, _ rng: inout SplitMix64) -> Int {
        if temperature <= 0 { return Ops.argmax(z, V) }
        var maxZ = -Float.infinity
        for i in 0..<V { maxZ = max(maxZ, z[i]) }
        var p = [Float](repeating: 0, count: V)
        var sum: Float = 0
        for i in 0..<V {
            p[i] = expf((z[i] - maxZ) / temperature)
            sum += p[i]
        }
        var order = Array(0..<V)
        var mass: Float = 1
        if topP < 1 {
            order.sort { p[$0] > p[$1] || (p[$0] == p[$1] && $0 < $1) }
            var acc: Float = 0
            var keep = 0
            while keep < V {
                acc += p[order[keep]] / sum
                keep += 1
                if acc >= topP { break }
            }
            order = Array(order.prefix(keep))
            mass = acc
        }
        var u = Float(rng.uniform()) * mass * sum
        for i in order {
            u -= p[i]
            if u < 0 { return i }
        }
        return order.last!
    }
}

extension LanguageModel {
    /// Generates from each prompt with `steering` (nil = none) added as its position policy says,
    /// choosing tokens by `sampling`; sequence i draws from its own generator (seed + i), so its
    /// text does not depend on the other prompts of the batch.
    public func generate(prompts: [[Int]], steering: Steering?, sampling: Sampling, stop: StopRules) -> Generation {
        let caches = prompts.map { model.makeCache(capacity: $0.count + stop.maxNewTokens + 1) }
        let logits = model.forward(tokens: prompts, caches: caches, hooks: steering?.hook(decoding: false))
        var rngs = prompts.indices.map { SplitMix64(seed: sampling.seed &+ UInt64($0)) }
        let (out, first) = decode(
            caches: caches, logits: logits, stop: stop, hooks: steering?.hook(decoding: true)
        ) { s, z, V in sampling.choose(z, V, &rngs[s]) }
        return Generation(tokens: out, firstArgmax: first)
    }
}
