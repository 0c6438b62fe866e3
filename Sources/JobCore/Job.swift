import Foundation

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
    /// True once nobody wants the job's outcome any more (the coordinator abandoned the attempt:
    /// its lease expired, or its experiment was cancelled). A runner checks it between steps and
    /// throws `JobCancelled`, so the worker is free for other jobs at once.
    var isCancelled: Bool { get }
}

extension JobProgress {
    public var isCancelled: Bool { false }
}

/// A job stopped because its outcome is no longer wanted (`JobProgress.isCancelled`).
public struct JobCancelled: Error, CustomStringConvertible {
    public init() {}
    public var description: String { "stopped: the coordinator no longer wants this job's outcome" }
}

/// The artefacts of a job's `inputs`, by job id, as the coordinator handed them over.
public struct JobInputs: Sendable {
    public var artefacts: [String: Data]
    public init(_ artefacts: [String: Data] = [:]) { self.artefacts = artefacts }
    public static let none = JobInputs()

    /// The artefacts of `spec.inputs`, in order; a missing one is a deterministic failure.
    public func artefacts(of spec: JobSpec) throws -> [(id: String, data: Data)] {
        try spec.inputs.map { id in
            guard let d = artefacts[id] else {
                throw JobSpecError(field: "inputs", message: "the artefact of input job \(id) was not handed over")
            }
            return (id, d)
        }
    }
}

/// Runs jobs. The worker keeps one runner (and so one loaded model per model name) for its life.
public protocol JobRunner: AnyObject {
    func run(_ spec: JobSpec, inputs: JobInputs, progress: JobProgress?) throws -> JobOutcome
}

extension JobRunner {
    /// A job that reads no other job's artefact.
    public func run(_ spec: JobSpec, progress: JobProgress?) throws -> JobOutcome {
        try run(spec, inputs: .none, progress: progress)
    }
}

/// An error that knows whether retrying the same job could help. Throw one from a runner:
/// deterministic failures (unknown task, bad parameters, a model that does not exist) are marked
/// failed at once instead of retried.
public protocol DeterministicJobFailure: Error {
    var isDeterministic: Bool { get }
}

/// A value shared between threads under a lock.
public final class LockedBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var _value: T
    public init(_ v: T) { _value = v }
    public var value: T {
        get { lock.withLock { _value } }
        set { lock.withLock { _value = newValue } }
    }
    /// Changes the value in place (no copy of a collection).
    @discardableResult
    public func mutate<R>(_ body: (inout T) -> R) -> R { lock.withLock { body(&_value) } }
}
