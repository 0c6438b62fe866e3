import JobCore

// The one mapping between the job and its wire form, field by field. The worker and the
// coordinator both use it; `JobWireTests` sets every field to a non-default value and checks the
// round trip through the bytes, so a field this mapping forgets fails there.

extension JobParams {
    public init(_ s: JobSpec) {
        self.init()
        model = s.model
        task = s.task
        method = s.method.rawValue
        layer = Int32(clamping: s.layer)
        lambda = s.lambda
        gamma = s.gamma
        seed = Int64(s.seed)
        trainSize = Int32(clamping: s.trainSize)
        testSize = Int32(clamping: s.testSize)
        steps = Int32(clamping: s.steps)
        lr = s.lr
        maxNewTokens = Int32(clamping: s.maxNewTokens)
        shots = Int32(clamping: s.shots)
        solver = s.solver?.rawValue ?? ""
        precision = s.precision?.rawValue ?? ""
        promptTemplate = s.promptTemplate
        targetTemplate = s.targetTemplate
        tunables = s.tunables
        inputs = s.inputs
    }
}

extension JobSpec {
    /// The job a wire message describes; a name or tunable this build does not know, or a value out
    /// of range, is a `JobSpecError` naming the field (a deterministic failure: the same job fails
    /// the same way anywhere).
    public init(wire p: JobParams) throws {
        self.init(
            model: p.model, task: p.task, method: try JobMethod.parse(p.method, field: "method"),
            layer: Int(p.layer), lambda: p.lambda, gamma: p.gamma, seed: Int(p.seed),
            trainSize: Int(p.trainSize), testSize: Int(p.testSize), steps: Int(p.steps), lr: p.lr,
            maxNewTokens: Int(p.maxNewTokens), shots: Int(p.shots),
            solver: p.solver.isEmpty ? nil : try SolverMethod.parse(p.solver, field: "solver"),
            precision: p.precision.isEmpty ? nil : try Precision.parse(p.precision, field: "precision"),
            promptTemplate: p.promptTemplate, targetTemplate: p.targetTemplate)
        for (k, v) in p.tunables { try set(try Tunable.named(k), v) }
        inputs = p.inputs
    }
}
