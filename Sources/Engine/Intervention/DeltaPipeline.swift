import Foundation

/// A task kind's part in a Δ job: the training prompts and the loss over them (what the solver
/// minimises), how a learned Δ is scored on held-out data, and the task's entries in the
/// artefact. Function-vector tasks (`PairTaskJobs`) and opinion tasks (`OpinionTask`) are the two
/// kinds today; a new kind is a new way to fill this in.
public struct DeltaProblem {
    /// Training prompts, tokenised; one row each.
    public var prompts: [[Int]]
    /// The loss over those rows.
    public var loss: TaskLoss
    /// The artefact's `task` (a name, a path, or "opinion:<group>").
    public var task: String
    public var seed: Int
    /// Scores a learned Δ: metrics with Δ and for the Δ = 0 baseline (prefixed `zero_shot_`),
    /// and `n_test`. `progress(done, total)` reports evaluated items.
    public var evaluate: (_ delta: [Float], _ progress: ((Int, Int) -> Void)?) throws -> [String: Double]
    /// Task-specific artefact entries, given the evaluation's metrics (formats, data file, a headline figure).
    public var artefactEntries: (_ metrics: [String: Double]) -> [String: String]

    public init(
        prompts: [[Int]], loss: TaskLoss, task: String, seed: Int,
        evaluate: @escaping (_ delta: [Float], _ progress: ((Int, Int) -> Void)?) throws -> [String: Double],
        artefactEntries: @escaping (_ metrics: [String: Double]) -> [String: String] = { _ in [:] }
    ) {
        self.prompts = prompts
        self.loss = loss
        self.task = task
        self.seed = seed
        self.evaluate = evaluate
        self.artefactEntries = artefactEntries
    }
}

/// What every problem of one pipeline run shares: the site and the objective's settings, as the
/// job states them (the artefact records these values).
public struct DeltaSettings: Sendable {
    public var layer: Int
    public var lambda: Double
    public var gamma: Double
    public var solver: SolverMethod
    public var steps: Int
    public var lr: Double
    public var precision: Precision
    /// Early stopping (`SolverOptions.tolerance`; 0 = every step).
    public var tolerance: Double = 0
    /// The artefact's `method`.
    public var method: String = JobMethod.intervention.rawValue
    public init(
        layer: Int, lambda: Double, gamma: Double, solver: SolverMethod = .defaultMethod, steps: Int = 200,
        lr: Double = 0.1, precision: Precision = .solverDefault
    ) {
        self.layer = layer
        self.lambda = lambda
        self.gamma = gamma
        self.solver = solver
        self.steps = steps
        self.lr = lr
        self.precision = precision
    }
    /// Checked between solver steps: true stops the run and the pipeline throws `JobCancelled`.
    public var shouldStop: (@Sendable () -> Bool)? = nil
    public var options: SolverOptions {
        var o = SolverOptions(
            method: solver, steps: steps, lr: Float(lr), tolerance: Float(tolerance), precision: precision)
        o.shouldStop = shouldStop
        return o
    }
    public func penalty(_ cfg: LlamaConfig) -> SparseGroupLasso {
        SparseGroupLasso(gamma: Float(gamma), lambda: Float(lambda), heads: cfg.nHeads, headDim: cfg.headDim)
    }
}

/// One learned Δ: the solver's run, the metrics (solver, evaluation, timings) and the artefact.
public struct DeltaOutcome {
    public var result: SolverResult
    public var metrics: [String: Double]
    public var artefact: DeltaArtefact
}

/// prepare → solve → evaluate → artefact, once for every job that learns a Δ: the worker's job
/// runner, `worker run`, `worker opinion` and `worker bench` (through `Hooks`) all come here.
/// Several problems are solved together on one path (one weight read per step for all) and then
/// evaluated one by one.
public struct DeltaPipeline {
    public struct Hooks {
        /// The path's set-up (prefill of every prompt, caches), in ms.
        public var onSetup: ((_ ms: Double) -> Void)?
        /// After every solver step of problem `job`.
        public var onStep: ((_ job: Int, _ step: SolverStep) -> Void)?
        /// After solving, before evaluating: the path (at its default precision), the loss solved and the results.
        public var afterSolve: ((_ path: InterventionPath, _ loss: TaskLoss, _ results: [SolverResult]) -> Void)?
        /// Evaluation progress of problem `job`.
        public var onEval: ((_ job: Int, _ done: Int, _ total: Int) -> Void)?
        public init(
            onSetup: ((Double) -> Void)? = nil, onStep: ((Int, SolverStep) -> Void)? = nil,
            afterSolve: ((InterventionPath, TaskLoss, [SolverResult]) -> Void)? = nil,
            onEval: ((Int, Int, Int) -> Void)? = nil
        ) {
            self.onSetup = onSetup
            self.onStep = onStep
            self.afterSolve = afterSolve
            self.onEval = onEval
        }
    }

