import Foundation

// The job: what a worker runs, what the coordinator stores and hashes, what the wire carries.
// This module has no C dependency, so the coordinator, the protocol and the engine all share it.

/// A closed set of names (methods, solvers, precisions): parsed and listed in one way everywhere,
/// so the grid, the CLI, the wire and the engine report an unknown name in the same words. A
/// value prints as its name.
public protocol NamedChoice: RawRepresentable, CaseIterable, Sendable, CustomStringConvertible
where RawValue == String {}

extension NamedChoice {
    public var description: String { rawValue }

    /// `"a", "b", "c"`, in declaration order.
    public static var quotedNames: String { allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ") }

    /// The value named `name`, or an error naming the field and the known names.
    public static func parse(_ name: String, field: String) throws -> Self {
        guard let v = Self(rawValue: name) else {
            throw JobSpecError(field: field, message: "expected one of \(quotedNames), got \"\(name)\"")
        }
        return v
    }
}

/// A job field with a value no worker can run.
public struct JobSpecError: Error, CustomStringConvertible, Equatable, DeterministicJobFailure {
    public var field: String
    public var message: String
    public init(field: String, message: String) {
        self.field = field
        self.message = message
    }
    public var description: String { "\(field): \(message)" }
    public var isDeterministic: Bool { true }
}

/// What a job does. Each method declares the grid axes its result depends on (`axes`), which
/// decides both grid expansion and the job id.
public enum JobMethod: String, NamedChoice, Codable {
    /// Learn Δ on the training pairs, then evaluate with Δ and without it (0-shot).
    case intervention
    /// Greedy decoding of the bare prompt.
    case zeroShot = "zero-shot"
    /// Greedy decoding after `shots` demonstrations drawn from the training split.
    case fewShot = "few-shot"
    /// Fine-tuning baseline: LoRA (rank `lora.rank`, scale `lora.alpha`/rank) on the attention
    /// projections of every layer, trained with Adam (`lora.lr`, `steps`) on the training pairs'
    /// first-target-token loss, then evaluated by greedy decoding as the others are.
    case lora
    /// Fine-tuning baseline: IA³, learned scalings of k_proj's and v_proj's outputs and of
    /// down_proj's input in every layer, trained as `lora` is (Adam, `ia3.lr`, `steps`).
    case ia3
    /// Fine-tuning baseline: a soft prompt, `soft_prompt.tokens` virtual tokens after the BOS whose
    /// input vectors are trained (Adam, `soft_prompt.lr`, `steps`), initialised from the task's name.
    case softPrompt = "soft-prompt"
    /// A function vector (Todd et al. 2023) from the training pairs: the outputs of the `fv.heads`
    /// attention heads with the largest average indirect effect, averaged over ICL prompts built
    /// from the training pairs and mapped through o_proj, added to the residual stream entering
    /// block `fv.layer` at the prompt's last position. Evaluated on 0-shot prompts (exact_match, …)
    /// and on `shots`-shot prompts (few_shot_exact_match, …).
    case functionVector = "function-vector"
    /// An in-context vector (Liu et al. 2023) from the training pairs: the first principal
    /// direction of their latent-state differences, shifting every block's MLP output at every
    /// position with strength `icv.alpha`; evaluated on 0-shot prompts.
    case icv
    /// Composition without training: the sum of the Δs learned by the jobs in `inputs` (each on
    /// its own task, all at this job's layer), scored on this job's task with the sum and without
    /// it (0-shot), split by this job's seed. A grid makes the input jobs from `components`.
    case add
    /// A function vector's head ranking (steps 1–3 of `function-vector`): every head's mean output
    /// over ICL prompts built from the training pairs and its average indirect effect, as an
    /// artefact; the `function-vector` jobs that name it in `inputs` reuse it instead of
    /// recomputing it. No evaluation. A grid with `function-vector` makes one per task × seed.
    case fvHeads = "fv-heads"
    /// Test kinds that need no model: a toy prox-gradient run; one that fails deterministically
    /// halfway; one that kills the worker process.
    case synthetic
    case syntheticFail = "synthetic-fail"
    case syntheticCrash = "synthetic-crash"

