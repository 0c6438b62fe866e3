import ArgumentParser
import Engine
import Foundation

/// Options describing one job, shared by `run` and `bench`.
public struct JobOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Task name (antonym, synonym, english-french, english-german) or a path to a JSON file of {\"input\",\"output\"} pairs.", valueName: "name-or-path"))
    public var task: String = "antonym"
    @Option(name: .long, help: "Layer whose head outputs Δ is added to (0-based).")
    public var layer: Int = 4
    @Option(name: .long, help: "Split seed: which pairs train and which test.")
    public var seed: Int = 0
    @Option(name: .customLong("train"), help: "Number of training pairs N.")
    public var trainSize: Int = 10
    @Option(name: .customLong("test"), help: "Number of test pairs (0 = all that remain).")
    public var testSize: Int = 200
    @OptionGroup public var solve: SolveOptions
    public var lambda: Double { solve.lambda }
    public var gamma: Double { solve.gamma }
    public var steps: Int { solve.steps }
    public var lr: Double { solve.lr }
    public var solver: SolverMethod { solve.solver }
    @Option(name: .long, help: ArgumentHelp(
        "What to run: learn Δ (intervention), prompt (zero-shot, few-shot), an activation baseline "
            + "(function-vector, icv) or a fine-tuning one (lora, ia3, soft-prompt)."))
    public var method: JobMethod = .intervention
    @Option(name: .long, help: "Demonstrations in few-shot prompts.")
    public var shots: Int = 10
    @Option(name: .customLong("max-new-tokens"), help: "Greedy decoding budget per test item (0 = target length + 2).")
    public var maxNewTokens: Int = 0
    @Option(name: .customLong("set"), help: ArgumentHelp(
        "Set a tunable job parameter, as in grid.json (repeatable): "
            + Tunable.all.map { t in
                "\(t.key) (default \(t.display(t.defaultValue))): \(t.help.trimmingCharacters(in: ["."]))"
            }
                .joined(separator: "; ") + ".",
        valueName: "key=value"))
    public var set: [String] = []

    public init() {}

    public func validate() throws {
        guard layer >= 0 else { throw ValidationError("--layer must be ≥ 0") }
        guard trainSize >= 1 && trainSize <= 1024 else { throw ValidationError("--train must be between 1 and 1024") }
        guard testSize >= 0 else { throw ValidationError("--test must be ≥ 0") }
        guard JobMethod.engine.contains(method) else {
            throw ValidationError("--method must be one of \(JobMethod.engine.map(\.rawValue).joined(separator: ", "))")
        }
        guard method != .add else {
            throw ValidationError(
                "add sums Δs that other jobs learned: score stored Δs with `worker evaluate --sum --delta A "
                    + "--delta B --task T`, or give a grid \"components\" (coordinator submit)")
        }
        _ = try spec(model: "")   // --set values
    }

    public func spec(model: String) throws -> JobSpec {
        var s = JobSpec(model: model, task: task, method: method, layer: layer, lambda: lambda, gamma: gamma,
                        seed: seed, trainSize: trainSize, testSize: testSize, steps: steps, lr: lr, maxNewTokens: maxNewTokens,
                        shots: shots, solver: solve.solver, precision: solve.precision)
        for item in set {
            let parts = item.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2 else {
                throw ValidationError("--set takes key=value, got \(item.debugDescription)")
            }
            do {
                let t = try Tunable.named(parts[0])
                if t.choices != nil {  // a comma-separated set of names
                    let names = parts[1].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                    try s.set(t, try t.value(names: names))
                } else if let v = Double(parts[1]) {
                    try s.set(t, v)
                } else {
                    throw ValidationError("--set \(t.key) takes a number, got \(parts[1].debugDescription)")
                }
            } catch let e as JobSpecError { throw ValidationError("--set \(e)") }
        }
        return s
    }
}

