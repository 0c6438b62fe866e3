import Foundation
import JobCore

/// What `coordinator report` shows, laid out as the paper's tables are: one row per method (an
/// arm, as `compare` groups jobs: every parameter but model, task, seed and test size, the layer
/// kept apart as its own column), one column per task, each cell the metrics' mean ± std over the
/// seeds done. Nothing here knows a method or a metric by name: a new job kind or metric appears
/// as a new row or a new choice of `metrics`. Pure: built from a snapshot, rendered by
/// `ReportRenderer`.
public struct ExperimentReport: Sendable {
    public struct Row: Sendable {
        /// The method and the parameters that tell rows apart, but the layer ("intervention",
        /// "intervention λ=0 γ=0"): rows with the same `method` are one series over layers.
        public var method: String
        /// nil for methods without a layer axis (the prompting baselines).
        public var layer: Int?
        /// A job of this row.
        public var example: JobSpec

        public var learnsDelta: Bool { example.method.learnsDelta }
        /// Both penalties zero: the unregularised ablation.
        public var unregularised: Bool { example.lambda == 0 && example.gamma == 0 }
        /// "intervention · layer 4"
        public var label: String { layer.map { "\(method) · layer \($0)" } ?? method }
    }

    public struct Cell: Sendable {
        /// Every metric the done jobs have: mean and sample std over their seeds.
        public var stats: [String: Comparison.Stat] = [:]
        public var jobs = 0, done = 0, running = 0, queued = 0, failed = 0, cancelled = 0
        /// Done jobs' artefacts (absolute paths), by seed.
        public var artefacts: [Int: String] = [:]
        /// Jobs that may still add a seed.
        public var pending: Int { running + queued }
    }

    /// One Figure-2 heatmap: the rows that learn a Δ at one task and layer, each with the Δ of one
    /// seed (the lowest seed they all have, else each its lowest).
    public struct DeltaGroup: Sendable {
        public var task: Int
        public var layer: Int
        public var panels: [(row: Int, seed: Int, path: String)]
    }

    public var experiment: String
    public var source: String
    public var submitted: Double
    public var counts: Render.Counts
    /// The metrics the tables and figures show, in order.
    public var metrics: [String]
    public var tasks: [String]
    public var rows: [Row]
    /// cells[row][task].
    public var cells: [[Cell]]
    /// Earliest start and latest end of the experiment's jobs (Unix seconds), and their summed run time.
    public var firstStarted: Double?
    public var lastEnded: Double?
    public var jobSeconds: Double
    public var failures: [(job: String, label: String, error: String)]

    /// Jobs still queued or running: the numbers may change.
    public var partial: Bool { counts.queued + counts.running > 0 }
    /// The rows' methods (series), in row order.
    public var series: [String] {
        var seen = Set<String>()
        return rows.map(\.method).filter { seen.insert($0).inserted }
    }
    /// Every layer a row has, ascending.
    public var layers: [Int] { Array(Set(rows.compactMap(\.layer))).sorted() }

    /// What tables show when no `--metric` is given, where the jobs have them.
    public static let defaultMetrics = ["exact_match", "judge_accuracy"]

    /// How tables and figures name a metric.
    public static func metricName(_ m: String) -> String {
        for (prefix, tag) in promptVariants where m.hasPrefix(prefix) {
            return metricName(String(m.dropFirst(prefix.count))) + " (\(tag))"
        }
        return ["exact_match": "exact match", "judge_accuracy": "judge accuracy",
                "first_token_accuracy": "first-token accuracy"][m] ?? m
    }

    /// Metric prefixes of a job's second evaluation and how tables name it: an intervention's
    /// `zero_shot_…` (without Δ), a function vector's `few_shot_…` (on k-shot prompts).
    static let promptVariants = [("zero_shot_", "0-shot"), ("few_shot_", "k-shot")]