    /// The methods the engine runs (the others are the synthetic test kinds).
    public static let engine: [JobMethod] = [
        .intervention, .zeroShot, .fewShot, .lora, .ia3, .softPrompt, .functionVector, .icv, .add, .fvHeads,
    ]

    /// The methods that run on opinion tasks ("<file>.json#<group>", `JobSpec.opinionAddress`).
    public static let onOpinionTasks: [JobMethod] = [.intervention, .zeroShot, .fewShot]

    /// Which runner family a worker needs for this method; workers announce families in Hello.
    public enum Family: String, Sendable { case engine, synthetic }
    public var family: Family { JobMethod.engine.contains(self) ? .engine : .synthetic }

    /// The axes a method's result depends on (task, seed, test_size, max_new_tokens, the prompt
    /// and the model always count). Train size stays for the baselines: it fixes the train/test split.
    public var axes: JobAxes {
        switch self {
        case .intervention:
            return [.layer, .lambda, .gamma, .solver, .trainSize, .evalInt8]
        case .synthetic, .syntheticFail, .syntheticCrash:
            return [.layer, .lambda, .gamma, .solver, .trainSize]
        case .zeroShot: return [.trainSize, .evalInt8]
        case .fewShot: return [.trainSize, .shots, .evalInt8]
        case .lora: return [.trainSize, .solver, .lora]
        case .ia3: return [.trainSize, .solver, .ia3]
        case .softPrompt: return [.trainSize, .solver, .softPrompt]
        case .functionVector: return [.trainSize, .shots, .functionVector, .evalInt8]
        case .icv: return [.trainSize, .icv]
        // the Δs summed are the inputs'; the coordinates are theirs, so that an add job sits beside
        // the intervention it is compared with
        case .add: return [.layer, .lambda, .gamma, .solver, .trainSize, .evalInt8]
        case .fvHeads: return [.trainSize]
        }
    }

    /// The fine-tuning baselines: parameters trained by Adam through the full-sequence path.
    public var isFineTuning: Bool { !axes.intersection(.fineTuning).isEmpty }

    /// Whether the method runs an optimiser (its solver settings are used; `add` only carries
    /// them as its inputs' coordinates).
    public var trains: Bool { axes.contains(.solver) && self != .add }

    /// Whether the method's artefact is a Δ (learned, or for `add` summed).
    public var learnsDelta: Bool { axes.contains(.solver) && !isFineTuning }

    /// Whether the method scores the model on test pairs (test_size and max_new_tokens matter).
    public var evaluates: Bool { self != .fvHeads }

    /// Whether the method decodes the test split's plain (0-shot) prompts on the base model, so
    /// that a worker which evaluated the split before reuses its prompt positions and unsteered
    /// answers (the engine's evaluation memos; see `JobSpec.evaluationSplit`).
    public var readsPlainPrompts: Bool { [.zeroShot, .intervention, .add, .functionVector].contains(self) }

    /// What a job of this method reads from other jobs' artefacts (its `inputs`): nil for none.
    public var inputKind: String? {
        switch self {
        case .add: return "the Δs to add (intervention jobs)"
        case .functionVector: return "an fv-heads job's head ranking (optional: else the job ranks the heads)"
        default: return nil
        }
    }
}

/// Grid axes. An axis a method does not depend on is collapsed when a grid is expanded, so e.g. a
/// zero-shot baseline runs once per task × seed, not once per layer × λ × γ.
public struct JobAxes: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let layer = JobAxes(rawValue: 1)
    public static let lambda = JobAxes(rawValue: 2)
    public static let gamma = JobAxes(rawValue: 4)
    public static let solver = JobAxes(rawValue: 8)  // steps, lr, solver method, precision
    public static let trainSize = JobAxes(rawValue: 16)
    public static let shots = JobAxes(rawValue: 32)
    // each method's own parameters (its `Tunable`s), so that one method's settings in a grid
    // never enter another's job id
    public static let lora = JobAxes(rawValue: 64)
    public static let ia3 = JobAxes(rawValue: 128)
    public static let softPrompt = JobAxes(rawValue: 256)
    public static let functionVector = JobAxes(rawValue: 512)
    public static let icv = JobAxes(rawValue: 1024)
    /// `eval.int8`: the methods whose evaluation can run its products in int8
    public static let evalInt8 = JobAxes(rawValue: 2048)
    /// The fine-tuning baselines' axes.
    public static let fineTuning: JobAxes = [.lora, .ia3, .softPrompt]
}