/// The objective's penalties and the solver: shared by `run`, `bench` and `opinion`.
public struct SolveOptions: ParsableArguments {
    @Option(name: .customLong("lambda"), help: "Group (per-head) ℓ2 penalty λ.")
    public var lambda: Double = JobSpec.defaultLambda
    @Option(name: .customLong("gamma"), help: "Element-wise ℓ1 penalty γ.")
    public var gamma: Double = JobSpec.defaultGamma
    @Option(name: .long, help: "Solver steps.")
    public var steps: Int = 200
    @Option(name: .long, help: "Solver step size (Adam learning rate, or FISTA's initial step).")
    public var lr: Double = 0.1
    @Option(name: .long, help: "Solver: adam-avg (adam, returning the prox of the mean of the second half of the iterates; exact zeros, at least as accurate as the others measured), adam (Adam, then the prox in Adam's metric; exact zeros), adam-uniform (Adam, then the prox with step lr), adam-subgradient (the PyTorch reference's method: no prox, no exact zeros) or fista (accelerated proximal gradient with backtracking).")
    public var solver: SolverMethod = .defaultMethod
    @Option(name: .long, help: "The solver's products: int8 (activations and gradients rounded to int8 per block of 32, against the 4- and 8-bit weights forward and an 8-bit copy of Wᵀ backward: ~2.5× faster steps, the same exact match measured; needs AVX2, AVX-512 VNNI or aarch64's dot product, else fp32) or fp32 (exact). The evaluation is always fp32.")
    public var precision: Precision = .solverDefault

    public init() {}

    public func validate() throws {
        guard lambda >= 0, gamma >= 0 else { throw ValidationError("--lambda and --gamma must be ≥ 0") }
        guard steps >= 1 else { throw ValidationError("--steps must be ≥ 1") }
        guard lr > 0 else { throw ValidationError("--lr must be > 0") }
    }

    /// The objective and solver for a Δ learned at `layer` (the pipeline derives the penalty and
    /// the solver's options from it).
    public func settings(layer: Int) -> DeltaSettings {
        DeltaSettings(layer: layer, lambda: lambda, gamma: gamma, solver: solver, steps: steps, lr: lr, precision: precision)
    }
}

extension SolverMethod: ExpressibleByArgument {}
extension Precision: ExpressibleByArgument {}
extension JobMethod: ExpressibleByArgument {
    /// The methods a person runs (the synthetic test kinds are the cluster's).
    public static var allValueStrings: [String] { engine.map(\.rawValue) }
}

/// Writes a Δ artefact as `<dir>/<sha256>.safetensors` (atomically) and returns its path.
func saveArtefact(_ art: Data, in dir: String) throws -> String {
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let path = (dir as NSString).appendingPathComponent(SHA256.hex(art) + ".safetensors")
    try art.write(to: URL(fileURLWithPath: path), options: .atomic)
    return path
}

/// A one-line progress display on stderr (redrawn in place on a terminal).
final class ProgressLine {
    let tty = isatty(2) != 0
    var last = Date.distantPast
    func show(_ s: String, force: Bool = false) {
        guard force || Date().timeIntervalSince(last) > 0.1 else { return }
        last = Date()
        if tty { FileHandle.standardError.write(Data(("\r\u{1B}[2K" + s).utf8)) }
        else if force { FileHandle.standardError.write(Data((s + "\n").utf8)) }
    }
    func done() { if tty { FileHandle.standardError.write(Data("\n".utf8)) } }
}

