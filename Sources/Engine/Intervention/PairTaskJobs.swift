import Foundation
import JobCore

/// Prompt format: a query template with `{input}` and a target template with `{output}`.
public struct PromptFormat: Sendable, Equatable {
    public var query: String
    public var target: String
    /// How one demonstration is written in k-shot prompts.
    public var demo: String
    /// The default, "Q: x\nA:" → " y": measured by an independent implementation on this model to
    /// work where the bare "x:" form overfits.
    public static let qa = PromptFormat(query: "Q: {input}\nA:", target: " {output}", demo: "Q: {input}\nA: {output}\n\n")
    public init(query: String, target: String, demo: String) { self.query = query; self.target = target; self.demo = demo }
    public func prompt(_ x: String) -> String { query.replacingOccurrences(of: "{input}", with: x) }
    public func targetText(_ y: String) -> String { target.replacingOccurrences(of: "{output}", with: y) }
    public func fewShot(_ demos: [TaskPair], _ x: String) -> String {
        demos.map { demo.replacingOccurrences(of: "{input}", with: $0.input).replacingOccurrences(of: "{output}", with: $0.output) }.joined() + prompt(x)
    }
}

/// Per-item and summary results of evaluating a test set.
public struct Evaluation: Sendable {
    public struct Item: Sendable { public var input, expected, prediction: String; public var exact, firstToken, judged: Bool }
    public var items: [Item]
    public var n: Int { items.count }
    public var exactMatch: Double { n == 0 ? 0 : Double(items.filter(\.exact).count) / Double(n) }
    public var firstTokenAccuracy: Double { n == 0 ? 0 : Double(items.filter(\.firstToken).count) / Double(n) }
    public var judgeAccuracy: Double { n == 0 ? 0 : Double(items.filter(\.judged).count) / Double(n) }
}

/// Unsteered evaluations a model has decoded (`LanguageModel.evaluationMemo`), by everything that
/// decides their answers and scores (`key`): prompts, test pairs, target format, the judge's
/// answers for those inputs, stop rules, batch size and the kernels that run
/// (`Precision.kernels`). The model itself and its backend's threads are those of the
/// `LanguageModel` that holds the memo.
public enum EvaluationMemo {
    /// The 64 most recent.
    static func make() -> RecentMemo<Evaluation> { RecentMemo(budget: 64) }

    static func key(prompts: [String], pairs: [TaskPair], format: PromptFormat, judge: Judge, maxNewTokens: Int,
                    batchSize: Int, precision: Precision, stopDecided: Bool) -> String {
        var parts = ["evaluation 2", precision.kernels, "\(maxNewTokens)", "\(batchSize)", "\(stopDecided)",
                     format.target, judge.task, "\(prompts.count)"]
        for (prompt, pair) in zip(prompts, pairs) {
            let answers = judge.answers(for: pair.input).map { $0.sorted() } ?? []
            parts += [prompt, pair.input, pair.output, answers.joined(separator: "\u{1}")]
        }
        return SHA256.hex(parts.joined(separator: "\u{0}"))
    }
}

