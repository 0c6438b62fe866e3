import Foundation

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

/// Adds Δ to layer ℓ's head outputs at each sequence's last row (used for the prompt pass only):
/// one Δ for every sequence, or one per sequence (nil = none).
public final class DeltaHook: ForwardHooks {
    public let layer: Int
    let shared: [Float]?
    let perSequence: [[Float]?]
    public init(layer: Int, delta: [Float]) { self.layer = layer; shared = delta; perSequence = [] }
    public init(layer: Int, perSequence: [[Float]?]) { self.layer = layer; shared = nil; self.perSequence = perSequence }
    public func residual(layer: Int, _ x: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {}
    public func headOutputs(layer: Int, _ o: UnsafeMutablePointer<Float>, _ layout: BatchLayout) {
        guard layer == self.layer else { return }
        for s in 0..<layout.rowCount.count {
            guard let d = shared ?? perSequence[s] else { continue }
            d.withUnsafeBufferPointer { Ops.add($0.baseAddress!, into: o + layout.lastRow(s) * d.count, d.count) }
        }
    }
}

extension LanguageModel {
    /// Batched greedy evaluation of one or more Δ variants (nil = no Δ) on the same prompts; the
    /// positions before each prompt's last are computed once for all variants. The answer is the
    /// decoded text up to the first newline, trimmed; exact match compares it case-insensitively
    /// with the expected output; first-token accuracy compares the first decoded token with the
    /// target's first token; `judge` decides `judged`. `maxNewTokens` 0 = each item's target length
    /// + 2 tokens.
    public func evaluate(prompts: [String], pairs: [TaskPair], format: PromptFormat, deltas: [[Float]?], layer: Int,
                         judge: Judge, maxNewTokens: Int = 0, batchSize: Int = 100,
                         progress: ((Int) -> Void)? = nil) -> [Evaluation] {
        var items = [[Evaluation.Item]](repeating: [], count: deltas.count)
        var b = 0
        while b < prompts.count {
            let e = min(prompts.count, b + batchSize)
            let ids = prompts[b..<e].map { tokenizer.encode($0) }
            let tgt = pairs[b..<e].map { tokenizer.encode(format.targetText($0.output)) }
            // each item's own budget, so an item's answer does not depend on the batch it is in
            let stop = maxNewTokens > 0 ? StopRules(maxNewTokens: maxNewTokens, atNewline: true)
                                        : StopRules(perPrompt: tgt.map { max($0.count, 1) + 2 }, atNewline: true)
            let gens = generate(prompts: ids, variants: deltas, layer: layer, stop: stop)
            for (v, gen) in gens.enumerated() {
                for (j, p) in pairs[b..<e].enumerated() {
                    let text = tokenizer.decode(gen.tokens[j])
                    let line = String(text.split(separator: "\n", omittingEmptySubsequences: false).first ?? "")
                        .trimmingCharacters(in: .whitespaces)
                    let exact = line.lowercased() == p.output.trimmingCharacters(in: .whitespaces).lowercased()
                    items[v].append(.init(input: p.input, expected: p.output, prediction: line, exact: exact,
                                          firstToken: gen.firstArgmax[j] == tgt[j].first,
                                          judged: judge.accept(input: p.input, prediction: line, expected: p.output)))
                }
            }
            b = e
            progress?(b)
        }
        return items.map { Evaluation(items: $0) }
    }
}

/// Safetensors: 8-byte little-endian header length, a JSON header, then raw tensor bytes.
public enum Safetensors {
    public static func write(tensors: [(name: String, shape: [Int], values: [Float])], metadata: [String: String]) -> Data {
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        for t in tensors {
            header[t.name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + 4 * t.values.count]]
            offset += 4 * t.values.count
        }
        var h = try! JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while h.count % 8 != 0 { h.append(0x20) }
        var out = Data()
        var n = UInt64(h.count).littleEndian
        withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
        out.append(h)
        for t in tensors { t.values.withUnsafeBytes { out.append(contentsOf: $0) } }
        return out
    }

    public enum ReadError: Error, CustomStringConvertible {
        case malformed(String)
        public var description: String { if case let .malformed(w) = self { return "malformed safetensors: \(w)" }; return "" }
    }

