import JobCore
import Foundation
import Protocol

/// The coordinator's durable state: `<dir>/store.sqlite` (SQLite in WAL mode) and
/// `<dir>/artefacts/<sha256>.safetensors`. One `Store` is used from one thread.
///
/// Tables: `experiments`, `jobs` (parameters, state, attempt, lease expiry, worker, error, pending
/// reason, timestamps), `experiment_jobs` (which experiments a job belongs to), `step_metrics`
/// (job, attempt, step, name, value) and `results` (job, metrics, artefact sha256 and path). The
/// schema version is SQLite's `user_version`; `migrate()` brings an older store up to date.
public final class Store {
    public let directory: URL
    public let db: SQLiteDatabase
    public var artefactsDirectory: URL { directory.appendingPathComponent("artefacts", isDirectory: true) }

    /// The schema version this build writes.
    public static let schemaVersion = 1

    public enum StoreError: Error, CustomStringConvertible, Equatable {
        case artefactHashMismatch(claimed: String, actual: String)
        case newerSchema(found: Int, supported: Int)
        case corruptRow(String)

        public var description: String {
            switch self {
            case let .artefactHashMismatch(c, a): return "artefact refused: its sha256 is \(a), the sender claimed \(c)"
            case let .newerSchema(f, s): return "the store has schema version \(f); this build knows up to \(s) (upgrade the coordinator)"
            case let .corruptRow(what): return "corrupt store row: \(what)"
            }
        }
    }

    public init(directory: URL) throws {
        self.directory = directory
        let fm = FileManager.default
        try fm.createDirectory(at: directory, withIntermediateDirectories: true)
        try fm.createDirectory(at: directory.appendingPathComponent("artefacts"), withIntermediateDirectories: true)
        db = try SQLiteDatabase(path: directory.appendingPathComponent("store.sqlite").path)
        try db.execute("PRAGMA journal_mode=WAL")
        try db.execute("PRAGMA synchronous=NORMAL")
        try db.execute("PRAGMA foreign_keys=ON")
        try migrate()
    }

    public func close() { db.close() }

    public var journalMode: String {
        (try? db.query("PRAGMA journal_mode").first?.string(0)).flatMap { $0 } ?? ""
    }

    // MARK: schema

    private static let migrations: [String] = [
        // version 1
        """
        CREATE TABLE experiments (
            name TEXT PRIMARY KEY,
            grid TEXT NOT NULL,
            submitted REAL NOT NULL,
            cancelled INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            params TEXT NOT NULL,
            device TEXT NOT NULL,
            state TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            losses INTEGER NOT NULL DEFAULT 0,
            lease_expiry REAL,
            worker TEXT,
            error TEXT,
            pending_reason TEXT,
            created REAL NOT NULL,
            started REAL,
            ended REAL,
            updated REAL NOT NULL
        );
        CREATE INDEX jobs_state ON jobs(state);
        CREATE TABLE experiment_jobs (
            experiment TEXT NOT NULL REFERENCES experiments(name) ON DELETE CASCADE,
            job TEXT NOT NULL REFERENCES jobs(id) DEFERRABLE INITIALLY DEFERRED,
            position INTEGER NOT NULL,
            PRIMARY KEY (experiment, job)
        ) WITHOUT ROWID;
        CREATE INDEX experiment_jobs_job ON experiment_jobs(job);
        CREATE TABLE step_metrics (
            job TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            step INTEGER NOT NULL,
            name TEXT NOT NULL,
            value REAL NOT NULL,
            PRIMARY KEY (job, attempt, step, name)
        ) WITHOUT ROWID;
        CREATE TABLE results (
            job TEXT PRIMARY KEY REFERENCES jobs(id) DEFERRABLE INITIALLY DEFERRED,
            attempt INTEGER NOT NULL,
            worker TEXT,
            metrics TEXT NOT NULL,
            artefact_sha256 TEXT,
            artefact_path TEXT,
            received REAL NOT NULL
        );
        """,
    ]