/// The proximal solver for Δ. The engine implements each; the measurements behind the default
/// are in README ("Solver").
public enum SolverMethod: String, NamedChoice, Codable {
    /// `adam`, then Polyak–Ruppert tail averaging: the result is the prox (in Adam's metric) of
    /// the mean of the iterates of the second half of the run, not the last iterate. With lr 0.1
    /// Adam's iterates keep jumping (training loss 0.1 → 5 → 4 between steps 150 and 200 on
    /// antonym seed 0); their mean is the steadier Δ. Measured on antonym: 0.298 ± 0.057 over 15
    /// seeds against 0.262 for `adam` and 0.254 for the reference's `adam-subgradient`; paired
    /// over 20 seeds, +0.027 ± 0.020 over `adam-subgradient` (within noise), with exact zeros,
    /// which the subgradient method never gives (see README). The default.
    case adamAveraged = "adam-avg"
    /// Adam on the task loss, then the prox of the penalty in Adam's own diagonal metric (each
    /// coordinate's threshold scaled by its Adam step lr/(√v̂+ε)): coordinates the loss no longer
    /// pulls on are driven to exact zeros at Adam's pace.
    case adam
    /// Adam on the task loss, then the exact prox of the penalty with the uniform step lr.
    case adamUniform = "adam-uniform"
    /// The PyTorch reference's method: Adam on loss + penalty with the penalty's subgradient
    /// (sign(0) = 0); no prox, so no exact zeros. For comparisons with the reference.
    case adamSubgradient = "adam-subgradient"
    /// Accelerated proximal gradient (FISTA) with backtracking line search and adaptive restart.
    case fista

    /// What a job that names no solver gets.
    public static let defaultMethod: SolverMethod = .adamAveraged
}

/// How the solver's products may round their operands.
public enum Precision: String, NamedChoice, Codable {
    /// Everything in fp32 on the exactly decoded weights (what the reference computes).
    case fp32
    /// Forward: x rounded to int8 per block of 32 (scale max|x|/127), multiplied against the
    /// exact 4- or 8-bit weights with integer dot products (AVX-512 VNNI, AVX-VNNI or AVX2 on
    /// x86-64, NEON sdot on aarch64; bit-identical). Backward: dy rounded
    /// the same way, against Wᵀ rounded once to int8 per run of 32 rows of W (a copy built on
    /// first use). 2–4× the fp32 kernels (x86-64; aarch64 never measured). Only x86-64 CPUs with
    /// AVX2 and aarch64 CPUs with the dot product; elsewhere, and for weights the file does not
    /// quantise, fp32.
    case int8

    /// The solver's default: `int8`. Over 20 paired antonym seeds its Δs matched fp32's exact match
    /// (0.297 ± 0.044 against 0.284 ± 0.072; paired difference +0.014 ± 0.013) at ~2.5× the step
    /// speed (see README, "Precision").
    public static let solverDefault: Precision = .int8
}

/// One cell of an experiment grid, as a worker receives it. The coordinator builds it from
/// grid.json; `worker run` builds it from its flags. Everything a job's result depends on is here,
/// so a hash of its normalised form identifies the job (`id`).
public struct JobSpec: Sendable, Equatable, Hashable {
    /// Model registry name (e.g. "smollm2-135m-instruct") or a path to a .gguf file.
    public var model: String
    /// Task registry name (e.g. "antonym") or a path to a function-vector JSON file.
    public var task: String
    public var method: JobMethod
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
    /// Number of demonstrations for few-shot.
    public var shots: Int
    /// Solver for methods that learn Δ; nil = `SolverMethod.defaultMethod` (grids name it).
    public var solver: SolverMethod?
    /// Arithmetic of the solver's products; nil = the worker's default (grids name it).
    /// Evaluation is fp32 whatever this says.
    public var precision: Precision?
    /// Prompt template with `{input}` ("" = "Q: {input}\nA:") and target template with
    /// `{output}` ("" = " {output}").
    public var promptTemplate: String
    public var targetTemplate: String
    /// The job's `Tunable` parameters that differ from their defaults, by key (read them with
    /// `self[tunable]`). A tunable at its default is absent, so adding one keeps every job's id.
    public var tunables: [String: Double] = [:]
    /// Ids of the jobs whose artefacts this job reads, in order (see `JobMethod.inputKind`): the
    /// coordinator runs it after them and hands their artefacts to the worker with it. Part of the
    /// id when not empty: what a job reads is part of what it is.
    public var inputs: [String] = []