/// Adds Δ to layer ℓ's head outputs at each sequence's last row (used for the prompt pass only).
public final class DeltaHook: ForwardHooks {
    public let layer: Int
    let delta: [Float]
    public init(layer: Int, delta: [Float]) { self.layer = layer; self.delta = delta }
    public func residual(layer: Int, _ x: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {}
    public func headOutputs(layer: Int, _ o: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
        guard layer == self.layer else { return }
        delta.withUnsafeBufferPointer { d in
            for s in 0..<layout.rowCount.count { Ops.add(d.baseAddress!, into: o + layout.lastRow(s) * d.count, d.count) }
        }
    }
}

extension LanguageModel {
    /// Batched greedy evaluation of one or more Δ variants (nil = no Δ) on the same prompts; the
    /// positions before each prompt's last are computed once for all variants. The answer is the
    /// decoded text up to the first newline, trimmed; exact match compares it case-insensitively
    /// with the expected output; first-token accuracy compares the first decoded token with the
    /// target's first token; `judge` decides `judged`. `maxNewTokens` 0 = each item's target length
    /// + 2 tokens. `stopDecided`: stop decoding an answer once it is decided wrong (`answerDecided`).
    ///
    /// The unsteered variant (nil) of a plain evaluation (the base model, no `lastPosition` hooks)
    /// is remembered for this model (`EvaluationMemo`): an intervention job then reuses the
    /// zero-shot answers that a zero-shot job or another intervention job of the same test split
    /// decoded before it in this process, the same answers it would decode (each variant decodes
    /// on its own, see `generate(prompts:variants:…)`).
    public func evaluate(prompts: [String], pairs: [TaskPair], format: PromptFormat, deltas: [[Float]?], layer: Int,
                         judge: Judge, maxNewTokens: Int = 0, batchSize: Int = 100, using backend: Backend? = nil,
                         lastPosition: ForwardHooks? = nil, precision: Precision = .fp32, stopDecided: Bool = true,
                         progress: ((Int) -> Void)? = nil) -> [Evaluation] {
        let key = backend == nil && lastPosition == nil && deltas.contains(where: { $0 == nil })
            ? EvaluationMemo.key(prompts: prompts, pairs: pairs, format: format, judge: judge,
                                 maxNewTokens: maxNewTokens, batchSize: batchSize, precision: precision,
                                 stopDecided: stopDecided)
            : nil
        var results = [Evaluation?](repeating: nil, count: deltas.count)
        if let key, let known = evaluationMemo[key] {
            for (i, d) in deltas.enumerated() where d == nil { results[i] = known }
        }
        let todo = deltas.indices.filter { results[$0] == nil }
        if todo.isEmpty {
            progress?(prompts.count)
            return results.map { $0! }
        }
        let fresh = evaluateBatches(
            prompts: prompts, pairs: pairs, format: format, variants: todo.count, judge: judge,
            maxNewTokens: maxNewTokens, batchSize: batchSize, stopDecided: stopDecided, progress: progress
        ) { ids, stop in
            generate(
                prompts: ids, variants: todo.map { deltas[$0] }, layer: layer, stop: stop, using: backend,
                lastPosition: lastPosition, precision: precision)
        }
        for (j, i) in todo.enumerated() { results[i] = fresh[j] }
        if let key, let i = todo.first(where: { deltas[$0] == nil }) { evaluationMemo[key] = results[i] }
        return results.map { $0! }
    }

    /// The same evaluation with any `Steering` (any site, any positions; nil = none), without the
    /// shared-prefix batching that last-position Δs allow: what `worker evaluate` compares.
    public func evaluate(prompts: [String], pairs: [TaskPair], format: PromptFormat, steering: Steering?,
                         judge: Judge, maxNewTokens: Int = 0, batchSize: Int = 100) -> Evaluation {
        evaluateBatches(
            prompts: prompts, pairs: pairs, format: format, variants: 1, judge: judge, maxNewTokens: maxNewTokens,
            batchSize: batchSize, progress: nil
        ) { ids, stop in [generate(prompts: ids, steering: steering, sampling: .greedy, stop: stop)] }[0]
    }

    /// The test set in batches of `batchSize`: `generate(ids, stop)` decodes one batch for every
    /// variant, and each variant's answers are scored.
    func evaluateBatches(
        prompts: [String], pairs: [TaskPair], format: PromptFormat, variants: Int, judge: Judge, maxNewTokens: Int,
        batchSize: Int, stopDecided: Bool = true, progress: ((Int) -> Void)?, prepare: ([Int]) -> [Int] = { $0 },
        generate: ([[Int]], StopRules) -> [Generation]
    ) -> [Evaluation] {
        var items = [[Evaluation.Item]](repeating: [], count: variants)
        var b = 0
        while b < prompts.count {
            let e = min(prompts.count, b + batchSize)
            let ids = prompts[b..<e].map { prepare(tokenizer.encode($0)) }
            let tgt = pairs[b..<e].map { tokenizer.encode(format.targetText($0.output), bos: false) }
            var stop = Self.stop(tgt, maxNewTokens)
            if stopDecided { stop.decided = answerDecided(Array(pairs[b..<e]), judge) }
            let gens = generate(ids, stop)
            for (v, gen) in gens.enumerated() { items[v] += score(gen, Array(pairs[b..<e]), tgt, judge) }
            b = e
            progress?(b)
        }
        return items.map { Evaluation(items: $0) }
    }