    /// Applies the migrations the store lacks, each in a transaction with its `user_version` bump.
    public func migrate() throws {
        let current = db.userVersion
        if current > Store.migrations.count {
            throw StoreError.newerSchema(found: current, supported: Store.migrations.count)
        }
        for v in current..<Store.migrations.count {
            try db.transaction {
                try db.execute(Store.migrations[v])
                try db.setUserVersion(v + 1)
            }
        }
    }

    // MARK: writes

    public func saveExperiment(_ e: ExperimentRecord) throws {
        try db.transaction { try saveExperimentInTransaction(e) }
    }

    /// Inserts or replaces an experiment and its job list; call inside a transaction.
    public func saveExperimentInTransaction(_ e: ExperimentRecord) throws {
        try db.run("""
            INSERT INTO experiments(name, grid, submitted, cancelled) VALUES (?, ?, ?, ?)
            ON CONFLICT(name) DO UPDATE SET grid = excluded.grid, submitted = excluded.submitted,
                cancelled = excluded.cancelled
            """, .text(e.name), .text(e.gridJSON), .double(e.submitted), .int(e.cancelled ? 1 : 0))
        try db.run("DELETE FROM experiment_jobs WHERE experiment = ?", .text(e.name))
        for (i, j) in e.jobIDs.enumerated() {
            try db.run("INSERT OR IGNORE INTO experiment_jobs(experiment, job, position) VALUES (?, ?, ?)",
                       .text(e.name), .text(j), .int(Int64(i)))
        }
    }

