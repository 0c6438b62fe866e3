import Foundation
import JobCore

/// The life of a job. `done`, `failed` and `cancelled` are terminal (a resubmitted grid requeues
/// failed and cancelled jobs); `lost` is the brief state between a lease expiring and the job
/// going back to the queue, visible on the update stream.
public enum JobState: String, Codable, CaseIterable, Sendable {
    case queued, running, done, failed, lost, cancelled

    public var isTerminal: Bool { self == .done || self == .failed || self == .cancelled }
    /// An input in this state will not be done: the jobs reading its artefact fail.
    public var endsReaders: Bool { self == .failed || self == .cancelled }
}

/// What a job needs from the machine that runs it (grid.json `device`).
public enum DeviceRequirement: String, Codable, CaseIterable, Sendable {
    case cpu, gpu, any

    public func fits(_ device: WorkerDevice) -> Bool {
        switch self {
        case .any: return true
        case .cpu: return device == .cpu
        case .gpu: return device == .gpu
        }
    }
}

/// What a worker computes on.
public enum WorkerDevice: String, Codable, Sendable {
    case cpu, gpu
}

/// Everything the coordinator knows about one job; mirrored by a row of the `jobs` table.
public struct JobRecord: Equatable, Sendable {
    public var id: String
    public var spec: JobSpec
    public var device: DeviceRequirement
    /// Submission order; the queue is served lowest first (a requeued job keeps its place).
    public var seq: Int
    public var state: JobState
    /// The attempt the job runs (or will run) as: 1 when first queued, +1 on every requeue.
    public var attempt: Int
    /// How many times this job was lost (lease expired, worker gone) or failed transiently since
    /// it was last submitted; it is failed once this reaches the cap.
    public var losses: Int
    /// Unix time (seconds) at which a running job's lease expires.
    public var leaseExpiry: Double?
    /// The worker running it, or the one that finished or last lost it.
    public var worker: String?
    public var error: String?
    /// Why a queued job waits (computed when asked, stored as last seen).
    public var pendingReason: String?
    public var metrics: [String: Double]
    public var artefactSHA256: String?
    /// Relative to the store folder, e.g. `artefacts/<sha256>.safetensors`.
    public var artefactPath: String?
    public var created: Double
    public var started: Double?
    public var ended: Double?
    public var updated: Double

    public init(id: String, spec: JobSpec, device: DeviceRequirement, seq: Int, state: JobState = .queued,
                attempt: Int = 1, losses: Int = 0, leaseExpiry: Double? = nil, worker: String? = nil,
                error: String? = nil, pendingReason: String? = nil, metrics: [String: Double] = [:],
                artefactSHA256: String? = nil, artefactPath: String? = nil, created: Double,
                started: Double? = nil, ended: Double? = nil, updated: Double? = nil) {
        self.id = id; self.spec = spec; self.device = device; self.seq = seq; self.state = state
        self.attempt = attempt; self.losses = losses; self.leaseExpiry = leaseExpiry; self.worker = worker
        self.error = error; self.pendingReason = pendingReason; self.metrics = metrics
        self.artefactSHA256 = artefactSHA256; self.artefactPath = artefactPath; self.created = created
        self.started = started; self.ended = ended; self.updated = updated ?? created
    }
}

/// An experiment: a named grid and the jobs it expanded to (a job may belong to several).
public struct ExperimentRecord: Equatable, Sendable {
    public var name: String
    public var gridJSON: String
    public var submitted: Double
    public var cancelled: Bool
    /// In expansion order.
    public var jobIDs: [String]

    public init(name: String, gridJSON: String, submitted: Double, cancelled: Bool = false, jobIDs: [String]) {
        self.name = name; self.gridJSON = gridJSON; self.submitted = submitted
        self.cancelled = cancelled; self.jobIDs = jobIDs
    }
}

/// What a worker told the coordinator about itself (protocol `Hello`).
public struct WorkerCapabilities: Equatable, Sendable {
    public var device: WorkerDevice
    public var deviceIndex: Int
    public var threads: Int
    public var hostname: String
    /// Method families this worker runs (`JobMethod.Family` names); empty means any.
    public var methods: [String]
    public var modelsCached: [String]
    /// Solver precisions this worker's CPU runs (`Precision` names); empty means not said (any).
    public var precisions: [String]

    public init(device: WorkerDevice = .cpu, deviceIndex: Int = -1, threads: Int = 1, hostname: String = "",
                methods: [String] = [], modelsCached: [String] = [], precisions: [String] = []) {
        self.device = device; self.deviceIndex = deviceIndex; self.threads = threads
        self.hostname = hostname; self.methods = methods; self.modelsCached = modelsCached
        self.precisions = precisions
    }

    public func runs(_ method: JobMethod) -> Bool {
        methods.isEmpty || methods.contains(method.family.rawValue)
    }

    /// Whether the job's kernel precision runs here as the job names it.
    public func runsPrecision(of spec: JobSpec) -> Bool {
        guard let p = spec.kernelPrecision, !precisions.isEmpty else { return true }
        return precisions.contains(p.rawValue)
    }

    /// Method family and precision both.
    public func runs(_ spec: JobSpec) -> Bool { runs(spec.method) && runsPrecision(of: spec) }
}

extension JobSpec {
    /// The precision a worker's kernels must run for this job: its solver's, for engine jobs that
    /// learn Δ; nil for jobs without a solver and for synthetic ones (they use no kernels).
    public var kernelPrecision: Precision? {
        guard method.family == .engine, method.trains else { return nil }
        return precision ?? .solverDefault
    }
}
