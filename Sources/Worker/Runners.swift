import Engine
import Foundation

public struct JobError: DeterministicJobFailure, CustomStringConvertible, Equatable {
    public var message: String
    public var isDeterministic: Bool
    public init(_ message: String, deterministic: Bool) {
        self.message = message; self.isDeterministic = deterministic
    }
    /// Bad parameters, unknown task/method/model: the same job will fail the same way.
    public static func deterministic(_ message: String) -> JobError { JobError(message, deterministic: true) }
    /// Something that may not happen again (resources, I/O).
    public static func transient(_ message: String) -> JobError { JobError(message, deterministic: false) }
    public var description: String { message }

    /// How a thrown error is reported: its text, and whether it is deterministic. Errors that do
    /// not conform to `DeterministicJobFailure` count as transient (the coordinator caps retries).
    public static func classify(_ error: Error) -> (reason: String, deterministic: Bool) {
        if let e = error as? DeterministicJobFailure {
            return ("\(e)", e.isDeterministic)
        }
        if error is DecodingError { return ("\(error)", true) }
        return ("\(error)", false)
    }
}

/// Chooses the runner for a job: methods starting with "synthetic" run `SyntheticJobRunner`;
/// everything else runs the engine. Runners are made once and kept for the worker's life (the
/// engine runner caches loaded models). Use from one thread (the compute thread).
public final class RunnerRegistry {
    public typealias Factory = () throws -> JobRunner
    private let makeEngine: Factory
    private let makeSynthetic: () -> JobRunner
    private var engine: JobRunner?
    private var synthetic: JobRunner?

    public init(synthetic: @escaping () -> JobRunner = { SyntheticJobRunner() },
                engine: @escaping Factory = RunnerRegistry.makeEngineRunner) {
        self.makeSynthetic = synthetic
        self.makeEngine = engine
    }

    /// Method families this build can run (sent in Hello).
    public static let methodFamilies = [JobMethod.Family.synthetic.rawValue, JobMethod.Family.engine.rawValue]

    public func runner(for spec: JobSpec) throws -> JobRunner {
        if spec.method.family == .synthetic {
            if let r = synthetic { return r }
            let r = makeSynthetic()
            synthetic = r
            return r
        }
        if let r = engine { return r }
        let r = try makeEngine()
        engine = r
        return r
    }

    /// Runs `spec` on the right runner.
    public func run(_ spec: JobSpec, inputs: JobInputs = .none, progress: JobProgress?) throws -> JobOutcome {
        try runner(for: spec).run(spec, inputs: inputs, progress: progress)
    }

    /// The engine runner (one BLAS thread unless told otherwise).
    public static func makeEngineRunner() throws -> JobRunner { EngineJobRunner() }
}
