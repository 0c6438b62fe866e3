import Engine
import Protocol

// Engine.JobSpec <-> wire JobParams (field by field; the coordinator needs the same mapping).

extension JobSpec {
    public init(_ p: Intervene_V1_JobParams) {
        self.init(model: p.model, task: p.task, method: p.method, layer: Int(p.layer),
                  lambda: p.lambda, gamma: p.gamma, seed: Int(p.seed), trainSize: Int(p.trainSize),
                  testSize: Int(p.testSize), steps: Int(p.steps), lr: p.lr,
                  maxNewTokens: Int(p.maxNewTokens), shots: Int(p.shots), solver: p.solver, precision: p.precision,
                  promptTemplate: p.promptTemplate, targetTemplate: p.targetTemplate)
    }
}

extension Intervene_V1_JobParams {
    public init(_ s: JobSpec) {
        self.init()
        model = s.model; task = s.task; method = s.method
        layer = Int32(clamping: s.layer); lambda = s.lambda; gamma = s.gamma; seed = Int64(s.seed)
        trainSize = Int32(clamping: s.trainSize); testSize = Int32(clamping: s.testSize)
        steps = Int32(clamping: s.steps); lr = s.lr
        maxNewTokens = Int32(clamping: s.maxNewTokens); shots = Int32(clamping: s.shots); solver = s.solver
        precision = s.precision
        promptTemplate = s.promptTemplate; targetTemplate = s.targetTemplate
    }
}