    /// Each item's own budget (the target's length + 2, or `maxNewTokens`), so an item's answer
    /// does not depend on the batch it is in; a newline ends an answer.
    static func stop(_ targets: [[Int]], _ maxNewTokens: Int) -> StopRules {
        maxNewTokens > 0 ? StopRules(maxNewTokens: maxNewTokens, atNewline: true)
            : StopRules(perPrompt: targets.map { max($0.count, 1) + 2 }, atNewline: true)
    }

    /// Whether a test item's answer is already wrong whatever follows: exact match and the judge
    /// both need the answer's key (its ASCII letters and digits after lower-casing and canonical
    /// decomposition: what `Judge.normalize`, trimming and lower-casing never change, in order)
    /// to equal the key of the expected output or of one of the lexicon's answers; the tokens'
    /// key only grows by appending, so once it is a prefix of none of them no continuation can
    /// score, and the first token (first-token accuracy) is already chosen. Stopping such a row
    /// changes no metric (`testStoppingDecidedAnswersChangesNoMetric`); only its prediction
    /// text stays the decided prefix. Sequence s is item s % items (variants follow each other).
    func answerDecided(_ pairs: [TaskPair], _ judge: Judge) -> @Sendable (Int, [Int]) -> Bool {
        let keys = pairs.map { p in
            ([p.output] + (judge.answers(for: p.input).map(Array.init) ?? [])).map(Self.answerKey)
        }
        return { s, tokens in
            let mine = Self.answerKey(self.tokenizer.decode(tokens))
            return !keys[s % keys.count].contains { $0.starts(with: mine) }
        }
    }

    /// The ASCII letters and digits of `text` lower-cased and canonically decomposed, in order.
    static func answerKey(_ text: String) -> [UInt8] {
        text.lowercased().decomposedStringWithCanonicalMapping.utf8.filter {
            ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 122)
        }
    }

    /// The answer is the decoded text up to the first newline, trimmed; exact match compares it
    /// case-insensitively with the expected output; first-token accuracy compares the first decoded
    /// token with the target's first token; `judge` decides `judged`.
    func score(_ gen: Generation, _ pairs: [TaskPair], _ tgt: [[Int]], _ judge: Judge) -> [Evaluation.Item] {
        pairs.enumerated().map { j, p in
            let text = tokenizer.decode(gen.tokens[j])
            let line = String(text.split(separator: "\n", omittingEmptySubsequences: false).first ?? "")
                .trimmingCharacters(in: .whitespaces)
            let exact = line.lowercased() == p.output.trimmingCharacters(in: .whitespaces).lowercased()
            return .init(input: p.input, expected: p.output, prediction: line, exact: exact,
                         firstToken: gen.firstArgmax[j] == tgt[j].first,
                         judged: judge.accept(input: p.input, prediction: line, expected: p.output))
        }
    }
}

public struct EngineJobError: Error, CustomStringConvertible {
    public var message: String
    /// True when running the job again would fail the same way (bad task, bad parameters).
    public var deterministic: Bool
    public init(_ message: String, deterministic: Bool = true) { self.message = message; self.deterministic = deterministic }
    public var description: String { message }
}

/// Runs the jobs of input → output pair tasks (the function-vector tasks) on a loaded model:
/// intervention (through `DeltaPipeline`), zero-shot and few-shot. Splits the task by the job's
/// seed, and for the intervention learns Δ, evaluates with and without it, and packages it.
public struct PairTaskJobs {
    public var lm: LanguageModel
    public var registry: TaskRegistry
    public var format: PromptFormat = .qa
    public var solverMethod: SolverMethod = .defaultMethod
    /// The solver's products for jobs that do not name a precision (see `Precision`); recorded in
    /// each Δ's metadata. Evaluation is fp32.
    public var precision: Precision = .solverDefault
    /// Polled between training steps: true stops the job with `JobCancelled` (nobody wants its
    /// outcome any more).
    public var shouldStop: (@Sendable () -> Bool)? = nil