    /// The penalty weights a job gets when it names none (grid.json without "lambda"/"gamma",
    /// `worker run` and `worker opinion` without --lambda/--gamma): the paper's. On a 16-task
    /// development suite (5 paired seeds each) 0.001 scored higher (0.152 against 0.133, paired
    /// +0.019) but lost on the 5 tasks kept aside (0.039 against 0.046), so the default stayed
    /// (README, "Choosing the solver's defaults").
    public static let defaultLambda = 0.01
    public static let defaultGamma = 0.01

    public init(
        model: String = "smollm2-135m-instruct", task: String, method: JobMethod = .intervention,
        layer: Int = 4, lambda: Double = JobSpec.defaultLambda, gamma: Double = JobSpec.defaultGamma, seed: Int = 0,
        trainSize: Int = 10, testSize: Int = 200, steps: Int = 200, lr: Double = 0.1,
        maxNewTokens: Int = 0, shots: Int = 10, solver: SolverMethod? = nil, precision: Precision? = nil,
        promptTemplate: String = "", targetTemplate: String = ""
    ) {
        self.model = model
        self.task = task
        self.method = method
        self.layer = layer
        self.lambda = lambda
        self.gamma = gamma
        self.seed = seed
        self.trainSize = trainSize
        self.testSize = testSize
        self.steps = steps
        self.lr = lr
        self.maxNewTokens = maxNewTokens
        self.shots = shots
        self.solver = solver
        self.precision = precision
        self.promptTemplate = promptTemplate
        self.targetTemplate = targetTemplate
    }

    /// This spec with every axis its method ignores set to a neutral value (so the id does not
    /// depend on them), and the default solver and precision named where the method has them (so
    /// the id says what ran, even if a default changes).
    public var normalised: JobSpec {
        var s = self
        let a = method.axes
        if !a.contains(.layer) { s.layer = 0 }
        if !a.contains(.lambda) { s.lambda = 0 }
        if !a.contains(.gamma) { s.gamma = 0 }
        if !a.contains(.solver) {
            s.steps = 0
            s.lr = 0
            s.solver = nil
            s.precision = nil
        } else {
            s.solver = s.solver ?? .defaultMethod
            s.precision = s.precision ?? .solverDefault
        }
        if !a.contains(.trainSize) { s.trainSize = 0 }
        if !a.contains(.shots) { s.shots = 0 }
        if !method.evaluates {
            s.testSize = 0
            s.maxNewTokens = 0
        }
        for t in Tunable.all where s.tunables[t.key] != nil {
            if !a.contains(t.axis) || s.tunables[t.key] == t.defaultValue { s.tunables[t.key] = nil }
        }
        return s
    }

    /// The canonical JSON of this spec as it is (not normalised): the Codable form with sorted
    /// keys and canonical numbers. New fields take part automatically.
    public var canonicalJSON: String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        guard let data = try? enc.encode(self), let v = try? JSONValue.parse(data) else { return "\(self)" }
        return v.canonical
    }

    /// The job's id: the first 16 hex digits of SHA-256 of its normalised canonical JSON. The
    /// store's key: the same job resubmitted gets the same id and is reused.
    public var id: String { String(SHA256.hex(normalised.canonicalJSON).prefix(16)) }

    /// What the job's plain-prompt evaluation depends on (model, task, split, prompt templates,
    /// stop rule, evaluation precision), for methods that have one (`readsPlainPrompts`), else
    /// nil. Jobs with the same value run faster one after another on one worker, which the
    /// scheduler prefers (`Scheduler` dispatch).
    public var evaluationSplit: String? {
        guard method.readsPlainPrompts, JobSpec.opinionAddress(task) == nil else { return nil }
        return [model, task, "\(seed)", "\(trainSize)", "\(testSize)", promptTemplate, targetTemplate,
                "\(maxNewTokens)", "\(self[.evalInt8])"].joined(separator: "\u{0}")
    }
}