    /// The report of a snapshot. `metrics` nil: `defaultMetrics` where present, else the first two
    /// metrics the done jobs have. A metric asked for that no done job has is an error naming the
    /// ones they have.
    public static func make(_ snap: ExperimentSnapshot, metrics asked: [String]? = nil) throws -> ExperimentReport {
        var seen = Set<String>()
        let jobs = snap.jobs.filter { seen.insert($0.id).inserted }
        guard !jobs.isEmpty else {
            throw ReportError("experiment \"\(snap.experiment)\" has no jobs")
        }
        let done = jobs.filter { $0.state == .done }
        let present = Set(done.flatMap { $0.metrics.keys })
        let metrics: [String]
        if let asked, !asked.isEmpty {
            if !done.isEmpty, let missing = asked.first(where: { !present.contains($0) }) {
                throw ReportError(
                    "--metric \(missing): no done job of \"\(snap.experiment)\" has it; they have: "
                        + present.sorted().joined(separator: ", "))
            }
            metrics = asked
        } else {
            let d = defaultMetrics.filter { present.contains($0) }
            metrics = !d.isEmpty || done.isEmpty ? (d.isEmpty ? defaultMetrics : d)
                : Array(Render.metricColumns(done).prefix(2))
        }

        // rows: arms, grouped into series by everything but the layer
        func seriesKey(_ s: JobSpec) -> JobSpec {
            var k = Comparison.armKey(s)
            if k.method.axes.contains(.layer) { k.layer = 0 }
            return k
        }
        var seriesOrder: [JobSpec] = []
        var armOrder: [JobSpec] = []
        var armExample: [JobSpec: JobSpec] = [:]
        var taskOrder: [String] = []
        var taskExample: [String: JobSpec] = [:]
        // rows and columns: the jobs that score the model (not those that only make an input, such
        // as a function vector's head ranking; they count in the totals and failures)
        let scored = jobs.filter { $0.spec.method.evaluates }
        for j in scored {
            let a = Comparison.armKey(j.spec), s = seriesKey(j.spec), t = Comparison.taskKey(j.spec)
            if !seriesOrder.contains(s) { seriesOrder.append(s) }
            if armExample[a] == nil { armOrder.append(a); armExample[a] = j.spec }
            if taskExample[t] == nil { taskOrder.append(t); taskExample[t] = j.spec }
        }
        let seriesLabels = Comparison.armLabels(seriesOrder)
        let seriesIndex = Dictionary(uniqueKeysWithValues: seriesOrder.enumerated().map { ($1, $0) })
        armOrder.sort { a, b in
            let sa = seriesIndex[seriesKey(a)]!, sb = seriesIndex[seriesKey(b)]!
            return sa != sb ? sa < sb : a.layer < b.layer
        }
        let rows = armOrder.map { a in
            Row(method: seriesLabels[seriesIndex[seriesKey(a)]!],
                layer: a.method.axes.contains(.layer) ? a.layer : nil, example: armExample[a]!)
        }
        let rowIndex = Dictionary(uniqueKeysWithValues: armOrder.enumerated().map { ($1, $0) })
        let taskIndex = Dictionary(uniqueKeysWithValues: taskOrder.enumerated().map { ($1, $0) })

        var cells = Array(repeating: Array(repeating: Cell(), count: taskOrder.count), count: rows.count)
        var values = Array(repeating: Array(repeating: [String: [Double]](), count: taskOrder.count),
                           count: rows.count)
        var failures: [(String, String, String)] = jobs.filter { !$0.spec.method.evaluates && $0.state == .failed }
            .map { ($0.id, LiveView.describe($0.spec), $0.error) }
        for j in scored {
            let r = rowIndex[Comparison.armKey(j.spec)]!, t = taskIndex[Comparison.taskKey(j.spec)]!
            cells[r][t].jobs += 1
            switch j.state {
            case .done:
                cells[r][t].done += 1
                for (m, v) in j.metrics where v.isFinite { values[r][t][m, default: []].append(v) }
                if !j.artefactPath.isEmpty { cells[r][t].artefacts[j.spec.seed] = j.artefactPath }
            case .running: cells[r][t].running += 1
            case .queued, .lost: cells[r][t].queued += 1
            case .failed:
                cells[r][t].failed += 1
                failures.append((j.id, LiveView.describe(j.spec), j.error))
            case .cancelled: cells[r][t].cancelled += 1
            }
        }
        for r in rows.indices {
            for t in taskOrder.indices {
                for (m, xs) in values[r][t] { cells[r][t].stats[m] = Comparison.stat(xs) }
            }
        }
        let ran = jobs.compactMap { j -> Double? in
            guard j.state == .done, let s = j.started, let e = j.ended, e >= s else { return nil }
            return e - s
        }
        return ExperimentReport(
            experiment: snap.experiment, source: snap.source, submitted: snap.submitted,
            counts: Render.counts(jobs), metrics: metrics,
            tasks: Comparison.taskNames(taskOrder.map { taskExample[$0]! }), rows: rows, cells: cells,
            firstStarted: jobs.compactMap(\.started).min(), lastEnded: jobs.compactMap(\.ended).max(),
            jobSeconds: ran.reduce(0, +), failures: failures)
    }

    /// The Figure-2 groups: per task and layer, the rows that have a Δ there, regularised ones
    /// first (so each sits beside its unregularised counterpart).
    public var deltaGroups: [DeltaGroup] {
        var out: [DeltaGroup] = []
        for t in tasks.indices {
            for layer in layers {
                let rs = rows.indices.filter {
                    rows[$0].layer == layer && rows[$0].learnsDelta && !cells[$0][t].artefacts.isEmpty
                }.sorted { a, b in
                    let ua = rows[a].unregularised, ub = rows[b].unregularised
                    return ua != ub ? !ua : a < b
                }
                guard !rs.isEmpty else { continue }
                let common = rs.map { Set(cells[$0][t].artefacts.keys) }.reduce(Set(cells[rs[0]][t].artefacts.keys)) {
                    $0.intersection($1)
                }
                let panels = rs.map { r -> (Int, Int, String) in
                    let a = cells[r][t].artefacts
                    let seed = common.min() ?? a.keys.min()!
                    return (r, seed, a[seed]!)
                }
                out.append(DeltaGroup(task: t, layer: layer, panels: panels))
            }
        }
        return out
    }

    /// The experiment's wall time so far: from its first job's start (or its submission) to its
    /// last result, or to `now` while jobs are pending.
    public func wallSeconds(now: Double) -> Double? {
        let start = [submitted > 0 ? submitted : nil, firstStarted].compactMap { $0 }.min()
        guard let start else { return nil }
        let end = partial ? now : (lastEnded ?? now)
        return max(0, end - start)
    }
}