    public init(lm: LanguageModel, registry: TaskRegistry = TaskRegistry(), format: PromptFormat = .qa,
                solverMethod: SolverMethod = .defaultMethod, precision: Precision = .solverDefault) {
        self.lm = lm; self.registry = registry; self.format = format; self.solverMethod = solverMethod
        self.precision = precision
    }

    /// Progress: phase name, done, total, metrics of the latest solver step (if any).
    public typealias Progress = (_ phase: String, _ done: Int, _ total: Int, _ metrics: [String: Double]) -> Void

    /// The job's prompt format: its own templates where it has them, else this experiment's.
    public func format(for spec: JobSpec) throws -> PromptFormat {
        guard !spec.promptTemplate.isEmpty || !spec.targetTemplate.isEmpty else { return format }
        let q = spec.promptTemplate.isEmpty ? format.query : spec.promptTemplate
        let t = spec.targetTemplate.isEmpty ? format.target : spec.targetTemplate
        guard q.contains("{input}") else { throw EngineJobError("the prompt template must contain {input}: \(q.debugDescription)") }
        guard t.contains("{output}") else { throw EngineJobError("the target template must contain {output}: \(t.debugDescription)") }
        return PromptFormat(query: q, target: t, demo: q + t + "\n\n")
    }

    /// A job checked and split, ready to run.
    struct Prepared {
        let spec: JobSpec
        let format: PromptFormat
        let method: SolverMethod
        let precision: Precision
        let split: TaskSplit
        let judge: Judge
    }

    func prepare(_ spec: JobSpec) throws -> Prepared {
        let format = try format(for: spec)
        try lm.checkLayer(spec.layer)
        guard spec.trainSize >= 1 && spec.trainSize <= 1024 else { throw EngineJobError("train_size must be between 1 and 1024") }
        guard spec.testSize >= 0 else { throw EngineJobError("test_size must be ≥ 0") }
        let method = spec.solver ?? solverMethod
        let precision = spec.precision ?? self.precision
        guard JobMethod.engine.contains(spec.method) else {
            throw EngineJobError("method \"\(spec.method.rawValue)\" is not an engine method (engine methods: \(JobMethod.engine.map(\.rawValue).joined(separator: ", ")))")
        }
        let pairs: [TaskPair]
        let judge: Judge
        do { pairs = try registry.load(spec.task); judge = try registry.judge(for: spec.task) }
        catch { throw EngineJobError((error as? LocalizedError)?.errorDescription ?? "\(error)") }
        let split = TaskSplit(pairs: pairs, seed: spec.seed, trainSize: spec.trainSize, testSize: spec.testSize)
        guard split.train.count == spec.trainSize else {
            throw EngineJobError("task \(spec.task) has only \(pairs.count) pairs; cannot take \(spec.trainSize) for training")
        }
        return Prepared(spec: spec, format: format, method: method, precision: precision, split: split, judge: judge)
    }

    /// The job's test pairs decoded after `prompts`, once per Δ variant; `lastPosition` hooks see
    /// each prompt's last position too (a function vector).
    func evaluate(_ p: Prepared, prompts: [String], deltas: [[Float]?], lastPosition: ForwardHooks? = nil,
                  progress: ((_ done: Int, _ total: Int) -> Void)?) -> [Evaluation] {
        lm.evaluate(prompts: prompts, pairs: p.split.test, format: p.format, deltas: deltas, layer: p.spec.layer,
                    judge: p.judge, maxNewTokens: p.spec.maxNewTokens, lastPosition: lastPosition,
                    precision: p.spec[.evalInt8] == 1 ? .int8 : .fp32) {
            progress?($0, p.split.test.count)
        }
    }