extension JobSpec: Codable {
    enum CodingKeys: String, CodingKey {
        case model, task, method, layer, lambda, gamma, seed, trainSize, testSize, steps, lr, maxNewTokens, shots,
            solver
        case precision, promptTemplate, targetTemplate, tunables, inputs
    }

    /// Every field; `solver` as its name or "" and `precision` left out when nil, `tunables` and
    /// `inputs` when empty: job ids hash this form, and jobs keep the ids they had before those fields existed.
    /// Stored job rows use the same form.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(model, forKey: .model)
        try c.encode(task, forKey: .task)
        try c.encode(method, forKey: .method)
        try c.encode(layer, forKey: .layer)
        try c.encode(lambda, forKey: .lambda)
        try c.encode(gamma, forKey: .gamma)
        try c.encode(seed, forKey: .seed)
        try c.encode(trainSize, forKey: .trainSize)
        try c.encode(testSize, forKey: .testSize)
        try c.encode(steps, forKey: .steps)
        try c.encode(lr, forKey: .lr)
        try c.encode(maxNewTokens, forKey: .maxNewTokens)
        try c.encode(shots, forKey: .shots)
        try c.encode(solver?.rawValue ?? "", forKey: .solver)
        if let precision { try c.encode(precision, forKey: .precision) }
        try c.encode(promptTemplate, forKey: .promptTemplate)
        try c.encode(targetTemplate, forKey: .targetTemplate)
        if !tunables.isEmpty { try c.encode(tunables, forKey: .tunables) }
        if !inputs.isEmpty { try c.encode(inputs, forKey: .inputs) }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func named<T: NamedChoice>(_ key: CodingKeys, _: T.Type) throws -> T? {
            let s = try c.decodeIfPresent(String.self, forKey: key) ?? ""
            return s.isEmpty ? nil : try T.parse(s, field: key.stringValue)
        }
        self.init(
            model: try c.decode(String.self, forKey: .model), task: try c.decode(String.self, forKey: .task),
            method: try JobMethod.parse(try c.decode(String.self, forKey: .method), field: "method"),
            layer: try c.decode(Int.self, forKey: .layer),
            lambda: try c.decode(Double.self, forKey: .lambda), gamma: try c.decode(Double.self, forKey: .gamma),
            seed: try c.decode(Int.self, forKey: .seed), trainSize: try c.decode(Int.self, forKey: .trainSize),
            testSize: try c.decode(Int.self, forKey: .testSize), steps: try c.decode(Int.self, forKey: .steps),
            lr: try c.decode(Double.self, forKey: .lr), maxNewTokens: try c.decode(Int.self, forKey: .maxNewTokens),
            shots: try c.decode(Int.self, forKey: .shots),
            solver: try named(.solver, SolverMethod.self), precision: try named(.precision, Precision.self),
            promptTemplate: try c.decodeIfPresent(String.self, forKey: .promptTemplate) ?? "",
            targetTemplate: try c.decodeIfPresent(String.self, forKey: .targetTemplate) ?? "")
        for (k, v) in try c.decodeIfPresent([String: Double].self, forKey: .tunables) ?? [:] {
            try self.set(try Tunable.named(k), v)
        }
        inputs = try c.decodeIfPresent([String].self, forKey: .inputs) ?? []
    }
}

extension JobSpec {
    /// An opinion task's address, "<file>.json#<group>": one group of an OpinionQA-layout file, so
    /// that groups are a grid axis (the tasks list). nil for any other task.
    public static func opinionAddress(_ task: String) -> (path: String, group: String)? {
        guard let hash = task.lastIndex(of: "#"), task[..<hash].hasSuffix(".json") else { return nil }
        let group = String(task[task.index(after: hash)...])
        return group.isEmpty ? nil : (String(task[..<hash]), group)
    }
}