    public let lm: LanguageModel
    public init(lm: LanguageModel) { self.lm = lm }

    public func run(_ problems: [DeltaProblem], settings: DeltaSettings, hooks: Hooks = Hooks()) throws
        -> [DeltaOutcome]
    {
        precondition(!problems.isEmpty)
        let cfg = lm.config
        try lm.checkLayer(settings.layer)
        if problems.count > 1 && settings.solver == .fista {
            throw EngineJobError("the fista solver runs one job at a time; use an Adam solver to fuse seeds")
        }
        let t0 = Date()
        var prompts: [[Int]] = []
        var rows: [Range<Int>] = []
        for p in problems {
            rows.append(prompts.count..<(prompts.count + p.prompts.count))
            prompts += p.prompts
        }
        let loss = try TaskLoss.concatenating(problems.map(\.loss))

        let tp = Date()
        let path = InterventionPath(model: lm, layer: settings.layer, prompts: prompts)
        let setupMs = Date().timeIntervalSince(tp) * 1000
        hooks.onSetup?(setupMs)

        let ts = Date()
        let results = Solver.solveJobs(
            path: path, jobs: rows, loss: loss, penalty: settings.penalty(cfg),
            options: settings.options, onStep: hooks.onStep)
        let solveMs = Date().timeIntervalSince(ts) * 1000
        if settings.shouldStop?() == true { throw JobCancelled() }
        hooks.afterSolve?(path, loss, results)

        let modelSHA = (try? lm.sha256()) ?? ""
        var outcomes: [DeltaOutcome] = []
        for (j, (p, res)) in zip(problems, results).enumerated() {
            let f = res.final
            var metrics: [String: Double] = [
                "n_train": Double(p.prompts.count), "setup_ms": setupMs, "solve_ms": solveMs,
                "fused_jobs": Double(problems.count),
                "step_ms": solveMs / Double(max(res.history.count, 1)),
                "final_loss": Double(f.loss), "final_objective": Double(f.objective),
                "nonzero": Double(f.nonzeros), "active_heads": Double(f.activeHeads),
                "delta_l2": Double(res.delta.reduce(0) { $0 + $1 * $1 }.squareRoot()),
                "initial_loss": Double(res.history.first?.loss ?? .nan),
            ]
            let te = Date()
            let ev = try p.evaluate(res.delta) { done, total in hooks.onEval?(j, done, total) }
            metrics.merge(ev) { _, new in new }
            metrics["eval_ms"] = Date().timeIntervalSince(te) * 1000
            metrics["total_ms"] = Date().timeIntervalSince(t0) * 1000
            let md = DeltaMetadata(
                model: lm.name, modelSHA256: modelSHA, task: p.task, method: settings.method, layer: settings.layer,
                heads: cfg.nHeads, headDim: cfg.headDim, seed: p.seed, lambda: settings.lambda, gamma: settings.gamma,
                steps: res.history.count - 1, lr: settings.lr, solver: settings.solver.rawValue,
                precision: settings.precision.ran(on: lm.model),
                trainSize: p.prompts.count, finalLoss: f.loss, extra: p.artefactEntries(metrics))
            outcomes.append(
                DeltaOutcome(result: res, metrics: metrics, artefact: DeltaArtefact(delta: res.delta, metadata: md)))
        }
        return outcomes
    }
}

extension LanguageModel {
    /// A job's layer must be one of the model's; the error names both.
    func checkLayer(_ layer: Int) throws {
        guard layer >= 0 && layer < config.nLayers else {
            throw EngineJobError("layer \(layer) is outside 0…\(config.nLayers - 1) for \(name)")
        }
    }
}

extension TaskLoss {
    /// The losses of several problems over their rows laid end to end (for fused solving); all
    /// must be of one kind.
    public static func concatenating(_ losses: [TaskLoss]) throws -> TaskLoss {
        precondition(!losses.isEmpty)
        if losses.count == 1 { return losses[0] }
        var targets: [Int] = []
        var alphabets: [[Int]] = []
        var dists: [[Float]] = []
        var kinds = Set<String>()
        for l in losses {
            switch l {
            case .nextToken(let t):
                targets += t
                kinds.insert("next-token")
            case .restrictedKL(let a, let d):
                alphabets += a
                dists += d
                kinds.insert("restricted-KL")
            }
        }
        guard kinds.count == 1 else {
            throw EngineJobError("problems solved together must have losses of one kind, got \(kinds.sorted())")
        }
        return kinds.first == "next-token"
            ? .nextToken(targets: targets) : .restrictedKL(alphabets: alphabets, target: dists)
    }
}