    /// The same with hooks on the whole prompt pass (`prefill`) and on every decoding step
    /// (`decode`), without shared prefixes; `prepare` edits each prompt's token ids first.
    func evaluate(_ p: Prepared, prompts: [String], prefill: ForwardHooks?, decode: ForwardHooks? = nil,
                  prepare: @escaping ([Int]) -> [Int] = { $0 }, progress: Progress?) -> Evaluation {
        lm.evaluateBatches(
            prompts: prompts, pairs: p.split.test, format: p.format, variants: 1, judge: p.judge,
            maxNewTokens: p.spec.maxNewTokens, batchSize: 100,
            progress: { progress?("eval", $0, p.split.test.count, [:]) }, prepare: prepare
        ) { ids, stop in [lm.generate(prompts: ids, stop: stop, prefillHooks: prefill, decodeHooks: decode)] }[0]
    }

    /// The metadata every trained or built artefact but Δ's carries (Δ's is `DeltaMetadata`): what
    /// made it, on which model, and the job's settings.
    func artefactMetadata(_ p: Prepared, format: String, exactMatch: Double?) -> [String: String] {
        var md: [String: String] = [
            "format": format, "schema": "1", "model": lm.name, "model_sha256": (try? lm.sha256()) ?? "",
            "architecture": lm.config.architecture, "task": p.spec.task, "method": p.spec.method.rawValue,
            "seed": "\(p.spec.seed)", "train_size": "\(p.split.train.count)",
            "prompt_format": p.format.query, "target_format": p.format.target,
        ]
        if let exactMatch { md["exact_match"] = "\(exactMatch)" }
        md.merge(p.spec.tunableTexts) { $1 }
        return md
    }

    static func record(_ e: Evaluation, into metrics: inout [String: Double], prefix: String = "") {
        metrics[prefix + "exact_match"] = e.exactMatch
        metrics[prefix + "first_token_accuracy"] = e.firstTokenAccuracy
        metrics[prefix + "judge_accuracy"] = e.judgeAccuracy
    }

    /// Runs one job; `inputs` are the artefacts of `spec.inputs`, in order.
    public func run(_ spec: JobSpec, inputs: [(id: String, data: Data)] = [], progress: Progress? = nil) throws
        -> JobOutcome
    {
        guard inputs.count == spec.inputs.count, zip(inputs, spec.inputs).allSatisfy({ $0.0.id == $0.1 }) else {
            throw EngineJobError("the artefacts handed over are not those of the job's inputs \(spec.inputs)")
        }
        if !spec.inputs.isEmpty && spec.method.inputKind == nil {
            throw EngineJobError("\(spec.method.rawValue) reads no input artefacts; the job names \(spec.inputs.count)")
        }
        if let opinion = try opinionTask(spec) { return try runOpinion(spec, opinion, progress: progress) }
        let p = try prepare(spec)
        let t0 = Date()
        var metrics: [String: Double] = ["n_test": Double(p.split.test.count), "n_train": Double(p.split.train.count)]
        let report: (Int, Int) -> Void = { progress?("eval", $0, $1, [:]) }
        switch spec.method {
        case .zeroShot:
            Self.record(evaluate(p, prompts: p.split.test.map { p.format.prompt($0.input) }, deltas: [nil], progress: report)[0], into: &metrics)
        case .fewShot:
            let demos = Array(p.split.train.prefix(max(spec.shots, 0)))
            Self.record(evaluate(p, prompts: p.split.test.map { p.format.fewShot(demos, $0.input) }, deltas: [nil], progress: report)[0],
                        into: &metrics)
        case .intervention:
            return try runFused([spec], progress: progress)[0]
        case .lora:
            let lora = LoRA(
                model: lm.model,
                targets: (Tunable.loraTargets.names(of: spec[.loraTargets]) ?? []).compactMap(LoRA.Target.init),
                rank: Int(spec[.loraRank]),
                alpha: Float(spec[.loraAlpha]), seed: UInt64(spec.seed))
            return try runAdapter(p, lora, lr: Float(spec[.loraLR]), progress: progress)
        case .ia3:
            return try runAdapter(p, IA3(model: lm.model), lr: Float(spec[.ia3LR]), progress: progress)
        case .softPrompt:
            let name = URL(fileURLWithPath: spec.task).deletingPathExtension().lastPathComponent
                .replacingOccurrences(of: "_", with: " ").replacingOccurrences(of: "-", with: " ")
            let soft = SoftPrompt(model: lm, count: Int(spec[.softPromptTokens]), description: "Task: \(name).")
            return try runAdapter(p, soft, lr: Float(spec[.softPromptLR]), progress: progress)
        case .functionVector:
            return try runFunctionVector(p, inputs: inputs, progress: progress)
        case .fvHeads:
            return try runHeadRanking(p, progress: progress)
        case .add:
            return try runAdd(p, inputs: inputs, progress: progress)
        case .icv:
            return runICV(p, progress: progress)
        case .synthetic, .syntheticFail, .syntheticCrash:
            preconditionFailure("prepare refuses non-engine methods")
        }
        metrics["total_ms"] = Date().timeIntervalSince(t0) * 1000
        return JobOutcome(metrics: metrics)
    }