    private static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return e
    }()

    /// Inserts or updates a job's row (and its result row when it is done); call inside a transaction
    /// or alone.
    public func saveJob(_ j: JobRecord) throws {
        let params = String(decoding: try Store.encoder.encode(j.spec), as: UTF8.self)
        try db.run("""
            INSERT INTO jobs(id, seq, params, device, state, attempt, losses, lease_expiry, worker, error,
                             pending_reason, created, started, ended, updated)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT(id) DO UPDATE SET device = excluded.device, state = excluded.state,
                attempt = excluded.attempt, losses = excluded.losses, lease_expiry = excluded.lease_expiry,
                worker = excluded.worker, error = excluded.error, pending_reason = excluded.pending_reason,
                started = excluded.started, ended = excluded.ended, updated = excluded.updated
            """, [.text(j.id), .int(Int64(j.seq)), .text(params), .text(j.device.rawValue), .text(j.state.rawValue),
                  .int(Int64(j.attempt)), .int(Int64(j.losses)), .init(j.leaseExpiry), .init(j.worker), .init(j.error),
                  .init(j.pendingReason), .double(j.created), .init(j.started), .init(j.ended), .double(j.updated)])
        if j.state == .done {
            let metrics = String(decoding: try Store.encoder.encode(j.metrics), as: UTF8.self)
            // The first result stays: results are idempotent by job id.
            try db.run("""
                INSERT OR IGNORE INTO results(job, attempt, worker, metrics, artefact_sha256, artefact_path, received)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                """, .text(j.id), .int(Int64(j.attempt)), .init(j.worker), .text(metrics), .init(j.artefactSHA256),
                       .init(j.artefactPath), .double(j.ended ?? j.updated))
        }
    }

    public func saveJobs(_ jobs: [JobRecord]) throws {
        try db.transaction { for j in jobs { try saveJob(j) } }
    }

    /// Records step metrics (best effort: a repeated report overwrites the same key).
    public func saveStepMetrics(job: String, attempt: Int, step: Int, values: [String: Double]) throws {
        for (name, value) in values.sorted(by: { $0.key < $1.key }) where value.isFinite {
            try db.run("INSERT OR REPLACE INTO step_metrics(job, attempt, step, name, value) VALUES (?, ?, ?, ?, ?)",
                       .text(job), .int(Int64(attempt)), .int(Int64(step)), .text(name), .double(value))
        }
    }

    // MARK: artefacts

    /// Verifies an artefact against the sha256 its sender claims and stores it as
    /// `artefacts/<sha256>.safetensors` (written to a temporary file, then renamed, so a reader
    /// never sees half a file). Returns the path relative to the store. Throws
    /// `artefactHashMismatch` and stores nothing when the hash differs.
    @discardableResult
    public func putArtefact(_ data: Data, claimedSHA256: String) throws -> (sha256: String, relativePath: String) {
        let actual = SHA256.hex(data)
        guard actual == claimedSHA256.lowercased() else {
            throw StoreError.artefactHashMismatch(claimed: claimedSHA256, actual: actual)
        }
        let rel = "artefacts/\(actual).safetensors"
        let dest = directory.appendingPathComponent(rel)
        if FileManager.default.fileExists(atPath: dest.path) { return (actual, rel) }
        let tmp = artefactsDirectory.appendingPathComponent(".\(actual).\(UUID().uuidString).tmp")
        try data.write(to: tmp)
        if rename(tmp.path, dest.path) != 0 {
            let e = errno
            try? FileManager.default.removeItem(at: tmp)
            throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: "rename to \(dest.path): errno \(e)"])
        }
        return (actual, rel)
    }

    /// Absolute path of a stored artefact.
    public func artefactURL(relativePath: String) -> URL { directory.appendingPathComponent(relativePath) }

    // MARK: reads

    public func loadExperiments() throws -> [ExperimentRecord] {
        var exps: [String: ExperimentRecord] = [:]
        for r in try db.query("SELECT name, grid, submitted, cancelled FROM experiments") {
            let name = r.string(0) ?? ""
            exps[name] = ExperimentRecord(name: name, gridJSON: r.string(1) ?? "", submitted: r.double(2) ?? 0,
                                          cancelled: (r.int(3) ?? 0) != 0, jobIDs: [])
        }
        for r in try db.query("SELECT experiment, job FROM experiment_jobs ORDER BY experiment, position") {
            if let e = r.string(0), let j = r.string(1) { exps[e]?.jobIDs.append(j) }
        }
        return exps.values.sorted { ($0.submitted, $0.name) < ($1.submitted, $1.name) }
    }

    public func loadJobs() throws -> [JobRecord] {
        let decoder = JSONDecoder()
        var results: [String: (metrics: [String: Double], sha: String?, path: String?)] = [:]
        for r in try db.query("SELECT job, metrics, artefact_sha256, artefact_path FROM results") {
            guard let id = r.string(0) else { continue }
            let m = (try? decoder.decode([String: Double].self, from: Data((r.string(1) ?? "{}").utf8))) ?? [:]
            results[id] = (m, r.string(2), r.string(3))
        }
        var out: [JobRecord] = []
        for r in try db.query("""
            SELECT id, seq, params, device, state, attempt, losses, lease_expiry, worker, error, pending_reason,
                   created, started, ended, updated FROM jobs ORDER BY seq
            """) {
            guard let id = r.string(0), let params = r.string(2),
                  let spec = try? decoder.decode(JobSpec.self, from: Data(params.utf8)),
                  let state = JobState(rawValue: r.string(4) ?? "") else {
                throw StoreError.corruptRow("job \(r.string(0) ?? "?")")
            }
            var j = JobRecord(id: id, spec: spec, device: DeviceRequirement(rawValue: r.string(3) ?? "") ?? .any,
                              seq: r.int(1) ?? 0, state: state, attempt: r.int(5) ?? 1, losses: r.int(6) ?? 0,
                              leaseExpiry: r.double(7), worker: r.string(8), error: r.string(9),
                              pendingReason: r.string(10), created: r.double(11) ?? 0, started: r.double(12),
                              ended: r.double(13), updated: r.double(14))
            if let res = results[id] {
                j.metrics = res.metrics; j.artefactSHA256 = res.sha; j.artefactPath = res.path
            }
            out.append(j)
        }
        return out
    }

    /// Step metrics of a job, ordered by attempt and step.
    public func stepMetrics(job: String) throws -> [(attempt: Int, step: Int, name: String, value: Double)] {
        try db.query("SELECT attempt, step, name, value FROM step_metrics WHERE job = ? ORDER BY attempt, step, name",
                     .text(job)).map { ($0.int(0) ?? 0, $0.int(1) ?? 0, $0.string(2) ?? "", $0.double(3) ?? 0) }
    }

    public func resultCount() throws -> Int {
        try db.query("SELECT COUNT(*) FROM results").first?.int(0) ?? 0
    }
}
