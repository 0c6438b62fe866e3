import Foundation
import JobCore

/// An experiment's jobs as a report reads them: from a running coordinator (a Query, as `results`
/// does) or straight from its store folder (no coordinator needed; safe while one runs, the store
/// being SQLite in WAL mode and written on every state change). Either way each job's artefact
/// path is absolute.
public struct ExperimentSnapshot: Sendable {
    public var experiment: String
    /// When the experiment was (last) submitted, Unix seconds.
    public var submitted: Double
    /// In the experiment's expansion order.
    public var jobs: [JobView]
    /// Where the jobs were read, for the report's footer ("store runs/store", "coordinator tcp://…").
    public var source: String

    public init(experiment: String, submitted: Double, jobs: [JobView], source: String) {
        self.experiment = experiment
        self.submitted = submitted
        self.jobs = jobs
        self.source = source
    }
}

public struct ReportError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// Where a report reads its experiment.
public enum ReportSource {
    /// A store folder (`coordinator serve --store`'s).
    case store(URL)
    /// A running coordinator.
    case coordinator(CoordinatorClient)

    public func snapshot(_ experiment: String) throws -> ExperimentSnapshot {
        switch self {
        case .coordinator(let c):
            let r = try c.query(experiment: experiment)
            return ExperimentSnapshot(
                experiment: experiment, submitted: Double(r.submittedUnixMs) / 1000,
                jobs: try r.jobs.map(JobView.init), source: "coordinator \(c.endpoint)")
        case .store(let dir):
            let file = dir.appendingPathComponent("store.sqlite")
            guard FileManager.default.fileExists(atPath: file.path) else {
                throw ReportError(
                    "--store \(dir.relativePath): no store.sqlite there; give the folder `coordinator serve --store` "
                        + "was started with")
            }
            let store = try Store(directory: dir)
            defer { store.close() }
            let experiments = try store.loadExperiments()
            guard let e = experiments.first(where: { $0.name == experiment }) else {
                let known = experiments.map(\.name)
                throw ReportError(
                    "no experiment named \"\(experiment)\" in the store at \(dir.relativePath)"
                        + (known.isEmpty ? " (it has none)" : "; it has: " + known.joined(separator: ", ")))
            }
            let byID = Dictionary(try store.loadJobs().map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
            let jobs = e.jobIDs.compactMap { byID[$0] }.map { JobView($0, storeDirectory: dir) }
            return ExperimentSnapshot(
                experiment: experiment, submitted: e.submitted, jobs: jobs, source: "store \(dir.relativePath)")
        }
    }
}

extension JobView {
    /// A stored job as clients see it; `storeDirectory` turns its artefact path absolute.
    public init(_ j: JobRecord, storeDirectory: URL) {
        self.init(
            id: j.id, spec: j.spec, state: j.state, attempt: j.attempt, metrics: j.metrics, error: j.error ?? "",
            artefactPath: j.artefactPath.map { storeDirectory.appendingPathComponent($0).path } ?? "",
            artefactSHA256: j.artefactSHA256 ?? "", worker: j.worker ?? "", pendingReason: j.pendingReason ?? "",
            started: j.started, ended: j.ended, device: j.device.rawValue)
    }
}