    /// Reads F32 tensors and the metadata.
    public static func read(_ data: Data) throws -> (tensors: [String: (shape: [Int], values: [Float])], metadata: [String: String]) {
        guard data.count >= 8 else { throw ReadError.malformed("shorter than 8 bytes") }
        let n = data.prefix(8).withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
        guard n > 0, n <= data.count - 8 else { throw ReadError.malformed("header length \(n)") }
        guard let h = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as? [String: Any] else {
            throw ReadError.malformed("header is not an object")
        }
        var tensors: [String: (shape: [Int], values: [Float])] = [:]
        for (k, v) in h where k != "__metadata__" {
            guard let t = v as? [String: Any], t["dtype"] as? String == "F32", let shape = t["shape"] as? [Int],
                  let off = t["data_offsets"] as? [Int], off.count == 2, off[0] >= 0, off[1] >= off[0],
                  8 + n + off[1] <= data.count, (off[1] - off[0]) == 4 * shape.reduce(1, *) else {
                throw ReadError.malformed("tensor \(k)")
            }
            let bytes = data.subdata(in: (8 + n + off[0])..<(8 + n + off[1]))
            let vals = bytes.withUnsafeBytes { raw in (0..<(bytes.count / 4)).map { raw.loadUnaligned(fromByteOffset: 4 * $0, as: Float.self) } }
            tensors[k] = (shape, vals)
        }
        return (tensors, (h["__metadata__"] as? [String: String]) ?? [:])
    }
}

public struct ExperimentError: Error, CustomStringConvertible {
    public var message: String
    /// True when running the job again would fail the same way (bad task, bad parameters).
    public var deterministic: Bool
    public init(_ message: String, deterministic: Bool = true) { self.message = message; self.deterministic = deterministic }
    public var description: String { message }
}