/// `worker run`: one job on this machine, end to end.
public struct RunCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Learn Δ for one task and layer on this machine, evaluate it, and save it.",
        discussion: """
        Splits the task by --seed into --train training pairs and --test test pairs, learns a sparse \
        Δ on the training pairs (objective: mean −log p(first target token) + γ‖Δ‖₁ + λ Σ_h ‖Δ_h‖₂), \
        then decodes the test set greedily with and without Δ.

        Examples:
          worker run --task antonym --layer 4 --seed 0
          worker run --task my_pairs.json --layer 2 --steps 300 --out runs/ --json
          worker run --task antonym --method few-shot --shots 10
        With --json the last line on stdout is one JSON object (exact_match, \
        first_token_accuracy, judge_accuracy, zero_shot_exact_match, n_test, final_loss, nonzero, \
        active_heads, delta_path, timings).
        """)

    @OptionGroup public var modelOptions: ModelOptions
    @OptionGroup public var job: JobOptions

    @Option(name: .long, help: ArgumentHelp("Prompt template; {input} is replaced by the pair's input, \\n is a newline. (The bare \"{input}:\" form overfits on this model.)", valueName: "text"))
    public var template: String = "Q: {input}\\nA:"

    @Option(name: .customLong("target-template"), help: ArgumentHelp("Target template; {output} is replaced by the pair's output.", valueName: "text"))
    public var targetTemplate: String = PromptFormat.qa.target

    @Option(name: .long, help: ArgumentHelp("Several split seeds, e.g. 0,1,2,3,4: their intervention jobs are solved together on one path (one weight read per step for all), then each is evaluated on its own split.", valueName: "list"))
    public var seeds: String?

    @Option(name: .long, help: "Folder for the Δ artefact (<sha256>.safetensors).")
    public var out: String = "runs"

    @Flag(name: .long, help: "Print a JSON object as the last line of stdout.")
    public var json = false

    public init() {}

    public func run() throws {
        let bar = ProgressLine()
        bar.show("loading \(modelOptions.model)…", force: true)
        let lm = try modelOptions.load()
        var spec = try job.spec(model: modelOptions.model)
        guard template.contains("{input}") else { throw ValidationError("--template must contain {input}") }
        guard targetTemplate.contains("{output}") else { throw ValidationError("--target-template must contain {output}") }
        // "\n" and "\t" typed on a command line mean a newline and a tab.
        func unescape(_ s: String) -> String { s.replacingOccurrences(of: "\\n", with: "\n").replacingOccurrences(of: "\\t", with: "\t") }
        if unescape(template) != PromptFormat.qa.query { spec.promptTemplate = unescape(template) }
        if unescape(targetTemplate) != PromptFormat.qa.target { spec.targetTemplate = unescape(targetTemplate) }
        let exp = PairTaskJobs(lm: lm)   // the spec names its solver and precision
        let t0 = Date()
        let seedList = seeds.map { $0.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } } ?? [spec.seed]
        if let seeds, seedList.isEmpty || seedList.count != seeds.split(separator: ",").count || seedList.contains(where: { $0 < 0 }) {
            throw ValidationError("--seeds takes a comma-separated list of non-negative integers, got \(seeds.debugDescription)")
        }
        guard seedList.count == 1 || spec.method == .intervention else {
            throw ValidationError("--seeds with several seeds fuses intervention jobs; use --seed for \(spec.method.rawValue)")
        }
        let specs = seedList.map { s -> JobSpec in var x = spec; x.seed = s; return x }
        let outcomes: [JobOutcome]
        do {
            let show: PairTaskJobs.Progress = { phase, done, total, m in
                var s = "\(phase) \(done)/\(total)"
                if let l = m["loss"], let nz = m["nonzero"], let ah = m["active_heads"] {
                    s += String(format: "  loss %.4f  nonzero %d  heads %d", l, Int(nz), Int(ah))
                }
                bar.show(s, force: done == total)
            }
            outcomes = specs.count == 1 ? [try exp.run(specs[0], progress: show)] : try exp.runFused(specs, progress: show)
        } catch let e as EngineJobError {
            bar.done()
            throw CLIError(e.message)
        }
        bar.done()
        var summaries: [[String: Any]] = []
        for (spec, outcome) in zip(specs, outcomes) {
            var m = outcome.metrics
            m["load_ms"] = lm.loadSeconds * 1000
            var obj: [String: Any] = ["task": spec.task, "layer": spec.normalised.layer, "seed": spec.seed,
                                      "method": spec.method.rawValue,
                                      "model": lm.name, "solver": job.solver.rawValue]
            for (k, v) in m { obj[k] = v.isFinite ? v : nil }
            if let art = outcome.artefact {
                obj[spec.method.learnsDelta ? "delta_path" : "artefact_path"] = try saveArtefact(art, in: out)
            }
            summaries.append(obj)
            if json {
                if specs.count == 1 { print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self)) }
                continue
            }
            func pct(_ k: String) -> String { m[k].map { String(format: "%5.1f%%", $0 * 100) } ?? "    –" }
            let layerText = spec.method.axes.contains(.layer) ? "  layer \(spec.layer)" : ""
            let testText = spec.method.evaluates ? "  (\(Int(m["n_test"] ?? 0)) test pairs)" : ""
            print("task \(spec.task)\(layerText)  seed \(spec.seed)  method \(spec.method.rawValue)\(testText)")
            if m["kl"] != nil {  // an opinion task ("file.json#group")
                print("                 alignment   KL")
                let label = spec.method == .intervention ? "with Δ" : spec.method.rawValue
                print(String(format: "  %@ %.4f      %.4f", label.padding(toLength: 15, withPad: " ", startingAt: 0),
                             m["alignment"] ?? .nan, m["kl"] ?? .nan))
                if let z = m["zero_shot_alignment"] {
                    print(String(format: "  without Δ       %.4f      %.4f", z, m["zero_shot_kl"] ?? .nan))
                }
                if let p = obj["delta_path"] { print("  saved \(p)") }
                continue
            }
            if spec.method == .fvHeads {
                print(String(format: "  head ranking: p(answer) %.3f clean, %.3f corrupted; top effect %+.4f",
                             m["clean_p_answer"] ?? .nan, m["corrupted_p_answer"] ?? .nan, m["top_effect"] ?? .nan))
                if let p = obj["artefact_path"] { print("  saved \(p)") }
                continue
            }
            print("                 exact match   first token   judge")
            if spec.method == .intervention {
                print("  with Δ          \(pct("exact_match"))        \(pct("first_token_accuracy"))        \(pct("judge_accuracy"))")
                print("  zero-shot       \(pct("zero_shot_exact_match"))        \(pct("zero_shot_first_token_accuracy"))        \(pct("zero_shot_judge_accuracy"))")
                print(String(format: "  Δ: loss %.4f → %.4f, %d non-zeros in %d heads, ‖Δ‖ %.3f", m["initial_loss"] ?? .nan, m["final_loss"] ?? .nan,
                             Int(m["nonzero"] ?? 0), Int(m["active_heads"] ?? 0), m["delta_l2"] ?? .nan))
                if let p = obj["delta_path"] { print("  saved \(p)") }
            } else if spec.method == .functionVector {
                for (label, p) in [("FV, 0-shot", ""), ("FV, \(spec.shots)-shot", "few_shot_")] {
                    print("  " + label.padding(toLength: 15, withPad: " ", startingAt: 0)
                          + [p + "exact_match", p + "first_token_accuracy", p + "judge_accuracy"].map(pct)
                          .joined(separator: "        "))
                }
                print(String(format: "  FV: %d heads at block %d, ‖FV‖ %.1f; p(answer) %.3f clean, %.3f corrupted; "
                                 + "top effect %+.4f", Int(m["fv_heads"] ?? 0), Int(m["fv_layer"] ?? 0),
                             m["fv_norm"] ?? .nan, m["clean_p_answer"] ?? .nan, m["corrupted_p_answer"] ?? .nan,
                             m["top_effect"] ?? .nan))
                if let p = obj["artefact_path"] { print("  saved \(p)") }
            } else {
                print("  \(spec.method.rawValue.padding(toLength: 15, withPad: " ", startingAt: 0))\(pct("exact_match"))        \(pct("first_token_accuracy"))        \(pct("judge_accuracy"))")
                if spec.method.isFineTuning {
                    print(String(format: "  %.0f parameters trained: loss %.4f → %.4f", m["parameters"] ?? 0,
                                 m["initial_loss"] ?? .nan, m["final_loss"] ?? .nan))
                }
                if let p = obj["artefact_path"] { print("  saved \(p)") }
            }
        }
        if specs.count > 1 {
            // mean ± std over the seeds; with --json one object whose `per_seed` holds each job's
            func stats(_ k: String) -> (Double, Double) {
                let v = summaries.compactMap { $0[k] as? Double }
                let mean = v.reduce(0, +) / Double(max(v.count, 1))
                let sd = v.count > 1 ? (v.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(v.count - 1)).squareRoot() : 0
                return (mean, sd)
            }
            let keys = ["exact_match", "first_token_accuracy", "judge_accuracy", "zero_shot_exact_match", "final_loss", "nonzero"]
            if json {
                var obj: [String: Any] = ["task": spec.task, "layer": spec.layer, "seeds": seedList, "method": spec.method.rawValue,
                                          "solver": job.solver.rawValue, "per_seed": summaries,
                                          "step_ms": summaries.first?["step_ms"] ?? 0, "fused_jobs": specs.count]
                for k in keys { let (a, b) = stats(k); obj[k] = a; obj[k + "_std"] = b }
                print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
            } else {
                print("over seeds \(seedList.map(String.init).joined(separator: ","))  (\(specs.count) jobs solved together)")
                for k in keys {
                    let (a, b) = stats(k)
                    print("  \(k.padding(toLength: 24, withPad: " ", startingAt: 0)) \(String(format: "%.3f ± %.3f", a, b))")
                }
            }
        }
        if !json {
            print(String(format: "  time: load %.0f ms, total %.1f s", lm.loadSeconds * 1000, Date().timeIntervalSince(t0)))
        }
    }
}

