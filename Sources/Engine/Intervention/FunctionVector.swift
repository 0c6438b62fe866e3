import Foundation

/// A function vector (Todd et al. 2023, "Function Vectors in Large Language Models") built from a
/// job's N training pairs only, on the model as it is:
///
/// 1. ICL prompts: clean prompt i asks training pair i after the other N−1 pairs as demonstrations
///    (in an order drawn from the seed); its corrupted twin shows the same demonstrations with
///    their outputs shuffled among them (no output left in place), so the task is no longer shown.
/// 2. ā[ℓ,h]: head h's output at layer ℓ (its slice of o_proj's input) at the last position,
///    averaged over the clean prompts.                                         `headMeans`
/// 3. AIE[ℓ,h]: over the corrupted prompts, the mean increase of p(first token of the query's
///    answer) when head (ℓ,h)'s output at the last position is replaced by ā[ℓ,h]. A replacement
///    is the Δ "ā − a in h's slot, zero elsewhere", so each head costs one last-token forward from
///    ℓ on the intervention path (the prompts prefilled once for every layer). `indirectEffects`
/// 4. FV = Σ over the top-k heads by AIE of W_O^ℓ·(ā[ℓ,h] in h's slot): a [D] vector, added to the
///    residual stream entering block `layer` at the prompt's last position (`ResidualAddHook`).
///                                                                             `vector`
public struct FunctionVector: Sendable {
    /// The heads' means and effects it was built from.
    public var ranking: Ranking
    /// The heads summed, by decreasing AIE.
    public var heads: [(layer: Int, head: Int)]
    /// FV, [D].
    public var vector: [Float]

    /// The clean and corrupted ICL prompts of `train` (N ≥ 3: with one demonstration there is
    /// nothing to shuffle) and each prompt's expected answer.
    public static func prompts(train: [TaskPair], format: PromptFormat, seed: Int)
        -> (clean: [String], corrupted: [String], answers: [String])
    {
        precondition(train.count >= 3, "function vectors need at least 3 training pairs")
        var rng = SplitMix64(seed: 0xF0_7EC7 &+ UInt64(truncatingIfNeeded: seed))
        var clean: [String] = [], corrupted: [String] = []
        for (i, query) in train.enumerated() {
            var demos = train.enumerated().filter { $0.offset != i }.map(\.element)
            shuffle(&demos, &rng)
            clean.append(format.fewShot(demos, query.input))
            // a derangement of the outputs: a random cyclic shift of a shuffled order moves every one
            let outs = demos.map(\.output)
            let shift = 1 + Int(rng.next() % UInt64(max(outs.count - 1, 1)))
            let wrong = demos.enumerated().map { j, d in
                TaskPair(input: d.input, output: outs.count > 1 ? outs[(j + shift) % outs.count] : d.output)
            }
            corrupted.append(format.fewShot(wrong, query.input))
        }
        return (clean, corrupted, train.map(\.output))
    }