/// Runs one job end to end on a loaded model: split, prefix-cache, solve, evaluate, package Δ.
public struct Experiment {
    public var lm: LanguageModel
    public var registry: TaskRegistry
    public var format: PromptFormat = .qa
    public var solverMethod: SolverMethod = .defaultMethod
    /// The solver's products for jobs that do not name a precision (see `Precision`); recorded in
    /// each Δ's metadata. Evaluation is fp32.
    public var precision: Precision = .solverDefault

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
        guard q.contains("{input}") else { throw ExperimentError("the prompt template must contain {input}: \(q.debugDescription)") }
        guard t.contains("{output}") else { throw ExperimentError("the target template must contain {output}: \(t.debugDescription)") }
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
        let cfg = lm.config
        let format = try format(for: spec)
        guard spec.layer >= 0 && spec.layer < cfg.nLayers else {
            throw ExperimentError("layer \(spec.layer) is outside 0…\(cfg.nLayers - 1) for \(lm.name)")
        }
        guard spec.trainSize >= 1 && spec.trainSize <= 1024 else { throw ExperimentError("train_size must be between 1 and 1024") }
        guard spec.testSize >= 0 else { throw ExperimentError("test_size must be ≥ 0") }
        let method = spec.solver ?? solverMethod
        let precision = spec.precision ?? self.precision
        guard JobMethod.engine.contains(spec.method) else {
            throw ExperimentError("method \"\(spec.method.rawValue)\" is not an engine method (engine methods: \(JobMethod.engine.map(\.rawValue).joined(separator: ", ")))")
        }
        let pairs: [TaskPair]
        let judge: Judge
        do { pairs = try registry.load(spec.task); judge = try registry.judge(for: spec.task) }
        catch { throw ExperimentError((error as? LocalizedError)?.errorDescription ?? "\(error)") }
        let split = TaskSplit(pairs: pairs, seed: spec.seed, trainSize: spec.trainSize, testSize: spec.testSize)
        guard split.train.count == spec.trainSize else {
            throw ExperimentError("task \(spec.task) has only \(pairs.count) pairs; cannot take \(spec.trainSize) for training")
        }
        return Prepared(spec: spec, format: format, method: method, precision: precision, split: split, judge: judge)
    }

    func evaluate(_ p: Prepared, prompts: [String], deltas: [[Float]?], progress: Progress?) -> [Evaluation] {
        lm.evaluate(prompts: prompts, pairs: p.split.test, format: p.format, deltas: deltas, layer: p.spec.layer, judge: p.judge,
                    maxNewTokens: p.spec.maxNewTokens) { progress?("eval", $0, p.split.test.count, [:]) }
    }

    static func record(_ e: Evaluation, into metrics: inout [String: Double], prefix: String = "") {
        metrics[prefix + "exact_match"] = e.exactMatch
        metrics[prefix + "first_token_accuracy"] = e.firstTokenAccuracy
        metrics[prefix + "judge_accuracy"] = e.judgeAccuracy
    }

    public func run(_ spec: JobSpec, progress: Progress? = nil) throws -> JobOutcome {
        let p = try prepare(spec)
        let t0 = Date()
        var metrics: [String: Double] = ["n_test": Double(p.split.test.count), "n_train": Double(p.split.train.count)]
        switch spec.method {
        case .zeroShot:
            Self.record(evaluate(p, prompts: p.split.test.map { p.format.prompt($0.input) }, deltas: [nil], progress: progress)[0], into: &metrics)
        case .fewShot:
            let demos = Array(p.split.train.prefix(max(spec.shots, 0)))
            Self.record(evaluate(p, prompts: p.split.test.map { p.format.fewShot(demos, $0.input) }, deltas: [nil], progress: progress)[0],
                        into: &metrics)
        case .intervention:
            return try runFused([spec], progress: progress)[0]
        case .synthetic, .syntheticFail, .syntheticCrash:
            preconditionFailure("prepare refuses non-engine methods")
        }
        metrics["total_ms"] = Date().timeIntervalSince(t0) * 1000
        return JobOutcome(metrics: metrics)
    }

    /// Intervention jobs that share the model, task, layer, penalty and solver settings and differ
    /// in their split seed, solved together on one path (one weight read per step for all); each
    /// is then evaluated on its own test split. One spec is an ordinary single job.
    public func runFused(_ specs: [JobSpec], progress: Progress? = nil) throws -> [JobOutcome] {
        precondition(!specs.isEmpty)
        let cfg = lm.config
        let jobs = try specs.map(prepare)
        let first = specs[0]
        for s in specs {
            var a = s, b = first
            a.seed = 0; b.seed = 0
            guard a == b, s.method == .intervention else {
                throw ExperimentError("jobs fused on one path may differ only in their seed (and must be intervention jobs)")
            }
        }
        if jobs.count > 1 && jobs[0].method == .fista { throw ExperimentError("the fista solver runs one job at a time; use an Adam solver to fuse seeds") }
        let t0 = Date()
        var prompts: [[Int]] = [], targets: [Int] = [], rows: [Range<Int>] = []
        for p in jobs {
            let start = prompts.count
            prompts += p.split.train.map { lm.tokenizer.encode(p.format.prompt($0.input)) }
            targets += p.split.train.map { lm.tokenizer.encode(p.format.targetText($0.output)).first ?? 0 }
            rows.append(start..<prompts.count)
        }
        let tp = Date()
        let path = InterventionPath(model: lm, layer: first.layer, prompts: prompts)
        let setupMs = Date().timeIntervalSince(tp) * 1000
        let penalty = SparseGroupLasso(gamma: Float(first.gamma), lambda: Float(first.lambda), heads: cfg.nHeads, headDim: cfg.headDim)
        let ts = Date()
        let results = Solver.solveJobs(path: path, jobs: rows, loss: .nextToken(targets: targets), penalty: penalty,
                                       options: SolverOptions(method: jobs[0].method, steps: first.steps, lr: Float(first.lr),
                                                              precision: jobs[0].precision)) { j, s in
            if j == 0 { progress?("solve", s.step, first.steps, s.metrics) }
        }
        let solveMs = Date().timeIntervalSince(ts) * 1000
        var outcomes: [JobOutcome] = []
        for (p, res) in zip(jobs, results) {
            var metrics: [String: Double] = ["n_test": Double(p.split.test.count), "n_train": Double(p.split.train.count),
                                             "setup_ms": setupMs, "solve_ms": solveMs, "fused_jobs": Double(jobs.count)]
            metrics["step_ms"] = solveMs / Double(max(res.history.count, 1))
            let f = res.final
            metrics["final_loss"] = Double(f.loss); metrics["final_objective"] = Double(f.objective)
            metrics["nonzero"] = Double(f.nonzeros); metrics["active_heads"] = Double(f.activeHeads)
            metrics["delta_l2"] = Double(res.delta.reduce(0) { $0 + $1 * $1 }.squareRoot())
            metrics["initial_loss"] = Double(res.history.first?.loss ?? .nan)
            let te = Date()
            // Δ and Δ = 0 (zero-shot) share everything before the last prompt position
            let evs = evaluate(p, prompts: p.split.test.map { p.format.prompt($0.input) }, deltas: [res.delta, nil], progress: progress)
            Self.record(evs[0], into: &metrics)
            Self.record(evs[1], into: &metrics, prefix: "zero_shot_")
            metrics["eval_ms"] = Date().timeIntervalSince(te) * 1000
            let s = p.spec
            let md: [String: String] = [
                "model": lm.name, "model_sha256": (try? lm.sha256()) ?? "", "task": s.task, "layer": "\(s.layer)",
                "seed": "\(s.seed)", "lambda": "\(s.lambda)", "gamma": "\(s.gamma)", "steps": "\(res.history.count - 1)",
                "lr": "\(s.lr)", "solver": p.method.rawValue, "precision": path.precision.effective.rawValue, "final_loss": "\(f.loss)", "heads": "\(cfg.nHeads)",
                "head_dim": "\(cfg.headDim)", "train_size": "\(s.trainSize)", "prompt_format": p.format.query,
                "target_format": p.format.target, "exact_match": "\(metrics["exact_match"]!)",
            ]
            metrics["total_ms"] = Date().timeIntervalSince(t0) * 1000
            outcomes.append(JobOutcome(metrics: metrics,
                                       artefact: Safetensors.write(tensors: [("delta", [cfg.attnDim], res.delta)], metadata: md)))
        }
        return outcomes
    }
}
