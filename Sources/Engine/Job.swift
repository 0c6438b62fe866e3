import Foundation

/// One cell of an experiment grid, as a worker receives it. The coordinator builds it from
/// grid.json; `worker run` builds it from its flags. Everything a job's result depends on is here,
/// so a hash of its normalised form identifies the job.
public struct JobSpec: Codable, Sendable, Equatable, Hashable {
    /// Model registry name (e.g. "smollm2-135m-instruct") or a path to a .gguf file.
    public var model: String
    /// Task registry name (e.g. "antonym") or a path to a function-vector JSON file.
    public var task: String
    /// "intervention", "zero-shot", "few-shot" (and later "fv", ...); "synthetic" is a test kind
    /// that needs no model.
    public var method: String
    public var layer: Int
    public var lambda: Double
    public var gamma: Double
    public var seed: Int
    public var trainSize: Int
    public var testSize: Int
    public var steps: Int
    public var lr: Double
    /// Greedy decoding budget per test item; 0 = the target's token count + 2.
    public var maxNewTokens: Int
    /// Number of demonstrations for "few-shot".
    public var shots: Int
    /// Solver for "intervention" (a `SolverMethod` name: adam-avg, adam, adam-uniform,
    /// adam-subgradient, fista); empty = `SolverMethod.defaultMethod`.
    public var solver: String
    /// Arithmetic of the solver's products for "intervention" (a `Precision` name: int8, fp32);
    /// empty = the worker's default. Evaluation is fp32 whatever this says.
    public var precision: String
    /// Prompt template with `{input}` ("" = "Q: {input}\nA:") and target template with
    /// `{output}` ("" = " {output}").
    public var promptTemplate: String
    public var targetTemplate: String

    public init(model: String = "smollm2-135m-instruct", task: String, method: String = "intervention",
                layer: Int = 4, lambda: Double = 0.01, gamma: Double = 0.01, seed: Int = 0,
                trainSize: Int = 10, testSize: Int = 200, steps: Int = 200, lr: Double = 0.1,
                maxNewTokens: Int = 0, shots: Int = 10, solver: String = "", precision: String = "",
                promptTemplate: String = "", targetTemplate: String = "") {
        self.model = model; self.task = task; self.method = method; self.layer = layer
        self.lambda = lambda; self.gamma = gamma; self.seed = seed; self.trainSize = trainSize
        self.testSize = testSize; self.steps = steps; self.lr = lr; self.maxNewTokens = maxNewTokens
        self.shots = shots; self.solver = solver; self.precision = precision
        self.promptTemplate = promptTemplate; self.targetTemplate = targetTemplate
    }

    enum CodingKeys: String, CodingKey {
        case model, task, method, layer, lambda, gamma, seed, trainSize, testSize, steps, lr, maxNewTokens, shots, solver
        case precision, promptTemplate, targetTemplate
    }

    /// Every field, except `precision` when it is empty: a job's id is the hash of this form, and
    /// the jobs that have no precision (the baselines) keep the ids they had before it existed.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(model, forKey: .model); try c.encode(task, forKey: .task); try c.encode(method, forKey: .method)
        try c.encode(layer, forKey: .layer); try c.encode(lambda, forKey: .lambda); try c.encode(gamma, forKey: .gamma)
        try c.encode(seed, forKey: .seed); try c.encode(trainSize, forKey: .trainSize); try c.encode(testSize, forKey: .testSize)
        try c.encode(steps, forKey: .steps); try c.encode(lr, forKey: .lr); try c.encode(maxNewTokens, forKey: .maxNewTokens)
        try c.encode(shots, forKey: .shots); try c.encode(solver, forKey: .solver)
        if !precision.isEmpty { try c.encode(precision, forKey: .precision) }
        try c.encode(promptTemplate, forKey: .promptTemplate); try c.encode(targetTemplate, forKey: .targetTemplate)
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(model: try c.decode(String.self, forKey: .model), task: try c.decode(String.self, forKey: .task),
                  method: try c.decode(String.self, forKey: .method), layer: try c.decode(Int.self, forKey: .layer),
                  lambda: try c.decode(Double.self, forKey: .lambda), gamma: try c.decode(Double.self, forKey: .gamma),
                  seed: try c.decode(Int.self, forKey: .seed), trainSize: try c.decode(Int.self, forKey: .trainSize),
                  testSize: try c.decode(Int.self, forKey: .testSize), steps: try c.decode(Int.self, forKey: .steps),
                  lr: try c.decode(Double.self, forKey: .lr), maxNewTokens: try c.decode(Int.self, forKey: .maxNewTokens),
                  shots: try c.decode(Int.self, forKey: .shots),
                  solver: try c.decodeIfPresent(String.self, forKey: .solver) ?? "",
                  precision: try c.decodeIfPresent(String.self, forKey: .precision) ?? "",
                  promptTemplate: try c.decodeIfPresent(String.self, forKey: .promptTemplate) ?? "",
                  targetTemplate: try c.decodeIfPresent(String.self, forKey: .targetTemplate) ?? "")
    }
}

/// What a finished job hands back: scalar metrics (exact_match, first_token_accuracy,
/// zero_shot_exact_match, judge_accuracy, n_test, final_loss, nonzero, active_heads, ...) and,
/// for methods that learn one, the Δ artefact as safetensors bytes.
public struct JobOutcome: Sendable {
    public var metrics: [String: Double]
    public var artefact: Data?
    public init(metrics: [String: Double], artefact: Data? = nil) {
        self.metrics = metrics; self.artefact = artefact
    }
}

/// Receives progress while a job runs. Called on the computing thread; implementations must be
/// cheap and thread-safe (the worker forwards to its network thread).
public protocol JobProgress: AnyObject, Sendable {
    /// `step` counts solver steps (or evaluated items); `total` is the expected count.
    func progress(step: Int, total: Int, metrics: [String: Double])
}

/// Runs jobs. The worker keeps one runner (and so one loaded model per model name) for its life.
public protocol JobRunner: AnyObject {
    func run(_ spec: JobSpec, progress: JobProgress?) throws -> JobOutcome
}
