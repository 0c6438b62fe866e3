import Engine
import Foundation
import Protocol

/// Conversions between the engine's and the store's types and the wire's.
enum WireConvert {
    static func params(_ s: JobSpec) -> JobParams {
        var p = JobParams()
        p.model = s.model; p.task = s.task; p.method = s.method
        p.layer = Int32(clamping: s.layer); p.lambda = s.lambda; p.gamma = s.gamma
        p.seed = Int64(s.seed); p.trainSize = Int32(clamping: s.trainSize); p.testSize = Int32(clamping: s.testSize)
        p.steps = Int32(clamping: s.steps); p.lr = s.lr; p.maxNewTokens = Int32(clamping: s.maxNewTokens)
        p.shots = Int32(clamping: s.shots); p.solver = s.solver; p.precision = s.precision
        p.promptTemplate = s.promptTemplate; p.targetTemplate = s.targetTemplate
        return p
    }

    static func spec(_ p: JobParams) -> JobSpec {
        JobSpec(model: p.model, task: p.task, method: p.method, layer: Int(p.layer), lambda: p.lambda,
                gamma: p.gamma, seed: Int(p.seed), trainSize: Int(p.trainSize), testSize: Int(p.testSize),
                steps: Int(p.steps), lr: p.lr, maxNewTokens: Int(p.maxNewTokens), shots: Int(p.shots), solver: p.solver,
                precision: p.precision, promptTemplate: p.promptTemplate, targetTemplate: p.targetTemplate)
    }

    static func ms(_ t: Double?) -> Int64 { t.map { Int64(($0 * 1000).rounded()) } ?? 0 }

    /// The wire form of a job record. `storeDirectory` turns the artefact path absolute.
    static func record(_ j: JobRecord, experiments: [String], pending: String?, storeDirectory: URL?) -> Intervene_V1_JobRecord {
        var r = Intervene_V1_JobRecord()
        r.jobID = j.id
        r.state = j.state.rawValue
        r.attempt = UInt32(clamping: j.attempt)
        r.params = params(j.spec)
        r.metrics = j.metrics
        r.error = j.error ?? ""
        r.artefactSha256 = j.artefactSHA256 ?? ""
        if let p = j.artefactPath {
            r.artefactPath = storeDirectory.map { $0.appendingPathComponent(p).path } ?? p
        }
        r.workerID = j.worker ?? ""
        r.pendingReason = pending ?? ""
        r.startedUnixMs = ms(j.started)
        r.endedUnixMs = ms(j.ended)
        r.experiments = experiments
        r.device = j.device.rawValue
        return r
    }
}

/// A job as clients see it (from a Query reply), the unit of every table.
public struct JobView: Equatable, Sendable {
    public var id: String
    public var spec: JobSpec
    public var state: JobState
    public var attempt: Int
    public var metrics: [String: Double]
    public var error: String
    public var artefactPath: String
    public var artefactSHA256: String
    public var worker: String
    public var pendingReason: String
    public var started: Double?
    public var ended: Double?
    public var device: String
    /// While running: the last reported step / total.
    public var step: Int = 0
    public var total: Int = 0

    public init(id: String, spec: JobSpec, state: JobState, attempt: Int = 1, metrics: [String: Double] = [:],
                error: String = "", artefactPath: String = "", artefactSHA256: String = "", worker: String = "",
                pendingReason: String = "", started: Double? = nil, ended: Double? = nil, device: String = "any") {
        self.id = id; self.spec = spec; self.state = state; self.attempt = attempt; self.metrics = metrics
        self.error = error; self.artefactPath = artefactPath; self.artefactSHA256 = artefactSHA256
        self.worker = worker; self.pendingReason = pendingReason; self.started = started; self.ended = ended
        self.device = device
    }

    public init(_ r: Intervene_V1_JobRecord) {
        self.init(id: r.jobID, spec: WireConvert.spec(r.params), state: JobState(rawValue: r.state) ?? .queued,
                  attempt: Int(r.attempt), metrics: r.metrics, error: r.error, artefactPath: r.artefactPath,
                  artefactSHA256: r.artefactSha256, worker: r.workerID, pendingReason: r.pendingReason,
                  started: r.startedUnixMs > 0 ? Double(r.startedUnixMs) / 1000 : nil,
                  ended: r.endedUnixMs > 0 ? Double(r.endedUnixMs) / 1000 : nil,
                  device: r.device.isEmpty ? "any" : r.device)
    }
}