    static func shuffle<T>(_ a: inout [T], _ rng: inout SplitMix64) {
        guard a.count > 1 else { return }
        for i in stride(from: a.count - 1, to: 0, by: -1) { a.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
    }

    /// ā[ℓ] = mean over `prompts` of layer ℓ's head outputs at the last position, [L][H·d].
    public static func headMeans(_ lm: LanguageModel, prompts: [[Int]]) -> [[Float]] {
        headMeans(lm, prompts: prompts, answers: nil).means
    }

    /// The same, and the mean p(answer) at the last position where `answers` are given.
    static func headMeans(_ lm: LanguageModel, prompts: [[Int]], answers: [Int]?) -> (means: [[Float]], p: Float) {
        let cfg = lm.config
        let capture = LastRowCapture(layers: cfg.nLayers, D: cfg.dModel, A: cfg.attnDim, rows: prompts.count)
        let logits = lm.model.forward(
            tokens: prompts, caches: prompts.map { lm.model.makeCache(capacity: $0.count) }, hooks: capture)
        let n = Float(prompts.count)
        let p = answers.map { a in
            a.indices.reduce(0) { $0 + probability(of: a[$1], logits: logits, row: $1, V: cfg.vocabSize) } / n
        } ?? 0
        return (capture.heads.map { h in
            (0..<cfg.attnDim).map { c in stride(from: c, to: h.count, by: cfg.attnDim).reduce(0) { $0 + h[$1] } / n }
        }, p)
    }

    /// AIE[ℓ × H + h] over the corrupted `prompts` (token ids) with `answers` (each answer's first
    /// token id): mean over prompts of p(answer | head (ℓ,h) at the last position := means[ℓ]'s
    /// slice) − p(answer | as is), for the heads of `layers` (nil: all; the others' stay 0).
    /// `progress(layers done, layers)`.
    public static func indirectEffects(
        _ lm: LanguageModel, prompts: [[Int]], answers: [Int], means: [[Float]], layers: [Int]? = nil,
        precision: Precision = .fp32, progress: ((Int, Int) -> Void)? = nil
    ) -> [Float] {
        indirectEffects(lm, prompts: prompts, answers: answers, means: means, layers: layers, precision: precision,
                        progress: progress).effects
    }

    /// The same, and the mean p(answer) as the prompts are.
    static func indirectEffects(
        _ lm: LanguageModel, prompts: [[Int]], answers: [Int], means: [[Float]], layers: [Int]?,
        precision: Precision, progress: ((Int, Int) -> Void)?
    ) -> (effects: [Float], p: Float) {
        let cfg = lm.config
        let N = prompts.count, L = cfg.nLayers, H = cfg.nHeads, d = cfg.headDim, A = cfg.attnDim, V = cfg.vocabSize
        precondition(answers.count == N && means.count == L)
        // one prefill for every layer: K/V of the earlier positions, and per layer the last
        // position's residual input and head outputs
        let caches = prompts.map { lm.model.makeCache(capacity: $0.count) }
        let capture = LastRowCapture(layers: L, D: cfg.dModel, A: A, rows: N)
        let logits = lm.model.forward(tokens: prompts, caches: caches, hooks: capture)
        let base = (0..<N).map { i in Self.probability(of: answers[i], logits: logits, row: i, V: V) }
        var effects = [Float](repeating: 0, count: L * H)
        let weight = [Float](repeating: 1 / Float(N), count: N)
        var perRow = [Float](repeating: 0, count: N)
        // p(answer) with the heads as they are, from the same runner as the replacements (so that
        // the two sides of each difference round alike)
        func pAnswer(_ runner: PathRunner, _ deltas: [Float]) -> [Float] {
            deltas.withUnsafeBufferPointer { dp in
                perRow.withUnsafeMutableBufferPointer {
                    runner.step(deltas: dp.baseAddress!, loss: .nextToken(targets: answers), rowWeight: weight,
                                perRow: $0.baseAddress!, grad: nil)
                }
            }
            return perRow.map { expf(-$0) }  // the loss is −log p(answer)
        }
        let todo = layers ?? Array(0..<L)
        for (done, l) in todo.enumerated() {
            let runner = lm.model.backend.makePathRunner(
                model: lm.model, layer: l,
                prefill: PathPrefill(caches: caches, promptLengths: prompts.map(\.count),
                                     residIn: capture.resid[l], heads0: capture.heads[l]))
            runner.precision = precision
            let asIs = pAnswer(runner, [Float](repeating: 0, count: N * A))
            for h in 0..<H {
                // Δ_i = ā − a_i in head h's slot: the head's output becomes the mean
                var deltas = [Float](repeating: 0, count: N * A)
                for i in 0..<N {
                    for c in (h * d)..<((h + 1) * d) { deltas[i * A + c] = means[l][c] - capture.heads[l][i * A + c] }
                }
                let replaced = pAnswer(runner, deltas)
                effects[l * H + h] = (0..<N).reduce(0) { $0 + replaced[$1] - asIs[$1] } / Float(N)
            }
            progress?(done + 1, todo.count)
        }
        return (effects, base.reduce(0, +) / Float(N))
    }

    static func probability(of token: Int, logits: [Float], row i: Int, V: Int) -> Float {
        let z = logits[(i * V)..<((i + 1) * V)]
        let m = z.max()!
        let sum = z.reduce(0) { $0 + expf($1 - m) }
        return expf(logits[i * V + token] - m) / sum
    }

    /// The `k` heads of largest AIE, by decreasing AIE (ties: the lower layer, then head, first).
    public static func topHeads(_ effects: [Float], heads H: Int, k: Int) -> [(layer: Int, head: Int)] {
        effects.indices.sorted { effects[$0] != effects[$1] ? effects[$0] > effects[$1] : $0 < $1 }
            .prefix(k).map { ($0 / H, $0 % H) }
    }

    /// Σ over `heads` of W_O^ℓ·(ā[ℓ,h] in h's slot, zero elsewhere), [D].
    public static func vector(_ lm: LanguageModel, means: [[Float]], heads: [(layer: Int, head: Int)]) -> [Float] {
        let cfg = lm.config
        var fv = [Float](repeating: 0, count: cfg.dModel)
        for (l, h) in heads {
            var slot = [Float](repeating: 0, count: cfg.attnDim)
            for c in (h * cfg.headDim)..<((h + 1) * cfg.headDim) { slot[c] = means[l][c] }
            for (i, v) in DeltaExport.outputProjection(lm, layer: l, slot).enumerated() { fv[i] += v }
        }
        return fv
    }

    /// Steps 1–3 for a job's training pairs: the heads' means and their indirect effects, which
    /// every choice of k and layer reuses (an `fv-heads` job's artefact).
    public struct Ranking: Sendable {
        /// ā, [L][H·d].
        public var means: [[Float]]
        /// AIE, [L × H] (row-major by layer).
        public var effects: [Float]
        /// Mean p(answer's first token) on the clean and on the corrupted ICL prompts: how much
        /// the demonstrations teach this model the task (the room the heads' effects have).
        public var cleanProbability: Float, corruptedProbability: Float

        public init(means: [[Float]], effects: [Float], cleanProbability: Float, corruptedProbability: Float) {
            self.means = means
            self.effects = effects
            self.cleanProbability = cleanProbability
            self.corruptedProbability = corruptedProbability
        }

        /// `progress(layers done, layers)`.
        public init(_ lm: LanguageModel, train: [TaskPair], format: PromptFormat, seed: Int,
                    progress: ((Int, Int) -> Void)? = nil) {
            let p = FunctionVector.prompts(train: train, format: format, seed: seed)
            let encode = { (s: [String]) in s.map { lm.tokenizer.encode($0) } }
            let answers = p.answers.map { lm.tokenizer.encode(format.targetText($0), bos: false).first ?? 0 }
            (means, cleanProbability) = FunctionVector.headMeans(lm, prompts: encode(p.clean), answers: answers)
            (effects, corruptedProbability) = FunctionVector.indirectEffects(
                lm, prompts: encode(p.corrupted), answers: answers, means: means, layers: nil, precision: .fp32,
                progress: progress)
        }

        /// A job's metrics about the ranking: the largest effect and the two probabilities.
        public func metrics(heads H: Int) -> [String: Double] {
            [
                "top_effect": Double(FunctionVector.topHeads(effects, heads: H, k: 1).first
                    .map { effects[$0.layer * H + $0.head] } ?? 0),
                "clean_p_answer": Double(cleanProbability), "corrupted_p_answer": Double(corruptedProbability),
            ]
        }

        /// The tensors of its artefact.
        public var tensors: [(name: String, shape: [Int], values: [Float])] {
            let L = means.count
            return [
                ("head_means", [L, means.first?.count ?? 0], means.flatMap { $0 }),
                ("indirect_effects", [L, effects.count / max(L, 1)], effects),
            ]
        }

        /// Reads a ranking artefact (an `fv-heads` job's, or a `function-vector` job's, which holds
        /// the same tensors) made on `lm`'s weights, for the split `seed`/`trainSize` and prompts
        /// `format`: any other artefact is refused with what differs.
        public init(artefact data: Data, model lm: LanguageModel, seed: Int, trainSize: Int, format: PromptFormat)
            throws
        {
            let (t, md) = try Safetensors.read(data)
            let cfg = lm.config
            func refuse(_ why: String) -> EngineJobError { EngineJobError("the head ranking given as input \(why)") }
            guard let m = t["head_means"], let e = t["indirect_effects"] else {
                throw refuse("has no head_means and indirect_effects tensors (not an fv-heads artefact)")
            }
            guard m.shape == [cfg.nLayers, cfg.attnDim], e.shape == [cfg.nLayers, cfg.nHeads] else {
                throw refuse("has shapes \(m.shape) and \(e.shape); this model needs [\(cfg.nLayers), \(cfg.attnDim)] "
                                + "and [\(cfg.nLayers), \(cfg.nHeads)]")
            }
            let sha = try lm.sha256()
            if let s = md["model_sha256"], !s.isEmpty, s != sha {
                throw refuse("was made on model \(md["model"] ?? "?") (sha256 \(s.prefix(12))…), not \(lm.name)")
            }
            let theirs = (md["seed"], md["train_size"], md["prompt_format"], md["target_format"])
            guard theirs == ("\(seed)", "\(trainSize)", format.query, format.target) else {
                throw refuse("was made on split seed \(md["seed"] ?? "?"), train size \(md["train_size"] ?? "?") with "
                                + "prompt \((md["prompt_format"] ?? "?").debugDescription); this job has seed \(seed), "
                                + "train size \(trainSize), prompt \(format.query.debugDescription)")
            }
            means = (0..<cfg.nLayers).map { Array(m.values[($0 * cfg.attnDim)..<(($0 + 1) * cfg.attnDim)]) }
            effects = e.values
            cleanProbability = Float(md["clean_p_answer"] ?? "") ?? .nan
            corruptedProbability = Float(md["corrupted_p_answer"] ?? "") ?? .nan
        }
    }

    /// Step 4 on a ranking: the `k` heads of largest AIE summed.
    public init(_ lm: LanguageModel, ranking r: Ranking, heads k: Int) {
        ranking = r
        heads = Self.topHeads(r.effects, heads: lm.config.nHeads, k: k)
        vector = Self.vector(lm, means: r.means, heads: heads)
    }

    /// Steps 1–4 for a job's training pairs. `progress(phase, done, total)`.
    public init(_ lm: LanguageModel, train: [TaskPair], format: PromptFormat, seed: Int, heads k: Int,
                progress: ((String, Int, Int) -> Void)? = nil) {
        self.init(lm, ranking: Ranking(lm, train: train, format: format, seed: seed) { progress?("rank", $0, $1) },
                  heads: k)
    }

    /// The tensors of its artefact: the vector and its ranking's.
    public var tensors: [(name: String, shape: [Int], values: [Float])] {
        [("function_vector", [vector.count], vector)] + ranking.tensors
    }
}

/// Adds `vector` [D] to the residual stream entering block `layer`, at each sequence's last row
/// (a prompt pass's hook: where a function vector goes).
public final class ResidualAddHook: ForwardHooks {
    public let layer: Int
    public let vector: [Float]
    public init(layer: Int, vector: [Float]) {
        self.layer = layer
        self.vector = vector
    }
    public func residual(layer: Int, _ x: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
        guard layer == self.layer else { return }
        for s in 0..<layout.rowCount.count {
            vector.withUnsafeBufferPointer { v in Ops.add(v.baseAddress!, into: x + layout.lastRow(s) * v.count, v.count) }
        }
    }
    public func headOutputs(layer: Int, _ o: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {}
}
