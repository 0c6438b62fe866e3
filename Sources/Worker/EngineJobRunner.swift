import Engine
import Foundation

/// Runs engine jobs (every `JobMethod.engine` method). Keeps every model it loads, so later
/// jobs on the same model start at once.
public final class EngineJobRunner: JobRunner {
    public let threads: Int
    public let solver: SolverMethod
    public let precision: Precision
    private var models: [String: LanguageModel] = [:]
    private let registry: TaskRegistry

    public init(threads: Int = 1, solver: SolverMethod = .defaultMethod, precision: Precision = .solverDefault,
                registry: TaskRegistry = TaskRegistry()) {
        self.threads = threads; self.solver = solver; self.precision = precision; self.registry = registry
    }

    /// Names of the models loaded so far (announced to the coordinator).
    public var loadedModels: [String] { models.keys.sorted() }

    public func model(_ name: String) throws -> LanguageModel {
        if let m = models[name] { return m }
        do {
            let m = try LanguageModel(name, backend: CPUBackend(threads: threads), threads: max(threads, 2))
            models[name] = m
            return m
        } catch {
            throw JobError.deterministic("cannot load model \(name): \(error)")
        }
    }

    public func run(_ spec: JobSpec, inputs: JobInputs, progress: JobProgress?) throws -> JobOutcome {
        let lm = try model(spec.model)
        var exp = PairTaskJobs(lm: lm, registry: registry, solverMethod: solver, precision: precision)
        if let progress { exp.shouldStop = { progress.isCancelled } }
        do {
            // Training steps are the progress the coordinator sees, the evaluation one step after
            // them; a job that trains nothing (a prompting baseline, add, a head ranking) shows
            // its own phases' counts (items evaluated, layers ranked).
            let trains = spec.method.trains
            return try exp.run(spec, inputs: inputs.artefacts(of: spec)) { phase, done, total, metrics in
                if phase == "solve" {
                    progress?.progress(step: done, total: total + 1, metrics: metrics)
                } else if !trains {
                    progress?.progress(step: done, total: total, metrics: metrics)
                } else if done == total && phase == "eval" {
                    progress?.progress(step: spec.steps + 1, total: spec.steps + 1, metrics: [:])
                }
            }
        } catch let e as EngineJobError {
            throw JobError(e.message, deterministic: e.deterministic)
        }
    }
}