    /// A function-vector job as a Δ problem: its training prompts with the next-token loss on the
    /// first target token, scored by greedy decoding with Δ and without it (0-shot).
    func problem(_ p: Prepared) -> DeltaProblem {
        let train = p.split.train
        return DeltaProblem(
            prompts: train.map { lm.tokenizer.encode(p.format.prompt($0.input)) },
            loss: .nextToken(
                targets: train.map { lm.tokenizer.encode(p.format.targetText($0.output), bos: false).first ?? 0 }),
            task: p.spec.task, seed: p.spec.seed,
            evaluate: { learned, progress in
                let scale = Float(p.spec[.deltaScale])
                let delta = scale == 1 ? learned : learned.map { $0 * scale }
                var metrics: [String: Double] = ["n_test": Double(p.split.test.count)]
                // Δ and Δ = 0 (zero-shot) share everything before the last prompt position
                let evs = self.evaluate(p, prompts: p.split.test.map { p.format.prompt($0.input) }, deltas: [delta, nil],
                                        progress: progress)
                Self.record(evs[0], into: &metrics)
                Self.record(evs[1], into: &metrics, prefix: "zero_shot_")
                return metrics
            },
            artefactEntries: { m in
                var e = ["prompt_format": p.format.query, "target_format": p.format.target,
                         "exact_match": "\(m["exact_match"] ?? .nan)"]
                // the settings of the evaluation that gave exact_match (the tunables the job set)
                e.merge(p.spec.tunableTexts) { $1 }
                return e
            })
    }

    /// Intervention jobs that share the model, task, layer, penalty and solver settings and differ
    /// in their split seed, solved together on one path (one weight read per step for all); each
    /// is then evaluated on its own test split. One spec is an ordinary single job.
    public func runFused(_ specs: [JobSpec], progress: Progress? = nil, hooks: DeltaPipeline.Hooks = .init()) throws -> [JobOutcome] {
        precondition(!specs.isEmpty)
        let problems = try specs.map(deltaProblem)
        let first = specs[0]
        for s in specs {
            var a = s, b = first
            a.seed = 0; b.seed = 0
            guard a == b, s.method == .intervention else {
                throw EngineJobError("jobs fused on one path may differ only in their seed (and must be intervention jobs)")
            }
        }
        var settings = DeltaSettings(layer: first.layer, lambda: first.lambda, gamma: first.gamma,
                                     solver: first.solver ?? solverMethod, steps: first.steps, lr: first.lr,
                                     precision: first.precision ?? precision)
        settings.tolerance = first[.tolerance]
        settings.shouldStop = shouldStop
        var h = hooks
        h.onStep = { j, s in
            hooks.onStep?(j, s)
            if j == 0 { progress?("solve", s.step, first.steps, s.metrics) }
        }
        h.onEval = { j, done, total in
            hooks.onEval?(j, done, total)
            progress?("eval", done, total, [:])
        }
        let outcomes = try DeltaPipeline(lm: lm).run(problems, settings: settings, hooks: h)
        return outcomes.map { JobOutcome(metrics: $0.metrics, artefact: $0.artefact.data) }
    }
}