/// `worker bench`: the engine's speed on one job's shapes.
public struct BenchCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time model load, prefill, solver steps and evaluation; print the figures.",
        discussion: """
        Example:
          worker bench --task antonym --layer 4 --steps 50 --threads 1 --json
        Runs the job `worker run` runs (the same pipeline), timed: step_ms is the median solver \
        step (loss, gradient and update for N training prompts); forward_ms the loss alone at the \
        solver's precision; eval_ms the greedy evaluation with Δ and without (0-shot), and \
        eval_prompt_ms, eval_last_ms, eval_decode_ms where its time went (the prompt positions \
        before each prompt's last, the last positions once per variant, the decoding steps), \
        with the token rows each ran (eval_*_rows). With --method lora or ia3, step_ms is a \
        fine-tuning step (the full-sequence path, fp32) and eval_ms the adapted model's evaluation.
        """)

    @OptionGroup public var modelOptions: ModelOptions
    @OptionGroup public var job: JobOptions
    @Flag(name: .long, help: "Print one JSON object.")
    public var json = false

    public init() {}

    public func run() throws {
        let t0 = Date()
        let lm = try modelOptions.load()
        let loadMs = Date().timeIntervalSince(t0) * 1000
        // the job `worker run` would run, timed through the pipeline's hooks
        var setupMs = 0.0, fwdMs = 0.0
        var times: [Double] = []
        var last = Date()
        let hooks = DeltaPipeline.Hooks(
            onSetup: { setupMs = $0; last = Date() },
            onStep: { j, _ in
                guard j == 0 else { return }
                let now = Date(); times.append(now.timeIntervalSince(last) * 1000); last = now
            },
            afterSolve: { path, loss, results in
                // the loss alone (no backward) at the solved Δ, at the solver's precision
                let saved = path.precision
                path.precision = job.solve.precision
                defer { path.precision = saved }
                let f = Date()
                for _ in 0..<5 { _ = path.loss(delta: results[0].delta, loss: loss) }
                fwdMs = Date().timeIntervalSince(f) * 1000 / 5
            })
        let outcome: JobOutcome
        let spec = try job.spec(model: modelOptions.model)
        lm.evaluationClock.reset()
        do {
            if spec.method.isFineTuning {
                // a fine-tuning job (lora, ia3): its steps timed through the job's progress, in fp32
                outcome = try PairTaskJobs(lm: lm).run(spec) { phase, _, _, _ in
                    guard phase == "solve" else { return }
                    let now = Date(); times.append(now.timeIntervalSince(last) * 1000); last = now
                }
            } else {
                outcome = try PairTaskJobs(lm: lm).runFused([spec], hooks: hooks)[0]
            }
        } catch let e as EngineJobError { throw CLIError(e.message) }
        let ranPrecision = spec.method.isFineTuning ? Precision.fp32 : job.solve.precision.effective
        if times.count > job.steps { times.removeLast() }   // Adam's final report is a re-evaluation, not a step
        let m = outcome.metrics
        let sorted = times.sorted()
        let median = sorted.isEmpty ? 0 : sorted[sorted.count / 2]
        var rss = rusage(); getrusage(RUSAGE_SELF.rawValue, &rss)
        var obj: [String: Any] = [
            "step_ms": median, "step_ms_min": sorted.first ?? 0, "forward_ms": fwdMs, "load_ms": loadMs, "setup_ms": setupMs,
            "eval_ms": m["eval_ms"] ?? 0, "n_test": Int(m["n_test"] ?? 0), "n_train": Int(m["n_train"] ?? 0), "steps": times.count,
            "layer": job.layer, "threads": modelOptions.threads, "solver": job.solver.rawValue,
            "precision": ranPrecision.rawValue, "exact_match": m["exact_match"] ?? 0, "method": spec.method.rawValue,
            "int8_kernels": ranPrecision == .int8 ? Int8Kernels.current.rawValue : "none",
            "fp32_kernels": Fp32Kernels.current.rawValue,
            "zero_shot_exact_match": m["zero_shot_exact_match"] ?? 0,
            "total_s": Date().timeIntervalSince(t0), "peak_rss_mb": Double(rss.ru_maxrss) / 1024, "backend": lm.model.backend.name,
        ]
        for part in EvaluationClock.Part.allCases {   // eval_prompt_ms, eval_prompt_rows, …
            obj["eval_\(part.rawValue)_ms"] = lm.evaluationClock[part].ms
            obj["eval_\(part.rawValue)_rows"] = lm.evaluationClock[part].rows
        }
        if json {
            print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
        } else {
            for k in obj.keys.sorted() { print("\(k.padding(toLength: 14, withPad: " ", startingAt: 0)) \(obj[k]!)") }
        }
    }
}
