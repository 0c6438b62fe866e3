import Foundation
import JobCore
import Protocol

/// Conversions between the store's types and the wire's (the job's own mapping is Protocol's).
enum WireConvert {
    static func ms(_ t: Double?) -> Int64 { t.map { Int64(($0 * 1000).rounded()) } ?? 0 }

    /// The wire form of a job record. `storeDirectory` turns the artefact path absolute.
    static func record(_ j: JobRecord, experiments: [String], pending: String?, storeDirectory: URL?) -> Intervene_V1_JobRecord {
        var r = Intervene_V1_JobRecord()
        r.jobID = j.id
        r.state = j.state.rawValue
        r.attempt = UInt32(clamping: j.attempt)
        r.params = JobParams(j.spec)
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

    /// Throws `JobSpecError` for a job this build cannot read (a method from a newer coordinator).
    public init(_ r: Intervene_V1_JobRecord) throws {
        self.init(id: r.jobID, spec: try JobSpec(wire: r.params), state: JobState(rawValue: r.state) ?? .queued,
                  attempt: Int(r.attempt), metrics: r.metrics, error: r.error, artefactPath: r.artefactPath,
                  artefactSHA256: r.artefactSha256, worker: r.workerID, pendingReason: r.pendingReason,
                  started: r.startedUnixMs > 0 ? Double(r.startedUnixMs) / 1000 : nil,
                  ended: r.endedUnixMs > 0 ? Double(r.endedUnixMs) / 1000 : nil,
                  device: r.device.isEmpty ? "any" : r.device)
    }
}
